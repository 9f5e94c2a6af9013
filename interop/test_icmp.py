"""The `icmp` kind against the kernel's echo replies on 127.0.0.1 and ::1, beside `check_ping`.

No daemon: the loopback interface answers echo requests itself. The probe uses datagram ICMP
sockets where net.ipv4.ping_group_range allows them and raw sockets as root (CI runs as root);
check_ping runs Debian's /usr/bin/ping. The DOWN and WARNING cases cross a round-trip threshold
set below what loopback can do (1 microsecond), in both tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from conftest import Agreement, run_plugin, verdict
from probekit import Status
from probekit.probes.icmp import IcmpProbe


@dataclass(frozen=True)
class Case:
    name: str
    host: str
    probe: dict[str, Any]
    plugin: tuple[str, ...]
    expected: str
    plugin_expected: str
    note: str = ""


#: check_ping's thresholds are "RTA in ms,loss%"; probekit's rtt_* are seconds, loss_* ratios.
CASES = [
    Case(
        "127.0.0.1, 3 echoes",
        "127.0.0.1",
        {"rtt_warn": 0.1, "rtt_crit": 0.5, "loss_warn": 0.2, "loss_crit": 0.6},
        ("-w", "100,20%", "-c", "500,60%"),
        "OK",
        "OK",
    ),
    Case(
        "::1, 3 echoes",
        "::1",
        {"rtt_warn": 0.1, "rtt_crit": 0.5, "loss_warn": 0.2, "loss_crit": 0.6},
        ("-6", "-w", "100,20%", "-c", "500,60%"),
        "OK",
        "OK",
    ),
    Case(
        "round trip over the warning threshold",
        "127.0.0.1",
        {"rtt_warn": 1e-6, "rtt_crit": 0.5},
        ("-w", "0.001,20%", "-c", "500,60%"),
        "WARNING/assertion",
        "WARNING",
    ),
    Case(
        "round trip over the critical threshold",
        "127.0.0.1",
        {"rtt_warn": 1e-6, "rtt_crit": 1e-6},
        ("-w", "0.001,20%", "-c", "0.001,60%"),
        "CRITICAL/assertion",
        "CRITICAL",
    ),
    Case(
        "::1, round trip over the critical threshold",
        "::1",
        {"rtt_crit": 1e-6},
        ("-6", "-w", "0.001,20%", "-c", "0.001,60%"),
        "CRITICAL/assertion",
        "CRITICAL",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_icmp(case: Case, agreement: Agreement) -> None:
    result = await IcmpProbe(case.host, count=3, ping_interval=0.2, **case.probe).check()
    if result.status is Status.UNKNOWN:
        pytest.fail(f"this process may not open ICMP sockets: {result.summary()}")
    plugin = run_plugin("check_ping", "-H", case.host, "-p", "3", "-t", "10", *case.plugin)
    agreement.record("icmp (kernel)", case.name, case.expected, result, plugin, case.note)
    assert verdict(result) == case.expected, result.summary()
    assert plugin.state == case.plugin_expected, plugin.line
    assert result.metrics["sent"] == 3
    assert result.metrics["loss_ratio"] == 0
    assert result.metrics["rtt_min"] <= result.metrics["rtt_avg"] <= result.metrics["rtt_max"]
