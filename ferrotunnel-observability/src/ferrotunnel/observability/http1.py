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

It runs for every message relayed, so a head is handled as one block, not line by line: its
end (the first empty line) is found by one search of the chunk, and the head is copied out
in one slice — a head split across chunks is gathered first, then handled the same way.
Only the start line is split; the framing fields are found by searching the lower-cased
head, and the header fields are split out of the raw head only when someone asks for them
(:attr:`Head.headers`).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "Head",
    "Http1Parser",
    "request_head",
    "response_head",
    "start_line",
    "whole_request",
    "whole_response",
]

#: how many bytes to search for a head's end or a line's at a time
_PROBE = 4096
_MAX_LINE = 8192

# What comes next. Plain ints rather than an Enum: the state is tested several times for
# every chunk, and reading an Enum member costs a class attribute lookup each time.
_HEAD = 0  # a head (or empty lines before one, tolerated)
_FIXED = 1  # a Content-Length body: ``_left`` bytes to go
_CHUNK_SIZE = 2
_CHUNK_DATA = 3
_CHUNK_END = 4  # the CRLF after a chunk's data
_TRAILER = 5
_UNTIL_CLOSE = 6
_OPAQUE = 7

_LINE_STATES = frozenset({_CHUNK_SIZE, _CHUNK_END, _TRAILER})

_CR = 13
_LF = 10
#: the empty line ending a head, from the line end before it (CRLF, or LF: lenient)
_BLANK_LINE = re.compile(rb"\n\r?\n")
_LINE_END = re.compile(rb"\n")


def _field(name: bytes) -> re.Pattern[bytes]:
    """Finds the values of field ``name`` in a lower-cased head: a line that starts with the
    name (a line that starts with a space only continues the one before)."""
    return re.compile(rb"\n" + name + rb"[ \t]*:([^\n]*)")


_CONTENT_LENGTH = _field(b"content-length")
_TRANSFER_ENCODING = _field(b"transfer-encoding")
#: any field that gives a request a body: most requests have none
_REQUEST_FRAMING = _field(b"(?:content-length|transfer-encoding)")


@dataclass(slots=True)
class Head:
    """A request line or status line, and the raw head it starts (each line with its line
    end, the empty line that ends the head excluded).

    The header fields are split out of ``raw`` the first time they are asked for: watching a
    stream needs only the framing fields, and most heads are never looked at.
    """

    raw: bytes
    version: str = "HTTP/1.1"
    method: str = ""
    target: str = ""
    status: int = 0
    reason: str = ""
    _headers: list[tuple[str, str]] | None = field(default=None, repr=False, compare=False)

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The header fields as sent (order and case kept)."""
        if self._headers is None:
            self._headers = _split_fields(self.raw)
        return self._headers

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((value for key, value in self.headers if key.lower() == name), None)


def _split_fields(raw: bytes) -> list[tuple[str, str]]:
    """The ``name: value`` lines after the start line; a line without a colon is skipped."""
    fields = []
    for line in raw.decode("latin-1").split("\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields.append((name.strip(), value.strip()))
    return fields


def _tokens(pattern: re.Pattern[bytes], low: bytes) -> list[bytes]:
    """The comma-separated tokens of every field ``pattern`` finds in ``low``."""
    return [
        token.strip()
        for value in pattern.findall(low)
        for token in value.split(b",")
        if token.strip()
    ]


def _content_length(low: bytes) -> int | None:
    """The body size the head ``low`` (lower case) gives: None without a Content-Length,
    -1 for one that is not a size (its first value is read, as a list's would be)."""
    found = _CONTENT_LENGTH.search(low)
    if found is None:
        return None
    try:
        return max(int(found[1].split(b",")[0]), -1)
    except ValueError:
        return -1


def start_line(raw: bytes, *, response: bool) -> Head | str:
    """The :class:`Head` whose start line begins ``raw``, or why it cannot be followed."""
    line = raw.partition(b"\n")[0].rstrip(b"\r").decode("latin-1")
    parts = line.split(" ", 2)
    if response:
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdecimal():
            return "not an HTTP/1 response"
        return Head(raw, parts[0], "", "", int(parts[1]), parts[2] if len(parts) > 2 else "")
    if line.startswith("PRI * HTTP/2"):
        return "HTTP/2"
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return "not an HTTP/1 request"
    method, target, version = parts
    return Head(raw, version, method, target)


# ---------------------------------------------------------------------- whole messages
#
# Nearly every chunk a tunnel relays for a small exchange holds one whole message: a request
# head without a body, or a response head with all of its Content-Length body. These two
# functions recognise exactly that case, each with one regular expression, so a tap can record
# it without setting up a parser (or even a Head: the raw bytes are kept); anything else (a
# body still to come, chunked framing, a protocol switch, a second message, an interim
# response, framing fields the expressions do not take) gets None, and the caller hands the
# chunk to an Http1Parser instead, which reaches the same verdicts.

#: a head's line that is neither the empty line ending it nor a framing field: most lines
#: are told by their first character, the rest are looked at (repeated possessively below:
#: a line never needs to be given back, and the regex engine is faster not saving them)
_OTHER_FIELD = rb"[^\r\ncCtT][^\n]*\n|(?!\r\n|(?i:content-length|transfer-encoding)[ \t]*:)[^\n]+\n"
#: a request line as :func:`start_line` takes it (but CONNECT's and the HTTP/2 preface's),
#: fields without framing ones, and the empty line
_WHOLE_REQUEST = re.compile(
    rb"((?![\r\n]|CONNECT |PRI \* HTTP/2)([^ \n]*) [^ \n]* HTTP/[^\n]*\n(?:%s)*+)\r?\n"
    % _OTHER_FIELD
)
#: a status line as :func:`start_line` takes it (its status), fields with at most one
#: Content-Length of plain digits (its value) and no Transfer-Encoding, and the empty line
_WHOLE_RESPONSE = re.compile(
    rb"HTTP/[^ \n]* ([0-9]+)(?: [^\n]*)?\r*\n(?:%s)*+"
    rb"(?:(?i:content-length)[ \t]*:[ \t]*([0-9]+)[ \t]*\r?\n(?:%s)*+)?\r?\n"
    % (_OTHER_FIELD, _OTHER_FIELD)
)


def whole_request(data: bytes | memoryview) -> tuple[bytes, str] | None:
    """The raw head and the method of the request that ``data`` holds exactly, if it is a
    head with no body to follow."""
    found = _WHOLE_REQUEST.fullmatch(data) if len(data) <= _PROBE else None
    if found is None:
        return None
    raw, method = found.group(1, 2)
    return bytes(raw), str(method, "latin-1")


def whole_response(data: bytes, method: str) -> int | None:
    """Where the body starts, if ``data`` is exactly the final response to ``method`` (its
    body running to the end of ``data``)."""
    found = _WHOLE_RESPONSE.match(data, 0, _PROBE)
    if found is None or method == "CONNECT":
        return None
    status_text, length = found.group(1, 2)
    status = int(status_text)
    start = found.end()
    if status < 200:
        return None
    if method == "HEAD" or status == 204 or status == 304:
        return start if start == len(data) else None
    return start if length is not None and start + int(length) == len(data) else None


def response_head(message: bytes, body_start: int) -> Head:
    """The head of a response :func:`whole_response` took (``body_start``: what it said)."""
    end = body_start - 2 if message[body_start - 2] == _CR else body_start - 1
    return _valid(start_line(message[:end], response=True))


def request_head(raw: bytes) -> Head:
    """The head :func:`whole_request` took (``raw``: the head it returned)."""
    return _valid(start_line(raw, response=False))


def _valid(head: Head | str) -> Head:
    if isinstance(head, str):
        raise ValueError(f"not a head the shortcut takes: {head}")
    return head


class Http1Parser:
    """Follows the messages of one direction: requests (``response=False``) or responses.

    A response parser must be told the method of each request it answers (``expect``), since
    the answer to HEAD has no body whatever its headers say.

    A request parser stops after CONNECT, which switches protocols once its request ends, but
    reads on after a request that asks to Upgrade: the origin may decline (an HTTP/1.1-only
    one answers ``curl --http2`` with a plain 200) and the stream stays HTTP/1. Only the 101
    that accepts it switches, and only the response side sees it: the caller then stops the
    request side too (``go_opaque``).
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
        self.state = _HEAD
        self._partial = bytearray()  # the start of a head split across chunks
        self._line = bytearray()  # the start of a chunk-size or trailer line
        self._left = 0
        self._switching = False  # the message being read switches protocols when it ends
        self._methods: deque[str] = deque()

    def expect(self, method: str) -> None:
        """A request with ``method`` was sent: its response comes next (in order)."""
        self._methods.append(method)

    def go_opaque(self, why: str) -> None:
        if self.state != _OPAQUE:
            self.state = _OPAQUE
            self._partial.clear()
            self._line.clear()
            self.on_opaque(why)

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view and self.state != _OPAQUE:
            state = self.state
            if state == _HEAD:
                view = view[self._head_from(view) :]
            elif state in (_FIXED, _CHUNK_DATA):
                n = len(view) if len(view) < self._left else self._left
                self.on_body(view[:n])
                self._left -= n
                view = view[n:]
                if not self._left:
                    if state == _FIXED:
                        self._end()
                    else:
                        self.state = _CHUNK_END
            elif state == _UNTIL_CLOSE:
                self.on_body(view)
                return
            else:
                view = view[self._lines_from(view) :]

    def feed_eof(self) -> None:
        """The direction ended: a read-until-close body is complete."""
        if self.state == _UNTIL_CLOSE:
            self._end()

    # ------------------------------------------------------------------ heads

    def _head_from(self, view: memoryview) -> int:
        """Take the head at the start of ``view``, or as much of it as ``view`` holds;
        returns how many bytes were used. A head whole in ``view`` is copied out of it in one
        slice; one split across chunks is gathered in ``_partial`` until its end comes."""
        partial = self._partial
        if not partial:
            if view[0] == _CR or view[0] == _LF:  # empty lines between messages: tolerated
                probe = bytes(view[:_PROBE])
                return len(probe) - len(probe.lstrip(b"\r\n"))
            blank = _BLANK_LINE.search(view, 0, _PROBE)
            if blank is not None:
                self._on_head(bytes(view[: blank.start() + 1]))
                return blank.end()
        seen = len(partial)
        partial += view[:_PROBE]
        taken = len(partial) - seen
        # the verdicts on a head must not depend on how it was split: the start line is
        # judged before the head's end is looked for, the whole head once it has ended
        if len(partial) >= _MAX_LINE and partial.find(b"\n", 0, _MAX_LINE) < 0:
            self.go_opaque("line too long")
            return taken
        blank = _BLANK_LINE.search(partial, max(seen - 2, 0)) if seen else None
        if blank is None:
            if len(partial) > self.head_limit + 1:  # its head will be larger than the limit
                self.go_opaque("head too large")
            return taken
        head = bytes(partial[: blank.start() + 1])
        partial.clear()
        self._on_head(head)
        return blank.end() - seen

    def _on_head(self, raw: bytes) -> None:
        if len(raw) > self.head_limit:
            self.go_opaque("head too large")
            return
        head = start_line(raw, response=self.response)
        if isinstance(head, str):
            self.go_opaque(head)
        elif self.response:
            self._on_response_head(head)
        else:
            self._on_request_head(head)

    def _on_request_head(self, head: Head) -> None:
        low = head.raw.lower()
        framed = _REQUEST_FRAMING.search(low) is not None
        self._switching = head.method == "CONNECT"  # an Upgrade waits for its 101 (see above)
        self.on_head(head)
        if framed:
            self._body(low, _HEAD)
        else:
            self._end()

    def _on_response_head(self, head: Head) -> None:
        status = head.status
        if 100 <= status < 200 and status != 101:
            return  # interim (100 Continue, 103 Early Hints): the real answer follows
        method = self._methods.popleft() if self._methods else "GET"
        self._switching = status == 101 or (method == "CONNECT" and 200 <= status < 300)
        self.on_head(head)
        if self._switching or method == "HEAD" or status == 204 or status == 304:
            self._end()  # no body, whatever the fields say
        else:
            self._body(head.raw.lower(), _UNTIL_CLOSE)

    def _body(self, low: bytes, unframed: int) -> None:
        """Read the body that the head ``low`` (lower case) announces; ``unframed``: the state
        for a body without framing fields (none for a request, until close for a response)."""
        if _TRANSFER_ENCODING.search(low) is not None:
            codings = _tokens(_TRANSFER_ENCODING, low)
            if codings and codings[-1] == b"chunked":
                self.state = _CHUNK_SIZE
                return
        length = _content_length(low)
        if length is None:
            if unframed == _UNTIL_CLOSE:
                self.state = _UNTIL_CLOSE
            else:
                self._end()
            return
        self._left = length
        if length < 0:
            self.go_opaque("bad content-length")
        elif self._left:
            self.state = _FIXED
        else:
            self._end()

    def _end(self) -> None:
        self.state = _HEAD
        self.on_end()
        if self._switching:
            self.go_opaque("protocol switched")

    # ------------------------------------------------------------------ chunked framing

    def _lines_from(self, view: memoryview) -> int:
        """Take the lines at the start of ``view`` while the state reads lines (chunk sizes,
        chunk ends, trailers); returns how many bytes were used."""
        pos = 0
        while self.state in _LINE_STATES:
            found = _LINE_END.search(view, pos, pos + _PROBE)
            end = min(len(view), pos + _PROBE) if found is None else found.end()
            self._line += view[pos:end]
            if len(self._line) > _MAX_LINE + 2:  # with its CR LF: judged alike however split
                self.go_opaque("line too long")
                return end
            if found is None:
                return end
            pos = end
            line = bytes(self._line).rstrip(b"\r\n")
            self._line.clear()
            self._on_line(line)
        return pos

    def _on_line(self, line: bytes) -> None:
        state = self.state
        if state == _CHUNK_SIZE:
            size = line.split(b";", 1)[0].strip()
            try:
                self._left = int(size, 16)
            except ValueError:
                self.go_opaque("bad chunk size")
                return
            self.state = _CHUNK_DATA if self._left else _TRAILER
        elif state == _CHUNK_END:
            self.state = _CHUNK_SIZE
        elif state == _TRAILER and not line:
            self._end()
