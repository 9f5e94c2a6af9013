"""A checkpoint instance's own metrics as Prometheus text (served with ``/ready`` by
:mod:`probekit._metrics_server`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = ["metrics_text"]

_ROWS: Final = (
    ("in_flight", "gauge", "Checks executing now.", "in_flight"),
    ("queue_depth", "gauge", "Runs and results waiting.", "queue_depth"),
    ("spool_depth", "gauge", "Results in the spool, not yet acked.", "spool_depth"),
    ("spool_dropped_total", "counter", "Results evicted from the full spool.", "spool_dropped"),
    ("reconnects_total", "counter", "Reconnections to the control plane.", "reconnects"),
    (
        "standby_moves_total",
        "counter",
        "Connections a standby control plane answered (moved on to the next URL).",
        "standby_moves",
    ),
    ("connected", "gauge", "1 while connected to the control plane.", "connected"),
    ("autonomous", "gauge", "1 while the local schedule runs.", "autonomous"),
    ("definitions", "gauge", "Monitor definitions held.", "definitions"),
    ("results_total", "counter", "Results produced.", "results_produced"),
    ("acked_total", "counter", "Results acked by the control plane.", "results_acked"),
    (
        "results_lost_total",
        "counter",
        "Results that could not be written to the spool (lost; spool evictions are "
        "spool_dropped_total).",
        "results_lost",
    ),
    (
        "oldest_unacked_seconds",
        "gauge",
        "Age of the oldest spooled result not yet acked (0: the spool is empty).",
        "oldest_unacked_seconds",
    ),
)


def metrics_text(
    stats: Mapping[str, int | float | bool], checkpoint_id: str, instance_id: str
) -> str:
    """The Prometheus text exposition of a checkpoint's ``stats``."""
    from .._exporters import Exposition

    labels = {"checkpoint_id": checkpoint_id, "instance_id": instance_id}
    out = Exposition()
    for name, kind, help_text, key in _ROWS:
        out.family(f"probekit_checkpoint_{name}", help_text, kind, [(labels, float(stats[key]))])
    return out.text()
