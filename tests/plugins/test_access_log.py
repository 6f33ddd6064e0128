"""access-log: one JSON line per exchange, to stderr or appended to a file."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ferrotunnel.core.errors import ConfigError
from ferrotunnel.core.plugin import ExchangeRecord, RequestContext, load_toml
from ferrotunnel.plugins import access_log
from ferrotunnel.plugins.access_log import AccessLog, _Clock, format_lines, format_record

from .helpers import config_of, make_ctx, make_record, schema_of

FIELDS = [
    "time", "tunnel", "host", "method", "path", "status", "bytes_in", "bytes_out",
    "duration_ms", "visitor_ip", "request_id",
]  # fmt: skip


def test_the_json_fields() -> None:
    ctx = make_ctx()
    line = json.loads(format_record(make_record(ctx, 201), ctx))
    assert list(line) == FIELDS
    assert line == {
        "time": "2023-11-14T22:13:20.250Z",
        "tunnel": "app",
        "host": "app.example.com",
        "method": "GET",
        "path": "/index.html?q=1",
        "status": 201,
        "bytes_in": 10,
        "bytes_out": 2048,
        "duration_ms": 12.346,
        "visitor_ip": "192.0.2.7",
        "request_id": "req-1",
    }


def _as_json_dumps_writes_it(record: ExchangeRecord, ctx: RequestContext) -> str:
    """The line as ``json.dumps`` of a dict writes it (what the fast formatter must match)."""
    moment = datetime.fromtimestamp(record.time, UTC).isoformat(timespec="milliseconds")
    line: dict[str, object] = {
        "time": moment.replace("+00:00", "Z"),
        "tunnel": record.tunnel,
        "host": record.host,
        "method": record.method,
        "path": record.path,
        "status": record.status,
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
        "duration_ms": round(record.duration * 1000.0, 3),
        "visitor_ip": record.visitor_ip,
        "request_id": record.request_id,
    }
    for key, name in [("trace_id", "trace_id"), ("basic_auth.user", "user")]:
        if key in ctx.state:
            line[name] = str(ctx.state[key])
    if record.error is not None:
        line["error"] = record.error
    return json.dumps(line, separators=(", ", ": "))


@given(
    moment=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    duration=st.floats(min_value=0, max_value=1e5, allow_nan=False),
    text=st.text(max_size=20),
    numbers=st.tuples(*[st.integers(0, 2**63)] * 3),
    user=st.none() | st.text(max_size=8),
    error=st.none() | st.text(max_size=8),
)
def test_the_line_is_what_json_dumps_writes(
    moment: float,
    duration: float,
    text: str,
    numbers: tuple[int, int, int],
    user: str | None,
    error: str | None,
) -> None:
    ctx = make_ctx(host=text, tunnel=text[::-1], visitor_ip=text)
    if user is not None:
        ctx.state["basic_auth.user"] = user
    status, bytes_in, bytes_out = numbers
    record = make_record(
        ctx, status, time=moment, duration=duration, method=text, path=text,
        bytes_in=bytes_in, bytes_out=bytes_out, error=error,
    )  # fmt: skip
    assert format_record(record, ctx) == _as_json_dumps_writes_it(record, ctx)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_one_write_per_batch_of_exchanges(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    with path.open("a", encoding="utf-8") as stream:
        writes: list[str] = []
        write = stream.write

        def counting_write(text: str) -> int:
            writes.append(text)
            return write(text)

        stream.write = counting_write  # type: ignore[method-assign]
        mw = AccessLog(stream)
        for status in (200, 201, 202):  # an exchange each (its record is its context)
            ctx = make_ctx()
            mw.on_complete(make_record(ctx, status), ctx)
        assert writes == []  # kept, not yet written: the batch is still running
        await asyncio.sleep(0)
        assert len(writes) == 1
        lines = path.read_text(encoding="utf-8").splitlines()  # flushed, not just buffered
        assert [json.loads(line)["status"] for line in lines] == [200, 201, 202]
        ctx = make_ctx()
        mw.on_complete(make_record(ctx, 203), ctx)
        mw.close()  # writes what is pending
    assert json.loads(path.read_text(encoding="utf-8").splitlines()[-1])["status"] == 203


def test_optional_fields() -> None:
    ctx = make_ctx()
    ctx.state["trace_id"] = "4bf92f3577b34da6a3ce929d0e0e4736"
    ctx.state["basic_auth.user"] = "alice"
    line = json.loads(
        format_record(make_record(ctx, 502, error="origin refused"), ctx, query=False)
    )
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert line["user"] == "alice"
    assert line["error"] == "origin refused"
    assert line["path"] == "/index.html"


def test_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    config = config_of(access_log, "access-log", {"access_log": {"enabled": True}})
    [mw] = access_log.ferrotunnel_http_middlewares(config)
    ctx = make_ctx()
    mw.on_complete(make_record(ctx), ctx)
    mw.on_complete(make_record(ctx, 404), ctx)
    err = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["status"] for line in err] == [200, 404]


def test_appended_to_a_file_relative_to_the_configuration(tmp_path: Path) -> None:
    (tmp_path / "access.log").write_text('{"old": true}\n', encoding="utf-8")
    config_file = tmp_path / "ferrotunnel.toml"
    config_file.write_text('[access_log]\npath = "access.log"\n', encoding="utf-8")
    config = load_toml(schema_of(access_log, "access-log"), config_file)
    access_log.ferrotunnel_configure(config)
    [mw] = access_log.ferrotunnel_http_middlewares(config)
    try:
        ctx = make_ctx()
        mw.on_complete(make_record(ctx), ctx)
        # no event loop: written and flushed at once, before the file is closed
        lines = (tmp_path / "access.log").read_text(encoding="utf-8").splitlines()
    finally:
        mw.close()
    assert json.loads(lines[0]) == {"old": True}
    assert json.loads(lines[1])["request_id"] == "req-1"


def test_only_the_listed_tunnels(capsys: pytest.CaptureFixture[str]) -> None:
    mw = AccessLog(tunnels=("*.example.com",))
    for host in ["app.example.com", "app.example.org"]:
        ctx = make_ctx(host=host)
        mw.on_complete(make_record(ctx), ctx)
    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["host"] for line in lines] == ["app.example.com"]


def test_write_failures_are_reported_once(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    stream = (tmp_path / "x.log").open("a", encoding="utf-8")
    stream.close()
    mw = AccessLog(stream)
    ctx = make_ctx()
    mw.on_complete(make_record(ctx), ctx)
    mw.on_complete(make_record(ctx), ctx)
    assert caplog.text.count("cannot write") == 1


def test_a_bad_path_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "access.log"
    config = config_of(access_log, "access-log", {"access_log": {"path": str(path)}})
    with pytest.raises(ConfigError, match=r"access\.log"):
        access_log.ferrotunnel_configure(config)


def test_off_unless_enabled_or_given_a_path(tmp_path: Path) -> None:
    def count(table: dict[str, object]) -> int:
        middlewares = access_log.ferrotunnel_http_middlewares(
            config_of(access_log, "access-log", {"access_log": table})
        )
        for mw in middlewares:
            mw.close()
        return len(middlewares)

    log = str(tmp_path / "a.log")
    assert count({}) == 0
    assert count({"enabled": True}) == 1
    assert count({"path": log}) == 1
    assert count({"path": log, "enabled": False}) == 0
    assert count({"enabled": True, "tunnels": []}) == 0


@given(
    start=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    steps=st.lists(st.floats(min_value=0, max_value=2e-3, allow_nan=False), max_size=30),
)
def test_times_close_together_read_as_datetime_writes_them(
    start: float, steps: list[float]
) -> None:
    """The clock keeps the text of the last millisecond: moments in it, and moments a hair
    either side of its ends (where rounding to microseconds decides), still read exactly."""
    clock = _Clock()
    moment = start
    for step in [0.0, *steps, 0.0005, 0.0009995, 0.0000005]:
        moment += step
        expected = datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")
        assert clock.iso(moment) == expected.replace("+00:00", "Z")


@given(
    start=st.floats(min_value=1, max_value=4e9, allow_nan=False),
    steps=st.lists(st.floats(min_value=-2e-3, max_value=2e-3, allow_nan=False), max_size=30),
)
@example(start=1_700_000_000.0009996, steps=[-0.0004996])  # the next ms's text, then this ms
def test_a_batch_of_lines_reads_its_times_as_datetime_writes_them(
    start: float, steps: list[float]
) -> None:
    """format_lines reuses a millisecond's text only inside that millisecond (a batch's
    records are in the order their exchanges ended, not started)."""
    moments, moment = [], start
    for step in [0.0, *steps, 0.0005, 0.0009995, 0.0000005]:
        moment += step
        moments.append(moment)
    records = [make_record(make_ctx(), time=m) for m in moments]
    lines = format_lines(records).splitlines()
    for line, m in zip(lines, moments, strict=True):
        expected = datetime.fromtimestamp(m, UTC).isoformat(timespec="milliseconds")
        assert json.loads(line)["time"] == expected.replace("+00:00", "Z")


def test_a_record_that_cannot_be_written_costs_only_its_own_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "access.log"
    with path.open("a", encoding="utf-8") as stream:
        mw = AccessLog(stream)
        good, bad, last = (make_record(make_ctx(), status) for status in (200, 500, 201))
        bad.time = float("inf")  # int() of it raises
        mw._pending = [good, bad, last]  # one batch, as on_complete keeps them in a loop
        mw.flush()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["status"] for line in lines] == [200, 201]
    assert "cannot write the line of request req-1" in caplog.text
