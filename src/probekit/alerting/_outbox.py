"""The queries of a control plane's alert outbox (the ``alert_outbox`` table, made by the
control plane's schema), on a connection of either of its databases (sqlite3, or the
PostgreSQL wrapper that speaks the same ``?`` placeholders). :class:`DurableSink` runs them on
the store's worker thread; the control plane calls :func:`add_entry` inside the transaction
that records the event the entry announces."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "add_entry",
    "outbox_add",
    "outbox_delete",
    "outbox_first",
    "outbox_import",
    "outbox_pending",
    "outbox_retry",
]


def add_entry(c: Any, channel: str, event_id: str, body: str, now: float, max_pending: int) -> int:
    """Add one entry (inside the caller's transaction); drop the oldest beyond ``max_pending``
    and return how many were dropped."""
    excess = outbox_pending(c, channel) - max_pending + 1
    if excess > 0:
        c.execute(
            "DELETE FROM alert_outbox WHERE id IN (SELECT id FROM alert_outbox WHERE channel=? "
            "ORDER BY id LIMIT ?)",
            (channel, excess),
        )
    c.execute(
        "INSERT INTO alert_outbox (channel, event_id, event, created, due) VALUES (?, ?, ?, ?, ?)",
        (channel, event_id, body, now, now),
    )
    return max(excess, 0)


def outbox_add(c: Any, channel: str, event_id: str, body: str, now: float, max_pending: int) -> int:
    """Add one entry in a transaction of its own (an event that changes no state: a repeat)."""
    with c:
        return add_entry(c, channel, event_id, body, now, max_pending)


def outbox_pending(c: Any, channel: str) -> int:
    row = c.execute("SELECT count(*) FROM alert_outbox WHERE channel=?", (channel,)).fetchone()
    return int(row[0])


def outbox_first(c: Any, channel: str) -> tuple[int, str, float, float, int] | None:
    """The channel's oldest entry: (id, event JSON, created, due, attempts)."""
    row = c.execute(
        "SELECT id, event, created, due, attempts FROM alert_outbox WHERE channel=? "
        "ORDER BY id LIMIT 1",
        (channel,),
    ).fetchone()
    if row is None:
        return None
    return int(row[0]), str(row[1]), float(row[2]), float(row[3]), int(row[4])


def outbox_delete(c: Any, row_id: int) -> None:
    with c:
        c.execute("DELETE FROM alert_outbox WHERE id=?", (row_id,))


def outbox_retry(c: Any, row_id: int, attempts: int, due: float, error: str) -> None:
    with c:
        c.execute(
            "UPDATE alert_outbox SET attempts=?, due=?, last_error=? WHERE id=?",
            (attempts, due, error, row_id),
        )


def outbox_import(c: Any, rows: Sequence[tuple[str, str, str, float, float, int]]) -> None:
    """Add entries taken from a former outbox file: (channel, event id, event JSON, created,
    due, attempts), in their order."""
    with c:
        c.executemany(
            "INSERT INTO alert_outbox (channel, event_id, event, created, due, attempts) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
