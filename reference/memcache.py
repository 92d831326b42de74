"""A minimal memcached text-protocol handler: get, set, delete, incr, version, quit.

How this works
--------------
:class:`MemcacheProtocol` is sans-I/O: fed one connection's bytes in whatever
pieces they arrive, it runs every complete request against a
:class:`~reference.store.Store` and returns the replies. It is in one of three
places, as memcached's own connection is (``conn_new_cmd``, ``conn_nread``,
``conn_swallow`` in ``proto_text.c``):

- *a command line*: up to ``\\n`` (a ``\\r`` before it is dropped), cut at its
  first NUL byte, split on spaces;
- *a data block*, after a valid ``set`` line: ``<bytes>`` bytes and two more,
  which must be ``\\r\\n`` (else ``CLIENT_ERROR bad data chunk``, and the old
  value stays). The block waits in the buffer until it is whole; the buffer is
  trimmed once per call, from the front (``del buf[:pos]``);
- *swallowing*, after a ``set`` too large to store: ``<bytes>`` + 2 bytes are
  counted off and thrown away, never buffered.

A line of more than 2048 bytes that is not ended yet, and is not a ``get``
(whose key list may be long), closes the connection without a reply, as
memcached does. ``quit`` closes it too. :class:`MemcacheHandler` sends the
replies to one ``data_received`` in one ``send``; at the peer's EOF it returns
``None``: the core sends every reply owed, then closes.

Where it differs from memcached on purpose: a reply is sent as soon as its
request is read (memcached holds the replies to earlier requests while it
waits for a data block), and a ``get`` with a key too long answers
``CLIENT_ERROR bad command line format`` alone (memcached 1.6.18 also drops
the replies to earlier requests that it has not sent yet). Other commands
(``gets``, ``add``, ``decr``, ``stats``, the meta commands...) get ``ERROR``.

Facts about memcached this relies on (1.6, checked against ``memcached`` 1.6.18)
-------------------------------------------------------------------------------
- Numbers are read with ``strtoull``/``strtol``: leading white space and a
  sign are taken, what follows the digits must be white space or the end;
  ``-1`` is refused where an unsigned number is wanted, ``-0`` is 0. Flags
  are kept modulo 2**32, ``<exptime>`` and ``<bytes>`` modulo 2**32 as signed.
- An item must fit in 1 MiB *with its header*: 48 bytes, 8 of CAS, the key
  and a NUL, 4 for non-zero flags, the data and ``\\r\\n``; a value longer
  than 1 MiB minus that gets ``SERVER_ERROR object too large for cache``, its
  data is swallowed, and a ``set`` removes the key's old value.
- ``noreply`` (the last word) silences the reply, errors from the command line
  included. ``incr`` wraps around at 2**64 and writes the new number over the
  old one, padded with spaces to the old length when it is not longer.
- ``incr`` refuses an empty value, and one stored in chunks (an item over
  512 KiB), as not numeric.
- ``incr`` of a value made only of white space (``\\r\\n``, spaces) is
  undefined: ``strtoull`` skips the white space and the item's own ``\\r\\n``
  (nothing ends the string there) and reads on into whatever the item's slab
  chunk held before, so memcached answers a number found there, or not numeric.
  Which chunk an item gets varies from run to run with the server's timing. This
  handler answers not numeric: what memcached answers when no digit follows.
- ``<exptime>``: 0 never expires, up to 30 days is relative, more is a Unix
  time, negative has expired already.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, NamedTuple

from reference.store import Store

if TYPE_CHECKING:
    from reference.transport import Transport

__all__ = [
    "ITEM_SIZE_MAX",
    "KEY_MAX_LENGTH",
    "STORE",
    "VERSION",
    "Item",
    "item_size",
    "MemcacheHandler",
    "MemcacheProtocol",
    "max_value_length",
    "safe_strtol",
    "safe_strtoull",
]

#: Longest key, in bytes.
KEY_MAX_LENGTH = 250
#: Largest item, header included (memcached's default ``-I 1m``).
ITEM_SIZE_MAX = 1024 * 1024
#: Items larger than this are stored in chunks, which ``incr`` refuses (memcached's
#: ``slab_chunk_size_max``, half a slab page).
_CHUNK_MAX = ITEM_SIZE_MAX // 2
#: What ``version`` answers.
VERSION = b"1.6.0-reference"
#: Bytes an unended command line may hold before the connection is closed.
_LINE_MAX = 2048
#: Seconds above which an ``<exptime>`` is a Unix time (memcached's REALTIME_MAXDELTA).
_RELATIVE_MAX = 60 * 60 * 24 * 30
_CR = 0x0D
_UINT64 = 2**64
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# What strtoull/strtol take: white space, a sign, digits, then white space,
# a NUL or the end.
_C_NUMBER = re.compile(rb"[ \t\n\x0b\x0c\r]*([+-]?)([0-9]+)(?:[ \t\n\x0b\x0c\r\x00].*)?", re.DOTALL)


class Item(NamedTuple):
    """A stored value."""

    flags: int
    data: bytes
    expires: float  # a time.time() after which it is gone; 0: never


#: The items of one server process: key -> item.
STORE: Store[Item] = Store()


def _digits(text: bytes) -> tuple[bool, int] | None:
    match = _C_NUMBER.fullmatch(text)
    if match is None:
        return None
    digits = match[2].lstrip(b"0")
    if len(digits) > 20:
        return None  # Out of range for any C integer (ERANGE).
    return match[1] == b"-", int(digits or b"0")


def safe_strtoull(text: bytes) -> int | None:
    """An unsigned 64-bit number as memcached's ``safe_strtoull`` reads it, or ``None``."""
    parsed = _digits(text)
    if parsed is None:
        return None
    negative, value = parsed
    if value >= _UINT64:
        return None
    if negative:
        value = -value % _UINT64
        if value > _INT64_MAX:
            return None  # A '-' and a result that is negative as a signed number.
    return value


def safe_strtol(text: bytes) -> int | None:
    """A signed 32-bit number as memcached's ``safe_strtol`` reads it, or ``None``."""
    parsed = _digits(text)
    if parsed is None:
        return None
    negative, value = parsed
    if negative:
        value = -value
    if not _INT64_MIN <= value <= _INT64_MAX:
        return None
    return (value + 2**31) % 2**32 - 2**31  # Stored in an int32_t.


def item_size(key: bytes, flags: int, length: int) -> int:
    """The bytes memcached takes for an item: header, CAS, key, flags, data and \\r\\n."""
    return 48 + 8 + len(key) + 1 + (4 if flags else 0) + length + 2


def max_value_length(key: bytes, flags: int) -> int:
    """The longest value that ``set`` stores under ``key`` with ``flags``."""
    return ITEM_SIZE_MAX - item_size(key, flags, 0)


def _expiry(exptime: int, now: float) -> float:
    """memcached's ``realtime``: the time the item expires, 0 for never, -1 for already."""
    if exptime == 0:
        return 0.0
    if exptime < 0:
        return -1.0
    if exptime > _RELATIVE_MAX:
        return float(exptime) if exptime > now else -1.0
    return now + exptime


class _PendingSet(NamedTuple):
    key: bytes
    flags: int
    expires: float
    length: int
    noreply: bool


_ERROR = b"ERROR\r\n"
_BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
_BAD_DELETE = b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
_BAD_DELTA = b"CLIENT_ERROR invalid numeric delta argument\r\n"
_NON_NUMERIC = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
_BAD_CHUNK = b"CLIENT_ERROR bad data chunk\r\n"
_TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"
_STORED = b"STORED\r\n"
_DELETED = b"DELETED\r\n"
_NOT_FOUND = b"NOT_FOUND\r\n"
_END = b"END\r\n"


class MemcacheProtocol:
    """One connection's memcached text protocol; see "How this works". Sans-I/O.

    Args:
        store: The items, shared with the other connections of the server.
    """

    __slots__ = ("_store", "_buf", "_pending", "_swallow", "closing")

    def __init__(self, store: Store[Item]) -> None:
        self._store = store
        self._buf = bytearray()
        self._pending: _PendingSet | None = None
        self._swallow = 0  # bytes of a refused data block still to throw away
        #: True once the connection must close (``quit``, a line too long).
        self.closing = False

    def feed(self, data: bytes) -> bytes:
        """Take the next piece of input; run what it completes; return the replies.

        Once :attr:`closing` is set, the rest is ignored.
        """
        if self.closing:
            return b""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        n = len(buf)
        pos = 0
        while pos < n:
            if self._swallow:
                taken = min(self._swallow, n - pos)
                pos += taken
                self._swallow -= taken
            elif self._pending is not None:
                pending = self._pending
                end = pos + pending.length
                if n < end + 2:
                    break  # The data block is not all here yet.
                block = bytes(buf[pos:end])
                whole = buf[end : end + 2] == b"\r\n"
                pos = end + 2
                self._pending = None
                self._store_item(pending, block, whole, out)
            else:
                newline = buf.find(b"\n", pos)
                if newline < 0:
                    if n - pos > _LINE_MAX and not _may_be_long_get(buf, pos):
                        self.closing = True
                    break
                stop = newline - 1 if newline - pos > 1 and buf[newline - 1] == _CR else newline
                line = bytes(buf[pos:stop])
                pos = newline + 1
                self._command(line, out)
                if self.closing:
                    break
        if self.closing:
            buf.clear()
        elif pos:
            del buf[:pos]
        return b"".join(out)

    # -- commands ---------------------------------------------------------------

    def _command(self, line: bytes, out: list[bytes]) -> None:
        nul = line.find(b"\0")
        if nul >= 0:
            line = line[:nul]  # memcached reads the line as a C string.
        words = [word for word in line.split(b" ") if word]
        count = len(words)
        name = words[0] if words else b""
        if name == b"get" and count >= 2:
            self._get(words[1:], out)
        elif name == b"set" and count in (5, 6):
            self._set(words, out)
        elif name == b"incr" and count in (3, 4):
            self._incr(words, out)
        elif name == b"delete" and 2 <= count <= 4:
            self._delete(words, out)
        elif name == b"version":
            out.append(b"VERSION " + VERSION + b"\r\n")
        elif name == b"quit":
            self.closing = True
        else:
            out.append(_ERROR)

    def _get(self, keys: list[bytes], out: list[bytes]) -> None:
        if any(len(key) > KEY_MAX_LENGTH for key in keys):
            out.append(_BAD_FORMAT)
            return
        now = time.time()
        store = self._store
        with store.lock:
            items = store.items
            for key in keys:
                item = items.get(key)
                if item is None:
                    continue
                if item.expires and item.expires <= now:
                    del items[key]
                    continue
                data = item.data
                out.append(b"VALUE %s %d %d\r\n" % (key, item.flags, len(data)))
                out.append(data)
                out.append(b"\r\n")
        out.append(_END)

    def _set(self, words: list[bytes], out: list[bytes]) -> None:
        noreply = words[-1] == b"noreply"
        key = words[1]
        if len(key) > KEY_MAX_LENGTH:
            _reply(out, _BAD_FORMAT, noreply)
            return
        flags = safe_strtoull(words[2])
        exptime = safe_strtol(words[3])
        length = safe_strtol(words[4])
        if flags is None or exptime is None or length is None:
            _reply(out, _BAD_FORMAT, noreply)
            return
        flags &= 0xFFFFFFFF
        if not 0 <= length <= 2**31 - 3:
            _reply(out, _BAD_FORMAT, noreply)
            return
        if length > max_value_length(key, flags):
            _reply(out, _TOO_LARGE, noreply)
            self._swallow = length + 2
            store = self._store
            with store.lock:
                store.items.pop(key, None)  # No stale value outlives a refused set.
            return
        expires = _expiry(exptime, time.time())
        self._pending = _PendingSet(key, flags, expires, length, noreply)

    def _store_item(self, pending: _PendingSet, data: bytes, whole: bool, out: list[bytes]) -> None:
        if not whole:
            _reply(out, _BAD_CHUNK, pending.noreply)
            return
        store = self._store
        with store.lock:
            if pending.expires < 0:
                store.items.pop(pending.key, None)  # Stored, and expired at once.
            else:
                store.items[pending.key] = Item(pending.flags, data, pending.expires)
        _reply(out, _STORED, pending.noreply)

    def _incr(self, words: list[bytes], out: list[bytes]) -> None:
        noreply = words[-1] == b"noreply"
        key = words[1]
        if len(key) > KEY_MAX_LENGTH:
            _reply(out, _BAD_FORMAT, noreply)
            return
        delta = safe_strtoull(words[2])
        if delta is None:
            _reply(out, _BAD_DELTA, noreply)
            return
        now = time.time()
        store = self._store
        with store.lock:
            item = store.items.get(key)
            if item is not None and item.expires and item.expires <= now:
                del store.items[key]
                item = None
            if item is None:
                reply = _NOT_FOUND
            else:
                old = item.data
                numeric = old and item_size(key, item.flags, len(old)) <= _CHUNK_MAX
                value = safe_strtoull(old + b"\r\n") if numeric else None
                if value is None:
                    reply = _NON_NUMERIC
                else:
                    text = b"%d" % ((value + delta) % _UINT64)
                    # Written over the old value: padded with spaces to its length.
                    store.items[key] = item._replace(data=text.ljust(len(old)))
                    reply = text + b"\r\n"
        _reply(out, reply, noreply)

    def _delete(self, words: list[bytes], out: list[bytes]) -> None:
        noreply = False
        if len(words) > 2:
            hold_is_zero = words[2] == b"0"
            noreply = words[-1] == b"noreply"
            if not (
                (len(words) == 3 and (hold_is_zero or noreply))
                or (len(words) == 4 and hold_is_zero and noreply)
            ):
                _reply(out, _BAD_DELETE, noreply)
                return
        key = words[1]
        if len(key) > KEY_MAX_LENGTH:
            _reply(out, _BAD_FORMAT, noreply)
            return
        now = time.time()
        store = self._store
        with store.lock:
            item = store.items.pop(key, None)
        live = item is not None and not (item.expires and item.expires <= now)
        _reply(out, _DELETED if live else _NOT_FOUND, noreply)


def _reply(out: list[bytes], reply: bytes, noreply: bool) -> None:
    if not noreply:
        out.append(reply)


def _may_be_long_get(buf: bytearray, pos: int) -> bool:
    """memcached's test for a line without an end yet: a multi-get may be long."""
    start = pos
    limit = min(len(buf), pos + 101)
    while start < limit and buf[start] == 0x20:
        start += 1
    if start - pos > 100:
        return False
    return buf.startswith(b"get ", start) or buf.startswith(b"gets ", start)


class MemcacheHandler:
    """Serves the memcached text protocol on one connection.

    Args:
        store: The items; by default :data:`STORE`, that of the server process.
    """

    __slots__ = ("_transport", "_protocol")

    def __init__(self, store: Store[Item] | None = None) -> None:
        self._transport: Transport | None = None
        self._protocol = MemcacheProtocol(STORE if store is None else store)

    def connection_made(self, transport: Transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        protocol = self._protocol
        if protocol.closing:
            return  # After quit or a refused line, input is ignored.
        transport = self._transport
        assert transport is not None
        replies = protocol.feed(data)
        if replies:
            transport.send(replies)
        if protocol.closing:
            transport.close()

    def eof_received(self) -> bool | None:
        return None  # Flush every reply owed, then close.

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
