"""ferrotunnel-hello: greets every HTTP response that passes the server's ingress."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ferrotunnel.core.plugin import (
    Config,
    ConfigSchema,
    HttpResponse,
    RequestContext,
    from_mapping,
    hookimpl,
)

if TYPE_CHECKING:
    import click

__version__ = "0.1.0"


@dataclass(frozen=True)
class HelloSettings:
    """``[hello]`` in the configuration file."""

    #: the response header to add
    header: str = "X-Hello"
    #: its value
    greeting: str = "world"


class Greeter:
    """The middleware: a plain method, so it runs inline (no task per request)."""

    def __init__(self, settings: HelloSettings) -> None:
        self.settings = settings

    def on_response(self, response: HttpResponse, ctx: RequestContext) -> None:
        response.set_header(self.settings.header, self.settings.greeting)


@hookimpl
def ferrotunnel_add_config(schema: ConfigSchema) -> None:
    schema.add_table("hello", HelloSettings, owner="ferrotunnel-hello", help="greeting header")


# ``list[Greeter]``, not ``list[HttpMiddleware]``: that Protocol lists all three methods, and
# Greeter has only the one it needs (every method of a middleware is optional).
@hookimpl
def ferrotunnel_http_middlewares(config: Config) -> list[Greeter]:
    return [Greeter(config.get(HelloSettings))]


@hookimpl
def ferrotunnel_register_commands(cli: click.Group) -> None:
    import click  # only the CLI calls this hook, and it has click

    @cli.command()
    @click.option("--config", "config_file", help="Configuration file with a [hello] table.")
    def hello(config_file: str | None) -> None:
        """Print the header the hello plugin adds to responses."""
        import tomllib

        data: dict[str, Any] = {}
        if config_file:
            with open(config_file, "rb") as f:
                data = tomllib.load(f)
        schema = ConfigSchema()
        ferrotunnel_add_config(schema)
        settings = from_mapping(schema, {"hello": data.get("hello", {})}).get(HelloSettings)
        click.echo(f"{settings.header}: {settings.greeting}")
