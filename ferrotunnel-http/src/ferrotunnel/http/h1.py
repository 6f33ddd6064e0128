"""HTTP/1.1 message framing, sans-IO: heads parsed, bodies delimited, bytes passed through.

The ingress never re-encodes a body: it only needs to know where each message ends, so that
every request on a kept-alive connection can be routed on its own Host and every response is
delimited. :func:`parse_request_head` / :func:`parse_response_head` parse a head strictly
(RFC 9112; anything ambiguous that could desynchronise two parsers — both Content-Length and
Transfer-Encoding, differing Content-Lengths, obs-fold, bare LF — is an :class:`HttpError`).
A :class:`BodyFramer` then tells how many of the following bytes belong to the body, chunked
encoding included, without copying them.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

__all__ = [
    "BodyFramer",
    "Framing",
    "HttpError",
    "RequestHead",
    "ResponseHead",
    "find_head_end",
    "parse_request_head",
    "parse_response_head",
]

Headers = list[tuple[bytes, bytes]]

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/1\.([01])")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_HEADER = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")
#: every header line of a head at once (see _split_head): a name, and a value without the
#: white space around it, on a line of its own ending in CRLF
_FIELD_LINES = re.compile(
    rb"^(" + _TOKEN + rb"):[ \t]*"
    rb"((?:[^\x00-\x20\x7f](?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)?)[ \t]*\r$",
    re.MULTILINE,
)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?")


class HttpError(Exception):
    """A malformed or unacceptable message; ``status`` is what to answer the visitor."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Framing(enum.Enum):
    NONE = "none"  # no body
    LENGTH = "length"  # Content-Length bytes
    CHUNKED = "chunked"  # Transfer-Encoding: chunked
    UNTIL_CLOSE = "until_close"  # a response delimited by the end of the connection


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    minor: int  # HTTP/1.<minor>
    headers: Headers
    framing: Framing = Framing.NONE
    length: int = 0
    keep_alive: bool = True
    #: the normalised Host: lower case, no port, no trailing dot ("" if missing)
    host: str = ""
    upgrade: bool = False
    expect_continue: bool = False
    #: the parser's index of ``headers`` by lower-case name, valid while ``headers`` is still
    #: the list it was built from, with as many lines (so a look-up is a dict access, not a
    #: scan lowering every name, as long as nothing edited the head); the methods plugins
    #: call on every request check that inline
    names: dict[bytes, list[bytes]] | None = None
    indexed: Headers | None = None
    indexed_count: int = 0

    @property
    def path(self) -> str:
        return self.target.split(b"?", 1)[0].decode("latin-1")

    def get(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower case)."""
        names, headers = self.names, self.headers
        if names is not None and self.indexed is headers and self.indexed_count == len(headers):
            values = names.get(name)
            return values[0] if values else None
        for key, value in headers:
            if key.lower() == name:
                return value
        return None

    def serialize(self) -> bytes:
        lines = [b"%s %s HTTP/1.%d" % (self.method, self.target, self.minor)]
        lines += [b"%s: %s" % pair for pair in self.headers]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    # the HttpRequest view plugins get (str in, str out)
    @property
    def method_text(self) -> str:
        return self.method.decode("latin-1")

    def header(self, name: str) -> str | None:
        names, headers = self.names, self.headers
        if names is not None and self.indexed is headers and self.indexed_count == len(headers):
            values = names.get(_lower_names.get(name) or _lower_name(name))  # get(), inline
            return values[0].decode("latin-1") if values else None
        value = self.get(_lower_name(name))
        return None if value is None else value.decode("latin-1")

    def header_values(self, name: str) -> list[str]:
        return _values(self.headers, name)

    def set_header(self, name: str, value: str) -> None:
        self.headers = _set_header(self.headers, name, value)

    def add_header(self, name: str, value: str) -> None:
        line = _field(name, value)
        names, headers = self.names, self.headers
        if names is not None and self.indexed is headers and self.indexed_count == len(headers):
            # keep the index true: look-ups stay dict accesses
            key = _lower_names.get(name) or _lower_name(name)
            found = names.get(key)
            if found is None:
                names[key] = [line[1]]
            else:
                found.append(line[1])
            self.indexed_count += 1
        headers.append(line)

    def remove_header(self, name: str) -> None:
        self.headers = _without(self.headers, name)


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: bytes
    minor: int
    headers: Headers = field(default_factory=list)
    framing: Framing = Framing.NONE
    length: int = 0
    keep_alive: bool = True
    #: a middleware changed the headers: the head must be re-serialised
    modified: bool = False
    #: the head as parsed, and the (lower-case) names of its headers: as long as middlewares
    #: only add headers, :meth:`serialize` appends them to ``raw`` instead of rebuilding it
    raw: bytes = b""
    names: frozenset[bytes] | dict[bytes, list[bytes]] = frozenset()
    #: how many of ``headers`` came with ``raw``; None once one of those was removed
    parsed: int | None = None

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    def header_values(self, name: str) -> list[str]:
        return _values(self.headers, name)

    def set_header(self, name: str, value: str) -> None:
        line = _field(name, value)
        wanted = line[0].lower()
        # the usual edit, a header the head as parsed does not have, has nothing to replace
        if len(self.headers) != self.parsed or wanted in self.names:
            self._drop(wanted)
        self.headers.append(line)
        self.modified = True

    def add_header(self, name: str, value: str) -> None:
        self.headers = [*self.headers, _field(name, value)]
        self.modified = True

    def remove_header(self, name: str) -> None:
        self._drop(name.lower().encode("latin-1"))
        self.modified = True

    def _drop(self, wanted: bytes) -> None:
        parsed = self.parsed
        if wanted in self.names:
            self.parsed = None  # a parsed header goes: rebuild the head
        elif parsed is not None:
            # not parsed: only the added lines (usually none, or a plugin's few) can have it
            headers = self.headers
            if len(headers) > parsed:
                headers[parsed:] = [(k, v) for k, v in headers[parsed:] if k.lower() != wanted]
            return
        self.headers = [(k, v) for k, v in self.headers if k.lower() != wanted]

    def serialize(self) -> bytes:
        parsed = self.parsed
        if parsed is not None and self.raw:
            headers = self.headers
            if len(headers) == parsed + 1:  # the usual edit: one header added
                return self.raw[:-2] + b"%s: %s\r\n\r\n" % headers[parsed]
            added = [b"%s: %s\r\n" % pair for pair in headers[parsed:]]
            return b"".join([self.raw[:-2], *added, b"\r\n"])
        lines = [b"HTTP/1.%d %d %s" % (self.minor, self.status, self.reason)]
        lines += [b"%s: %s" % pair for pair in self.headers]
        return b"\r\n".join(lines) + b"\r\n\r\n"


_FORBIDDEN_IN_FIELD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _without(headers: Headers, name: str) -> Headers:
    wanted = name.lower().encode("latin-1")
    return [(k, v) for k, v in headers if k.lower() != wanted]


#: header names (as plugins write them) in lower case, encoded: the same few every request
_lower_names: dict[str, bytes] = {}


def _lower_name(name: str) -> bytes:
    lower = _lower_names.get(name)
    if lower is None:
        lower = name.lower().encode("latin-1")
        if len(_lower_names) < 1024:
            _lower_names[name] = lower
    return lower


def _values(headers: Headers, name: str) -> list[str]:
    wanted = name.lower().encode("latin-1")
    return [v.decode("latin-1") for k, v in headers if k.lower() == wanted]


_TOKEN_TEXT = re.compile(_TOKEN.decode())


#: header names already checked, encoded (plugins set the same few names on every request)
_checked_names: dict[str, bytes] = {}


def _field(name: str, value: str) -> tuple[bytes, bytes]:
    """One header line, refusing names and values that would break the head (CR/LF...)."""
    encoded = _checked_names.get(name)
    if encoded is None:
        if not _TOKEN_TEXT.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}")
        encoded = name.encode("latin-1")
        if len(_checked_names) < 1024:
            _checked_names[name] = encoded
    # printable text has no control character: the common case needs no regular expression
    if not value.isprintable() and _FORBIDDEN_IN_FIELD.search(value):
        raise ValueError(f"invalid header {name!r}: {value!r}")
    try:
        return encoded, value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"header {name!r}: {value!r} is not Latin-1 text") from None


def _set_header(headers: Headers, name: str, value: str) -> Headers:
    """Replace every ``name`` header with one ``name: value``."""
    return [*_without(headers, name), _field(name, value)]


def find_head_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """Index just past the blank line ending a head, or -1 if it has not arrived."""
    end = buffer.find(b"\r\n\r\n", max(0, start - 3))
    return -1 if end < 0 else end + 4


def _split_head(head: bytes) -> tuple[bytes, Headers, dict[bytes, list[bytes]]]:
    """The first line, the header fields, and the values by lower-case name.

    One regular-expression pass takes every well-formed field line; the head is well formed
    when that pass took every line and no LF stands without its CR. Otherwise the slow path
    below, line by line, says what is wrong.
    """
    first_end = head.find(b"\r\n")
    headers: Headers = _FIELD_LINES.findall(head, first_end + 2)
    crlf = head.count(b"\r\n")
    if len(headers) == crlf - 2 and head.count(b"\n") == crlf:
        index: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            key = name.lower()
            values = index.get(key)
            if values is None:
                index[key] = [value]
            else:
                values.append(value)
        return head[:first_end], headers, index
    return _split_head_checked(head)


def _split_head_checked(head: bytes) -> tuple[bytes, Headers, dict[bytes, list[bytes]]]:
    lines = head[:-4].split(b"\r\n")
    headers: Headers = []
    index: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        match = _HEADER.fullmatch(line)
        if match is None:
            if line[:1] in (b" ", b"\t"):
                raise HttpError(400, "obsolete line folding in a header")
            raise HttpError(400, "malformed header line")
        name, value = match.groups()
        headers.append((name, value))
        index.setdefault(name.lower(), []).append(value)
    if b"\n" in lines[0] or any(b"\n" in line for line in lines):
        raise HttpError(400, "bare LF in the head")
    return lines[0], headers, index


def _tokens(values: list[bytes] | None) -> list[bytes]:
    if not values:
        return []
    return [t.strip().lower() for value in values for t in value.split(b",") if t.strip()]


def _content_length(values: list[bytes]) -> int:
    lengths = {v.strip() for value in values for v in value.split(b",")}
    if len(lengths) != 1:
        raise HttpError(400, "conflicting Content-Length headers")
    (text,) = lengths
    if not text.isdigit() or len(text) > 18:
        raise HttpError(400, "invalid Content-Length")
    return int(text)


def normalize_host(value: bytes | str) -> str:
    """``Example.COM:8080.`` → ``example.com``; ``[::1]:80`` → ``::1``."""
    host = value.decode("latin-1") if isinstance(value, bytes) else value
    host = host.strip()
    if host.startswith("["):
        end = host.find("]")
        host = host[1:end] if end > 0 else ""
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".").lower()


def parse_request_head(head: bytes) -> RequestHead:
    """Parse a request head (``head`` ends with the blank line)."""
    first, headers, index = _split_head(head)
    match = _REQUEST_LINE.fullmatch(first)
    if match is None:
        if first.startswith(b"PRI * HTTP/2.0"):
            raise HttpError(400, "HTTP/2 preface in an HTTP/1 connection")
        if re.fullmatch(rb"\S+ \S+ HTTP/\d\.\d", first):
            raise HttpError(505, "HTTP version not supported")
        raise HttpError(400, "malformed request line")
    method, target, minor_text = match.groups()
    minor = int(minor_text)
    request = RequestHead(
        method, target, minor, headers, names=index, indexed=headers, indexed_count=len(headers)
    )
    hosts = index.get(b"host", [])
    if len(hosts) > 1:
        raise HttpError(400, "more than one Host header")
    if hosts:
        request.host = normalize_host(hosts[0])
    elif minor == 1:
        raise HttpError(400, "missing Host header")
    transfer = _tokens(index.get(b"transfer-encoding"))
    if transfer:
        if b"content-length" in index:
            raise HttpError(400, "both Transfer-Encoding and Content-Length")
        if transfer[-1] != b"chunked" or transfer.count(b"chunked") != 1 or minor == 0:
            raise HttpError(400, "unsupported Transfer-Encoding")
        request.framing = Framing.CHUNKED
    elif b"content-length" in index:
        request.length = _content_length(index[b"content-length"])
        request.framing = Framing.LENGTH if request.length else Framing.NONE
    connection = _tokens(index.get(b"connection"))
    request.keep_alive = b"close" not in connection and (minor == 1 or b"keep-alive" in connection)
    request.upgrade = b"upgrade" in connection and b"upgrade" in index
    request.expect_continue = _tokens(index.get(b"expect")) == [b"100-continue"]
    return request


def parse_response_head(head: bytes, request_method: bytes) -> ResponseHead:
    """Parse a response head; the request's method decides whether a body may follow."""
    first, headers, index = _split_head(head)
    match = _STATUS_LINE.fullmatch(first)
    if match is None:
        raise HttpError(502, "malformed status line from the origin")
    minor_text, status_text, reason = match.groups()
    minor = int(minor_text)
    response = ResponseHead(
        int(status_text), reason or b"", minor, headers, raw=head, names=index, parsed=len(headers)
    )
    connection = _tokens(index.get(b"connection"))
    response.keep_alive = b"close" not in connection and (minor == 1 or b"keep-alive" in connection)
    status = response.status
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        return response  # no body, whatever the headers say
    transfer = _tokens(index.get(b"transfer-encoding"))
    if transfer:
        if transfer[-1] == b"chunked":
            response.framing = Framing.CHUNKED
        else:
            response.framing = Framing.UNTIL_CLOSE
            response.keep_alive = False
    elif b"content-length" in index:
        try:
            response.length = _content_length(index[b"content-length"])
        except HttpError as exc:
            raise HttpError(502, f"{exc} from the origin") from None
        response.framing = Framing.LENGTH if response.length else Framing.NONE
    else:
        response.framing = Framing.UNTIL_CLOSE
        response.keep_alive = False
    return response


class _Chunk(enum.Enum):
    SIZE = 1
    DATA = 2
    DATA_END = 3
    TRAILER = 4
    DONE = 5


class BodyFramer:
    """Follows one body through the bytes that carry it, without copying them.

    :meth:`feed` returns how many bytes of ``data`` belong to the body; once :attr:`done`,
    what follows belongs to the next message.
    """

    __slots__ = ("_framing", "_line", "_remaining", "_state", "done", "max_line")

    def __init__(self, framing: Framing, length: int = 0, max_line: int = 4096) -> None:
        self._framing = framing
        self._remaining = length
        self._state = _Chunk.SIZE
        self._line = bytearray()
        self.max_line = max_line
        self.done = framing is Framing.NONE or (framing is Framing.LENGTH and length == 0)

    def feed(self, data: bytes | memoryview) -> int:
        if self.done:
            return 0
        framing = self._framing
        if framing is Framing.LENGTH:
            n = min(self._remaining, len(data))
            self._remaining -= n
            self.done = self._remaining == 0
            return n
        if framing is Framing.UNTIL_CLOSE:
            return len(data)
        return self._feed_chunked(data)

    def feed_eof(self) -> None:
        """The connection ended: that completes an until-close body, and nothing else."""
        if self._framing is Framing.UNTIL_CLOSE:
            self.done = True
        elif not self.done:
            raise HttpError(502, "the connection ended in the middle of a body")

    def _feed_chunked(self, data: bytes | memoryview) -> int:
        pos = 0
        end = len(data)
        text: bytes | None = None  # ``data`` as bytes, made (at most once) to find a line
        while pos < end and self._state is not _Chunk.DONE:
            state = self._state
            if state is _Chunk.DATA:
                n = min(self._remaining, end - pos)
                self._remaining -= n
                pos += n
                if self._remaining == 0:
                    self._state = _Chunk.DATA_END
                continue
            if text is None:
                text = data if isinstance(data, bytes) else bytes(data)
            room = self.max_line - len(self._line)  # what this line may still take, LF included
            newline = text.find(b"\n", pos, pos + room)
            if newline < 0:
                if end - pos >= room:
                    raise HttpError(400, "chunk header or trailer line too long")
                self._line += text[pos:]
                return end
            self._line += text[pos : newline + 1]
            pos = newline + 1
            line = bytes(self._line)
            self._line.clear()
            if not line.endswith(b"\r\n"):
                raise HttpError(400, "bare LF in chunked body")
            line = line[:-2]
            if state is _Chunk.SIZE:
                match = _CHUNK_SIZE.fullmatch(line)
                if match is None:
                    raise HttpError(400, "invalid chunk size")
                self._remaining = int(match.group(1), 16)
                self._state = _Chunk.DATA if self._remaining else _Chunk.TRAILER
            elif state is _Chunk.DATA_END:
                if line:
                    raise HttpError(400, "chunk data longer than its size")
                self._state = _Chunk.SIZE
            elif state is _Chunk.TRAILER:
                if not line:
                    self._state = _Chunk.DONE
                elif _HEADER.fullmatch(line) is None:
                    raise HttpError(400, "malformed trailer")
        self.done = self._state is _Chunk.DONE
        return pos
