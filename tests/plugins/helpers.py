"""Fakes of what the HTTP ingress hands middlewares, and configuration helpers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from ferrotunnel.core.plugin import (
    Config,
    ConfigSchema,
    ExchangeRecord,
    HttpRequest,
    HttpResponse,
    PluginHost,
    RequestContext,
    load_toml,
)
from ferrotunnel.core.plugin.config import from_mapping


class FakeHeaders:
    """Header lines in order, like a real head (a name may repeat)."""

    def __init__(self, headers: Mapping[str, str] | None = None) -> None:
        self.lines: list[tuple[str, str]] = list((headers or {}).items())

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.lines if k.lower() == name.lower()]

    def set_header(self, name: str, value: str) -> None:
        self.remove_header(name)
        self.lines.append((name, value))

    def add_header(self, name: str, value: str) -> None:
        self.lines.append((name, value))

    def remove_header(self, name: str) -> None:
        self.lines = [(k, v) for k, v in self.lines if k.lower() != name.lower()]

    def as_dict(self) -> dict[str, str]:
        """Repeated lines joined with ", " (the list form HTTP defines for them)."""
        joined: dict[str, tuple[str, list[str]]] = {}
        for name, value in self.lines:
            joined.setdefault(name.lower(), (name, []))[1].append(value)
        return {name: ", ".join(values) for name, values in joined.values()}


class FakeRequest(FakeHeaders):
    def __init__(
        self,
        headers: Mapping[str, str] | None = None,
        *,
        method: str = "GET",
        path: str = "/",
        host: str = "app.example.com",
    ) -> None:
        super().__init__(headers)
        self._method, self._path, self._host = method, path, host

    @property
    def method_text(self) -> str:
        return self._method

    @property
    def path(self) -> str:
        return self._path

    @property
    def host(self) -> str:
        return self._host


class FakeResponse(FakeHeaders):
    def __init__(self, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(headers)
        self._status = status

    @property
    def status(self) -> int:
        return self._status


# they really are what the protocols describe
_request: HttpRequest = FakeRequest()
_response: HttpResponse = FakeResponse()


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_ctx(
    host: str = "app.example.com", tunnel: str = "app", visitor_ip: str = "192.0.2.7"
) -> RequestContext:
    return RequestContext(
        tunnel=tunnel, host=host, visitor_ip=visitor_ip, visitor_port=50000, request_id="req-1"
    )


def make_record(ctx: RequestContext, status: int = 200, **changes: Any) -> ExchangeRecord:
    """``ctx``, its exchange ended (a record is its context, completed)."""
    values: dict[str, Any] = {
        "time": 1_700_000_000.25,
        "method": "GET",
        "path": "/index.html?q=1",
        "status": status,
        "bytes_in": 10,
        "bytes_out": 2048,
        "duration": 0.0123456,
    }
    values.update(changes)
    for name, value in values.items():
        setattr(ctx, name, value)
    return ctx


def schema_of(module: ModuleType, name: str) -> ConfigSchema:
    return PluginHost.with_plugins([module], names=[name]).schema()


def config_of(module: ModuleType, name: str, data: Mapping[str, object]) -> Config:
    return from_mapping(schema_of(module, name), data)


def toml_config(module: ModuleType, name: str, path: Path, text: str) -> Config:
    path.write_text(text, encoding="utf-8")
    return load_toml(schema_of(module, name), path)
