"""Five HTTP middlewares that do nothing, shaped like the five built-ins of Issue 5's benchmark.

ip-filter and rate-limit have an ``on_request``, the circuit breaker ``on_request`` and
``on_complete``, headers ``on_response``, the access log ``on_complete``: the same steps, each
returning at once. What this configuration ("five no-ops" in ``request_cpu.py``'s plugins
suite) costs is the framework's part of what any five such plugins cost — the exchange's
context, the calls, the outcome handed over after the batch — before they do any work.

Not a package: ``request_cpu.noop_plugins_path`` puts this folder and a made-up
distribution's metadata (an entry point in the ``ferrotunnel`` group naming this module) on
the measured processes' ``PYTHONPATH``, where plugin discovery finds it as it finds any
installed plugin.
"""
# mypy: ignore-errors

from ferrotunnel.core.plugin import hookimpl


class OnRequest:
    def on_request(self, request, ctx):
        return None


class OnRequestAndComplete:
    def on_request(self, request, ctx):
        return None

    def on_complete(self, record, ctx):
        return None


class OnResponse:
    def on_response(self, response, ctx):
        return None


class OnComplete:
    def on_complete(self, record, ctx):
        return None


@hookimpl
def ferrotunnel_http_middlewares(config):
    return [OnRequest(), OnRequest(), OnResponse(), OnRequestAndComplete(), OnComplete()]
