"""ferrotunnel's built-in plugins.

Each is a module registered as its own ``ferrotunnel`` entry point, configured by its own
TOML table, and inert while that table is unset:

* ``auth`` (``[auth]``): named client tokens with claim scopes
* ``basic-auth`` (``[basic_auth]``): HTTP basic authentication of visitors
* ``ip-filter`` (``[ip_filter]``): allow/deny visitor networks, HTTP and TCP
* ``rate-limit`` (``[rate_limit]``): token buckets per visitor and per tunnel
* ``circuit-breaker`` (``[circuit_breaker]``): fast 503 while an origin keeps failing
* ``access-log`` (``[access_log]``): a JSON line per HTTP exchange
* ``headers`` (``[headers]``): set/add/remove request and response headers

Per-tunnel tables are keyed by patterns matched against the visitor's host and the tunnel
name (see :class:`~ferrotunnel.plugins._common.TunnelMatcher`). Block one with
``--block-plugin NAME`` like any other plugin.
"""

__all__ = ["BUILTINS"]

#: entry-point name → module of every built-in plugin
BUILTINS = {
    "auth": "ferrotunnel.plugins.auth",
    "basic-auth": "ferrotunnel.plugins.basic_auth",
    "ip-filter": "ferrotunnel.plugins.ip_filter",
    "rate-limit": "ferrotunnel.plugins.rate_limit",
    "circuit-breaker": "ferrotunnel.plugins.circuit_breaker",
    "access-log": "ferrotunnel.plugins.access_log",
    "headers": "ferrotunnel.plugins.headers",
}
