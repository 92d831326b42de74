"""memcached's text protocol: set, get, delete, incr and version.

How this works
--------------
A request is a command line ending in CRLF, and for ``set`` a data block of
the length the line gives, also ending in CRLF. Requests are frozen data
(:class:`Set`, :class:`Get`, :class:`Delete`, :class:`Incr`, :class:`Version`)
naming keys by number; encoding makes them ``{prefix}:k{n}``, unique to the
connection. :class:`MemcachedConnection` frames what is sent, keeps the
connection's items (flags and data) in a dict and says what each command is
owed, as memcached 1.6 answers:

=================================  ===========================================
``set <key> <flags> 0 <bytes>``    ``STORED``
``get <key> [<key> ...]``          ``VALUE <key> <flags> <bytes>`` and the
                                   data for each key stored, then ``END``
``delete <key>``                   ``DELETED`` or ``NOT_FOUND``
``incr <key> <delta>``             the new value (unsigned 64-bit, wrapping),
                                   ``NOT_FOUND``, or ``CLIENT_ERROR cannot
                                   increment or decrement non-numeric value``
``version``                        a line beginning ``VERSION `` (a pattern)
an unknown command                 ``ERROR``
=================================  ===========================================

``noreply`` at the end of set, delete and incr means no reply is owed.

Facts about memcached this relies on
------------------------------------
- ``incr`` reads the value with C's ``strtoull``: leading white space, a
  sign (``+``, and ``-`` unless the result is at least 2**63) and digits,
  then a space, a NUL or the value's end; anything else is non-numeric, and
  so is an empty value. A delta is read the same way (else ``CLIENT_ERROR
  invalid numeric delta argument``).
- A value of white space alone (``\\r\\n``, spaces) has no number in it, but
  memcached does not stop at its end: nothing ends the string there, so
  ``strtoull`` skips the item's own ``\\r\\n`` too and reads on into whatever
  the item's slab chunk held before, and ``incr`` answers a number found there
  (``57`` for ``\\r\\n`` in the chunk of a deleted ``123456``), or
  non-numeric, varying from run to run. The model says non-numeric, and its
  requests and its load never store such a value (its first byte is ``x``).
- When the new number is no longer than the value it replaces, memcached
  writes it in place and pads it with spaces to the old length: ``007``
  incremented is ``8`` and then reads back as ``8  ``; a wrap from
  ``18446744073709551615`` reads back as ``0`` and 19 spaces. A longer number
  is a new item of its own length. Flags are kept.
- Keys are at most 250 bytes, without spaces or control characters; an item
  holds at most 1 MiB with its overhead by default, so values here are at
  most 1,000,000 bytes.
- memcached closes the connection when it reads the client's EOF, so the
  model does not promise half-close semantics.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conformance.protocols.base import Capability, InvalidRequest
from conformance.protocols.replies import Expected, short
from conformance.protocols.reply_model import KEYS, ReplyModel, key_bytes

if TYPE_CHECKING:  # Hypothesis is imported where requests are drawn, not for the load.
    from hypothesis import strategies as st

__all__ = [
    "MAX_VALUE",
    "Delete",
    "Get",
    "Incr",
    "MemcachedConnection",
    "MemcachedModel",
    "Request",
    "Set",
    "Version",
]

#: The largest value this model sends or knows.
MAX_VALUE = 1_000_000
#: The longest key memcached takes.
MAX_KEY = 250
_U64 = 2**64


@dataclass(frozen=True, slots=True)
class Set:
    """``set <key> <flags> 0 <bytes>`` and the value."""

    key: int
    value: bytes
    flags: int = 0

    def encode(self, prefix: bytes) -> bytes:
        return b"set %s %d 0 %d\r\n%s\r\n" % (
            key_bytes(prefix, self.key),
            self.flags,
            len(self.value),
            self.value,
        )


@dataclass(frozen=True, slots=True)
class Get:
    """``get <key>``."""

    key: int

    def encode(self, prefix: bytes) -> bytes:
        return b"get %s\r\n" % key_bytes(prefix, self.key)


@dataclass(frozen=True, slots=True)
class Delete:
    """``delete <key>``."""

    key: int

    def encode(self, prefix: bytes) -> bytes:
        return b"delete %s\r\n" % key_bytes(prefix, self.key)


@dataclass(frozen=True, slots=True)
class Incr:
    """``incr <key> <delta>``."""

    key: int
    delta: int

    def encode(self, prefix: bytes) -> bytes:
        return b"incr %s %d\r\n" % (key_bytes(prefix, self.key), self.delta)


@dataclass(frozen=True, slots=True)
class Version:
    """``version``."""

    def encode(self, prefix: bytes) -> bytes:
        return b"version\r\n"


Request = Set | Get | Delete | Incr | Version


# -- the server, as one connection sees it --------------------------------------


@dataclass(frozen=True, slots=True)
class _Line:
    """A request as framed: its command line's words, and a set's data."""

    words: tuple[bytes, ...]
    data: bytes | None = None


_STORED = Expected.exact(b"STORED\r\n")
_END = Expected.exact(b"END\r\n")
_DELETED = Expected.exact(b"DELETED\r\n")
_NOT_FOUND = Expected.exact(b"NOT_FOUND\r\n")
_ERROR = Expected.exact(b"ERROR\r\n")
_NON_NUMERIC = Expected.exact(b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
_BAD_DELTA = Expected.exact(b"CLIENT_ERROR invalid numeric delta argument\r\n")
_VERSION = Expected.line(b"VERSION ")

#: A command line longer than this is not one (memcached's own limit is 2048).
_LONGEST_LINE = 2048
#: What C's ``isspace`` is true for.
_SPACE = b" \t\n\v\f\r"


def strtoull(text: bytes) -> int | None:
    """The number memcached's ``safe_strtoull`` reads from ``text`` followed by CRLF, or None.

    Args:
        text: A value as stored, or a delta.

    Returns:
        The unsigned 64-bit number, or None where memcached finds none.
    """
    rest = text.lstrip(_SPACE)
    negative = rest[:1] == b"-"
    if rest[:1] in (b"+", b"-"):
        rest = rest[1:]
    digits = len(rest) - len(rest.lstrip(b"0123456789"))
    if not digits:
        return None
    after = rest[digits : digits + 1]
    if after and after not in _SPACE and after != b"\0":
        return None
    n = int(rest[:digits])
    if n >= _U64:
        return None  # ERANGE
    if negative:
        n = -n % _U64
        if n >= 2**63:
            return None  # negative as a signed number, and written with a minus
    return n


class MemcachedConnection:
    """memcached as one connection sees it: the framing of its text protocol and its items."""

    def __init__(self) -> None:
        self.items: dict[bytes, tuple[int, bytes]] = {}

    def parse_request(self, buf: bytearray) -> tuple[_Line, int] | int:
        """Frame the command (and a set's data) at the start of ``buf``.

        Raises:
            InvalidRequest: The line is too long, or a set's data does not end in CRLF
                or is out of bounds.
        """
        eol = buf.find(b"\n", 0, _LONGEST_LINE)
        if eol < 0:
            if len(buf) >= _LONGEST_LINE:
                raise InvalidRequest(f"memcached: a command line too long: {short(buf)}")
            return len(buf) + 1
        line = bytes(buf[: eol - 1 if eol and buf[eol - 1] == 0x0D else eol])
        words = tuple(line.split())
        if not words or words[0] != b"set":
            return _Line(words), eol + 1
        if len(words) not in (5, 6) or not words[4].isdigit():
            raise InvalidRequest(f"memcached: a set line this model does not know: {short(line)}")
        size = int(words[4])
        if size > MAX_VALUE:
            raise InvalidRequest(f"memcached: a value of {size} bytes, over {MAX_VALUE}")
        start = eol + 1
        end = start + size
        if len(buf) < end + 2:
            return end + 2
        if buf[end : end + 2] != b"\r\n":
            raise InvalidRequest(f"memcached: the {size} bytes of a set do not end in CRLF")
        return _Line(words, bytes(buf[start:end])), end + 2

    def apply(self, request: _Line) -> Expected | None:
        """What memcached owes for ``request``, with the items changed as it changes them.

        Raises:
            InvalidRequest: A key longer than 250 bytes, or a set with bad numbers.
        """
        words = request.words
        command = _COMMANDS.get(words[0] if words else b"")
        if command is None:
            return _ERROR
        least, most, handler = command
        if not least <= len(words) <= most:
            return _ERROR
        for key in words[1:2]:
            if len(key) > MAX_KEY:
                raise InvalidRequest(f"memcached: a key of {len(key)} bytes, over {MAX_KEY}")
        expected = handler(self, request)
        return None if words[-1] == b"noreply" and words[0] != b"get" else expected

    def describe(self, request: _Line) -> str:
        text = b" ".join(request.words[:4]).decode("ascii", "backslashreplace")
        if len(text) > 60:
            text = text[:60] + "..."
        return text + (f" <{len(request.data)} bytes>" if request.data is not None else "")

    # -- the commands ------------------------------------------------------------

    def _set(self, request: _Line) -> Expected:
        flags = request.words[2]
        if not flags.isdigit() or int(flags) >= 2**32 or request.words[3] != b"0":
            raise InvalidRequest(
                f"memcached: a set this model does not know: {self.describe(request)}"
            )
        assert request.data is not None
        self.items[request.words[1]] = (int(flags), request.data)
        return _STORED

    def _get(self, request: _Line) -> Expected:
        parts = []
        for key in request.words[1:]:
            item = self.items.get(key)
            if item is not None:
                flags, data = item
                parts.append(b"VALUE %s %d %d\r\n%s\r\n" % (key, flags, len(data), data))
        return Expected.exact(b"".join(parts) + b"END\r\n") if parts else _END

    def _delete(self, request: _Line) -> Expected:
        return _DELETED if self.items.pop(request.words[1], None) is not None else _NOT_FOUND

    def _incr(self, request: _Line) -> Expected:
        delta = strtoull(request.words[2] + b"\0")
        if delta is None:
            return _BAD_DELTA
        item = self.items.get(request.words[1])
        if item is None:
            return _NOT_FOUND
        flags, old = item
        value = strtoull(old) if old else None
        if value is None:
            return _NON_NUMERIC
        text = b"%d" % ((value + delta) % _U64)
        stored = text.ljust(len(old)) if len(text) <= len(old) else text
        self.items[request.words[1]] = (flags, stored)
        return Expected.exact(text + b"\r\n")

    def _version(self, request: _Line) -> Expected:
        return _VERSION


_Handler = Callable[[MemcachedConnection, _Line], Expected]

#: Each command's fewest and most words (its name and noreply counted), and its handler.
_COMMANDS: Mapping[bytes, tuple[int, int, _Handler]] = {
    b"set": (5, 6, MemcachedConnection._set),
    b"get": (2, _LONGEST_LINE, MemcachedConnection._get),
    b"delete": (2, 3, MemcachedConnection._delete),
    b"incr": (3, 4, MemcachedConnection._incr),
    b"version": (1, 1, MemcachedConnection._version),
}


# -- requests -------------------------------------------------------------------

#: Values incr finds no number in.
_NON_NUMBERS = (b"abc", b"", b"-1", b"12a", b"x1")


def _defined(value: bytes) -> bytes:
    """``value``, or, if it is white space alone, ``x`` and the rest: incr of it is undefined."""
    return b"x" + value[1:] if value.isspace() else value


def _set(key: int, value: bytes, flags: int) -> Set:
    """A set of ``value`` made :func:`_defined` (a map on ``_values`` would change the draws)."""
    return Set(key, _defined(value), flags)


def _values(max_value: int) -> st.SearchStrategy[bytes]:
    from hypothesis import strategies as st

    from conformance.payloads import payloads

    return st.one_of(
        st.integers(0, 30).map(lambda n: b"%d" % n),
        st.sampled_from(_NON_NUMBERS),
        st.just(b"%d" % (_U64 - 1)),
        payloads(min_size=0, max_size=max_value),
    )


def _requests(max_value: int) -> st.SearchStrategy[Request]:
    from hypothesis import strategies as st

    keys = st.integers(0, KEYS - 1)
    return st.one_of(
        st.builds(Get, keys),
        st.builds(_set, keys, _values(max_value), st.integers(0, 2**16)),
        st.builds(Delete, keys),
        st.builds(Incr, keys, st.one_of(st.integers(0, 30), st.just(_U64 - 1))),
        st.just(Version()),
    )


class MemcachedModel(ReplyModel[Request]):
    """memcached's text protocol, as memcached 1.6 answers it; see the module docstring."""

    name = "memcached"
    lacks: Mapping[Capability, str] = {
        Capability.HALF_CLOSE: "memcached closes the connection at the client's EOF",
        Capability.ANY_BYTES: "requests are memcached text commands",
    }
    largest_value = MAX_VALUE

    def connection(self) -> MemcachedConnection:
        return MemcachedConnection()

    def request(self, max_value: int) -> st.SearchStrategy[Request]:
        return _requests(max_value)

    def encode_request(self, request: Request, prefix: bytes) -> bytes:
        """A command line (and a set's data), keys as ``{prefix}:k{n}``."""
        return request.encode(prefix)

    def load_request(self, rng: random.Random, size: int, prefix: bytes) -> bytes:
        """Owed an exact reply: mostly set and get of ``size`` bytes on two keys, some incr..."""
        key = rng.randrange(2)
        roll = rng.random()
        request: Request
        if roll < 0.35:
            request = Set(key, _defined(rng.randbytes(min(size, MAX_VALUE))), rng.randrange(16))
        elif roll < 0.7:
            request = Get(key)
        elif roll < 0.8:
            request = Set(key, b"%d" % rng.randrange(100))
        elif roll < 0.9:
            request = Incr(key, rng.randrange(10))
        else:
            request = Delete(key)
        return request.encode(prefix)
