"""The extension point for public entry points other than raw TCP (the HTTP ingress).

A :class:`Server` owns claims and their owners; an :class:`Ingress` says what a tunnel of its
kind claims (its *keys*: a host name and path, say), and routes visitors to the session that
holds them. The kernel never imports an ingress; the CLI or a library user passes them in.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from anyio.abc import TaskGroup

from ferrotunnel.protocol import GrantedTunnel, TunnelKind, TunnelRequest

from .plugin.types import Identity
from .session import Session

__all__ = ["Ingress"]


class Ingress(Protocol):
    """A public entry point for tunnels of one :attr:`kind`."""

    kind: TunnelKind

    async def start(self, task_group: TaskGroup) -> None:
        """Bind and start serving visitors (tasks go into ``task_group``)."""

    async def aclose(self) -> None:
        """Stop accepting visitors."""

    def describe(self) -> list[tuple[str, str]]:
        """(label, value) lines for start-up output, e.g. ``("HTTP ingress", "0.0.0.0:8080")``."""
        ...

    def claim_keys(self, request: TunnelRequest, identity: Identity) -> list[Hashable]:
        """What ``request`` would occupy; raise :class:`~ferrotunnel.core.Refused` if invalid
        or not allowed for ``identity`` (see :meth:`Identity.may_claim_host`).

        Two tunnels with a key in common cannot be held by different owners.
        """
        ...

    def grant(self, request: TunnelRequest, session: Session, identity: Identity) -> GrantedTunnel:
        """Route ``request``'s keys to ``session`` (replacing a stale session's route).

        Streams to the client name the tunnel as the client did (``request.name``); what the
        server shows of it — the :class:`GrantedTunnel` returned, ``RequestContext.tunnel`` —
        uses ``identity.tunnel_name(request.name)`` (see :meth:`Identity.tunnel_name`).
        """
        ...

    def revoke(self, session: Session) -> None:
        """Forget every route to ``session``."""
