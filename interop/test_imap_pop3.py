"""The `imap` and `pop3` kinds against dovecot, beside monitoring-plugins' `check_imap`,
`check_simap`, `check_pop` and `check_spop`.

interop/daemons/dovecot.sh runs dovecot on four loopback high ports: IMAP and POP3 (STARTTLS and
STLS offered) and IMAPS and POP3S (TLS from the first byte), a certificate of a CA made by the
script, and one passwd-file user whose INBOX holds MESSAGES messages.

The plugins are check_tcp under other names: they read the greeting, and can send text and
expect a reply (`-s`, `-e`), which is how a Nagios user checks a login; they cannot speak
STARTTLS. Where no plugin run means the same, the row says so and has no plugin verdict.
Each case asserts probekit's verdict and, where there is one, the plugin's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from conftest import Agreement, Daemon, free_port, run_plugin, verdict
from probekit import Secret, Timeouts, TlsOptions
from probekit.probes.imap import ImapProbe
from probekit.probes.pop3 import Pop3Probe

PASSWORD, WRONG = "<password>", "<wrong>"
NO_STARTTLS = "check_imap/check_pop cannot STARTTLS: no plugin run checks the same"


@dataclass(frozen=True)
class Case:
    """One check: the kind, port, probe fields, the plugin and its arguments, both verdicts."""

    name: str
    kind: str  # imap or pop3
    port: str  # a key of dovecot.sh's output, or STOPPED (nothing listens)
    probe: dict[str, Any]
    plugin: tuple[str, ...] | None  # the plugin's name and arguments, None when none applies
    expected: str
    plugin_expected: str = "-"
    note: str = ""


def imap_login(password: str) -> tuple[str, ...]:
    """check_imap/check_simap's way to check a login: send LOGIN, expect its tagged OK."""
    login = f"a1 LOGIN monitor {password}\\r\\na2 LOGOUT\\r\\n"
    return ("-E", "-s", login, "-e", "a1 OK", "-M", "crit")


def pop3_login(password: str) -> tuple[str, ...]:
    """check_pop/check_spop's way to check a login: USER, PASS, expect dovecot's `Logged in`."""
    login = f"USER monitor\\r\\nPASS {password}\\r\\nQUIT\\r\\n"
    return ("-E", "-s", login, "-e", "Logged in", "-M", "crit")


STARTTLS_LOGIN = {"starttls": "required", "username": "monitor", "password": PASSWORD}
TLS_LOGIN = {"tls": True, "username": "monitor", "password": PASSWORD}

CASES = [
    # IMAP
    Case(
        "IMAP STARTTLS, login, EXAMINE INBOX",
        "imap",
        "IMAP_PORT",
        {**STARTTLS_LOGIN, "mailbox": "INBOX"},
        ("check_imap",),
        "OK",
        "OK",
        "check_imap reads the greeting only (it cannot STARTTLS)",
    ),
    Case(
        "IMAPS, login, EXAMINE INBOX",
        "imap",
        "IMAPS_PORT",
        {**TLS_LOGIN, "mailbox": "INBOX"},
        ("check_simap", *imap_login(PASSWORD)),
        "OK",
        "OK",
    ),
    Case(
        "IMAPS, wrong password",
        "imap",
        "IMAPS_PORT",
        {**TLS_LOGIN, "password": WRONG},
        ("check_simap", *imap_login(WRONG)),
        "CRITICAL/auth",
        "CRITICAL",
    ),
    Case(
        "IMAP STARTTLS, wrong password",
        "imap",
        "IMAP_PORT",
        {**STARTTLS_LOGIN, "password": WRONG},
        None,
        "CRITICAL/auth",
        note=NO_STARTTLS,
    ),
    Case(
        "IMAP, missing mailbox",
        "imap",
        "IMAPS_PORT",
        {**TLS_LOGIN, "mailbox": "Nowhere"},
        None,
        "CRITICAL/assertion",
        note="no plugin opens a mailbox",
    ),
    Case(
        "IMAPS, certificate not trusted",
        "imap",
        "IMAPS_PORT",
        {"tls": "system"},
        ("check_simap",),
        "CRITICAL/tls",
        "OK",
        "probekit verifies the chain (system CAs, which lack the test CA): DOWN/tls; "
        "check_simap does not verify certificates",
    ),
    Case(
        "IMAP, stopped service",
        "imap",
        "STOPPED",
        {},
        ("check_imap",),
        "CRITICAL/connect",
        "CRITICAL",
    ),
    # POP3
    Case(
        "POP3 STLS, login, STAT",
        "pop3",
        "POP3_PORT",
        STARTTLS_LOGIN,
        ("check_pop", *pop3_login(PASSWORD)),
        "OK",
        "OK",
        "check_pop logs in without TLS (dovecot allows it on loopback); probekit upgrades first",
    ),
    Case(
        "POP3S, login, STAT",
        "pop3",
        "POP3S_PORT",
        TLS_LOGIN,
        ("check_spop", *pop3_login(PASSWORD)),
        "OK",
        "OK",
    ),
    Case(
        "POP3S, wrong password",
        "pop3",
        "POP3S_PORT",
        {**TLS_LOGIN, "password": WRONG},
        ("check_spop", *pop3_login(WRONG)),
        "CRITICAL/auth",
        "CRITICAL",
    ),
    Case(
        "POP3 STLS, wrong password",
        "pop3",
        "POP3_PORT",
        {**STARTTLS_LOGIN, "password": WRONG},
        ("check_pop", *pop3_login(WRONG)),
        "CRITICAL/auth",
        "CRITICAL",
    ),
    Case(
        "POP3, stopped service",
        "pop3",
        "STOPPED",
        {},
        ("check_pop",),
        "CRITICAL/connect",
        "CRITICAL",
    ),
]


@pytest.fixture(scope="module")
def dovecot(start_daemon: type[Daemon]) -> Daemon:
    return start_daemon("dovecot")


def build(case: Case, dovecot: Daemon, port: int) -> ImapProbe | Pop3Probe:
    trust = TlsOptions(ca_file=dovecot.info["CA_FILE"])
    fields = dict(case.probe)
    if fields.get("tls") is True:
        fields["tls"] = trust
    elif fields.get("tls") == "system":
        fields["tls"] = TlsOptions()
    if "password" in fields:
        password = dovecot.info["PASSWORD"] if fields["password"] == PASSWORD else "wrong-pw"
        fields["password"] = Secret(password)
    if fields.get("starttls") == "required":
        fields["starttls_options"] = trust
    probe_class = ImapProbe if case.kind == "imap" else Pop3Probe
    return probe_class("127.0.0.1", port, timeouts=Timeouts(total=10), **fields)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_imap_pop3(case: Case, dovecot: Daemon, agreement: Agreement) -> None:
    port = free_port() if case.port == "STOPPED" else dovecot.port(case.port)
    result = await build(case, dovecot, port).check()
    plugin = None
    if case.plugin is not None:
        name, *args = case.plugin
        args = [
            arg.replace(PASSWORD, dovecot.info["PASSWORD"]).replace(WRONG, "wrong-pw")
            for arg in args
        ]
        plugin = run_plugin(name, "-H", "127.0.0.1", "-p", str(port), "-t", "10", *args)
    agreement.record("dovecot", case.name, case.expected, result, plugin, case.note)
    assert verdict(result) == case.expected, result.summary()
    if plugin is not None:
        assert plugin.state == case.plugin_expected, plugin.line
    assert dovecot.info["PASSWORD"] not in repr(result)


async def test_imap_counts_the_inbox(dovecot: Daemon) -> None:
    """EXAMINE INBOX over STARTTLS reports the messages dovecot.sh put there."""
    case = CASES[0]
    result = await build(case, dovecot, dovecot.port("IMAP_PORT")).check()
    assert verdict(result) == "OK", result.summary()
    assert result.metrics["messages"] == int(dovecot.info["MESSAGES"])
    assert result.metrics["tls"] == 1
    assert "starttls" in result.phase_names()


async def test_pop3_stat_counts_the_maildrop(dovecot: Daemon) -> None:
    """STAT over POP3S reports the messages dovecot.sh put there, and their size."""
    case = next(case for case in CASES if case.name == "POP3S, login, STAT")
    result = await build(case, dovecot, dovecot.port("POP3S_PORT")).check()
    assert verdict(result) == "OK", result.summary()
    assert result.metrics["messages"] == int(dovecot.info["MESSAGES"])
    assert result.metrics["maildrop_bytes"] > 0
    assert result.metrics["tls"] == 1
