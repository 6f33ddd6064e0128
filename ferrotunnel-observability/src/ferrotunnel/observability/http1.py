"""An incremental HTTP/1.x parser for *watching* a byte stream, never for serving one.

Theory of operation
-------------------
The capture tap is handed every chunk the relay forwards, in order, and must keep up without
buffering: so this parser never holds more than one head (bounded by ``head_limit``) or one
chunk-size line. Body bytes are handed to ``on_body`` as memoryview slices of the chunk being
forwarded — the caller copies what it wants to keep (the first N KiB) and drops the rest.

It follows message framing (Content-Length, chunked, read-until-close) only to know where one
message ends and the next head begins, so several exchanges on one stream are told apart. It
is lenient where a server must be strict: what it cannot follow (an HTTP/2 preface, a
protocol switch, a head too large, garbage) turns it *opaque* — it stops looking, and the
bytes still flow untouched, because the tap never alters or delays them.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Head", "Http1Parser"]

#: how many bytes to probe for a line end at a time (a copy this size at most)
_PROBE = 4096
_MAX_LINE = 8192


class _State(enum.Enum):
    HEAD = 1
    FIXED = 2  # Content-Length body: ``_left`` bytes to go
    CHUNK_SIZE = 3
    CHUNK_DATA = 4
    CHUNK_END = 5  # the CRLF after a chunk's data
    TRAILER = 6
    UNTIL_CLOSE = 7
    OPAQUE = 8


_LINE_STATES = frozenset({_State.HEAD, _State.CHUNK_SIZE, _State.CHUNK_END, _State.TRAILER})


@dataclass(slots=True)
class Head:
    """A request line or status line, and the header fields as sent (order and case kept)."""

    method: str = ""
    target: str = ""
    status: int = 0
    reason: str = ""
    version: str = "HTTP/1.1"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def tokens(self, name: str) -> list[str]:
        """The comma-separated tokens of every ``name`` field, lower case."""
        name = name.lower()
        return [
            token.strip().lower()
            for key, value in self.headers
            if key.lower() == name
            for token in value.split(",")
            if token.strip()
        ]


class Http1Parser:
    """Follows the messages of one direction: requests (``response=False``) or responses.

    A response parser must be told the method of each request it answers (``expect``), since
    the answer to HEAD has no body whatever its headers say.
    """

    def __init__(
        self,
        *,
        response: bool,
        on_head: Callable[[Head], None],
        on_body: Callable[[memoryview], None],
        on_end: Callable[[], None],
        on_opaque: Callable[[str], None],
        head_limit: int = 64 * 1024,
    ) -> None:
        self.response = response
        self.on_head = on_head
        self.on_body = on_body
        self.on_end = on_end
        self.on_opaque = on_opaque
        self.head_limit = head_limit
        self.state = _State.HEAD
        self._line = bytearray()
        self._lines: list[bytes] = []
        self._head_size = 0
        self._left = 0
        self._after_end = _State.HEAD
        self._methods: deque[str] = deque()

    @property
    def opaque(self) -> bool:
        return self.state is _State.OPAQUE

    @property
    def in_message(self) -> bool:
        """A message has begun and not ended."""
        return self.state is not _State.HEAD or bool(self._lines) or bool(self._line)

    def expect(self, method: str) -> None:
        """A request with ``method`` was sent: its response comes next (in order)."""
        self._methods.append(method)

    def go_opaque(self, why: str) -> None:
        if self.state is not _State.OPAQUE:
            self.state = _State.OPAQUE
            self._line.clear()
            self._lines.clear()
            self.on_opaque(why)

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view and self.state is not _State.OPAQUE:
            state = self.state
            if state is _State.FIXED or state is _State.CHUNK_DATA:
                n = min(len(view), self._left)
                self.on_body(view[:n])
                self._left -= n
                view = view[n:]
                if not self._left:
                    if state is _State.FIXED:
                        self._end()
                    else:
                        self.state = _State.CHUNK_END
            elif state is _State.UNTIL_CLOSE:
                self.on_body(view)
                return
            else:
                view = view[self._lines_from(bytes(view[:_PROBE])) :]

    def feed_eof(self) -> None:
        """The direction ended: a read-until-close body is complete."""
        if self.state is _State.UNTIL_CLOSE:
            self._end()

    # ------------------------------------------------------------------ lines

    def _lines_from(self, probe: bytes) -> int:
        """Take the lines at the start of ``probe`` while the state reads lines; returns how
        many bytes were used (each byte is copied once, however many lines it holds)."""
        pos = 0
        while self.state in _LINE_STATES:
            end = probe.find(b"\n", pos)
            if end < 0:
                self._line += probe[pos:]
                if len(self._line) > _MAX_LINE:
                    self.go_opaque("line too long")
                return len(probe)
            self._line += probe[pos : end + 1]
            pos = end + 1
            line = bytes(self._line).rstrip(b"\r\n")
            self._line.clear()
            self._on_line(line)
        return pos

    def _on_line(self, line: bytes) -> None:
        state = self.state
        if state is _State.HEAD:
            if not line and not self._lines:
                return  # tolerated empty lines between messages
            if line:
                self._head_size += len(line) + 2
                if self._head_size > self.head_limit:
                    self.go_opaque("head too large")
                    return
                self._lines.append(line)
                return
            lines, self._lines, self._head_size = self._lines, [], 0
            self._on_head(lines)
        elif state is _State.CHUNK_SIZE:
            size = line.split(b";", 1)[0].strip()
            try:
                self._left = int(size, 16)
            except ValueError:
                self.go_opaque("bad chunk size")
                return
            self.state = _State.CHUNK_DATA if self._left else _State.TRAILER
        elif state is _State.CHUNK_END:
            self.state = _State.CHUNK_SIZE
        elif state is _State.TRAILER and not line:
            self._end()

    # ------------------------------------------------------------------ heads

    def _on_head(self, lines: list[bytes]) -> None:
        text = [line.decode("latin-1") for line in lines]
        start, fields = text[0], text[1:]
        head = Head()
        for line in fields:
            name, sep, value = line.partition(":")
            if not sep:
                continue
            head.headers.append((name.strip(), value.strip()))
        parts = start.split(" ", 2)
        if self.response:
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                self.go_opaque("not an HTTP/1 response")
                return
            head.version, head.status = parts[0], int(parts[1])
            head.reason = parts[2] if len(parts) > 2 else ""
            self._on_response_head(head)
        else:
            if start.startswith("PRI * HTTP/2"):
                self.go_opaque("HTTP/2")
                return
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                self.go_opaque("not an HTTP/1 request")
                return
            head.method, head.target, head.version = parts
            self._on_request_head(head)

    def _on_request_head(self, head: Head) -> None:
        upgrading = head.method == "CONNECT" or (
            head.header("upgrade") is not None and "upgrade" in head.tokens("connection")
        )
        self._after_end = _State.OPAQUE if upgrading else _State.HEAD
        self.on_head(head)
        self._frame(head, no_body=False, until_close=False)

    def _on_response_head(self, head: Head) -> None:
        status = head.status
        if 100 <= status < 200 and status != 101:
            return  # interim (100 Continue, 103 Early Hints): the real answer follows
        method = self._methods.popleft() if self._methods else "GET"
        switched = status == 101 or (method == "CONNECT" and 200 <= status < 300)
        self._after_end = _State.OPAQUE if switched else _State.HEAD
        self.on_head(head)
        no_body = switched or method == "HEAD" or status in (204, 304)
        self._frame(head, no_body=no_body, until_close=True)

    def _frame(self, head: Head, *, no_body: bool, until_close: bool) -> None:
        if no_body:
            self._end()
            return
        codings = head.tokens("transfer-encoding")
        length = head.header("content-length")
        if codings and codings[-1] == "chunked":
            self.state = _State.CHUNK_SIZE
        elif length is not None:
            try:
                self._left = int(length.split(",")[0].strip())
            except ValueError:
                self.go_opaque("bad content-length")
                return
            if self._left:
                self.state = _State.FIXED
            else:
                self._end()
        elif until_close:
            self.state = _State.UNTIL_CLOSE
        else:
            self._end()

    def _end(self) -> None:
        self.state = _State.HEAD
        self.on_end()
        if self._after_end is _State.OPAQUE:
            self.go_opaque("protocol switched")
