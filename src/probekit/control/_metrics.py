"""The control plane's own metrics as Prometheus text (served with ``/ready`` by
:mod:`probekit._metrics_server`).

Rendered on the event loop from what the plane holds in memory; the database's size and the
time of its oldest prunable row are the values last measured on the database's worker thread
(at start and after every prune), so a scrape never waits on the disk.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Final, get_args

from ._logic import AlertKind

if TYPE_CHECKING:
    from . import ControlPlane

__all__ = ["metrics_text"]

_PREFIX: Final = "probekit_control_"

#: (name, type, help, stats key) of the unlabelled samples read from ``ControlPlane.stats()``.
_STATS: Final = (
    ("results_stored_total", "counter", "Results stored (new result ids).", "results_stored"),
    (
        "results_duplicate_total",
        "counter",
        "Results received again and dropped as duplicates.",
        "duplicates",
    ),
    (
        "results_refused_total",
        "counter",
        "Results refused (not tied to the sending connection); acked, not stored.",
        "results_refused",
    ),
    ("runs_sent_total", "counter", "Runs sent to instances.", "runs_sent"),
    ("runs_outstanding", "gauge", "Runs sent and not answered yet.", "runs_outstanding"),
    (
        "runs_reassigned_total",
        "counter",
        "Runs given to another instance after going unanswered.",
        "runs_reassigned",
    ),
    (
        "instances_cut_total",
        "counter",
        "Connections closed for leaving runs unanswered.",
        "instances_cut",
    ),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def metrics_text(plane: ControlPlane) -> str:
    """The Prometheus text exposition of ``plane``."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> str:
        metric = _PREFIX + name
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} {kind}")
        return metric

    connected = Counter(plane.connected_checkpoints())
    metric = family("instances_connected", "gauge", "Instances connected now, by checkpoint.")
    lines.extend(
        f'{metric}{{checkpoint_id="{_label(checkpoint_id)}"}} {connected[checkpoint_id]}'
        for checkpoint_id in sorted(set(plane.settings.tokens) | set(connected))
    )
    stats = plane.stats()
    for name, kind, help_text, key in _STATS:
        metric = family(name, kind, help_text)
        lines.append(f"{metric} {stats[key]}")
    open_alerts = Counter(alert.kind for alert in plane.logic.open_alerts())
    metric = family("alerts_open", "gauge", "Alerts open now, by kind.")
    lines.extend(
        f'{metric}{{kind="{alert_kind}"}} {open_alerts[alert_kind]}'
        for alert_kind in get_args(AlertKind)
    )
    metric = family("db_bytes", "gauge", "Size of the SQLite database, as last measured.")
    lines.append(f"{metric} {plane.db_bytes}")
    metric = family(
        "rows_pruned_total", "counter", "Rows deleted by retention (results, events, runs, alerts)."
    )
    lines.append(f"{metric} {plane.rows_pruned}")
    metric = family(
        "prune_lag_seconds",
        "gauge",
        "How far the oldest row is past the retention (0: none is, or no retention).",
    )
    lines.append(f"{metric} {_number(plane.prune_lag())}")
    return "\n".join(lines) + "\n"
