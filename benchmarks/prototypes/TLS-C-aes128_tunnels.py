"""tunnelbench plug-in (prototype C, not shipped): TLS 1.3 limited to AES-128-GCM.

Python 3.11 cannot choose TLS 1.3 cipher suites (``SSLContext.set_ciphers`` covers TLS ≤ 1.2
only), so TLS 1.3 negotiates AES-256-GCM. OpenSSL's own configuration can narrow the suites
for a whole process without any code: ``OPENSSL_CONF`` pointing at
``TLS-C-aes128-openssl.cnf`` (``Ciphersuites = TLS_AES_128_GCM_SHA256`` in the
``system_default`` section that ``SSL_CTX_new`` applies). Each ``aes128-tls NAME`` entry runs
the tree ``NAME`` of ``FT_SNAPSHOTS`` (see ``snapshot_tunnels.py``) that way::

    FT_SNAPSHOTS="base=/tmp/snap-base" FERROTUNNEL_BIN=$PWD/.venv/bin/ferrotunnel \\
    python3 ../shared/bench/tunnelbench.py run --plugin benchmarks/snapshot_tunnels.py \\
        --plugin benchmarks/prototypes/TLS-C-aes128_tunnels.py \\
        --only "openssh aes128-gcm,snap-tls base,aes128-tls " --tests tput

This file is exec'd by the harness, which provides ``Tunnel`` and ``__file__``.
"""
# ruff: noqa: F821  (Tunnel is injected by tunnelbench.py)
# mypy: ignore-errors

import os
import shlex
import subprocess

_FT = os.environ.get("FERROTUNNEL_BIN", "ferrotunnel")
_PACKAGES = ("core", "protocol", "cli", "http", "plugins")
_CNF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "TLS-C-aes128-openssl.cnf")


def _certs(ctx):
    certs = os.path.join(ctx["tmp"], "certs")
    if not os.path.exists(os.path.join(certs, "ca.pem")):
        subprocess.run(
            [*shlex.split(ctx["ft"]), "cert", "init", "--out", certs, "--hostname", "127.0.0.1"],
            check=True,
            timeout=60,
        )


def _snapshots():
    for item in os.environ.get("FT_SNAPSHOTS", "").split(","):
        name, sep, root = item.partition("=")
        if sep and name.strip() and root.strip():
            yield name.strip(), root.strip()


TUNNELS = [
    Tunnel(
        f"aes128-tls {name}",
        server="{ft} server --token {token} --bind 127.0.0.1:{control_port} "
        "--http-bind 127.0.0.1:{aux_port} --tcp-bind 127.0.0.1:{public_port} "
        "--tls-cert {tmp}/certs/server.pem --tls-key {tmp}/certs/server-key.pem",
        client="{ft} client --server 127.0.0.1:{control_port} --token {token} "
        "--local-addr {local_host}:{local_port} --protocol tcp --no-dashboard "
        "--tls --tls-ca {tmp}/certs/ca.pem",
        setup=_certs,
        kinds=("tcp",),
        requires=("exe:" + _FT, f"path:{root}/ferrotunnel-core/src", "path:" + _CNF),
        wait_port="control",
        env={
            "PYTHONPATH": ":".join(f"{root}/ferrotunnel-{p}/src" for p in _PACKAGES),
            "OPENSSL_CONF": _CNF,
        },
        notes="TLS 1.3 limited to TLS_AES_128_GCM_SHA256 through OPENSSL_CONF (prototype)",
    )
    for name, root in _snapshots()
]
