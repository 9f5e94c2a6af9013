"""Spool throughput: results per second through put, pending and ack on a real file.

What it measures: one round spools N=5,000 results (each a ~1.3 KiB JSON envelope holding an
HTTPS check's result with its timeline, metrics, assertions and certificate) into a fresh
``Spool`` file in ``tmp_path`` (WAL, ``synchronous=NORMAL``), the way the checkpoint does:
``put_many`` in batches of 500, then ``pending(500, exclude=in_flight)`` and ``ack`` of those 500
ids until the spool is empty. Reported as entries per second (``entries_per_second``): each entry
is written, read back and deleted once. Opening the file is not timed.

Against what: in the same run, the same operations with one transaction per row (``put`` and
``ack`` one id at a time; reads still in pages), the simplest way to use the spool and the way a
naive caller would. ``batched_vs_per_row`` is the ratio; it is why the checkpoint writes batches,
and it does not move much with the machine. The batched round with ``synchronous=FULL`` (an fsync
per commit, durable against power loss) is reported too, as ``full_sync_entries_per_second``;
that figure depends on the disk under ``tmp_path`` (tmpfs makes fsync free).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from probekit import (
    AssertionOutcome,
    CertInfo,
    Phase,
    Result,
    Status,
    TlsInfo,
    result_to_json,
)
from probekit.checkpoint._spool import Spool, SpoolItem

N = 5_000
BATCH = 500
ROUNDS = 5
BASELINE_ROUNDS = 3


def _result() -> Result:
    now = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
    cert = CertInfo(
        subject="CN=status.internal.example",
        issuer="CN=Example Internal CA 2",
        sans=("status.internal.example", "status"),
        not_before=now,
        not_after=now + dt.timedelta(days=90),
        sha256="ab" * 32,
        serial="0f1e2d3c4b5a69788796",
    )
    return Result(
        kind="http",
        target="https://status.internal.example:8443/healthz",
        status=Status.UP,
        started_at=now,
        duration=0.0421,
        phases=(
            Phase("resolve", 0.0, 0.0011),
            Phase("connect", 0.0011, 0.0008),
            Phase("tls", 0.0019, 0.0123),
            Phase("processing", 0.0142, 0.0251),
            Phase("transfer", 0.0393, 0.0028),
        ),
        metrics={"status_code": 200, "body_bytes": 1532, "http_version": 1.1, "redirects": 0},
        assertions=(
            AssertionOutcome("status_in", True, "200-299", "200"),
            AssertionOutcome("response_time", True, "< 500 ms", "42.1 ms"),
        ),
        tls=TlsInfo(
            "TLSv1.3",
            "TLS_AES_256_GCM_SHA384",
            alpn="http/1.1",
            server_name="status.internal.example",
            chain=(cert,),
        ),
        address="10.20.30.40:8443",
    )


def _items() -> list[SpoolItem]:
    body = json.loads(result_to_json(_result()))
    items: list[SpoolItem] = []
    for i in range(N):
        result_id = f"0196a1b2-c3d4-7e5f-8a9b-{i:012x}"
        monitor_id = f"mon-{i % 200:06}"
        envelope = {"result_id": result_id, "monitor_id": monitor_id, "result": body}
        items.append((result_id, json.dumps(envelope, separators=(",", ":")), monitor_id))
    return items


def _drain(spool: Spool, ack: Callable[[list[str]], int]) -> int:
    """Send-and-ack loop: read a page past what is in flight, ack it, until the spool is empty."""
    in_flight: set[str] = set()
    acked = 0
    while page := spool.pending(BATCH, exclude=in_flight):
        ids = [entry.result_id for entry in page]
        in_flight.update(ids)
        acked += ack(ids)
        in_flight.difference_update(ids)
    return acked


def _batched(spool: Spool, items: list[SpoolItem]) -> int:
    for start in range(0, len(items), BATCH):
        spool.put_many(items[start : start + BATCH])
    return _drain(spool, spool.ack)


def _per_row(spool: Spool, items: list[SpoolItem]) -> int:
    for result_id, payload, *rest in items:
        spool.put(result_id, payload, *rest)
    return _drain(spool, lambda ids: sum(spool.ack([one]) for one in ids))


class _Files:
    """A fresh, already open spool for every round, so no round pays for another's file."""

    def __init__(self, root: Path, synchronous: Literal["NORMAL", "FULL"] = "NORMAL") -> None:
        self.root = root
        self.synchronous: Literal["NORMAL", "FULL"] = synchronous
        self.counter = itertools.count()
        self.opened: list[Spool] = []

    def fresh(self) -> Spool:
        path = self.root / f"{self.synchronous.lower()}-{next(self.counter)}.db"
        spool = Spool(path, max_entries=2 * N, synchronous=self.synchronous).open()
        self.opened.append(spool)
        return spool

    def close(self) -> None:
        for spool in self.opened:
            spool.close()


def _time(
    fn: Callable[[Spool, list[SpoolItem]], int], files: _Files, items: list[SpoolItem]
) -> float:
    spool = files.fresh()
    started = time.perf_counter()
    assert fn(spool, items) == N
    took = time.perf_counter() - started
    assert spool.depth == 0
    return took


def test_spool_throughput(benchmark: Any, tmp_path: Path) -> None:
    items = _items()
    payload_bytes = statistics.mean(len(payload) for _, payload, *_ in items)
    files = _Files(tmp_path)
    try:
        batched_times: list[float] = []

        def round_() -> None:
            batched_times.append(_time(_batched, files, items))

        benchmark.pedantic(round_, rounds=ROUNDS, iterations=1)
        per_row_times = [_time(_per_row, files, items) for _ in range(BASELINE_ROUNDS)]
    finally:
        files.close()

    full_files = _Files(tmp_path, "FULL")
    try:
        full_times = [_time(_batched, full_files, items) for _ in range(BASELINE_ROUNDS)]
    finally:
        full_files.close()

    batched = N / statistics.median(batched_times)
    per_row = N / statistics.median(per_row_times)
    full = N / statistics.median(full_times)
    benchmark.extra_info["entries"] = N
    benchmark.extra_info["batch"] = BATCH
    benchmark.extra_info["payload_bytes"] = round(payload_bytes)
    benchmark.extra_info["entries_per_second"] = round(batched)
    benchmark.extra_info["per_row_entries_per_second"] = round(per_row)
    benchmark.extra_info["batched_vs_per_row"] = round(batched / per_row, 2)
    benchmark.extra_info["full_sync_entries_per_second"] = round(full)
    print(
        f"\nSpool: {batched:,.0f} entries/s batched ({BATCH} per transaction); "
        f"{per_row:,.0f} entries/s one transaction per row; ratio {batched / per_row:.1f}; "
        f"batched with synchronous=FULL {full:,.0f} entries/s "
        f"(N={N}, ~{payload_bytes:.0f} B payloads, put+pending+ack, median of rounds)"
    )
