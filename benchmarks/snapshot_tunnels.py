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

This file is exec'd by the harness, which provides ``Tunnel`` in its namespace.
"""
# ruff: noqa: F821  (Tunnel is injected by tunnelbench.py)
# mypy: ignore-errors

import os

_FT = os.environ.get("FERROTUNNEL_BIN", "ferrotunnel")
_PACKAGES = ("core", "protocol", "cli", "http")

_SERVER = (
    "{ft} server --token {token} --bind 127.0.0.1:{control_port} "
    "--http-bind 127.0.0.1:{aux_port} --tcp-bind 127.0.0.1:{public_port}"
)
_CLIENT = (
    "{ft} client --server 127.0.0.1:{control_port} --token {token} "
    "--local-addr {local_host}:{local_port} --protocol tcp --no-dashboard"
)


def _snapshots():
    for item in os.environ.get("FT_SNAPSHOTS", "").split(","):
        name, sep, root = item.partition("=")
        if sep and name.strip() and root.strip():
            yield name.strip(), root.strip()


TUNNELS = [
    Tunnel(
        f"snap {name}",
        server=_SERVER,
        client=_CLIENT,
        kinds=("tcp",),
        requires=("exe:" + _FT, f"path:{root}/ferrotunnel-core/src"),
        wait_port="control",
        env={"PYTHONPATH": ":".join(f"{root}/ferrotunnel-{p}/src" for p in _PACKAGES)},
        notes=f"ferrotunnel tcp from the source tree in {root}",
    )
    for name, root in _snapshots()
]
