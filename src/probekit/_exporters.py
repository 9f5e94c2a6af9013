"""Results in the formats other systems read: Nagios plugin output, JSON lines, Prometheus text.

Each exporter is a pure function of results; none does I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from ._result import Result, Status
from ._serialization import converter

__all__ = ["PROMETHEUS_CONTENT_TYPE", "json_line", "nagios_line", "prometheus_text"]

#: The ``Content-Type`` of :func:`prometheus_text` output (text exposition format 0.0.4).
PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


# -- Nagios ------------------------------------------------------------------------------------


def nagios_line(
    result: Result, *, warn: float | None = None, crit: float | None = None
) -> tuple[str, int]:
    """The Nagios plugin output line for ``result`` and the plugin exit code (0-3).

    The line is ``KIND STATE - detail | perfdata``, e.g.
    ``HTTP OK - 200 in 0.012 s | time=0.012000s;;;0 size=123B;;;0 resolve=0.000041s;;;0 ...``.
    Perfdata follows the plugin guidelines (``'label'=value[UOM];[warn];[crit];[min];[max]``):
    ``time`` is the check's duration (``warn``/``crit`` are its thresholds in seconds, if any),
    ``size`` the body or received bytes, then one item per phase (seconds, summed over redirect
    hops) and ``cert_days_left`` when a certificate was seen.
    """
    code = result.status.exit_code
    text = f"{result.kind.upper()} {result.status.nagios} - {_nagios_detail(result)}"
    text = " ".join(text.replace("|", "/").split())  # one line; '|' starts the perfdata
    perf = [_perf("time", result.duration, "s", warn, crit, 0.0)]
    size = result.metrics.get("body_bytes", result.metrics.get("bytes_received"))
    if size is not None:
        perf.append(_perf("size", size, "B", None, None, 0.0))
    for name in result.phase_names():
        duration = result.phase(name)
        assert duration is not None
        perf.append(_perf(name, duration, "s", None, None, 0.0))
    days = result.metrics.get("cert_days_left")
    if days is not None:
        perf.append(_perf("cert_days_left", days, "", None, None, None))
    return f"{text} | {' '.join(perf)}", code


def _nagios_detail(result: Result) -> str:
    code = result.metrics.get("status_code")
    head = str(int(code)) if code is not None else result.target
    detail = f"{head} in {result.duration:.3f} s"
    error = result.error
    if error is not None:
        where = f" during {error.phase}" if error.phase else ""
        detail += f" - {error.kind.value}{where}: {error.message}"
    return detail


def _perf(
    label: str,
    value: float,
    unit: str,
    warn: float | None,
    crit: float | None,
    minimum: float | None,
) -> str:
    fields = [f"{_perf_label(label)}={_perf_number(value)}{unit}"]
    fields += [_perf_number(v) if v is not None else "" for v in (warn, crit, minimum)]
    return ";".join(fields).rstrip(";")


def _perf_label(label: str) -> str:
    if all(c.isalnum() or c in "_-." for c in label):
        return label
    return "'" + label.replace("'", "''") + "'"


def _perf_number(value: float) -> str:
    """A plain decimal (the guidelines allow no exponent), without needless zeros."""
    if float(value).is_integer():
        return str(int(value))
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("0", "-0") else f"{value:.9f}".rstrip("0").rstrip(".")


# -- JSON lines --------------------------------------------------------------------------------


def json_line(result: Result, *, monitor: str | None = None) -> str:
    """``result`` as one line of JSON (the shape documented in ``docs/results.md``).

    With ``monitor`` the object also has a ``"monitor"`` key naming the monitor it came from;
    :func:`~probekit.result_from_json` ignores it.
    """
    data = converter.unstructure(result)
    if monitor is not None:
        data = {"monitor": monitor, **data}
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


# -- Prometheus --------------------------------------------------------------------------------

_Family = tuple[str, str, Callable[[Result], Iterable[tuple[dict[str, str], float]]]]

_UP: Final = {Status.UP: 1.0, Status.DEGRADED: 1.0, Status.DOWN: 0.0, Status.UNKNOWN: 0.0}


def _up(result: Result) -> Iterable[tuple[dict[str, str], float]]:
    yield {}, _UP[result.status]


def _status(result: Result) -> Iterable[tuple[dict[str, str], float]]:
    yield {}, float(result.status.exit_code)


def _total(result: Result) -> Iterable[tuple[dict[str, str], float]]:
    yield {}, result.duration


def _phases(result: Result) -> Iterable[tuple[dict[str, str], float]]:
    for name in result.phase_names():
        duration = result.phase(name)
        if duration is not None:
            yield {"phase": name}, duration


def _metric(name: str) -> Callable[[Result], Iterable[tuple[dict[str, str], float]]]:
    def samples(result: Result) -> Iterable[tuple[dict[str, str], float]]:
        value = result.metrics.get(name)
        if value is not None:
            yield {}, float(value)

    return samples


def _timestamp(result: Result) -> Iterable[tuple[dict[str, str], float]]:
    yield {}, result.started_at.timestamp()


_FAMILIES: Final[tuple[_Family, ...]] = (
    ("probekit_up", "1 if the last check was UP or DEGRADED, 0 if DOWN or UNKNOWN.", _up),
    (
        "probekit_status",
        "Status of the last check as its Nagios code: 0 UP, 1 DEGRADED, 2 DOWN, 3 UNKNOWN.",
        _status,
    ),
    ("probekit_check_duration_seconds", "How long the last check took in total.", _total),
    (
        "probekit_duration_seconds",
        "Time the last check spent in each phase, summed over redirect hops.",
        _phases,
    ),
    (
        "probekit_cert_days_left",
        "Days until the earliest-expiring certificate of the chain expires.",
        _metric("cert_days_left"),
    ),
    (
        "probekit_http_status_code",
        "HTTP status code of the last check's final response.",
        _metric("status_code"),
    ),
    (
        "probekit_last_check_timestamp_seconds",
        "When the last check started, in seconds since the Unix epoch.",
        _timestamp,
    ),
)


def prometheus_text(results: Mapping[str, Result]) -> str:
    """The latest result of each monitor (``monitor id -> Result``) as Prometheus text.

    Every metric is a gauge labelled ``monitor``, ``kind`` and ``target``:
    ``probekit_up``, ``probekit_status``, ``probekit_check_duration_seconds``,
    ``probekit_duration_seconds`` (with a ``phase`` label), ``probekit_cert_days_left``,
    ``probekit_http_status_code`` and ``probekit_last_check_timestamp_seconds``. A metric a
    result has no value for (no certificate, no HTTP status) is left out for that monitor.
    """
    ordered = sorted(results.items())
    lines: list[str] = []
    for name, help_text, samples in _FAMILIES:
        rows = []
        for monitor, result in ordered:
            base = {"monitor": monitor, "kind": result.kind, "target": result.target}
            for extra, value in samples(result):
                rows.append(f"{name}{_labels({**base, **extra})} {_number(value)}")
        if rows:
            lines.append(f"# HELP {name} {_escape_help(help_text)}")
            lines.append(f"# TYPE {name} gauge")
            lines.extend(rows)
    return "\n".join(lines) + "\n" if lines else ""


def _labels(labels: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items()) + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))
