"""The `smtp` kind against exim, beside monitoring-plugins' `check_smtp`.

interop/daemons/exim4.sh runs exim on three loopback high ports: SMTP_PORT offers STARTTLS (a
certificate of a CA made by the script) and, once encrypted, AUTH PLAIN and LOGIN for one test
user; SMTP_LOGIN_PORT the same with AUTH LOGIN only; SMTP_PLAIN_PORT offers neither. Each case
runs one SmtpProbe and the `check_smtp` command a Nagios user would write for the same check,
asserts both verdicts, and records them side by side for the agreement table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from conftest import Agreement, Daemon, free_port, run_plugin, verdict
from probekit import Secret, Timeouts, TlsOptions
from probekit.probes.smtp import SmtpProbe

#: Placeholders in a case's fields, filled from what exim4.sh printed.
USER, PASSWORD, WRONG = "<user>", "<password>", "<wrong>"


@dataclass(frozen=True)
class Case:
    """One check: the probe's fields, check_smtp's arguments, both expected verdicts."""

    name: str
    port: str  # SMTP_PORT, SMTP_LOGIN_PORT, SMTP_PLAIN_PORT, or STOPPED (nothing listens)
    probe: dict[str, Any]
    plugin: tuple[str, ...]
    expected: str
    plugin_expected: str
    note: str = ""


CASES = [
    Case("STARTTLS required, offered", "SMTP_PORT", {"starttls": "required"}, ("-S",), "OK", "OK"),
    Case(
        "STARTTLS + AUTH, right password",
        "SMTP_PORT",
        {"starttls": "required", "username": USER, "password": PASSWORD},
        ("-S", "-A", "LOGIN", "-U", USER, "-P", PASSWORD),
        "OK",
        "OK",
        "probekit logs in with AUTH PLAIN (offered first), check_smtp only knows AUTH LOGIN",
    ),
    Case(
        "STARTTLS + AUTH, wrong password",
        "SMTP_PORT",
        {"starttls": "required", "username": USER, "password": WRONG},
        ("-S", "-A", "LOGIN", "-U", USER, "-P", WRONG),
        "CRITICAL/auth",
        "CRITICAL",
    ),
    Case(
        "STARTTLS + AUTH LOGIN only, right password",
        "SMTP_LOGIN_PORT",
        {"starttls": "required", "username": USER, "password": PASSWORD},
        ("-S", "-A", "LOGIN", "-U", USER, "-P", PASSWORD),
        "OK",
        "OK",
        "this listener offers AUTH LOGIN only: probekit falls back to it",
    ),
    Case(
        "STARTTLS + AUTH LOGIN only, wrong password",
        "SMTP_LOGIN_PORT",
        {"starttls": "required", "username": USER, "password": WRONG},
        ("-S", "-A", "LOGIN", "-U", USER, "-P", WRONG),
        "CRITICAL/auth",
        "CRITICAL",
    ),
    Case(
        "dry run, recipient exists",
        "SMTP_PORT",
        {"starttls": "required", "mail_from": "", "rcpt_to": ("postmaster@test.internal",)},
        (
            "-S",
            "-C",
            "MAIL FROM:<>",
            "-R",
            "250",
            "-C",
            "RCPT TO:<postmaster@test.internal>",
            "-R",
            "250",
        ),
        "OK",
        "OK",
    ),
    Case(
        "dry run, recipient refused (550)",
        "SMTP_PORT",
        {"starttls": "required", "mail_from": "", "rcpt_to": ("nobody@test.internal",)},
        (
            "-S",
            "-C",
            "MAIL FROM:<>",
            "-R",
            "250",
            "-C",
            "RCPT TO:<nobody@test.internal>",
            "-R",
            "250",
        ),
        "CRITICAL/assertion",
        "WARNING",
        "check_smtp makes an unexpected reply to -C a WARNING; probekit's refused recipient is "
        "a failed assertion, DOWN (CRITICAL)",
    ),
    Case(
        "STARTTLS required, not offered",
        "SMTP_PLAIN_PORT",
        {"starttls": "required"},
        ("-S",),
        "CRITICAL/tls",
        "WARNING",
        "check_smtp -S says WARNING (TLS not supported by server); probekit refuses a silent "
        "downgrade: DOWN/tls, as the issue asks",
    ),
    Case(
        "STARTTLS optional, not offered",
        "SMTP_PLAIN_PORT",
        {},
        (),
        "OK",
        "OK",
        "probekit records `starttls: not offered` and metric starttls=0",
    ),
    Case(
        "password, no STARTTLS and no AUTH offered",
        "SMTP_PLAIN_PORT",
        {"username": USER, "password": PASSWORD},
        ("-A", "LOGIN", "-U", USER, "-P", PASSWORD),
        "CRITICAL/tls",
        "CRITICAL",
        "probekit does not send a password in clear (DOWN/tls); check_smtp sends AUTH LOGIN, "
        "which exim refuses (not advertised): both CRITICAL, for different reasons",
    ),
    Case("stopped service", "STOPPED", {}, (), "CRITICAL/connect", "CRITICAL"),
]


def fill(value: Any, daemon: Daemon) -> Any:
    words = {
        USER: daemon.info["USER"],
        PASSWORD: daemon.info["PASSWORD"],
        WRONG: "not-the-password",
    }
    return words.get(value, value) if isinstance(value, str) else value


@pytest.fixture(scope="module")
def exim(start_daemon: type[Daemon]) -> Daemon:
    return start_daemon("exim4")


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_smtp(case: Case, exim: Daemon, agreement: Agreement) -> None:
    port = free_port() if case.port == "STOPPED" else exim.port(case.port)
    fields = {key: fill(value, exim) for key, value in case.probe.items()}
    if "password" in fields:
        fields["password"] = Secret(fields["password"])
    probe = SmtpProbe(
        "127.0.0.1",
        port,
        starttls_options=TlsOptions(ca_file=exim.info["CA_FILE"]),
        timeouts=Timeouts(total=10),
        **fields,
    )
    result = await probe.check()
    args = [fill(arg, exim) for arg in case.plugin]
    plugin = run_plugin("check_smtp", "-H", "127.0.0.1", "-p", str(port), "-t", "10", *args)
    agreement.record("exim4", case.name, case.expected, result, plugin, case.note)
    assert verdict(result) == case.expected, result.summary()
    assert plugin.state == case.plugin_expected, plugin.line
    # The password never shows in the result, whatever happened.
    assert exim.info["PASSWORD"] not in repr(result)


async def test_smtp_upgraded_session_reports_tls_and_auth(exim: Daemon) -> None:
    """What a UP result says about exim: STARTTLS used, logged in, exim's SIZE limit."""
    probe = SmtpProbe(
        "127.0.0.1",
        exim.port("SMTP_PORT"),
        starttls="required",
        starttls_options=TlsOptions(ca_file=exim.info["CA_FILE"]),
        username=exim.info["USER"],
        password=Secret(exim.info["PASSWORD"]),
    )
    result = await probe.check()
    assert verdict(result) == "OK", result.summary()
    assert tuple(phase.name for phase in result.phases) == (
        "resolve",
        "connect",
        "banner",
        "ehlo",
        "starttls",
        "tls",
        "ehlo",
        "auth",
        "quit",
    )
    assert result.metrics["starttls"] == 1
    assert result.metrics["auth"] == 1
    assert result.metrics["size_limit"] > 0
    assert result.tls is not None
    assert result.tls.version in ("TLSv1.2", "TLSv1.3")
