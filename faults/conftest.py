"""The fault suite's options, fixtures and the table printed at the end (see the section
"The fault suite" of docs/checkpoint.md).

Nothing here is collected by the default `nox -s tests` run (its testpaths are `tests`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _harness import PROFILES, Cluster, Counts, Profile

#: The runs of this session, in order, for the table.
REPORT: list[Counts] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--profile",
        choices=sorted(PROFILES),
        default="full",
        help="fast: the short runs of CI; full (the default): longer faults, more of them",
    )


@pytest.fixture(scope="session")
def profile(request: pytest.FixtureRequest) -> Profile:
    return PROFILES[str(request.config.getoption("--profile"))]


@pytest.fixture
def cluster(tmp_path: Path, profile: Profile) -> Iterator[Cluster]:
    """A started control plane with two instances; everything is stopped afterwards."""
    running = Cluster(tmp_path, monitors=profile.monitors, interval=profile.interval)
    try:
        running.start()
        yield running
    finally:
        running.cleanup()


@pytest.fixture
def record() -> Callable[[Counts], None]:
    return REPORT.append


def _row(counts: Counts) -> str:
    monitor, gap = counts.longest_gap
    bound = f"{counts.gap_bound:.1f}" if counts.gap_bound is not None else "-"
    raised = sum(counts.alerts.values())
    expected = sum(counts.expected_alerts.values())
    alerts = f"{raised}/{expected}" + ("" if counts.alerts == counts.expected_alerts else " !")
    return (
        f"{counts.scenario:<34} {counts.produced:>8} {counts.stored:>7} {counts.lost:>5} "
        f"{counts.duplicated:>5} {counts.redelivered:>7} {counts.reassigned:>6} {counts.cut:>4} "
        f"{gap:>6.1f} {monitor:<7} {bound:>6} {alerts:>8}"
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORT:
        return
    profile = terminalreporter.config.getoption("--profile")
    write = terminalreporter.write_line
    terminalreporter.section(f"fault suite: counts per run (profile {profile})")
    write(
        f"{'scenario':<34} {'produced':>8} {'stored':>7} {'lost':>5} {'dup':>5} "
        f"{'resent':>7} {'moved':>6} {'cut':>4} {'gap s':>6} {'monitor':<7} {'bound':>6} "
        f"{'alerts':>8}"
    )
    for counts in REPORT:
        write(_row(counts))
    write("")
    write("longest gap per monitor (s):")
    for counts in REPORT:
        gaps = " ".join(f"{m} {g:.1f}" for m, g in sorted(counts.gaps.items()))
        write(f"  {counts.scenario}: {gaps}")
    write("")
    write(
        "produced: results committed to the instances' spools (sqlite_sequence); stored: rows "
        "in the control plane's database; lost: produced and not stored; dup: one check or one "
        "run stored twice; resent: redeliveries the control plane dropped; moved: runs "
        "reassigned; cut: instances cut as unresponsive; alerts: raised/expected "
        "(alerts in the database opened during the run)"
    )
    path = os.environ.get("FAULTS_REPORT")
    if path:
        Path(path).write_text(json.dumps([c.as_dict() for c in REPORT], indent=2, default=str))
