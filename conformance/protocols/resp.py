"""RESP2, the Redis protocol: PING, ECHO, SET, GET, INCR, DEL and unknown commands.

How this works
--------------
Every request is an array of bulk strings (``*2\\r\\n$4\\r\\nECHO\\r\\n$2\\r\\nhi\\r\\n``),
never an inline command. A request is a :class:`Command`: its arguments, each
bytes or a :class:`Key` (a key number, made unique to the connection when
encoded: ``{prefix}:k{n}``). :class:`RespConnection` frames the arrays sent,
keeps the connection's keys in a dict and says what each command is owed, as
Redis 7 answers:

=================  ===============================================================
``PING [msg]``     ``+PONG``, or ``msg`` as a bulk string
``ECHO msg``       ``msg`` as a bulk string
``SET k v``        ``+OK``
``GET k``          ``v`` as a bulk string, or the null bulk string ``$-1``
``INCR k``         ``:n`` (a missing key counts from 0); a value that is not a
                   base-10 int64 written plainly (no sign ``+``, no leading zero,
                   no space) is ``-ERR value is not an integer or out of range``;
                   past the int64 maximum, ``-ERR increment or decrement would overflow``
``DEL k [k ...]``  ``:count`` of keys that existed (a key named twice counts once)
anything else      a line beginning ``-ERR unknown command`` (Redis quotes the
                   command and its first arguments; only the prefix is judged)
wrong arity        a line beginning ``-ERR wrong number of arguments``
``*0``             nothing: Redis skips an empty array
=================  ===============================================================

Commands are matched without regard to case. SET with options (NX, EX...) is
not modelled and raises :class:`~conformance.protocols.base.InvalidRequest`.

Redis closes the connection when it reads the client's EOF: replies it has not
written by then are dropped, so the model does not promise half-close semantics.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conformance.protocols.base import Capability, InvalidRequest
from conformance.protocols.replies import Expected, short
from conformance.protocols.reply_model import KEYS, ReplyModel, key_bytes

if TYPE_CHECKING:  # Hypothesis is imported where requests are drawn, not for the load.
    from hypothesis import strategies as st

__all__ = ["Command", "Key", "RespConnection", "RespModel", "encode_command"]


@dataclass(frozen=True, slots=True)
class Key:
    """The connection's key number ``n``: ``{prefix}:k{n}`` on the wire."""

    n: int


@dataclass(frozen=True, slots=True)
class Command:
    """One request: its arguments, the command's name first."""

    args: tuple[bytes | Key, ...]


def encode_command(args: Sequence[bytes]) -> bytes:
    """An array of bulk strings.

    Args:
        args: The command's name, then its arguments.

    Returns:
        Its RESP bytes.
    """
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return b"".join(parts)


# -- the server, as one connection sees it --------------------------------------

_OK = Expected.exact(b"+OK\r\n")
_PONG = Expected.exact(b"+PONG\r\n")
_NOT_AN_INTEGER = Expected.exact(b"-ERR value is not an integer or out of range\r\n")
_OVERFLOW = Expected.exact(b"-ERR increment or decrement would overflow\r\n")
_UNKNOWN = Expected.line(b"-ERR unknown command")
_ARITY = Expected.line(b"-ERR wrong number of arguments")
_NULL = Expected.exact(b"$-1\r\n")

#: An int64 as Redis writes it (``string2ll``): no ``+``, no leading zero, no ``-0``.
_INT = re.compile(rb"-?[1-9][0-9]{0,18}|0")
_INT64_MAX = 2**63 - 1

#: A length line (``*N`` or ``$N``) longer than this is not one.
_LONGEST_LENGTH = 24


def _bulk(data: bytes) -> Expected:
    return Expected.exact(b"$%d\r\n%s\r\n" % (len(data), data))


def _int64(value: bytes) -> int | None:
    if not _INT.fullmatch(value):
        return None
    n = int(value)
    return n if -(2**63) <= n <= _INT64_MAX else None


def _length(buf: bytearray, start: int, end: int, what: str) -> int:
    text = buf[start:end]
    if not text.isdigit():  # int() alone would take a sign, spaces and underscores
        raise InvalidRequest(f"resp: bad {what} length {short(text)}")
    return int(text)


class RespConnection:
    """Redis as one connection sees it: the framing of RESP arrays and a dict of keys."""

    def __init__(self) -> None:
        self.keys: dict[bytes, bytes] = {}

    def parse_request(self, buf: bytearray) -> tuple[tuple[bytes, ...], int] | int:
        """Frame the array of bulk strings at the start of ``buf`` (see ``ConnectionModel``).

        Raises:
            InvalidRequest: ``buf`` does not start with an array of bulk strings.
        """
        if not buf:
            return 1
        if buf[0] != 0x2A:  # "*"
            raise InvalidRequest(
                f"resp: a request is an array of bulk strings, not {short(buf[:16])}"
            )
        eol = buf.find(b"\r\n", 1, _LONGEST_LENGTH)
        if eol < 0:
            if len(buf) >= _LONGEST_LENGTH:
                raise InvalidRequest(f"resp: bad array header {short(buf[:_LONGEST_LENGTH])}")
            return len(buf) + 1
        count = _length(buf, 1, eol, "array")
        pos = eol + 2
        args: list[bytes] = []
        for _ in range(count):
            if len(buf) < pos + 4:
                return pos + 4
            if buf[pos] != 0x24:  # "$"
                raise InvalidRequest(
                    f"resp: expected a bulk string, got {short(buf[pos : pos + 16])}"
                )
            eol = buf.find(b"\r\n", pos + 1, pos + _LONGEST_LENGTH)
            if eol < 0:
                if len(buf) >= pos + _LONGEST_LENGTH:
                    raise InvalidRequest(f"resp: bad bulk header {short(buf[pos : pos + 24])}")
                return len(buf) + 1
            size = _length(buf, pos + 1, eol, "bulk")
            start = eol + 2
            end = start + size
            if len(buf) < end + 2:
                return end + 2
            if buf[end : end + 2] != b"\r\n":
                raise InvalidRequest(f"resp: a bulk string of {size} bytes does not end in CRLF")
            args.append(bytes(buf[start:end]))
            pos = end + 2
        return tuple(args), pos

    def apply(self, request: tuple[bytes, ...]) -> Expected | None:
        """What Redis owes for ``request``, with the keys changed as it changes them.

        Raises:
            InvalidRequest: A SET with options, which this model does not know.
        """
        if not request:
            return None
        name = request[0].upper()
        arity = _ARITIES.get(name)
        if arity is None:
            return _UNKNOWN
        least, most = arity
        if len(request) < least or (most is not None and len(request) > most):
            if name == b"SET":
                raise InvalidRequest("resp: SET with options is not in the resp model")
            return _ARITY
        return _HANDLERS[name](self, request)

    def describe(self, request: tuple[bytes, ...]) -> str:
        words = [_word(arg) for arg in request[:4]]
        if len(request) > 4:
            words.append(f"... ({len(request)} arguments)")
        return " ".join(words) or "an empty array"

    # -- the commands ------------------------------------------------------------

    def _ping(self, request: tuple[bytes, ...]) -> Expected:
        return _PONG if len(request) == 1 else _bulk(request[1])

    def _echo(self, request: tuple[bytes, ...]) -> Expected:
        return _bulk(request[1])

    def _set(self, request: tuple[bytes, ...]) -> Expected:
        self.keys[request[1]] = request[2]
        return _OK

    def _get(self, request: tuple[bytes, ...]) -> Expected:
        value = self.keys.get(request[1])
        return _NULL if value is None else _bulk(value)

    def _incr(self, request: tuple[bytes, ...]) -> Expected:
        old = self.keys.get(request[1], b"0")
        n = _int64(old)
        if n is None:
            return _NOT_AN_INTEGER
        if n == _INT64_MAX:
            return _OVERFLOW
        self.keys[request[1]] = b"%d" % (n + 1)
        return Expected.exact(b":%d\r\n" % (n + 1))

    def _del(self, request: tuple[bytes, ...]) -> Expected:
        count = 0
        for key in request[1:]:
            if self.keys.pop(key, None) is not None:
                count += 1
        return Expected.exact(b":%d\r\n" % count)


_Handler = Callable[[RespConnection, tuple[bytes, ...]], Expected]

#: Each command's fewest and most arguments, its name counted (None: no most).
_ARITIES: Mapping[bytes, tuple[int, int | None]] = {
    b"PING": (1, 2),
    b"ECHO": (2, 2),
    b"SET": (3, 3),
    b"GET": (2, 2),
    b"INCR": (2, 2),
    b"DEL": (2, None),
}
_HANDLERS: Mapping[bytes, _Handler] = {
    b"PING": RespConnection._ping,
    b"ECHO": RespConnection._echo,
    b"SET": RespConnection._set,
    b"GET": RespConnection._get,
    b"INCR": RespConnection._incr,
    b"DEL": RespConnection._del,
}


def _word(arg: bytes) -> str:
    if len(arg) <= 24 and all(0x21 <= b <= 0x7E for b in arg):
        return arg.decode("ascii")
    return short(arg, 16) if len(arg) <= 16 else f"<{len(arg)} bytes>"


# -- requests -------------------------------------------------------------------

#: Names no Redis has a command for.
UNKNOWN_NAMES = (b"FROB", b"XYZZY", b"NOSUCHCOMMAND")
#: Values INCR fails on: a word, a decimal, a leading zero, a sign, a space, a NUL.
_NOT_INTEGERS = (b"abc", b"1.5", b"01", b"+1", b"-0", b" 1", b"1\0")


def _values(max_value: int) -> st.SearchStrategy[bytes]:
    from hypothesis import strategies as st

    from conformance.payloads import payloads

    return st.one_of(
        st.integers(-3, 30).map(lambda n: b"%d" % n),
        st.sampled_from(_NOT_INTEGERS),
        payloads(min_size=0, max_size=max_value),
    )


def _commands(max_value: int) -> st.SearchStrategy[Command]:
    from hypothesis import strategies as st

    from conformance.payloads import payloads

    keys = st.integers(0, KEYS - 1).map(Key)
    values = _values(max_value)
    messages = payloads(min_size=0, max_size=max_value)
    args = st.lists(payloads(min_size=0, max_size=16), max_size=2)
    return st.one_of(
        st.just(Command((b"PING",))),
        st.builds(lambda k: Command((b"GET", k)), keys),
        st.builds(lambda k, v: Command((b"SET", k, v)), keys, values),
        st.builds(lambda k: Command((b"INCR", k)), keys),
        st.builds(lambda ks: Command((b"DEL", *ks)), st.lists(keys, min_size=1, max_size=3)),
        st.builds(lambda m: Command((b"PING", m)), messages),
        st.builds(lambda m: Command((b"ECHO", m)), messages),
        st.builds(lambda n, a: Command((n, *a)), st.sampled_from(UNKNOWN_NAMES), args),
    )


class RespModel(ReplyModel[Command]):
    """RESP2, as Redis 7 answers it; see the module docstring."""

    name = "resp"
    lacks: Mapping[Capability, str] = {
        Capability.HALF_CLOSE: "redis closes the connection at the client's EOF",
        Capability.ANY_BYTES: "requests are RESP arrays of bulk strings",
    }

    def connection(self) -> RespConnection:
        return RespConnection()

    def request(self, max_value: int) -> st.SearchStrategy[Command]:
        return _commands(max_value)

    def encode_request(self, request: Command, prefix: bytes) -> bytes:
        """An array of bulk strings, keys as ``{prefix}:k{n}``."""
        return encode_command(
            [key_bytes(prefix, arg.n) if isinstance(arg, Key) else arg for arg in request.args]
        )

    def load_request(
        self, rng: random.Random, size: int, prefix: bytes
    ) -> tuple[tuple[bytes, ...], bytes]:
        """Owed an exact reply: mostly SET and GET of ``size`` bytes on two keys, some INCR..."""
        key = key_bytes(prefix, rng.randrange(2))
        roll = rng.random()
        if roll < 0.3:
            args: tuple[bytes, ...] = (b"SET", key, rng.randbytes(size))
        elif roll < 0.6:
            args = (b"GET", key)
        elif roll < 0.7:
            args = (b"SET", key, b"%d" % rng.randrange(-5, 100))
        elif roll < 0.8:
            args = (b"INCR", key)
        elif roll < 0.85:
            args = (b"DEL", key)
        elif roll < 0.9:
            args = (b"PING",)
        else:
            args = (b"ECHO", rng.randbytes(size))
        return args, encode_command(args)
