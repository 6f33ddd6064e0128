"""tunnelbench plug-in: the HTTP tunnel with five built-in plugins enabled.

``tunnelbench.py run --plugin benchmarks/plugin_tunnels.py --only "ferrotunnel http,ft http"``
measures ``ferrotunnel http`` (no plugin configured) beside ``ft http +5 plugins``: the same
server and client, the server started with a configuration that enables ip-filter, rate-limit
(generous: it must not refuse wrk), headers, circuit-breaker and access-log (to a file).
Both run in one invocation, so their ratio is what the plugins cost on the request path;
``ferrotunnel http again`` runs the baseline once more after them (``repeat_runs.py`` uses it
to cancel the machine's drift during the run).

This file is exec'd by the harness, which provides ``Tunnel`` in its namespace.
"""
# ruff: noqa: F821  (Tunnel is injected by tunnelbench.py)
# mypy: ignore-errors

import os

_FT = os.environ.get("FERROTUNNEL_BIN", "ferrotunnel")

_PLUGINS_TOML = """\
[ip_filter.tunnels."*"]
allow = ["127.0.0.0/8"]

[rate_limit]
per_ip = { rate = 1000000.0, burst = 1000000 }

[headers.tunnels."*"]
response_set = { "X-Served-By" = "ferrotunnel" }

[circuit_breaker.tunnels."*"]
failure_threshold = 5

[access_log]
path = "{tmp}/access.jsonl"
"""


def _write_config(ctx):
    with open(os.path.join(ctx["tmp"], "plugins.toml"), "w") as fh:
        fh.write(_PLUGINS_TOML.replace("{tmp}", ctx["tmp"]))


TUNNELS = [
    Tunnel(
        "ft http +5 plugins",
        server="{ft} server --token {token} --bind 127.0.0.1:{control_port} "
        "--http-bind 127.0.0.1:{public_port} --config {tmp}/plugins.toml",
        client="{ft} client --server 127.0.0.1:{control_port} --token {token} "
        "--local-addr {local_host}:{local_port} --tunnel-id bench.localhost --no-dashboard",
        kinds=("http",),
        http_host="bench.localhost",
        setup=_write_config,
        requires=("exe:" + _FT,),
        wait_port="control",
        notes="ferrotunnel http with ip-filter, rate-limit, headers, circuit-breaker, access-log",
    ),
    # the baseline once more, last: benchmarks/repeat_runs.py compares "+5 plugins" with the
    # mean of the baseline's two runs around it
    Tunnel(
        "ferrotunnel http again",
        server="{ft} server --token {token} --bind 127.0.0.1:{control_port} "
        "--http-bind 127.0.0.1:{public_port}",
        client="{ft} client --server 127.0.0.1:{control_port} --token {token} "
        "--local-addr {local_host}:{local_port} --tunnel-id bench.localhost --no-dashboard",
        kinds=("http",),
        http_host="bench.localhost",
        requires=("exe:" + _FT,),
        wait_port="control",
        notes="ferrotunnel http again, after the plugins' run",
    ),
]
