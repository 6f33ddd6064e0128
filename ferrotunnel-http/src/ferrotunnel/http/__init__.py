"""ferrotunnel's HTTP ingress: public HTTP/1.1 and h2c routed by Host and path to tunnels.

Plug it into a server::

    from ferrotunnel.core import Server
    from ferrotunnel.http import HttpIngress, HttpIngressConfig

    ingress = HttpIngress(HttpIngressConfig(bind=Address.parse("0.0.0.0:8080")))
    async with Server(token="secret", ingresses=[ingress]):
        ...

Clients ask for ``TunnelKind.HTTP`` tunnels; their streams are spliced to the local web app
like TCP tunnels, so the client side needs nothing from this package.
"""

from .ingress import HttpIngress, HttpIngressConfig

__all__ = ["HttpIngress", "HttpIngressConfig"]
