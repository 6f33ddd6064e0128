"""Errors of the wire protocol, each carrying the code sent to the peer."""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Why a stream was reset or a session went away (sent in RESET and GOAWAY)."""

    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    STREAM_CLOSED = 4
    FRAME_SIZE_ERROR = 5
    REFUSED_STREAM = 6
    CANCEL = 7
    CONNECT_ERROR = 8
    TIMEOUT = 9
    SHUTDOWN = 10

    @classmethod
    def parse(cls, value: int) -> ErrorCode | int:
        """Known codes become members; unknown ones stay ints (a newer peer may send them)."""
        try:
            return cls(value)
        except ValueError:
            return value


class ProtocolError(Exception):
    """The peer broke the protocol (or we were asked to encode something unsendable).

    A session that sees one sends GOAWAY with :attr:`code` and closes; no other session is
    affected. The decoder raises nothing else, whatever bytes it is fed.
    """

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code

    def __repr__(self) -> str:
        return f"ProtocolError({str(self)!r}, code={self.code.name})"
