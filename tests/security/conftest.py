"""Fixtures of the security tests: real ``ferrotunnel`` processes over real loopback sockets.

The process launcher and the echo service are the end-to-end suite's (``tests/e2e``); a
private CA made once per session by the real ``ferrotunnel cert init`` serves every test
that only needs working certificates.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import echo, launch

from .tls_helpers import CertDir, cert_init

__all__ = ["certs", "echo", "launch"]


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertDir:
    """``ferrotunnel cert init`` for 127.0.0.1, localhost and app.localhost, once."""
    out = tmp_path_factory.mktemp("shared-certs") / "certs"
    return cert_init(out, "127.0.0.1", "localhost", "app.localhost")
