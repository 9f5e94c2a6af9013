"""Faults with real processes: `kill -9` and SIGSTOP of instances and of the control plane, and a
real target outage. Each run is counted (see _harness.py) and must lose and duplicate nothing,
keep every monitor's results close together while a peer covers, and raise exactly the alerts
of the real incidents."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable

from _harness import (
    CHECKPOINT,
    Cluster,
    Counts,
    Profile,
    alerts_opened,
    check,
    spool_counts,
    stored_results,
    wait_until,
)

NO_ALERTS: Counter[tuple[str, str]] = Counter()


def _finish(record: Callable[[Counts], None], counts: Counts) -> None:
    record(counts)
    problems = check(counts)
    assert not problems, f"{counts.scenario}: " + "; ".join(problems)


def test_kill9_instances(
    cluster: Cluster, profile: Profile, record: Callable[[Counts], None]
) -> None:
    """`kill -9` of an instance, again and again (alternating): the peer takes its runs at once,
    the restarted instance uploads what its spool held."""
    for round_ in range(profile.kills):
        name = ("lab-a", "lab-b")[round_ % 2]
        cluster.kill9(name)
        time.sleep(2 * profile.interval)
        cluster.instances[name].start()
        cluster.settle()
        time.sleep(2 * profile.interval)
    counts = cluster.finish(
        f"kill -9 instance x{profile.kills}", expected_alerts=NO_ALERTS, gap_bound=profile.gap_bound
    )
    _finish(record, counts)


def test_sigstop_instance(
    cluster: Cluster, profile: Profile, record: Callable[[Counts], None]
) -> None:
    """One instance hangs (SIGSTOP) and comes back (SIGCONT): its peer covers every monitor with
    no gap over interval + deadline + grace, and no alert is raised."""
    hung = cluster.instances["lab-a"]
    hung.signal(signal.SIGSTOP)
    time.sleep(profile.stop_seconds)
    hung.signal(signal.SIGCONT)
    cluster.settle()
    time.sleep(2 * profile.interval)
    counts = cluster.finish(
        f"SIGSTOP instance {profile.stop_seconds:.0f} s",
        expected_alerts=NO_ALERTS,
        gap_bound=profile.gap_bound,
    )
    _finish(record, counts)


def test_kill9_control_plane(
    cluster: Cluster, profile: Profile, record: Callable[[Counts], None]
) -> None:
    """`kill -9` of the control plane and a restart, repeated: the instances run their monitors
    on their own meanwhile and upload the results; no alert (they come back before the start
    grace)."""
    for _ in range(profile.control_kills):
        cluster.control.kill9()
        time.sleep(profile.control_down)
        cluster.control.start()
        cluster.settle()
        time.sleep(2 * profile.interval)
    counts = cluster.finish(
        f"kill -9 control x{profile.control_kills} ({profile.control_down:.0f} s)",
        expected_alerts=NO_ALERTS,
    )
    _finish(record, counts)


def test_sigstop_control_plane(
    cluster: Cluster, profile: Profile, record: Callable[[Counts], None]
) -> None:
    """The control plane hangs (SIGSTOP) and comes back (SIGCONT), twice: the instances notice
    the silence, run their monitors on their own and upload later; what they sent to the hung
    process and sent again is stored once; a hung control plane is no incident of the
    checkpoint, so no alert."""
    for _ in range(2):
        cluster.control.signal(signal.SIGSTOP)
        time.sleep(profile.control_down)
        cluster.control.signal(signal.SIGCONT)
        cluster.settle()
        time.sleep(2 * profile.interval)
    counts = cluster.finish(
        f"SIGSTOP control x2 ({profile.control_down:.0f} s)", expected_alerts=NO_ALERTS
    )
    _finish(record, counts)


def test_kill9_instance_while_spooling(
    cluster: Cluster, profile: Profile, record: Callable[[Counts], None]
) -> None:
    """The control plane is dead, the instances spool; one of them is killed with results in
    its spool, restarted (still no control plane: it runs its kept definitions), and everything
    it spooled in both lives is stored once the control plane is back."""
    cluster.control.kill9()
    spooling = cluster.instances["lab-a"]
    wait_until(lambda: spool_counts(spooling.spool)[1] > 0, 30, "lab-a spooling")
    time.sleep(profile.spool_seconds)
    cluster.kill9("lab-a")
    assert spooling.lives[-1].spool_at_kill, "lab-a had nothing in its spool when killed"
    spooling.start()
    first_life_end = spool_counts(spooling.spool)[0]
    wait_until(lambda: spool_counts(spooling.spool)[0] > first_life_end, 30, "lab-a spooling again")
    time.sleep(profile.spool_seconds / 2)
    cluster.control.start()
    cluster.settle()
    counts = cluster.finish("kill -9 instance while spooling", expected_alerts=NO_ALERTS)
    _finish(record, counts)


def test_target_outage(
    cluster: Cluster, profile: Profile, record: Callable[[Counts], None]
) -> None:
    """A real outage of the target of `victim`: one alert, confirmed on the second instance,
    resolved when the target is back; no other alert."""
    target = cluster.targets["outage"]
    target.down()
    wait_until(
        lambda: alerts_opened(cluster.db, cluster.began)[("monitor_down", "victim")] > 0,
        30,
        "the victim's alert",
    )
    time.sleep(profile.outage_seconds)
    target.up()
    time.sleep(3 * profile.interval)
    counts = cluster.finish(
        f"target outage {profile.outage_seconds:.0f}+ s",
        expected_alerts=Counter({("monitor_down", "victim"): 1}),
        gap_bound=profile.gap_bound,
    )
    _finish(record, counts)


def test_checkpoint_outage(
    cluster: Cluster, profile: Profile, record: Callable[[Counts], None]
) -> None:
    """Both instances killed: a real outage of the checkpoint, exactly one checkpoint_down alert
    (not one per monitor); it resolves when an instance is back."""
    cluster.kill9("lab-a")
    cluster.kill9("lab-b")
    wait_until(
        lambda: alerts_opened(cluster.db, cluster.began)[("checkpoint_down", CHECKPOINT)] > 0,
        30,
        "the checkpoint's alert",
    )
    time.sleep(profile.interval)
    counts = cluster.finish(
        "kill -9 both instances",
        expected_alerts=Counter({("checkpoint_down", CHECKPOINT): 1}),
    )
    _finish(record, counts)


def test_the_counts_can_fail(cluster: Cluster, profile: Profile) -> None:
    """The counting is not blind: a clean run passes; then, in its database, one result is
    deleted, one check is stored a second time, a stretch of one monitor's results is deleted
    and an alert is added, and the recount names each of those."""
    time.sleep(profile.gap_bound + 4 * profile.interval)
    clean = cluster.finish("clean", expected_alerts=NO_ALERTS, gap_bound=profile.gap_bound)
    assert check(clean) == []
    assert clean.lost == clean.duplicated == 0
    rows = stored_results(cluster.db)
    first, *_ = (row for row in rows if row.monitor_id == "m01")
    hole_start = cluster.window_start + profile.interval
    hole = [
        row.result_id
        for row in rows
        if row.monitor_id == "m00" and hole_start <= row.started <= hole_start + profile.gap_bound
    ]
    assert hole
    with contextlib.closing(sqlite3.connect(cluster.db)) as conn, conn:
        conn.executemany(
            "DELETE FROM results WHERE result_id = ?", [(first.result_id,), *((h,) for h in hole)]
        )
        conn.execute(
            "INSERT INTO results (result_id, monitor_id, checkpoint_id, instance_id, request_id,"
            " reason, status, error_kind, started_at, stored_at, body)"
            " SELECT 'copy-' || result_id, monitor_id, checkpoint_id, instance_id, NULL, reason,"
            " status, error_kind, started_at, stored_at, body FROM results"
            " WHERE monitor_id = 'm02' LIMIT 1"
        )
        conn.execute(
            "INSERT INTO alerts (alert_id, kind, subject, opened_at, message)"
            " VALUES ('fake', 'monitor_down', 'm03', ?, 'not a real incident')",
            (time.time(),),
        )
    tampered = cluster.count("tampered", expected_alerts=NO_ALERTS, gap_bound=profile.gap_bound)
    assert tampered.lost == 1 + len(hole)
    assert tampered.duplicated == 1
    assert tampered.gaps["m00"] > profile.gap_bound
    problems = check(tampered)
    assert problems[0] == f"{1 + len(hole)} results lost"
    assert problems[1] == "1 results stored twice"
    assert any(p.startswith(f"gaps over {profile.gap_bound} s: {{'m00'") for p in problems)
    assert any("('monitor_down', 'm03')" in p for p in problems)
