"""Results in the formats other systems read: Nagios plugin output, JSON lines, Prometheus text.

Each exporter is a function of results and does no I/O. The Prometheus one also reads the
probe-kind registry for the metrics each kind declares (which imports a built-in kind's module,
never its protocol library, the first time the kind is looked up).
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Final

from ._exceptions import DefinitionError
from ._result import Result, Status
from ._serialization import converter
from .probes._kind import Metric
from .probes._registry import describe, get_kind

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric as PromFamily
    from prometheus_client.registry import Collector
    from prometheus_client.samples import Sample as PromSample

__all__ = ["PROMETHEUS_CONTENT_TYPE", "Exposition", "json_line", "nagios_line", "prometheus_text"]

log = logging.getLogger("probekit.exporters")

#: The ``Content-Type`` of :func:`prometheus_text` output: text exposition format 0.0.4, what
#: ``generate_latest`` writes (``prometheus_client.exposition.CONTENT_TYPE_PLAIN_0_0_4``; its
#: ``CONTENT_TYPE_LATEST`` names 1.0.0, the same text with UTF-8 names allowed, which we never use).
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
    hops), ``cert_days_left`` when a certificate was seen, and the metrics the result's kind
    declares (``status_code``, ``answers``, ``rtt_avg``, ...). The detail starts with what the
    kind says it saw (``status 200``), else the target.
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
    for key, value, unit in _kind_perfdata(result):
        perf.append(_perf(key, value, unit, None, None, None))
    return f"{text} | {' '.join(perf)}", code


_PERF_DONE: Final = frozenset({"cert_days_left", "body_bytes", "bytes_received"})


def _kind_perfdata(result: Result) -> list[tuple[str, float, str]]:
    """The metrics the result's kind declares (in declaration order), as perfdata items; a
    Prometheus name ending in ``_seconds`` or ``_bytes`` gives the unit."""
    try:
        declared = get_kind(result.kind).metrics
    except DefinitionError:
        return []
    items = []
    for metric in declared:
        value = result.metrics.get(metric.key)
        if value is None or metric.key in _PERF_DONE or not math.isfinite(value):
            continue
        unit = "s" if metric.name.endswith("_seconds") else ""
        unit = "B" if metric.name.endswith("_bytes") else unit
        items.append((metric.key, value, unit))
    return items


def _nagios_detail(result: Result) -> str:
    head = describe(result) or result.target
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

_Row = tuple[dict[str, str], float]
_Samples = Callable[[Result], Iterable[_Row]]

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


def _cert_days(result: Result) -> Iterable[tuple[dict[str, str], float]]:
    value = result.metrics.get("cert_days_left")
    if value is not None:
        yield {}, float(value)


def _timestamp(result: Result) -> Iterable[tuple[dict[str, str], float]]:
    yield {}, result.started_at.timestamp()


#: The families every result has, whatever its kind (certificates are common to every TLS kind).
_COMMON: Final[tuple[tuple[Metric, _Samples], ...]] = (
    (
        Metric("", "probekit_up", "1 if the last check was UP or DEGRADED, 0 if DOWN or UNKNOWN."),
        _up,
    ),
    (
        Metric(
            "",
            "probekit_status",
            "Status of the last check as its Nagios code: 0 UP, 1 DEGRADED, 2 DOWN, 3 UNKNOWN.",
        ),
        _status,
    ),
    (
        Metric("", "probekit_check_duration_seconds", "How long the last check took in total."),
        _total,
    ),
    (
        Metric(
            "",
            "probekit_duration_seconds",
            "Time the last check spent in each phase, summed over redirect hops.",
        ),
        _phases,
    ),
    (
        Metric(
            "cert_days_left",
            "probekit_cert_days_left",
            "Days until the earliest-expiring certificate of the chain expires.",
        ),
        _cert_days,
    ),
    (
        Metric(
            "",
            "probekit_last_check_timestamp_seconds",
            "When the last check started, in seconds since the Unix epoch.",
        ),
        _timestamp,
    ),
)

#: Conflicting declarations already warned about, so a scrape every few seconds logs each once.
_warned: set[tuple[str, str, str]] = set()


def prometheus_text(results: Mapping[str, Result]) -> str:
    """The latest result of each monitor (``monitor id -> Result``) as Prometheus text.

    Every sample is labelled ``monitor``, ``kind`` and ``target``, rows sorted by monitor. The
    families every result has are gauges: ``probekit_up``, ``probekit_status``,
    ``probekit_check_duration_seconds``, ``probekit_duration_seconds`` (with a ``phase``
    label), ``probekit_cert_days_left`` and ``probekit_last_check_timestamp_seconds``. Then
    come the metrics each result's kind declares (:attr:`ProbeKind.metrics
    <probekit.probes.ProbeKind.metrics>`, read from the registry): ``result.metrics[key]``
    exported under the declared name, help and type (``probekit_http_status_code`` for HTTP,
    ``probekit_tcp_bytes_received`` for TCP, ...). A value a result does not have (no
    certificate, no response) is left out for that monitor; a result of a kind this process
    does not know (relayed from another instance) gets the common families only.

    Each family appears once. When two kinds declare one name with a different help or type,
    the first declaration (kinds in name order) gives the family its help and type, and a
    warning is logged (once per process); a kind cannot declare a common family's name again.
    The text is written by :class:`Exposition` (``prometheus_client``); no results give ``""``.
    """
    # one label dict per monitor, shared by its samples that add no label (nothing writes to it)
    ordered = [
        (_base_labels(monitor, result), result) for monitor, result in sorted(results.items())
    ]
    families: dict[str, tuple[Metric, list[_Row]]] = {m.name: (m, []) for m, _ in _COMMON}
    for metric, samples in _COMMON:
        families[metric.name][1].extend(
            [
                ({**base, **extra} if extra else base, value)
                for base, result in ordered
                for extra, value in samples(result)
            ]
        )
    exported = _exported_metrics({result.kind for result in results.values()}, families)
    # kind -> (key, the rows of its family) for each metric the kind declares and exports
    rows_of = {
        kind: [(metric.key, families[metric.name][1]) for metric in metrics]
        for kind, metrics in exported.items()
    }
    for base, result in ordered:
        for key, rows in rows_of.get(result.kind, ()):
            declared = result.metrics.get(key)
            if declared is not None:
                rows.append((base, declared))
    out = Exposition()
    for name, (metric, rows) in families.items():
        if rows:
            out.family(name, metric.help, metric.type, rows)
    return out.text()


def _exported_metrics(
    kind_names: Iterable[str], families: dict[str, tuple[Metric, list[_Row]]]
) -> dict[str, list[Metric]]:
    """The declared metrics of each kind in ``kind_names`` that this process knows, with a
    family added to ``families`` for each new name (kinds in name order: first one wins)."""
    common = {metric.name for metric, _ in _COMMON}
    out: dict[str, list[Metric]] = {}
    for kind in sorted(kind_names):
        try:
            declared = get_kind(kind).metrics
        except DefinitionError:
            continue  # not known here: the common families only
        names: set[str] = set()
        for metric in declared:
            first = families.setdefault(metric.name, (metric, []))[0]
            if metric.name in common or metric.name in names:
                _warn(kind, metric, "is already exported; this declaration is ignored")
                continue
            if (first.help, first.type) != (metric.help, metric.type):
                _warn(kind, metric, f"was declared before as a {first.type} ({first.help!r})")
            names.add(metric.name)
            out.setdefault(kind, []).append(metric)
    return out


def _warn(kind: str, metric: Metric, problem: str) -> None:
    key = (kind, metric.name, problem)
    if key not in _warned:
        _warned.add(key)
        log.warning(
            "probe kind %r declares the metric %s (a %s, %r), which %s",
            kind,
            metric.name,
            metric.type,
            metric.help,
            problem,
        )


def _base_labels(monitor: str, result: Result) -> dict[str, str]:
    return {"monitor": monitor, "kind": result.kind, "target": result.target}


class Exposition:
    """Prometheus text exposition (0.0.4), collected one family at a time and written by
    ``prometheus_client``: the one code path behind ``prometheus_text``, the checkpoint's and
    the control plane's own ``/metrics`` and the exporter's ``/probe``.

    Each :meth:`family` becomes a ``prometheus_client`` metric family, its samples appended as
    they are (no per-sample label checks: the names are ours); :meth:`text` hands them to
    ``prometheus_client.exposition.generate_latest``, which escapes label values and help
    texts, sorts each sample's labels by name and writes numbers as Go does (``1.0``, ``NaN``,
    ``+Inf``, ``1.7e+09``). ``prometheus_client`` is imported there, not when this module is.
    """

    def __init__(self) -> None:
        self._families: list[PromFamily] = []

    def family(
        self,
        name: str,
        help_text: str,
        kind: str,
        samples: Iterable[_Row],
    ) -> None:
        """A family ``name`` of type ``kind`` (``gauge`` or ``counter``: a counter's name ends
        in ``_total``, which Prometheus's naming asks and ``prometheus_client`` assumes), with
        its ``# HELP`` and ``# TYPE`` and one sample per ``(labels, value)``."""
        if kind not in ("gauge", "counter"):
            raise ValueError(f"metric {name}: type {kind!r} is not 'gauge' or 'counter'")
        if kind == "counter" and (not name.endswith("_total") or name == "_total"):
            raise ValueError(f"counter {name}: a counter's name must end in '_total'")
        family_class, sample_class, _ = _client()
        # prometheus_client names a counter without '_total' and adds it back when writing
        family = family_class(
            name[: -len("_total")] if kind == "counter" else name, help_text, kind
        )
        # Sample is a NamedTuple; tuple.__new__ builds one without its Python-level __new__
        # (a third of the cost of building the families for thousands of samples)
        new = tuple.__new__
        family.samples = [
            new(sample_class, (name, labels, value, None, None, None)) for labels, value in samples
        ]
        self._families.append(family)

    def collect(self) -> list[PromFamily]:
        """The families added, as ``prometheus_client`` metric families (a collector's
        ``collect``)."""
        return self._families

    def text(self) -> str:
        """The exposition; empty when no family was added."""
        return _client()[2](self).decode()


@functools.cache
def _client() -> tuple[type[PromFamily], type[PromSample], Callable[[Collector], bytes]]:
    """What the writer uses of ``prometheus_client``, imported on first use (not with this
    module) and kept, so adding a family does not run import statements again."""
    from prometheus_client.exposition import generate_latest
    from prometheus_client.metrics_core import Metric as PromFamily
    from prometheus_client.samples import Sample as PromSample

    return PromFamily, PromSample, generate_latest
