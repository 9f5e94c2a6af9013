"""Exporters: Nagios plugin lines, JSON lines and Prometheus text."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any, ClassVar

import attrs
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
from probekit._exporters import (
    PROMETHEUS_CONTENT_TYPE,
    Exposition,
    json_line,
    nagios_line,
    prometheus_text,
)
from probekit.probes import HostPort, Metric, ProbeKind, _registry, get_kind, register_kind
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
        "HTTP OK - status 200 in 0.012 s | time=0.012s;0.5;1;0 size=123B;;;0 resolve=0.0004s;;;0 "
        "connect=0.001s;;;0 processing=0.008s;;;0 transfer=0.0026s;;;0 status_code=200"
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
    assert list(perf) == [
        *("time", "resolve", "connect", "tls", "processing", "cert_days_left"),
        "status_code",  # then the metrics the http kind declares
    ]


def test_nagios_tiny_durations_are_plain_decimals() -> None:
    result = make(duration=4e-7, phases=(Phase("resolve", 0.0, 3e-8),), metrics={})
    line, _ = nagios_line(result)
    assert "e-" not in line
    assert perfdata(line) == {"time": "0.0000004s;;;0", "resolve": "0.00000003s;;;0"}


async def test_nagios_line_from_a_real_check(http_server: HttpServer, ctx: ProbeContext) -> None:
    result = await HttpProbe(http_server.url("/")).check(ctx)
    line, code = nagios_line(result)
    assert code == 0
    assert line.startswith("HTTP OK - status 200 in ")
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


def families(text: str, types: tuple[str, ...] = ("gauge",)) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        assert family.type in types
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
        "probekit_last_check_timestamp_seconds",
        # declared by the http kind (probekit.probes.http.KIND.metrics), for the results that
        # have them; `slow` has a body size, no result here has redirects or a version
        "probekit_http_status_code",
        "probekit_http_body_bytes",
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
    assert value("probekit_http_body_bytes", "slow") == 123
    assert {s.labels["monitor"] for s in found["probekit_http_status_code"]} == {"slow", "web"}
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


def test_the_exposition_is_prometheus_clients_text() -> None:
    """Family order as added; label values and help escaped; labels in name order; numbers
    as prometheus_client (and Go) write them; a counter keeps its ``_total`` name."""
    out = Exposition()
    odd = 'q"\\\n'
    out.family("x_up", "Help with \\ and\na newline.", "gauge", [({"b": odd, "a": "1"}, 1.0)])
    out.family("x_odd", "Odd values.", "gauge", [({"v": "nan"}, math.nan), ({"v": "+"}, math.inf)])
    out.family("x_odd2", "More.", "gauge", [({"v": "-"}, -math.inf), ({}, 0.25), ({}, 1.75e9)])
    out.family("x_seen_total", "Things seen.", "counter", [({}, 3)])
    out.family("x_none", "No samples.", "gauge", [])
    text = out.text()
    assert text == (
        "# HELP x_up Help with \\\\ and\\na newline.\n"
        "# TYPE x_up gauge\n"
        'x_up{a="1",b="q\\"\\\\\\n"} 1.0\n'
        "# HELP x_odd Odd values.\n"
        "# TYPE x_odd gauge\n"
        'x_odd{v="nan"} NaN\n'
        'x_odd{v="+"} +Inf\n'
        "# HELP x_odd2 More.\n"
        "# TYPE x_odd2 gauge\n"
        'x_odd2{v="-"} -Inf\n'
        "x_odd2 0.25\n"
        "x_odd2 1.75e+09\n"
        "# HELP x_seen_total Things seen.\n"
        "# TYPE x_seen_total counter\n"
        "x_seen_total 3.0\n"
        "# HELP x_none No samples.\n"
        "# TYPE x_none gauge\n"
    )
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert parsed["x_up"].documentation == "Help with \\ and\na newline."
    assert parsed["x_up"].samples[0].labels == {"a": "1", "b": odd}
    assert math.isnan(parsed["x_odd"].samples[0].value)
    assert [s.value for s in parsed["x_odd2"].samples] == [-math.inf, 0.25, 1.75e9]
    assert parsed["x_seen"].type == "counter"
    assert [(s.name, s.value) for s in parsed["x_seen"].samples] == [("x_seen_total", 3.0)]
    assert Exposition().text() == ""


def test_the_exposition_refuses_a_counter_without_total_and_other_types() -> None:
    out = Exposition()
    with pytest.raises(ValueError, match="counter x_seen: a counter's name must end in '_total'"):
        out.family("x_seen", "Things seen.", "counter", [({}, 1.0)])
    with pytest.raises(ValueError, match="counter _total: a counter's name must end"):
        out.family("_total", "Nothing before _total.", "counter", [({}, 1.0)])
    with pytest.raises(ValueError, match="metric x_h: type 'histogram' is not"):
        out.family("x_h", "A histogram.", "histogram", [])
    assert out.text() == ""


def test_the_content_type_is_what_prometheus_client_writes() -> None:
    from prometheus_client import exposition

    assert PROMETHEUS_CONTENT_TYPE == exposition.CONTENT_TYPE_PLAIN_0_0_4
    assert "version=0.0.4" in PROMETHEUS_CONTENT_TYPE


def test_prometheus_text_exports_the_metrics_each_kind_declares() -> None:
    web = make(metrics={"status_code": 301, "redirects": 2, "body_bytes": 9, "http_version": 2})
    db = make(
        kind="tcp", target="db.internal:5432", metrics={"bytes_sent": 4, "bytes_received": 17}
    )
    text = prometheus_text({"web": web, "db": db})
    found = families(text)
    declared = {m.name: m for kind in ("http", "tcp") for m in get_kind(kind).metrics}
    assert {"probekit_tcp_bytes_received", "probekit_tcp_bytes_sent"} <= set(declared)
    assert set(declared) <= set(found)
    for name, metric in declared.items():
        assert f"# HELP {name} {metric.help}\n# TYPE {name} {metric.type}\n" in text
        assert text.count(f"# HELP {name} ") == 1
    values = {(name, s.labels["monitor"]): s.value for name in declared for s in found[name]}
    assert values == {
        ("probekit_http_status_code", "web"): 301,
        ("probekit_http_redirects", "web"): 2,
        ("probekit_http_body_bytes", "web"): 9,
        ("probekit_http_version", "web"): 2,
        ("probekit_tcp_bytes_sent", "db"): 4,
        ("probekit_tcp_bytes_received", "db"): 17,
    }
    sample = found["probekit_tcp_bytes_received"][0]
    assert sample.labels == {"monitor": "db", "kind": "tcp", "target": "db.internal:5432"}


def test_prometheus_rows_are_sorted_by_monitor() -> None:
    results = {
        "c": make(kind="tcp", metrics={"bytes_sent": 1}),
        "a": make(),
        "b": make(kind="tcp", metrics={"bytes_sent": 1}),
    }
    found = families(prometheus_text(results))
    assert [s.labels["monitor"] for s in found["probekit_up"]] == ["a", "b", "c"]
    for samples in found.values():
        monitors = [s.labels["monitor"] for s in samples]
        assert monitors == sorted(monitors)


def test_a_result_of_a_kind_this_process_does_not_know_gets_the_common_families() -> None:
    relayed = make(kind="nosuchkind", target="x", metrics={"status_code": 200, "cert_days_left": 3})
    found = families(prometheus_text({"far": relayed}))
    assert set(found) == {
        "probekit_up",
        "probekit_status",
        "probekit_check_duration_seconds",
        "probekit_duration_seconds",
        "probekit_cert_days_left",
        "probekit_last_check_timestamp_seconds",
    }


@attrs.frozen
class _Alpha:
    kind: ClassVar[str] = "exporter_alpha"


@attrs.frozen
class _Beta:
    kind: ClassVar[str] = "exporter_beta"


@pytest.fixture
def clashing_kinds() -> Iterator[None]:
    alpha = ProbeKind(
        name="exporter_alpha",
        cls=_Alpha,
        summary="a test kind",
        target=HostPort(),
        metrics=(
            Metric("items", "probekit_items_total", "Items seen, as alpha counts them.", "counter"),
        ),
    )
    beta = ProbeKind(
        name="exporter_beta",
        cls=_Beta,
        summary="another test kind",
        target=HostPort(),
        metrics=(
            Metric("things", "probekit_items_total", "Items, as beta sees them."),
            Metric("cert_days_left", "probekit_cert_days_left", "A common family, again."),
            Metric("again", "probekit_items_total", "Items, as beta sees them."),
        ),
    )
    register_kind(alpha)
    register_kind(beta)
    yield
    for name in ("exporter_alpha", "exporter_beta"):
        _registry._kinds.pop(name, None)


@pytest.mark.usefixtures("clashing_kinds")
def test_a_metric_name_declared_twice_is_exported_once_as_first_declared(
    caplog: pytest.LogCaptureFixture,
) -> None:
    results = {
        "b": make(kind="exporter_alpha", target="b:1", metrics={"items": 5}),
        "a": make(
            kind="exporter_beta",
            target="a:1",
            metrics={"things": 7, "again": 8, "cert_days_left": 30},
        ),
    }
    with caplog.at_level(logging.WARNING, logger="probekit.exporters"):
        text = prometheus_text(results)
    assert text.count("# HELP probekit_items_total ") == 1
    assert "# HELP probekit_items_total Items seen, as alpha counts them.\n" in text
    assert "# TYPE probekit_items_total counter\n" in text
    found = families(text, types=("gauge", "counter"))
    items = [(s.labels["monitor"], s.labels["kind"], s.value) for s in found["probekit_items"]]
    # one family, rows by monitor; beta's second declaration of the name is ignored
    assert items == [("a", "exporter_beta", 7), ("b", "exporter_alpha", 5)]
    assert [s.value for s in found["probekit_cert_days_left"]] == [30]  # not twice
    warnings = [r.getMessage() for r in caplog.records if r.name == "probekit.exporters"]
    assert len(warnings) == 3, warnings
    assert all("'exporter_beta'" in w for w in warnings)
    assert "declared before as a counter" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="probekit.exporters"):
        assert prometheus_text(results) == text
    assert not caplog.records  # once per process, not once per scrape


def test_importing_loads_no_metrics_library_and_rendering_no_protocol_library() -> None:
    """``prometheus_client`` is imported when something is rendered, not by any import."""
    code = (
        "import sys, datetime as dt, probekit, probekit._exporters, probekit.exporter\n"
        "import probekit._metrics_server, probekit.checkpoint, probekit.control, probekit.cli\n"
        "from probekit import Result, Status\n"
        "now = dt.datetime.now(dt.UTC)\n"
        "assert 'prometheus_client' not in sys.modules\n"
        "text = probekit.prometheus_text({\n"
        "    'a': Result(kind='http', target='x', status=Status.UP, started_at=now, duration=1,\n"
        "                metrics={'status_code': 200}),\n"
        "    'b': Result(kind='tcp', target='y', status=Status.UP, started_at=now, duration=1,\n"
        "                metrics={'bytes_sent': 3}),\n"
        "})\n"
        "assert 'probekit_http_status_code' in text and 'probekit_tcp_bytes_sent' in text\n"
        "assert 'prometheus_client' in sys.modules\n"
        "loaded = [m for m in ('h2', 'hpack', 'aiodns', 'pycares') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
