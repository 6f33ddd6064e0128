"""Frame types and the events the codec turns them into.

Every frame starts with a 9-byte header (the layout HTTP/2 uses)::

    +----------------------+-----------+-----------+-------------------------+
    | payload length (u24) | type (u8) | flags (u8)| stream id (u32)         |
    +----------------------+-----------+-----------+-------------------------+

followed by ``length`` payload bytes. All integers are big-endian. Control messages that
happen once per session or stream (HELLO, WELCOME, REJECT, OPEN) carry a UTF-8 JSON object;
the per-chunk frames carry raw bytes or fixed-size integers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ._errors import ErrorCode

#: Protocol versions this codec speaks, newest last.
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
PROTOCOL_VERSION = SUPPORTED_VERSIONS[-1]

#: Application-layer protocol id offered in TLS ALPN by the tunnel's control connection.
ALPN_PROTOCOL = "ferrotunnel/1"


class FrameType(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    REJECT = 3
    OPEN = 4
    DATA = 5
    FIN = 6
    RESET = 7
    WINDOW_UPDATE = 8
    PING = 9
    PONG = 10
    GOAWAY = 11


class TunnelKind(enum.StrEnum):
    TCP = "tcp"
    HTTP = "http"


class RejectCode(enum.StrEnum):
    """Why the server refused a HELLO. The client treats the ``FINAL`` ones as fatal."""

    AUTH_FAILED = "auth_failed"
    UNSUPPORTED_VERSION = "unsupported_version"
    NAME_TAKEN = "name_taken"
    PORT_UNAVAILABLE = "port_unavailable"
    BAD_REQUEST = "bad_request"
    FORBIDDEN = "forbidden"
    SERVER_BUSY = "server_busy"
    RATE_LIMITED = "rate_limited"

    @property
    def is_final(self) -> bool:
        """Retrying with the same HELLO cannot succeed: the client should stop."""
        return self not in (RejectCode.SERVER_BUSY, RejectCode.RATE_LIMITED)


@dataclass(frozen=True, slots=True)
class TunnelRequest:
    """One tunnel a client asks for in its HELLO.

    ``remote_port`` 0 (or None) lets the server choose a public port for a TCP tunnel;
    ``hostnames`` and ``path`` route HTTP tunnels; ``options`` carries extension settings.
    """

    name: str
    kind: TunnelKind = TunnelKind.TCP
    remote_port: int | None = None
    hostnames: tuple[str, ...] = ()
    path: str | None = None
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GrantedTunnel:
    """What the server granted for one requested tunnel."""

    name: str
    kind: TunnelKind
    public_url: str
    remote_port: int | None = None
    hostnames: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Hello:
    """Client → server, the first frame of a session."""

    versions: tuple[int, ...]
    client_id: str
    tunnels: tuple[TunnelRequest, ...] = ()
    token: str | None = None
    window: int = 0
    max_frame: int = 0
    agent: str = ""

    def __repr__(self) -> str:  # the token must never reach a log line
        token = "***" if self.token else None
        return (
            f"Hello(versions={self.versions}, client_id={self.client_id!r}, "
            f"tunnels={self.tunnels!r}, token={token}, window={self.window}, "
            f"max_frame={self.max_frame}, agent={self.agent!r})"
        )


@dataclass(frozen=True, slots=True)
class Welcome:
    """Server → client: the session is up."""

    version: int
    session_id: str
    tunnels: tuple[GrantedTunnel, ...] = ()
    window: int = 0
    max_frame: int = 0
    ping_interval: float = 0.0


@dataclass(frozen=True, slots=True)
class Reject:
    """Server → client: the HELLO was refused; the server closes after sending this."""

    code: RejectCode
    message: str


@dataclass(frozen=True, slots=True)
class Open:
    """Opens stream ``stream_id``; DATA may follow at once, up to the peer's window."""

    stream_id: int
    kind: TunnelKind
    tunnel: str
    visitor_host: str | None = None
    visitor_port: int | None = None
    trace: dict[str, str] = field(default_factory=dict)
    #: the stream's bytes open a connection of their own (HTTP/2 with prior knowledge): the
    #: client serves it on a new origin connection, never on an idle one left by another
    own_connection: bool = False


@dataclass(frozen=True, slots=True)
class Data:
    """Stream bytes. A frame cut by the end of a read is decoded in pieces: ``rest`` is how
    many bytes of the same frame are still to come (0 for a whole frame or its last piece),
    so the receiver can check the frame against its window when the first piece arrives."""

    stream_id: int
    data: bytes | memoryview
    rest: int = 0


@dataclass(frozen=True, slots=True)
class Fin:
    """The sender will send no more DATA on this stream (half-close)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class Reset:
    """Abort the stream in both directions."""

    stream_id: int
    code: ErrorCode | int = ErrorCode.CANCEL


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    """The receiver consumed ``increment`` bytes of this stream; the sender may send that many
    more."""

    stream_id: int
    increment: int


@dataclass(frozen=True, slots=True)
class Ping:
    opaque: int


@dataclass(frozen=True, slots=True)
class Pong:
    opaque: int


@dataclass(frozen=True, slots=True)
class GoAway:
    """No new streams: streams up to ``last_stream_id`` may finish, then the session ends."""

    last_stream_id: int
    code: ErrorCode | int = ErrorCode.NO_ERROR
    message: str = ""


Event = Hello | Welcome | Reject | Open | Data | Fin | Reset | WindowUpdate | Ping | Pong | GoAway
