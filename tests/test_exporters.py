"""Exporters: Nagios plugin lines, JSON lines and Prometheus text."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from probekit import (
    ErrorKind,
    HttpProbe,
    Phase,
    ProbeContext,
    ProbeError,
    Result,
    Status,
    result_from_json,
)
from probekit._exporters import json_line, nagios_line, prometheus_text
from servers import HttpServer

STARTED = dt.datetime(2026, 11, 26, 14, 22, 14, tzinfo=dt.UTC)

#: One perfdata item as the Nagios plugin guidelines define it:
#: 'label'=value[UOM];[warn];[crit];[min];[max]
PERF_ITEM = re.compile(
    r"^(?:'(?:[^']|'')+'|[^'= ]+)=-?[0-9]+(?:\.[0-9]+)?(?:s|ms|us|%|B|KB|MB|TB|c)?"
    r"(?:;(?:-?[0-9]+(?:\.[0-9]+)?)?){0,4}$"
)
LINE = re.compile(
    r"^(?P<kind>[A-Z]+) (?P<state>OK|WARNING|CRITICAL|UNKNOWN) - (?P<text>[^|\n]+)"
    r" \| (?P<perf>[^|\n]+)$"
)


def make(status: Status = Status.UP, **kwargs: Any) -> Result:
    fields: dict[str, Any] = {
        "kind": "http",
        "target": "http://intranet.test/health",
        "status": status,
        "started_at": STARTED,
        "duration": 0.012,
        "phases": (
            Phase("resolve", 0.0, 0.0004),
            Phase("connect", 0.0004, 0.001),
            Phase("processing", 0.0014, 0.008),
            Phase("transfer", 0.0094, 0.0026),
        ),
        "metrics": {"status_code": 200, "body_bytes": 123},
    }
    fields.update(kwargs)
    return Result(**fields)


def perfdata(line: str) -> dict[str, str]:
    match = LINE.match(line)
    assert match is not None, line
    items = match.group("perf").split(" ")
    for item in items:
        assert PERF_ITEM.match(item), item
    return dict(item.split("=", 1) for item in items)


def test_nagios_line_for_an_up_http_check() -> None:
    line, code = nagios_line(make(), warn=0.5, crit=1)
    assert code == 0
    assert line == (
        "HTTP OK - 200 in 0.012 s | time=0.012s;0.5;1;0 size=123B;;;0 resolve=0.0004s;;;0 "
        "connect=0.001s;;;0 processing=0.008s;;;0 transfer=0.0026s;;;0"
    )
    assert perfdata(line)["time"] == "0.012s;0.5;1;0"


@pytest.mark.parametrize(
    ("status", "state", "code"),
    [
        (Status.UP, "OK", 0),
        (Status.DEGRADED, "WARNING", 1),
        (Status.DOWN, "CRITICAL", 2),
        (Status.UNKNOWN, "UNKNOWN", 3),
    ],
)
def test_nagios_states_and_exit_codes(status: Status, state: str, code: int) -> None:
    error = None if status is Status.UP else ProbeError(ErrorKind.ASSERTION, "slow", None)
    line, exit_code = nagios_line(make(status, error=error))
    assert exit_code == code
    match = LINE.match(line)
    assert match is not None
    assert match.group("state") == state
    perfdata(line)


def test_nagios_line_for_a_failure_without_a_response() -> None:
    result = make(
        Status.DOWN,
        kind="tcp",
        target="db.internal:5432",
        error=ProbeError(ErrorKind.CONNECT, "connection refused | try\nlater", "connect"),
        phases=(Phase("resolve", 0.0, 0.0001), Phase("connect", 0.0001, 0.0002)),
        metrics={},
        duration=0.0003,
    )
    line, code = nagios_line(result)
    assert code == 2
    assert line == (
        "TCP CRITICAL - db.internal:5432 in 0.000 s - connect during connect: connection "
        "refused / try later | time=0.0003s;;;0 resolve=0.0001s;;;0 connect=0.0002s;;;0"
    )
    perfdata(line)


def test_nagios_perfdata_sums_phases_over_redirect_hops_and_has_cert_days() -> None:
    phases = (
        Phase("resolve", 0.0, 0.001),
        Phase("connect", 0.001, 0.002),
        Phase("tls", 0.003, 0.004),
        Phase("processing", 0.007, 0.01),
        Phase("resolve", 0.017, 0.001),
        Phase("processing", 0.018, 0.02),
    )
    result = make(phases=phases, metrics={"status_code": 200, "cert_days_left": 88.5})
    perf = perfdata(nagios_line(result)[0])
    assert perf["resolve"] == "0.002s;;;0"
    assert perf["processing"] == "0.03s;;;0"
    assert perf["cert_days_left"] == "88.5"
    assert list(perf) == ["time", "resolve", "connect", "tls", "processing", "cert_days_left"]


def test_nagios_tiny_durations_are_plain_decimals() -> None:
    result = make(duration=4e-7, phases=(Phase("resolve", 0.0, 3e-8),), metrics={})
    line, _ = nagios_line(result)
    assert "e-" not in line
    assert perfdata(line) == {"time": "0.0000004s;;;0", "resolve": "0.00000003s;;;0"}


async def test_nagios_line_from_a_real_check(http_server: HttpServer, ctx: ProbeContext) -> None:
    result = await HttpProbe(http_server.url("/")).check(ctx)
    line, code = nagios_line(result)
    assert code == 0
    assert line.startswith("HTTP OK - 200 in ")
    perf = perfdata(line)
    assert perf["size"] == f"{len(b'hello probekit')}B;;;0"
    assert {"time", "resolve", "connect", "processing", "transfer"} <= set(perf)


def test_json_line() -> None:
    result = make(error=ProbeError(ErrorKind.TIMEOUT, "timed out\nduring processing", "processing"))
    line = json_line(result)
    assert "\n" not in line
    assert result_from_json(line) == result
    tagged = json_line(result, monitor="api")
    assert json.loads(tagged)["monitor"] == "api"
    assert result_from_json(tagged) == result


def families(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge"
        assert family.documentation
        out[family.name] = family.samples
    return out


def test_prometheus_text_parses_and_has_the_samples() -> None:
    up = make(
        phases=(
            Phase("resolve", 0.0, 0.001),
            Phase("connect", 0.001, 0.002),
            Phase("tls", 0.003, 0.003),
            Phase("processing", 0.006, 0.004),
            Phase("processing", 0.01, 0.002),
        ),
        metrics={"status_code": 200, "cert_days_left": 42.25},
    )
    down = make(
        Status.DOWN,
        kind="tcp",
        target="db.internal:5432",
        error=ProbeError(ErrorKind.CONNECT, "refused", "connect"),
        phases=(Phase("resolve", 0.0, 0.001),),
        metrics={},
        duration=0.5,
    )
    slow = make(Status.DEGRADED)
    text = prometheus_text({"web": up, "db": down, "slow": slow})
    found = families(text)
    assert set(found) == {
        "probekit_up",
        "probekit_status",
        "probekit_check_duration_seconds",
        "probekit_duration_seconds",
        "probekit_cert_days_left",
        "probekit_http_status_code",
        "probekit_last_check_timestamp_seconds",
    }

    def value(name: str, monitor: str, **labels: str) -> float:
        matches = [
            s.value
            for s in found[name]
            if s.labels["monitor"] == monitor and labels.items() <= s.labels.items()
        ]
        assert len(matches) == 1, (name, monitor, labels)
        return float(matches[0])

    assert value("probekit_up", "web") == 1
    assert value("probekit_up", "slow") == 1
    assert value("probekit_up", "db") == 0
    assert value("probekit_status", "web") == 0
    assert value("probekit_status", "slow") == 1
    assert value("probekit_status", "db") == 2
    assert value("probekit_check_duration_seconds", "db") == 0.5
    assert value("probekit_duration_seconds", "web", phase="processing") == pytest.approx(0.006)
    assert value("probekit_duration_seconds", "web", phase="tls") == pytest.approx(0.003)
    assert value("probekit_duration_seconds", "db", phase="resolve") == pytest.approx(0.001)
    assert value("probekit_cert_days_left", "web") == 42.25
    assert value("probekit_http_status_code", "web") == 200
    assert value("probekit_last_check_timestamp_seconds", "db") == STARTED.timestamp()
    assert {s.labels["monitor"] for s in found["probekit_cert_days_left"]} == {"web"}
    sample = next(s for s in found["probekit_up"] if s.labels["monitor"] == "db")
    assert sample.labels == {"monitor": "db", "kind": "tcp", "target": "db.internal:5432"}


def test_prometheus_label_escaping_of_odd_targets() -> None:
    odd_target = 'http://odd.test/a"b\\c?q=1\nx'
    odd_monitor = 'mon "1" \\ \n two'
    text = prometheus_text({odd_monitor: make(target=odd_target)})
    assert 'target="http://odd.test/a\\"b\\\\c?q=1\\nx"' in text
    samples = families(text)["probekit_up"]
    assert [(s.labels["monitor"], s.labels["target"]) for s in samples] == [
        (odd_monitor, odd_target)
    ]


def test_prometheus_text_with_no_results() -> None:
    assert prometheus_text({}) == ""
    assert list(text_string_to_metric_families("")) == []
