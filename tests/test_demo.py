"""`probekit demo` (the README's main command) shows a failover: run it and read its output."""

from __future__ import annotations

import subprocess
import sys


def test_demo_shows_unconfirmed_then_confirmed_error_alert_and_recovery() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "probekit",
            "demo",
            "--duration",
            "14",
            "--interval",
            "1",
            "--break-after",
            "4",
            "--mend-after",
            "9",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    lines = out.splitlines()
    broke = next(i for i, line in enumerate(lines) if ">>> breaking 'web'" in line)
    unconfirmed = next(
        i for i, line in enumerate(lines) if "UNCONFIRMED ERROR: web failed on" in line
    )
    alert = next(
        i for i, line in enumerate(lines) if "CONFIRMED ERROR -> ALERT: web is down" in line
    )
    resolved = next(i for i, line in enumerate(lines) if "ALERT RESOLVED: web is up again" in line)
    assert broke < unconfirmed < alert < resolved
    # the confirmation ran on the other instance
    assert (
        "failed on instance-a, again on instance-b" in lines[alert]
        or "failed on instance-b, again on instance-a" in lines[alert]
    )
    # every monitor reported, from both instances, and only 'web' alerted
    for monitor in ("web", "secure", "mail"):
        assert any(
            f" {monitor} " in line and "UP" in line and "instance-a" in line for line in lines
        ), monitor
        assert any(
            f" {monitor} " in line and "UP" in line and "instance-b" in line for line in lines
        ), monitor
    assert sum("CONFIRMED ERROR -> ALERT" in line for line in lines) == 1
    assert "done (1 alert(s) opened)" in out
