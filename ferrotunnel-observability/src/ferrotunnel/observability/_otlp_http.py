"""OTLP/HTTP: posting encoded requests, configured as the SDK's exporter is.

The SDK's ``OTLPSpanExporter`` takes spans, not bytes (its byte-level client is private), and
posts through ``requests``: about 0.7 ms of CPU per request against 0.13 ms for a kept-alive
``http.client`` connection. So :class:`OtlpHttpSender` posts the bytes itself, with the
exporter's settings and their precedence (a traces-specific variable over the general one):

=========================  ====================================================================
endpoint                   the ``endpoint`` given, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` as is,
                           ``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/traces``,
                           ``http://localhost:4318/v1/traces``
headers                    ``OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`` (``k=v,k2=v2``, URL-encoded)
timeout                    ``OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT`` seconds, default 10
compression                ``OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION``: ``gzip``, ``deflate``,
                           ``none`` (default)
TLS                        ``OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE`` (else ``requests``' own
                           ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``, else certifi's roots),
                           ``..._CLIENT_CERTIFICATE`` and ``..._CLIENT_KEY``
=========================  ====================================================================

and its retries: a 429, 502, 503 or 504 answer or a connection error is retried with
exponential backoff (1, 2, 4… s, ±20 %, or the answer's ``Retry-After``) until the timeout;
a connection error on a kept-alive connection is first retried at once on a new one.

What it does not do — a proxy from ``HTTP(S)_PROXY``, the Python exporter's credential
provider entry points — :func:`standard_exporter_reason` reports, and the plugin then uses the
SDK's exporter instead.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import os
import random
import ssl
import threading
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from opentelemetry.util.re import parse_env_headers

__all__ = ["OtlpHttpSender", "OtlpHttpSettings", "standard_exporter_reason"]

log = logging.getLogger("ferrotunnel.observability.tracing")

DEFAULT_ENDPOINT = "http://localhost:4318"
TRACES_PATH = "v1/traces"
DEFAULT_TIMEOUT = 10.0
MAX_ATTEMPTS = 6
RETRYABLE = frozenset({429, 502, 503, 504})
COMPRESSIONS = ("none", "gzip", "deflate")

_CONNECTION_ERRORS = (OSError, http.client.HTTPException)


def _user_agent() -> str:
    try:
        return f"ferrotunnel-observability/{version('ferrotunnel-observability')}"
    except PackageNotFoundError:  # pragma: no cover - a source checkout without metadata
        return "ferrotunnel-observability"


def _setting(env: Mapping[str, str], name: str) -> str | None:
    """``OTEL_EXPORTER_OTLP_TRACES_<name>``, else ``OTEL_EXPORTER_OTLP_<name>``."""
    return env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or env.get(f"OTEL_EXPORTER_OTLP_{name}")


@dataclass(frozen=True)
class OtlpHttpSettings:
    """Where and how to post: the exporter's configuration, resolved."""

    endpoint: str
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT
    compression: str = "none"
    certificate: str | None = None
    client_certificate: str | None = None
    client_key: str | None = None

    @classmethod
    def from_env(
        cls, endpoint: str | None = None, env: Mapping[str, str] = os.environ
    ) -> OtlpHttpSettings:
        if not endpoint:
            endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        if not endpoint:
            base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_ENDPOINT
            endpoint = f"{base.removesuffix('/')}/{TRACES_PATH}"
        raw_timeout = _setting(env, "TIMEOUT")
        try:
            timeout = float(raw_timeout) if raw_timeout else DEFAULT_TIMEOUT
        except ValueError:
            log.warning("invalid OTLP timeout %r: %s s", raw_timeout, DEFAULT_TIMEOUT)
            timeout = DEFAULT_TIMEOUT
        compression = (_setting(env, "COMPRESSION") or "none").strip().lower()
        if compression not in COMPRESSIONS:
            log.warning("unsupported OTLP compression %r: none", compression)
            compression = "none"
        return cls(
            endpoint=endpoint,
            headers=dict(parse_env_headers(_setting(env, "HEADERS") or "", liberal=True)),
            timeout=timeout,
            compression=compression,
            certificate=_setting(env, "CERTIFICATE")
            or env.get("REQUESTS_CA_BUNDLE")
            or env.get("CURL_CA_BUNDLE"),
            client_certificate=_setting(env, "CLIENT_CERTIFICATE"),
            client_key=_setting(env, "CLIENT_KEY"),
        )


def standard_exporter_reason(
    settings: OtlpHttpSettings, env: Mapping[str, str] = os.environ
) -> str | None:
    """Why only the SDK's exporter can post to ``settings.endpoint``, or None."""
    url = urllib.parse.urlsplit(settings.endpoint)
    if url.scheme not in ("http", "https") or not url.hostname:
        return f"endpoint {settings.endpoint!r} is not an http(s) URL"
    for name in (
        "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
        "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER",
    ):
        if env.get(name):
            return f"{name} is set"
    if url.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(url.hostname):
        return f"a proxy is configured for {url.scheme}"
    return None


class OtlpHttpSender:
    """Posts encoded ``ExportTraceServiceRequest``\\ s on one kept-alive connection (from one
    thread at a time: the exporter's)."""

    def __init__(self, settings: OtlpHttpSettings) -> None:
        self.settings = settings
        url = urllib.parse.urlsplit(settings.endpoint)
        self._https = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port or (443 if self._https else 80)
        self._path = url.path or "/"
        if url.query:
            self._path += "?" + url.query
        headers = {"content-type": "application/x-protobuf", "user-agent": _user_agent()}
        headers.update({k.lower(): v for k, v in settings.headers.items()})
        if settings.compression != "none":
            headers.setdefault("content-encoding", settings.compression)
        self._headers = headers
        self._ssl = self._ssl_context() if self._https else None
        self._connection: http.client.HTTPConnection | None = None
        self._closed = threading.Event()

    def _ssl_context(self) -> ssl.SSLContext:
        settings = self.settings
        cafile = settings.certificate
        if cafile is None:
            try:
                import certifi  # what the SDK's exporter (requests) verifies against
            except ImportError:  # pragma: no cover - requests depends on certifi
                pass
            else:
                cafile = certifi.where()
        if cafile is not None and os.path.isdir(cafile):
            context = ssl.create_default_context(capath=cafile)
        else:
            context = ssl.create_default_context(cafile=cafile)
        if settings.client_certificate:
            context.load_cert_chain(settings.client_certificate, settings.client_key)
        return context

    def send(self, data: bytes) -> bool:
        """Post one request (retrying as the SDK's exporter does); whether it was taken."""
        compression = self.settings.compression
        if compression == "gzip":
            data = gzip.compress(data, compresslevel=6)
        elif compression == "deflate":
            data = zlib.compress(data)
        deadline = time.monotonic() + self.settings.timeout
        for attempt in range(MAX_ATTEMPTS):
            delay = 2**attempt * random.uniform(0.8, 1.2)
            try:
                status, reason, retry_after = self._post(data, deadline)
            except _CONNECTION_ERRORS as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= status < 400:
                    return True
                problem = f"{status} {reason}"
                if status not in RETRYABLE:
                    log.error("the OTLP collector refused a batch of spans: %s", problem)
                    return False
                if retry_after is not None:
                    delay = retry_after
            if attempt + 1 == MAX_ATTEMPTS or delay > deadline - time.monotonic():
                break
            log.warning("exporting spans: %s; retrying in %.1f s", problem, delay)
            if self._closed.wait(delay):
                break
        log.error("exporting spans failed: %s", problem)
        return False

    def _post(self, data: bytes, deadline: float) -> tuple[int, str, float | None]:
        """One POST: the status, the reason and the ``Retry-After`` seconds. A kept-alive
        connection the collector had closed is replaced at once, once."""
        reused = self._connection is not None
        try:
            return self._post_once(data, deadline)
        except _CONNECTION_ERRORS:
            if not reused or time.monotonic() >= deadline:
                raise
        return self._post_once(data, deadline)

    def _post_once(self, data: bytes, deadline: float) -> tuple[int, str, float | None]:
        timeout = max(deadline - time.monotonic(), 0.001)
        connection = self._connection
        if connection is None:
            if self._https:
                connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout, context=self._ssl
                )
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._connection = connection
        elif connection.sock is not None:
            connection.sock.settimeout(timeout)
        try:
            connection.request("POST", self._path, body=data, headers=self._headers)
            response = connection.getresponse()
            response.read()
        except BaseException:
            self._drop_connection()
            raise
        if response.will_close:
            self._drop_connection()
        return response.status, response.reason, _seconds(response.getheader("retry-after"))

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def close(self) -> None:
        """Stop retrying; close the connection."""
        self._closed.set()
        self._drop_connection()


def _seconds(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds (HTTP dates are left to the backoff)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(seconds, 0.0) if seconds == seconds and seconds != float("inf") else None
