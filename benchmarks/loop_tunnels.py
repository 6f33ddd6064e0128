"""tunnelbench plug-in: ``ferrotunnel tcp`` pinned to one event loop per entry.

Load it with ``tunnelbench.py run --plugin benchmarks/loop_tunnels.py``. Each entry runs the
same server/client commands as the harness's ``ferrotunnel tcp`` but sets ``FERROTUNNEL_LOOP``
(the CLI's ``--loop`` option) in the environment of both tunnel processes. The names avoid
the substring ``ferrotunnel tcp`` so that ``--only "ferrotunnel tcp"`` does not pick them up.

This file is exec'd by the harness, which provides ``Tunnel`` in its namespace.
"""
# ruff: noqa: F821  (Tunnel is injected by tunnelbench.py)
# mypy: ignore-errors

import os

_FT = os.environ.get("FERROTUNNEL_BIN", "ferrotunnel")

_SERVER = (
    "{ft} server --token {token} --bind 127.0.0.1:{control_port} "
    "--http-bind 127.0.0.1:{aux_port} --tcp-bind 127.0.0.1:{public_port}"
)
_CLIENT = (
    "{ft} client --server 127.0.0.1:{control_port} --token {token} "
    "--local-addr {local_host}:{local_port} --protocol tcp --no-dashboard"
)

TUNNELS = [
    Tunnel(
        f"ft loop={loop}",
        server=_SERVER,
        client=_CLIENT,
        kinds=("tcp",),
        requires=("exe:" + _FT,) + (("py:uvloop",) if loop == "uvloop" else ()),
        wait_port="control",
        env={"FERROTUNNEL_LOOP": loop},
        notes=f"ferrotunnel tcp with FERROTUNNEL_LOOP={loop} (server and client)",
    )
    for loop in ("asyncio", "uvloop")
]
