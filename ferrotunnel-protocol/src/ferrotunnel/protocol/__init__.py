"""ferrotunnel's wire protocol, sans-IO: frames and handshake messages in, bytes out.

Nothing here does I/O or imports an event loop. A session feeds received bytes to a
:class:`FrameDecoder` and gets events back; it serialises events with :func:`encode` (and, on
the hot path, :func:`data_header` followed by the raw payload). See ``docs/ARCHITECTURE.md``
for the wire format and the session rules built on it.
"""

from ._codec import (
    DEFAULT_LIMITS,
    HEADER_SIZE,
    MAX_PAYLOAD,
    MAX_STREAM_ID,
    MAX_WINDOW,
    FrameDecoder,
    Limits,
    data_header,
    encode,
    encode_window_update,
)
from ._errors import ErrorCode, ProtocolError
from ._frames import (
    ALPN_PROTOCOL,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Data,
    Event,
    Fin,
    FrameType,
    GoAway,
    GrantedTunnel,
    Hello,
    Open,
    Ping,
    Pong,
    Reject,
    RejectCode,
    Reset,
    TunnelKind,
    TunnelRequest,
    Welcome,
    WindowUpdate,
)

__all__ = [
    "ALPN_PROTOCOL",
    "DEFAULT_LIMITS",
    "HEADER_SIZE",
    "MAX_PAYLOAD",
    "MAX_STREAM_ID",
    "MAX_WINDOW",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "Data",
    "ErrorCode",
    "Event",
    "Fin",
    "FrameDecoder",
    "FrameType",
    "GoAway",
    "GrantedTunnel",
    "Hello",
    "Limits",
    "Open",
    "Ping",
    "Pong",
    "ProtocolError",
    "Reject",
    "RejectCode",
    "Reset",
    "TunnelKind",
    "TunnelRequest",
    "Welcome",
    "WindowUpdate",
    "data_header",
    "encode",
    "encode_window_update",
]
