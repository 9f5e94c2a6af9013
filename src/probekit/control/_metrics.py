"""The control plane's own metrics as Prometheus text (served with ``/ready`` by
:mod:`probekit._metrics_server`).

Rendered on the event loop from what the plane holds in memory; the database's size and the
time of its oldest prunable row are the values last measured on the database's worker thread
(at start and after every prune), so a scrape never waits on the disk.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Final, get_args

from ..alerting._events import AlertKind

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


def metrics_text(plane: ControlPlane) -> str:
    """The Prometheus text exposition of ``plane``."""
    from .._exporters import Exposition

    out = Exposition()

    def family(name: str, kind: str, help_text: str, samples: Any) -> None:
        out.family(_PREFIX + name, help_text, kind, samples)

    connected = Counter(plane.connected_checkpoints())
    family(
        "instances_connected",
        "gauge",
        "Instances connected now, by checkpoint.",
        [
            ({"checkpoint_id": checkpoint_id}, connected[checkpoint_id])
            for checkpoint_id in sorted(set(plane.settings.tokens) | set(connected))
        ],
    )
    family(
        "active",
        "gauge",
        "1 when this control plane serves (holds the database's lock), 0 while a standby.",
        [({}, int(plane.serving))],
    )
    stats = plane.stats()
    for name, kind, help_text, key in _STATS:
        family(name, kind, help_text, [({}, stats[key])])
    open_alerts = Counter(alert.kind for alert in plane.logic.open_alerts())
    family(
        "alerts_open",
        "gauge",
        "Alerts open now, by kind.",
        [({"kind": alert_kind}, open_alerts[alert_kind]) for alert_kind in get_args(AlertKind)],
    )
    family(
        "db_bytes",
        "gauge",
        "Size of the SQLite database, as last measured.",
        [({}, plane.db_bytes)],
    )
    family(
        "rows_pruned_total",
        "counter",
        "Rows deleted by retention (results, events, runs, alerts).",
        [({}, plane.rows_pruned)],
    )
    family(
        "prune_lag_seconds",
        "gauge",
        "How far the oldest row is past the retention (0: none is, or no retention).",
        [({}, plane.prune_lag())],
    )
    return out.text()
