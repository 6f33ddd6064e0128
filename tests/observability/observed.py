"""A server and a client in the test's process, each with its own observability plugins,
serving one HTTP tunnel; and Prometheus text parsed into samples."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ferrotunnel.core import Address, Backoff, Client, Server
from ferrotunnel.core.testing import plugin_host
from ferrotunnel.http import HttpIngress, HttpIngressConfig
from tests.http.harness import HOST, http_tunnel

TOKEN = "observability-token"
APP = "app.localhost"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Observed:
    server: Server
    ingress: HttpIngress
    client: Client

    @property
    def port(self) -> int:
        assert self.ingress.address is not None
        return self.ingress.address.port


@asynccontextmanager
async def observed_stack(
    origin_port: int,
    *,
    server_plugins: Sequence[object] = (),
    client_plugins: Sequence[object] = (),
    client_config: Mapping[str, object] | None = None,
    reconnect: bool = False,
) -> AsyncIterator[Observed]:
    """A server (HTTP ingress) with ``server_plugins`` and a client with ``client_plugins``
    (configured from ``client_config``) serving ``APP`` from ``127.0.0.1:origin_port``."""
    server_host = plugin_host(*server_plugins)
    client_host = plugin_host(*client_plugins, config=client_config)
    assert server_host.config is not None
    assert client_host.config is not None
    ingress = HttpIngress(
        HttpIngressConfig(bind=Address(HOST, 0)),
        middlewares=server_host.http_middlewares(server_host.config),
        plugins=server_host,
    )
    async with Server(
        token=TOKEN, bind=f"{HOST}:0", ingresses=[ingress], plugins=server_host, drain_timeout=0.25
    ) as server:
        client = Client(
            server_addr=str(server.control_address),
            token=TOKEN,
            tunnels=[http_tunnel(APP, origin_port)],
            drain_timeout=0.25,
            reconnect=reconnect,
            backoff=Backoff(0.01, 0.05),
            plugins=client_host,
            stream_observers=client_host.stream_observers(client_host.config),
        )
        async with client:
            yield Observed(server, ingress, client)
            for conn in list(ingress.connections):
                conn._close()


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(registry: CollectorRegistry) -> Samples:
    return parse(generate_latest(registry).decode())


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))
