"""The `dns` kind against dnsmasq serving a test zone, beside monitoring-plugins' `check_dig`.

interop/daemons/dnsmasq.sh serves test.internal on a loopback high port of 127.0.0.1 and ::1,
over UDP and TCP: A, AAAA, MX, TXT, CNAME and SRV records, and NXDOMAIN for any other name of the
zone. Each case runs one DnsProbe and the `check_dig` command a Nagios user would write for the
same question, asserts both verdicts, and records them side by side for the agreement table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Agreement, Daemon, free_port, run_plugin, verdict
from probekit import Timeouts
from probekit.probes.dns import DnsProbe

pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/dig").exists(),
    reason="check_dig runs /usr/bin/dig: install bind9-dnsutils (interop/install.sh does)",
)


@dataclass(frozen=True)
class Case:
    """One question: the probe's fields, check_dig's arguments, both expected verdicts."""

    name: str
    probe: dict[str, Any]
    plugin: tuple[str, ...]
    expected: str
    plugin_expected: str
    note: str = ""
    #: Run check_dig through `negate` (CRITICAL <-> OK), as a Nagios user checks an absence.
    negate: bool = False
    port: str = "PORT"
    server: str = "127.0.0.1"


CASES = [
    Case(
        "A",
        {"name": "www.test.internal", "expect_answers": ("192.0.2.10",)},
        ("-l", "www.test.internal", "-a", "192.0.2.10"),
        "OK",
        "OK",
    ),
    Case(
        "AAAA",
        {"name": "www.test.internal", "type": "AAAA", "expect_answers": ("2001:db8::10",)},
        ("-l", "www.test.internal", "-T", "AAAA", "-a", "2001:db8::10"),
        "OK",
        "OK",
    ),
    Case(
        "MX",
        {"name": "test.internal", "type": "MX", "expect_answers": ("mail.test.internal",)},
        ("-l", "test.internal", "-T", "MX", "-a", "mail.test.internal"),
        "OK",
        "OK",
    ),
    Case(
        "TXT",
        {"name": "test.internal", "type": "TXT", "expect_answers": ("v=spf1 mx -all",)},
        ("-l", "test.internal", "-T", "TXT", "-a", "v=spf1 mx -all"),
        "OK",
        "OK",
    ),
    Case(
        "CNAME",
        {"name": "alias.test.internal", "type": "CNAME", "expect_answers": ("www.test.internal",)},
        ("-l", "alias.test.internal", "-T", "CNAME", "-a", "www.test.internal"),
        "OK",
        "OK",
    ),
    Case(
        "A through a CNAME",
        {"name": "alias.test.internal", "expect_answers": ("192.0.2.10",)},
        ("-l", "alias.test.internal", "-a", "192.0.2.10"),
        "OK",
        "OK",
    ),
    Case(
        "SRV",
        {
            "name": "_imap._tcp.test.internal",
            "type": "SRV",
            "expect_answers": ("mail.test.internal",),
        },
        ("-l", "_imap._tcp.test.internal", "-T", "SRV", "-a", "mail.test.internal"),
        "OK",
        "OK",
    ),
    Case(
        "A over TCP",
        {"name": "www.test.internal", "transport": "tcp", "expect_answers": ("192.0.2.10",)},
        ("-l", "www.test.internal", "-a", "192.0.2.10", "-A", "+tcp"),
        "OK",
        "OK",
    ),
    Case(
        "A from the server at ::1",
        {"name": "www.test.internal", "expect_answers": ("192.0.2.10",)},
        ("-6", "-l", "www.test.internal", "-a", "192.0.2.10"),
        "OK",
        "OK",
        server="::1",
    ),
    Case(
        "AAAA from the server at ::1 over TCP",
        {
            "name": "www.test.internal",
            "type": "AAAA",
            "transport": "tcp",
            "expect_answers": ("2001:db8::10",),
        },
        ("-6", "-l", "www.test.internal", "-T", "AAAA", "-a", "2001:db8::10", "-A", "+tcp"),
        "OK",
        "OK",
        server="::1",
    ),
    Case(
        "wrong record (A 192.0.2.99 expected)",
        {"name": "www.test.internal", "expect_answers": ("192.0.2.99",)},
        ("-l", "www.test.internal", "-a", "192.0.2.99"),
        "CRITICAL/assertion",
        "WARNING",
        "check_dig makes an unexpected address a WARNING; probekit's failed expect_answer is "
        "DOWN (CRITICAL), like every failed assertion",
    ),
    Case(
        "missing record (no AAAA for mail)",
        {"name": "mail.test.internal", "type": "AAAA"},
        ("-l", "mail.test.internal", "-T", "AAAA"),
        "CRITICAL/assertion",
        "CRITICAL",
    ),
    Case(
        "NXDOMAIN, not expected",
        {"name": "nope.test.internal"},
        ("-l", "nope.test.internal"),
        "CRITICAL/protocol",
        "CRITICAL",
    ),
    Case(
        "NXDOMAIN expected and got",
        {"name": "nope.test.internal", "valid_rcodes": ("NXDOMAIN",)},
        ("-l", "nope.test.internal"),
        "OK",
        "OK",
        "check_dig cannot expect NXDOMAIN: run through `negate` (its CRITICAL becomes OK)",
        negate=True,
    ),
    Case(
        "NXDOMAIN expected, name exists",
        {"name": "www.test.internal", "valid_rcodes": ("NXDOMAIN",)},
        ("-l", "www.test.internal"),
        "CRITICAL/protocol",
        "CRITICAL",
        "through `negate`: check_dig's OK becomes CRITICAL",
        negate=True,
    ),
    Case(
        "stopped service (UDP)",
        {"name": "www.test.internal"},
        ("-l", "www.test.internal"),
        "CRITICAL/connect",
        "WARNING",
        "check_dig has no verdict of its own for a server that does not answer: dig exits non-zero "
        "and check_dig says WARNING (dig returned an error status); probekit: DOWN/connect",
        port="STOPPED",
    ),
    Case(
        "stopped service (TCP)",
        {"name": "www.test.internal", "transport": "tcp"},
        ("-l", "www.test.internal", "-A", "+tcp"),
        "CRITICAL/connect",
        "WARNING",
        "check_dig has no verdict of its own for a server that does not answer: dig exits non-zero "
        "and check_dig says WARNING (dig returned an error status); probekit: DOWN/connect",
        port="STOPPED",
    ),
]


@pytest.fixture(scope="module")
def dnsmasq(start_daemon: type[Daemon]) -> Daemon:
    return start_daemon("dnsmasq")


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_dns(case: Case, dnsmasq: Daemon, agreement: Agreement) -> None:
    # A stopped service: a loopback port that nothing listens on (UDP nor TCP).
    port = dnsmasq.port("PORT") if case.port == "PORT" else free_port()
    probe = DnsProbe(server=case.server, port=port, timeouts=Timeouts(total=5), **case.probe)
    result = await probe.check()
    args = ("-H", case.server, "-p", str(port), "-t", "5", *case.plugin)
    if case.negate:
        plugin = run_plugin("negate", str(Path("/usr/lib/nagios/plugins/check_dig")), *args)
    else:
        plugin = run_plugin("check_dig", *args)
    agreement.record("dnsmasq", case.name, case.expected, result, plugin, case.note)
    assert verdict(result) == case.expected, result.summary()
    assert plugin.state == case.plugin_expected, plugin.line
