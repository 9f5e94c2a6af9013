"""The `tls` kind against exim (STARTTLS in SMTP) and dovecot (IMAPS, STARTTLS in IMAP and POP3),
beside the certificate checks of monitoring-plugins: `check_smtp -S -D` and `check_simap -D`.

Both daemons present a certificate for localhost, 127.0.0.1 and ::1, valid 365 days, signed by
a CA their start script made (CA_FILE). The plugins check the days left (`-D warn,crit`) but do
not verify the chain; probekit verifies it by default, which is where they disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from conftest import Agreement, Daemon, run_plugin, verdict
from probekit import TlsOptions
from probekit.probes.tls import TlsProbe


@dataclass(frozen=True)
class Case:
    name: str
    daemon: str  # exim4 or dovecot
    port: str
    probe: dict[str, Any]
    plugin: tuple[str, ...]
    expected: str
    plugin_expected: str
    note: str = ""
    trust: bool = True  # trust the daemon's CA (else the system's CAs)
    plugin_port: str | None = None  # the plugin's port when not the probe's


UNVERIFIED = (
    "probekit verifies the chain against the system's CAs, which lack the test CA: DOWN/tls; "
    "the plugin checks the days left only, never the chain"
)
CASES = [
    Case(
        "SMTP STARTTLS certificate",
        "exim4",
        "SMTP_PORT",
        {"starttls": "smtp", "expect_san": ("localhost", "127.0.0.1")},
        ("check_smtp", "-S", "-D", "30,7"),
        "OK",
        "OK",
    ),
    Case(
        "SMTP STARTTLS, 400 days wanted (warn)",
        "exim4",
        "SMTP_PORT",
        {"starttls": "smtp", "cert_warn_days": 400},
        ("check_smtp", "-S", "-D", "400,7"),
        "WARNING/assertion",
        "WARNING",
    ),
    Case(
        "SMTP STARTTLS, 400 days wanted (crit)",
        "exim4",
        "SMTP_PORT",
        {"starttls": "smtp", "cert_warn_days": 500, "cert_crit_days": 400},
        ("check_smtp", "-S", "-D", "500,400"),
        "CRITICAL/assertion",
        "CRITICAL",
    ),
    Case(
        "SMTP STARTTLS not offered",
        "exim4",
        "SMTP_PLAIN_PORT",
        {"starttls": "smtp"},
        ("check_smtp", "-S", "-D", "30,7"),
        "CRITICAL/tls",
        "WARNING",
        "check_smtp -S: WARNING (TLS not supported by server); probekit: no certificate to "
        "check is DOWN/tls",
    ),
    Case(
        "SMTP STARTTLS, CA not trusted",
        "exim4",
        "SMTP_PORT",
        {"starttls": "smtp"},
        ("check_smtp", "-S", "-D", "30,7"),
        "CRITICAL/tls",
        "OK",
        UNVERIFIED,
        trust=False,
    ),
    Case(
        "IMAPS certificate",
        "dovecot",
        "IMAPS_PORT",
        {"expect_san": ("localhost",)},
        ("check_simap", "-D", "30,7"),
        "OK",
        "OK",
    ),
    Case(
        "IMAP STARTTLS certificate",
        "dovecot",
        "IMAP_PORT",
        {"starttls": "imap"},
        ("check_simap", "-D", "30,7"),
        "OK",
        "OK",
        "the plugin's run is check_simap on the IMAPS port: no plugin does IMAP STARTTLS",
        plugin_port="IMAPS_PORT",
    ),
    Case(
        "POP3 STLS certificate",
        "dovecot",
        "POP3_PORT",
        {"starttls": "pop3", "expect_san": ("127.0.0.1",)},
        ("check_spop", "-D", "30,7"),
        "OK",
        "OK",
        "the plugin's run is check_spop on the POP3S port: no plugin does STLS",
        plugin_port="POP3S_PORT",
    ),
    Case(
        "IMAPS, 400 days wanted (crit)",
        "dovecot",
        "IMAPS_PORT",
        {"cert_warn_days": 500, "cert_crit_days": 400},
        ("check_simap", "-D", "500,400"),
        "CRITICAL/assertion",
        "CRITICAL",
    ),
    Case(
        "IMAPS, fingerprint pin wrong",
        "dovecot",
        "IMAPS_PORT",
        {"fingerprint_sha256": "00" * 32},
        ("check_simap", "-D", "30,7"),
        "CRITICAL/assertion",
        "OK",
        "check_simap has no certificate pin",
    ),
    Case(
        "IMAPS, CA not trusted",
        "dovecot",
        "IMAPS_PORT",
        {},
        ("check_simap", "-D", "30,7"),
        "CRITICAL/tls",
        "OK",
        UNVERIFIED,
        trust=False,
    ),
]


@pytest.fixture(scope="module")
def daemons(start_daemon: type[Daemon]) -> dict[str, Daemon]:
    return {name: start_daemon(name) for name in ("exim4", "dovecot")}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_tls(case: Case, daemons: dict[str, Daemon], agreement: Agreement) -> None:
    daemon = daemons[case.daemon]
    port = daemon.port(case.port)
    tls = TlsOptions(ca_file=daemon.info["CA_FILE"]) if case.trust else None
    result = await TlsProbe("127.0.0.1", port, tls=tls, **case.probe).check()
    name, *args = case.plugin
    if case.plugin_port is not None:
        port = daemon.port(case.plugin_port)
    plugin = run_plugin(name, "-H", "127.0.0.1", "-p", str(port), "-t", "10", *args)
    agreement.record(f"{case.daemon} (tls)", case.name, case.expected, result, plugin, case.note)
    assert verdict(result) == case.expected, result.summary()
    assert plugin.state == case.plugin_expected, plugin.line


async def test_tls_reports_the_chain_and_version(daemons: dict[str, Daemon]) -> None:
    """What the kind reports of exim's certificate after STARTTLS."""
    exim = daemons["exim4"]
    probe = TlsProbe(
        "127.0.0.1",
        exim.port("SMTP_PORT"),
        starttls="smtp",
        tls=TlsOptions(ca_file=exim.info["CA_FILE"]),
    )
    result = await probe.check()
    assert verdict(result) == "OK", result.summary()
    assert result.phase_names() == ("resolve", "connect", "banner", "ehlo", "starttls", "tls")
    assert result.tls is not None
    assert result.tls.version in ("TLSv1.2", "TLSv1.3")
    assert 360 < result.metrics["days_left"] <= 365
    assert result.metrics["chain_length"] >= 1
