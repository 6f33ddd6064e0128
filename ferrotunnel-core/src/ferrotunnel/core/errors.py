"""Exceptions a library user of ferrotunnel may catch."""

from __future__ import annotations

import os

import anyio

from ferrotunnel.protocol import ErrorCode, ProtocolError, RejectCode

__all__ = [
    "ConfigError",
    "FerroTunnelError",
    "HandshakeError",
    "ListenError",
    "ProtocolError",
    "RejectedError",
    "SessionClosedError",
    "StreamLimitError",
    "StreamResetError",
    "TlsError",
]


class FerroTunnelError(Exception):
    """Base class of ferrotunnel's own errors."""


class ConfigError(FerroTunnelError, ValueError):
    """A setting is missing or invalid; the message names it."""


class ListenError(FerroTunnelError, OSError):
    """A listener could not bind its address (an OSError, with the original ``errno``).

    ``listener`` names it as the server's start-up lines do: ``"control plane"``,
    ``"TCP ingress"``, ``"HTTP ingress"``, ``"HTTPS ingress"``; ``address`` is what it tried.
    """

    def __init__(self, listener: str, address: str, error: OSError) -> None:
        reason = os.strerror(error.errno) if error.errno else str(error)
        super().__init__(error.errno, reason)
        self.listener = listener
        self.address = address

    def __str__(self) -> str:
        return f"{self.listener}: cannot listen on {self.address}: {self.strerror}"


class HandshakeError(FerroTunnelError):
    """The session could not be set up (timeout, closed connection, unexpected frame)."""


class TlsError(HandshakeError):
    """The TLS handshake failed in a way retrying cannot fix: an unverifiable certificate,
    no common protocol version, a client certificate the server refuses."""


class RejectedError(HandshakeError):
    """The server refused the client's HELLO.

    ``code.is_final`` tells whether retrying can help (a wrong token cannot).
    """

    def __init__(self, code: RejectCode, message: str) -> None:
        super().__init__(f"server rejected the session: {message} ({code})")
        self.code = code
        self.reason = message


class SessionClosedError(FerroTunnelError, anyio.BrokenResourceError):
    """The session carrying this stream is gone."""


class StreamLimitError(FerroTunnelError):
    """The session already has ``max_streams`` streams open; try again when one closes."""


class StreamResetError(FerroTunnelError, anyio.BrokenResourceError):
    """The peer reset the stream (or the stream was reset locally)."""

    def __init__(self, code: ErrorCode | int) -> None:
        name = code.name if isinstance(code, ErrorCode) else str(code)
        super().__init__(f"stream reset ({name})")
        self.code = code
