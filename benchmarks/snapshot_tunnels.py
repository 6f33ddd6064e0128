"""tunnelbench plug-in: ``ferrotunnel tcp`` run from other source trees, side by side.

To compare a change with its base in ONE harness run (the only comparison this noisy box
allows), export each tree (``git archive``) to its own directory, apply the change to one,
and list them::

    FT_SNAPSHOTS="base=/tmp/snap-base,window4M=/tmp/snap-window" \\
    FERROTUNNEL_BIN=$PWD/.venv/bin/ferrotunnel python3 ../shared/bench/tunnelbench.py run \\
        --plugin benchmarks/snapshot_tunnels.py --only "py mux asyncio,snap " --tests tput

Each entry ``snap NAME`` runs the project's CLI with ``PYTHONPATH`` pointing at the
``ferrotunnel-*/src`` folders of that tree, so its packages shadow the installed ones (the
``ferrotunnel`` namespace package takes the first match on ``sys.path``).

Each tree also gets a ``snap-tls NAME`` entry: the same tunnel with its control connection in
TLS 1.3, set up exactly as the harness's ``ferrotunnel tcp tls`` (certificates from
``ferrotunnel cert init``, ``--tls-cert/--tls-key`` on the server, ``--tls --tls-ca`` on the
client). ``--only "snap "`` selects the plain entries only, ``--only "snap-tls "`` the TLS ones.
And a ``snap-http NAME`` entry: the HTTP ingress of that tree (``--tests http``), as the
harness's ``ferrotunnel http``.

This file is exec'd by the harness, which provides ``Tunnel`` in its namespace.
"""
# ruff: noqa: F821  (Tunnel is injected by tunnelbench.py)
# mypy: ignore-errors

import os
import shlex
import subprocess

_FT = os.environ.get("FERROTUNNEL_BIN", "ferrotunnel")
_PACKAGES = ("core", "protocol", "cli", "http", "plugins", "observability")

_SERVER = (
    "{ft} server --token {token} --bind 127.0.0.1:{control_port} "
    "--http-bind 127.0.0.1:{aux_port} --tcp-bind 127.0.0.1:{public_port}"
)
_CLIENT = (
    "{ft} client --server 127.0.0.1:{control_port} --token {token} "
    "--local-addr {local_host}:{local_port} --protocol tcp --no-dashboard"
)
_SERVER_HTTP = (
    "{ft} server --token {token} --bind 127.0.0.1:{control_port} "
    "--http-bind 127.0.0.1:{public_port}"
)
_CLIENT_HTTP = (
    "{ft} client --server 127.0.0.1:{control_port} --token {token} "
    "--local-addr {local_host}:{local_port} --tunnel-id bench.localhost --no-dashboard"
)
_SERVER_TLS = " --tls-cert {tmp}/certs/server.pem --tls-key {tmp}/certs/server-key.pem"
_CLIENT_TLS = " --tls --tls-ca {tmp}/certs/ca.pem"


def _snapshots():
    for item in os.environ.get("FT_SNAPSHOTS", "").split(","):
        name, sep, root = item.partition("=")
        if sep and name.strip() and root.strip():
            yield name.strip(), root.strip()


def _certs(ctx):
    """What the harness's own TLS entry does: ``ferrotunnel cert init`` once per start."""
    certs = os.path.join(ctx["tmp"], "certs")
    if not os.path.exists(os.path.join(certs, "ca.pem")):
        subprocess.run(
            [*shlex.split(ctx["ft"]), "cert", "init", "--out", certs, "--hostname", "127.0.0.1"],
            check=True,
            timeout=60,
        )


def _entry(name, root, tls):
    return Tunnel(
        f"snap-tls {name}" if tls else f"snap {name}",
        server=_SERVER + (_SERVER_TLS if tls else ""),
        client=_CLIENT + (_CLIENT_TLS if tls else ""),
        setup=_certs if tls else None,
        kinds=("tcp",),
        requires=("exe:" + _FT, f"path:{root}/ferrotunnel-core/src"),
        wait_port="control",
        env={"PYTHONPATH": ":".join(f"{root}/ferrotunnel-{p}/src" for p in _PACKAGES)},
        notes=f"ferrotunnel tcp{' tls' if tls else ''} from the source tree in {root}",
    )


def _http_entry(name, root):
    return Tunnel(
        f"snap-http {name}",
        server=_SERVER_HTTP,
        client=_CLIENT_HTTP,
        kinds=("http",),
        http_host="bench.localhost",
        requires=("exe:" + _FT, f"path:{root}/ferrotunnel-core/src"),
        wait_port="control",
        env={"PYTHONPATH": ":".join(f"{root}/ferrotunnel-{p}/src" for p in _PACKAGES)},
        notes=f"ferrotunnel http from the source tree in {root}",
    )


TUNNELS = [_entry(name, root, tls) for name, root in _snapshots() for tls in (False, True)]
TUNNELS += [_http_entry(name, root) for name, root in _snapshots()]
