"""A minimal RESP2 server handler: Redis's wire protocol, a few string commands.

How this works
--------------
:class:`RespParser` is sans-I/O: fed the bytes of one connection in whatever
pieces they arrive, it returns the complete commands (each a list of binary
arguments) and keeps the rest. It follows Redis's own reader
(``processMultibulkBuffer`` and ``processInlineBuffer`` in ``networking.c``),
so that the same bytes get the same replies:

- A request that starts with ``*`` is a multibulk: ``*N\\r\\n`` then N bulk
  strings ``$LEN\\r\\n<LEN bytes>\\r\\n``. Anything else is an *inline*
  command: one line, split on spaces, with Redis's quoting rules.
- Lines are found as Redis finds them: the first ``\\r`` (``\\n`` for inline
  commands) before any NUL byte; the byte after a count line's ``\\r`` and the
  two after bulk data are skipped unread.
- The parser keeps its place inside a multibulk (arguments still to come, the
  length of the bulk being read), so a request that comes in many pieces is
  never parsed again from its start; a bulk string waits in the buffer, unread,
  until it is whole, and the buffer is trimmed once per call, from the front
  (``del buf[:pos]``, which CPython does without moving the rest). So a value
  of many MiB costs its copies into the buffer and out of it, no more.
- A malformed request is a protocol error: the commands before it are still
  returned, :attr:`RespParser.error` says what was wrong, and nothing more is
  read. Redis answers ``-ERR Protocol error: ...`` and closes the connection;
  so does :class:`RespHandler`.

:class:`RespHandler` runs the commands against a :class:`~reference.store.Store`
shared by the connections of its server process and sends all the replies to
one ``data_received`` in one ``send``. The commands: ``PING [msg]``,
``ECHO msg``, ``SET key value [NX|XX]``, ``GET key``, ``INCR key``,
``DEL key [key ...]``, ``QUIT``; the replies, errors included, are byte for
byte those of Redis 7. SET's other options (``EX``, ``PX``, ``GET``,
``KEEPTTL``...) are not served: they get ``-ERR syntax error``, and every other
command Redis's unknown-command error. At the peer's EOF it returns ``None``:
the core sends every reply still owed, then closes (Redis drops them).

Facts about Redis this relies on (Redis 7.0, checked against ``redis-server``)
-----------------------------------------------------------------------------
- Numbers in the protocol and INCR's operand are parsed by ``string2ll``: an
  optional ``-``, no ``+``, no leading zero or space, at most 20 characters,
  within a signed 64-bit integer.
- A count of zero or less (``*0``, ``*-1``) is skipped without a reply; a bulk
  length above 512 MiB (``proto-max-bulk-len``), or negative, is an error.
- Error texts are C strings: an argument quoted in one is cut at its first
  NUL byte, and ``\\r`` and ``\\n`` in one become spaces.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from reference.store import Store

if TYPE_CHECKING:
    from reference.transport import Transport

__all__ = [
    "MAX_BULK_LENGTH",
    "MAX_INLINE_SIZE",
    "STORE",
    "RespHandler",
    "RespParser",
    "split_inline",
    "string2ll",
    "unknown_command",
]

#: Largest bulk string accepted (Redis's default ``proto-max-bulk-len``, 512 MiB).
MAX_BULK_LENGTH = 512 * 1024 * 1024
#: Bytes of an unfinished line above which the request is refused (Redis's
#: ``PROTO_INLINE_MAX_SIZE``).
MAX_INLINE_SIZE = 64 * 1024
#: Largest multibulk count (``INT_MAX``).
_MAX_MULTIBULK = 2**31 - 1

#: The values of one server process: key -> value.
STORE: Store[bytes] = Store()

_STAR = 0x2A  # b"*"
_DOLLAR = 0x24  # b"$"
_CR = 0x0D
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# string2ll: "0", or an optional "-" then a digit 1-9 then digits; at most 20 characters.
_INTEGER = re.compile(rb"0|-?[1-9][0-9]{0,19}")
# Inline lines that bytes.split() splits as sdssplitargs does: no quote, no NUL,
# no \v or \f (spaces between arguments, but part of an unquoted one).
_NEEDS_SDSSPLITARGS = re.compile(rb"[\"'\x00\x0b\x0c]")
_C_SPACE = frozenset(b" \t\n\r\x0b\x0c")  # C's isspace
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}


def string2ll(text: bytes | bytearray) -> int | None:
    """Parse ``text`` as Redis's ``string2ll`` does; ``None`` when it is not an int64."""
    if len(text) > 20 or _INTEGER.fullmatch(text) is None:
        return None
    value = int(text)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def split_inline(line: bytes) -> list[bytes] | None:
    """Split an inline command line as Redis's ``sdssplitargs`` does.

    Arguments are separated by spaces; ``"..."`` takes the escapes ``\\xHH``,
    ``\\n``, ``\\r``, ``\\t``, ``\\b``, ``\\a`` and ``\\<any>``; ``'...'``
    takes ``\\'``; a closing quote must be followed by a space or the end; a
    NUL byte ends the line.

    Returns:
        The arguments, or ``None`` for unbalanced quotes.
    """
    if _NEEDS_SDSSPLITARGS.search(line) is None:
        return line.split()
    args: list[bytes] = []
    n = len(line)

    def at(i: int) -> int:
        return line[i] if i < n else 0

    i = 0
    while True:
        while at(i) in _C_SPACE:
            i += 1
        if not at(i):
            return args
        current = bytearray()
        in_double = in_single = False
        while True:
            c = at(i)
            if in_double:
                if c == 0x5C and at(i + 1) == 0x78 and at(i + 2) in _HEX and at(i + 3) in _HEX:
                    current.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 0x5C and at(i + 1):
                    i += 1
                    current.append(_ESCAPES.get(line[i], line[i]))
                elif c == 0x22:
                    if at(i + 1) and at(i + 1) not in _C_SPACE:
                        return None
                    i += 1
                    break
                elif not c:
                    return None
                else:
                    current.append(c)
            elif in_single:
                if c == 0x5C and at(i + 1) == 0x27:
                    i += 1
                    current.append(0x27)
                elif c == 0x27:
                    if at(i + 1) and at(i + 1) not in _C_SPACE:
                        return None
                    i += 1
                    break
                elif not c:
                    return None
                else:
                    current.append(c)
            elif c in (0x20, 0x0A, 0x0D, 0x09, 0):
                break
            elif c == 0x22:
                in_double = True
            elif c == 0x27:
                in_single = True
            else:
                current.append(c)
            i += 1
        args.append(bytes(current))


def _find_line_end(buf: bytearray, byte: bytes, pos: int) -> int:
    """Index of the first ``byte`` at or after ``pos`` that comes before any NUL, or -1.

    Redis finds line ends with ``strchr``, which stops at a NUL byte.
    """
    end = buf.find(byte, pos)
    if end < 0 or buf.find(b"\0", pos, end) >= 0:
        return -1
    return end


class RespParser:
    """Splits one connection's bytes into commands, as Redis does. Sans-I/O.

    Call :meth:`feed` with each piece of input, in order; after a protocol
    error :attr:`error` holds its text and the parser takes nothing more.
    """

    __slots__ = ("_buf", "_args_left", "_bulk_length", "_argv", "error")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._args_left = 0  # bulk strings still to come in this multibulk
        self._bulk_length = -1  # length of the bulk being read; -1: its $ line is next
        self._argv: list[bytes] = []
        self.error: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet part of a complete command."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[list[bytes]]:
        """Take the next piece of input; return the commands it completes, in order.

        Returns:
            Each complete command as its arguments. After a protocol error,
            the commands that came before it; :attr:`error` is then set.
        """
        if self.error is not None:
            return []
        buf = self._buf
        buf += data
        commands: list[list[bytes]] = []
        pos = 0
        try:
            pos = self._parse(buf, commands)
        except _ProtocolError as exc:
            self.error = str(exc)
            buf.clear()
            return commands
        if pos:
            del buf[:pos]
        return commands

    def _parse(self, buf: bytearray, commands: list[list[bytes]]) -> int:
        """Parse from the start of ``buf``; return where the unparsed rest begins."""
        n = len(buf)
        pos = 0
        while pos < n:
            if not self._args_left:
                if buf[pos] != _STAR:
                    end = _find_line_end(buf, b"\n", pos)
                    if end < 0:
                        if n - pos > MAX_INLINE_SIZE:
                            raise _ProtocolError("too big inline request")
                        return pos
                    stop = end - 1 if end > pos and buf[end - 1] == _CR else end
                    argv = split_inline(bytes(buf[pos:stop]))
                    if argv is None:
                        raise _ProtocolError("unbalanced quotes in request")
                    pos = end + 1
                    if argv:
                        commands.append(argv)
                    continue
                end = _find_line_end(buf, b"\r", pos)
                if end < 0:
                    if n - pos > MAX_INLINE_SIZE:
                        raise _ProtocolError("too big mbulk count string")
                    return pos
                if end > n - 2:
                    return pos  # The byte after \r is not here yet.
                count = string2ll(buf[pos + 1 : end])
                if count is None or count > _MAX_MULTIBULK:
                    raise _ProtocolError("invalid multibulk length")
                pos = end + 2
                if count <= 0:
                    continue
                self._args_left = count
                self._argv = []
                self._bulk_length = -1
            argv = self._argv
            while self._args_left:
                length = self._bulk_length
                if length < 0:
                    end = _find_line_end(buf, b"\r", pos)
                    if end < 0:
                        if n - pos > MAX_INLINE_SIZE:
                            raise _ProtocolError("too big bulk count string")
                        return pos
                    if end > n - 2:
                        return pos
                    if buf[pos] != _DOLLAR:
                        raise _ProtocolError(f"expected '$', got '{chr(buf[pos])}'")
                    parsed = string2ll(buf[pos + 1 : end])
                    if parsed is None or not 0 <= parsed <= MAX_BULK_LENGTH:
                        raise _ProtocolError("invalid bulk length")
                    pos = end + 2
                    self._bulk_length = length = parsed
                if n - pos < length + 2:
                    return pos  # The bulk and the two bytes after it are not all here.
                argv.append(bytes(buf[pos : pos + length]))
                pos += length + 2
                self._bulk_length = -1
                self._args_left -= 1
            commands.append(argv)
        return pos


class _ProtocolError(Exception):
    """A request Redis refuses with ``-ERR Protocol error: <text>`` and a close."""


# -- replies -------------------------------------------------------------------

_OK = b"+OK\r\n"
_PONG = b"+PONG\r\n"
_NIL = b"$-1\r\n"
_NOT_AN_INTEGER = b"-ERR value is not an integer or out of range\r\n"
_OVERFLOW = b"-ERR increment or decrement would overflow\r\n"
_SYNTAX_ERROR = b"-ERR syntax error\r\n"


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _error(text: bytes) -> bytes:
    """``-ERR text``, with Redis's rule: ``\\r`` and ``\\n`` inside become spaces."""
    return b"-ERR " + text.replace(b"\r", b" ").replace(b"\n", b" ") + b"\r\n"


def _wrong_arity(name: bytes) -> bytes:
    return _error(b"wrong number of arguments for '%s' command" % name)


def _c_string(arg: bytes) -> bytes:
    """``arg`` as C's ``%s`` prints it: up to its first NUL byte."""
    nul = arg.find(b"\0")
    return arg if nul < 0 else arg[:nul]


def unknown_command(argv: list[bytes]) -> bytes:
    """Redis 7's reply to a command it does not know, arguments quoted up to 128 bytes."""
    args = b""
    for arg in argv[1:]:
        if len(args) >= 128:
            break
        args += b"'" + _c_string(arg)[: 128 - len(args)] + b"' "
    name = _c_string(argv[0])[:128]
    return _error(b"unknown command '" + name + b"', with args beginning with: " + args)


Command = Callable[[Store[bytes], list[bytes]], bytes]


def _ping(store: Store[bytes], argv: list[bytes]) -> bytes:
    if len(argv) > 2:
        return _wrong_arity(b"ping")
    return _PONG if len(argv) == 1 else _bulk(argv[1])


def _echo(store: Store[bytes], argv: list[bytes]) -> bytes:
    return _bulk(argv[1])


def _set(store: Store[bytes], argv: list[bytes]) -> bytes:
    options = {option.upper() for option in argv[3:]}
    if len(options) > 1 or not options <= {b"NX", b"XX"}:
        return _SYNTAX_ERROR  # Redis also takes GET, EX, PX...; these are not served.
    key = argv[1]
    with store.lock:
        if (b"NX" in options and key in store.items) or (
            b"XX" in options and key not in store.items
        ):
            return _NIL
        store.items[key] = argv[2]
    return _OK


def _get(store: Store[bytes], argv: list[bytes]) -> bytes:
    with store.lock:
        value = store.items.get(argv[1])
    return _NIL if value is None else _bulk(value)


def _incr(store: Store[bytes], argv: list[bytes]) -> bytes:
    key = argv[1]
    with store.lock:
        old = store.items.get(key, b"0")
        number = string2ll(old)
        if number is None:
            return _NOT_AN_INTEGER
        if number == _INT64_MAX:
            return _OVERFLOW
        text = b"%d" % (number + 1)
        store.items[key] = text
    return b":" + text + b"\r\n"


def _del(store: Store[bytes], argv: list[bytes]) -> bytes:
    deleted = 0
    with store.lock:
        items = store.items
        for key in argv[1:]:
            if items.pop(key, None) is not None:
                deleted += 1
    return b":%d\r\n" % deleted


def _quit(store: Store[bytes], argv: list[bytes]) -> bytes:
    return _OK  # The handler then closes the connection.


#: name -> (arity, command). Redis's arity: N exactly N arguments (the name
#: included), -N at least N.
_COMMANDS: dict[bytes, tuple[int, Command]] = {
    b"ping": (-1, _ping),
    b"echo": (2, _echo),
    b"set": (-3, _set),
    b"get": (2, _get),
    b"incr": (2, _incr),
    b"del": (-2, _del),
    b"quit": (-1, _quit),
}


class RespHandler:
    """Serves RESP2 on one connection; see "How this works" above.

    Args:
        store: The values; by default :data:`STORE`, that of the server process.
    """

    __slots__ = ("_transport", "_parser", "_store", "_closed")

    def __init__(self, store: Store[bytes] | None = None) -> None:
        self._transport: Transport | None = None
        self._parser = RespParser()
        self._store = STORE if store is None else store
        self._closed = False

    def connection_made(self, transport: Transport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return  # After QUIT or a protocol error, input is ignored.
        transport = self._transport
        assert transport is not None
        parser = self._parser
        replies: list[bytes] = []
        for argv in parser.feed(data):
            name = argv[0].lower()
            replies.append(self._run(name, argv))
            if name == b"quit":
                self._closed = True
                break
        if parser.error is not None and not self._closed:
            replies.append(_error(b"Protocol error: " + parser.error.encode("latin-1")))
            self._closed = True
        if replies:
            transport.send(b"".join(replies))
        if self._closed:
            transport.close()

    def execute(self, argv: list[bytes]) -> bytes:
        """Run one command against the store; return its reply.

        Args:
            argv: The command's name and arguments, as the parser gives them.
        """
        return self._run(argv[0].lower(), argv)

    def _run(self, name: bytes, argv: list[bytes]) -> bytes:
        entry = _COMMANDS.get(name)
        if entry is None:
            return unknown_command(argv)
        arity, command = entry
        if (arity > 0 and len(argv) != arity) or len(argv) < -arity:
            return _wrong_arity(name)
        return command(self._store, argv)

    def eof_received(self) -> bool | None:
        return None  # Flush every reply owed, then close.

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
