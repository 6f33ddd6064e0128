"""tunnelbench plug-in: the HTTP tunnel with capture, metrics and tracing on.

``tunnelbench.py run --plugin benchmarks/observability_tunnels.py --only "ferrotunnel http,ft
http obs" --tests http`` measures ``ferrotunnel http`` (the observability plugins installed,
nothing enabled) beside the same server and client with the dashboard capturing, with
``--metrics``, with tracing, and with all three. Tracing exports every span (the SDK's
default sampler, parent-based always-on) over OTLP/HTTP to a sink in the harness's process
that reads and discards each batch, as a collector on the same machine would. Everything
runs in one invocation, so the ratios are what each costs on the request path; ``ferrotunnel
http again``, last, measures the baseline once more (``repeat_runs.py`` uses it to cancel the
machine's drift during the run).

This file is exec'd by the harness, which provides ``Tunnel`` in its namespace.
"""
# ruff: noqa: F821  (Tunnel is injected by tunnelbench.py)
# mypy: ignore-errors

import http.server
import os
import threading

_FT = os.environ.get("FERROTUNNEL_BIN", "ferrotunnel")
_SINKS = {}


class _Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format, *args):
        pass


def _start_sink(ctx):
    """An OTLP/HTTP endpoint on ``aux_port`` that accepts and drops every export."""
    port = ctx["aux_port"]
    if port not in _SINKS:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Sink)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        _SINKS[port] = server


_SERVER = (
    "{ft} server --token {token} --bind 127.0.0.1:{control_port} "
    "--http-bind 127.0.0.1:{public_port}"
)
_CLIENT = (
    "{ft} client --server 127.0.0.1:{control_port} --token {token} "
    "--local-addr {local_host}:{local_port} --tunnel-id bench.localhost"
)
_NO_DASHBOARD = " --no-dashboard"
#: the dashboard on an ephemeral port, capturing every exchange (heads + first 64 KiB)
_CAPTURE = " --dashboard-port 0"
_TRACING = " --otlp-endpoint http://127.0.0.1:{aux_port}/v1/traces"
_SERVER_METRICS = " --metrics --metrics-bind 127.0.0.1:0"
_CLIENT_METRICS = " --metrics --metrics-bind 127.0.0.1:0"


#: the standard variables for sampling one trace in ten (honouring a visitor's own decision)
_SAMPLE_10 = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}


def _tunnel(name, extra_server, extra_client, notes, setup=None, env=None):
    return Tunnel(
        name,
        server=_SERVER + extra_server,
        client=_CLIENT
        + (extra_client if _CAPTURE in extra_client else extra_client + _NO_DASHBOARD),
        kinds=("http",),
        http_host="bench.localhost",
        setup=setup,
        requires=("exe:" + _FT,),
        wait_port="control",
        env=env or {},
        notes=notes,
    )


TUNNELS = [
    _tunnel(
        "ft http obs capture",
        "",
        _CAPTURE,
        "ferrotunnel http, the client's dashboard capturing every exchange",
    ),
    _tunnel(
        "ft http obs capture+metrics+tracing",
        _SERVER_METRICS + _TRACING,
        _CAPTURE + _CLIENT_METRICS + _TRACING,
        "capture, metrics and tracing (every request sampled) all on",
        setup=_start_sink,
    ),
    _tunnel(
        "ft http obs capture+metrics+tracing@10%",
        _SERVER_METRICS + _TRACING,
        _CAPTURE + _CLIENT_METRICS + _TRACING,
        "capture, metrics and tracing, one trace in ten sampled",
        setup=_start_sink,
        env=_SAMPLE_10,
    ),
    _tunnel(
        "ft http obs metrics",
        _SERVER_METRICS,
        _CLIENT_METRICS,
        "ferrotunnel http, --metrics on server and client",
    ),
    _tunnel(
        "ft http obs tracing",
        _TRACING,
        _TRACING,
        "ferrotunnel http, every request traced on server and client, OTLP/HTTP to a sink",
        setup=_start_sink,
    ),
    _tunnel(
        "ft http obs metrics+tracing",
        _SERVER_METRICS + _TRACING,
        _CLIENT_METRICS + _TRACING,
        "ferrotunnel http, metrics and tracing on server and client",
        setup=_start_sink,
    ),
    _tunnel(
        "ft http obs metrics+tracing@10%",
        _SERVER_METRICS + _TRACING,
        _CLIENT_METRICS + _TRACING,
        "the same, one trace in ten sampled (OTEL_TRACES_SAMPLER=parentbased_traceidratio)",
        setup=_start_sink,
        env=_SAMPLE_10,
    ),
    # the baseline once more, last: benchmarks/repeat_runs.py compares each variant with the
    # baseline interpolated between its two runs
    _tunnel("ferrotunnel http again", "", "", "ferrotunnel http again, after the variants"),
]
