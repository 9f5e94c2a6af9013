"""probekit's postgres kind (and the tls kind with starttls = "postgres") against a real
PostgreSQL 15 (interop/daemons/postgresql.sh: 127.0.0.1 on a high port, ssl on with a self-made
certificate, a SCRAM user and an md5 user, a test database with a table of three rows), with
check_pgsql beside each case.

check_pgsql connects with libpq's defaults (sslmode=prefer: TLS, certificate not verified) and
its -q value must be numeric, so the query cases count rows (`SELECT count(*) FROM items` is 3)
and compare that first cell: probekit with `expect`, check_pgsql with the -C range.
The stopped-service case stops the daemon, so it runs last.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conftest import Agreement, Daemon, PluginVerdict, run_plugin
from probekit import ErrorKind, Result, Secret, Status, TlsOptions
from probekit.probes.postgres import PostgresProbe
from probekit.probes.tls import TlsProbe

NAME = "postgresql"
COUNT = "SELECT count(*) FROM items"
WRONG = "not-the-password"


@pytest.fixture(scope="module")
def pg(start_daemon: type[Daemon]) -> Daemon:
    return start_daemon(NAME)


def probe(pg: Daemon, **fields: Any) -> Result:
    fields.setdefault("starttls", "required")
    fields.setdefault("starttls_options", TlsOptions(ca_file=pg.info["CA_FILE"]))
    return asyncio.run(PostgresProbe("127.0.0.1", pg.port("PORT"), **fields).check())


def scram(pg: Daemon, **fields: Any) -> dict[str, Any]:
    return {
        "username": pg.info["SCRAM_USER"],
        "password": Secret(pg.info["SCRAM_PASSWORD"]),
        "database": pg.info["DATABASE"],
        **fields,
    }


def md5(pg: Daemon, **fields: Any) -> dict[str, Any]:
    return {
        "username": pg.info["MD5_USER"],
        "password": Secret(pg.info["MD5_PASSWORD"]),
        "database": pg.info["DATABASE"],
        **fields,
    }


def check_pgsql(
    pg: Daemon, *args: str, user: str | None = None, password: str = ""
) -> PluginVerdict:
    base = ["-H", "127.0.0.1", "-P", pg.info["PORT"], "-t", "10"]
    if user is not None:
        base += ["-l", user, "-p", password]
    return run_plugin("check_pgsql", *base, *args)


def test_scram_login_over_tls(pg: Daemon, agreement: Agreement) -> None:
    result = probe(pg, **scram(pg))
    plugin = check_pgsql(
        pg,
        "-d",
        pg.info["DATABASE"],
        user=pg.info["SCRAM_USER"],
        password=pg.info["SCRAM_PASSWORD"],
    )
    agreement.record(NAME, "SCRAM login, TLS", "OK", result, plugin)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "starttls", "tls", "startup", "auth")
    assert result.metrics["tls"] == 1
    assert result.metrics["login"] == 1
    assert 150000 <= result.metrics["server_version"] < 160000
    assert result.tls is not None
    assert result.tls.verified
    assert plugin.code == 0, plugin.line


def test_scram_login_with_a_password_saslprep_changes(pg: Daemon, agreement: Agreement) -> None:
    password = pg.info["UTF8_PASSWORD_ASCII_PART"] + "\u00a0\u00e9\u00ad"
    result = probe(
        pg, username=pg.info["UTF8_USER"], password=Secret(password), database=pg.info["DATABASE"]
    )
    plugin = check_pgsql(
        pg, "-d", pg.info["DATABASE"], user=pg.info["UTF8_USER"], password=password
    )
    agreement.record(NAME, "SCRAM login, SASLprep'd password", "OK", result, plugin)
    assert result.status is Status.UP, result.summary()
    assert plugin.code == 0, plugin.line


def test_md5_login_in_plain_text(pg: Daemon, agreement: Agreement) -> None:
    result = probe(pg, **md5(pg, starttls="off", starttls_options=None))
    plugin = check_pgsql(
        pg,
        "-d",
        pg.info["DATABASE"],
        "-o",
        "sslmode=disable",
        user=pg.info["MD5_USER"],
        password=pg.info["MD5_PASSWORD"],
    )
    agreement.record(NAME, "md5 login, no TLS", "OK", result, plugin)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["tls"] == 0
    assert result.metrics["login"] == 1
    assert next(a for a in result.assertions if a.name == "auth_method").observed == "md5"
    assert plugin.code == 0, plugin.line


def test_without_credentials(pg: Daemon, agreement: Agreement) -> None:
    result = probe(pg)
    plugin = check_pgsql(pg, "-d", pg.info["DATABASE"], user="probekit", password="")
    agreement.record(
        NAME,
        "no credentials",
        "probekit OK (asks for SCRAM), plugin CRITICAL",
        result,
        plugin,
        note="by design: without a password probekit's UP means the server asks for one; "
        "check_pgsql always tries to log in",
    )
    assert result.status is Status.UP, result.summary()
    assert "SCRAM-SHA-256" in next(a for a in result.assertions if a.name == "auth_method").observed
    assert plugin.code == 2, plugin.line


@pytest.mark.parametrize("way", ["scram", "md5"])
def test_wrong_password(way: str, pg: Daemon, agreement: Agreement) -> None:
    user = pg.info["SCRAM_USER"] if way == "scram" else pg.info["MD5_USER"]
    result = probe(pg, username=user, password=Secret(WRONG), database=pg.info["DATABASE"])
    plugin = check_pgsql(pg, "-d", pg.info["DATABASE"], user=user, password=WRONG)
    agreement.record(NAME, f"wrong password ({way})", "CRITICAL/auth", result, plugin)
    assert result.error is not None, result.summary()
    assert result.error.kind is ErrorKind.AUTH, result.summary()
    assert "28P01" in result.error.message
    assert result.error.phase == "auth"
    assert plugin.code == 2, plugin.line


def test_missing_database(pg: Daemon, agreement: Agreement) -> None:
    result = probe(pg, **scram(pg, database="no_such_db"))
    plugin = check_pgsql(
        pg, "-d", "no_such_db", user=pg.info["SCRAM_USER"], password=pg.info["SCRAM_PASSWORD"]
    )
    agreement.record(NAME, "missing database", "CRITICAL/assertion", result, plugin)
    assert result.error is not None, result.summary()
    assert result.error.kind is ErrorKind.ASSERTION, result.summary()
    assert "3D000" in next(a for a in result.assertions if a.name == "database").observed
    assert plugin.code == 2, plugin.line


@pytest.mark.parametrize(("expect", "code"), [("3", 0), ("4", 2)])
def test_query_first_cell(expect: str, code: int, pg: Daemon, agreement: Agreement) -> None:
    result = probe(pg, **scram(pg, query=COUNT, expect=expect))
    plugin = check_pgsql(
        pg,
        "-d",
        pg.info["DATABASE"],
        "-q",
        COUNT,
        "-C",
        f"{expect}:{expect}",
        user=pg.info["SCRAM_USER"],
        password=pg.info["SCRAM_PASSWORD"],
    )
    state = "OK" if code == 0 else "CRITICAL/assertion"
    agreement.record(NAME, f"query first cell = {expect}", state, result, plugin)
    assert result.metrics["rows"] == 1
    if code == 0:
        assert result.status is Status.UP, result.summary()
    else:
        assert result.error is not None
        assert result.error.kind is ErrorKind.ASSERTION
    assert plugin.code == code, plugin.line


@pytest.mark.parametrize(
    ("warning", "critical", "code"),
    [("5", "10", 0), ("2", "10", 1), ("1", "2", 2)],
    ids=["ok", "warning", "critical"],
)
def test_query_thresholds(
    warning: str, critical: str, code: int, pg: Daemon, agreement: Agreement
) -> None:
    fields = scram(pg, query=COUNT, query_warning=warning, query_critical=critical)
    result = probe(pg, **fields)
    plugin = check_pgsql(
        pg,
        "-d",
        pg.info["DATABASE"],
        "-q",
        COUNT,
        "-W",
        warning,
        "-C",
        critical,
        user=pg.info["SCRAM_USER"],
        password=pg.info["SCRAM_PASSWORD"],
    )
    state = {0: "OK", 1: "WARNING/assertion", 2: "CRITICAL/assertion"}[code]
    agreement.record(NAME, f"query value 3, -W {warning} -C {critical}", state, result, plugin)
    assert result.status.exit_code == code, result.summary()
    assert plugin.code == code, plugin.line


def test_query_rows(pg: Daemon, agreement: Agreement) -> None:
    result = probe(
        pg, **md5(pg, query="SELECT name FROM items ORDER BY name", expect="alpha", min_rows=3)
    )
    agreement.record(NAME, "query rows (md5 over TLS)", "OK", result, None, note="no plugin peer")
    assert result.status is Status.UP, result.summary()
    assert result.metrics["rows"] == 3


def test_tls_kind_with_postgres_starttls(pg: Daemon, agreement: Agreement) -> None:
    tls_probe = TlsProbe(
        "127.0.0.1",
        pg.port("PORT"),
        starttls="postgres",
        tls=TlsOptions(ca_file=pg.info["CA_FILE"], server_name="localhost"),
    )
    result = asyncio.run(tls_probe.check())
    plugin = check_pgsql(
        pg,
        "-d",
        pg.info["DATABASE"],
        "-o",
        "sslmode=require",
        user=pg.info["SCRAM_USER"],
        password=pg.info["SCRAM_PASSWORD"],
    )
    agreement.record(NAME, "tls kind, starttls=postgres", "OK", result, plugin)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "starttls", "tls")
    assert result.tls is not None
    assert result.tls.verified
    assert plugin.code == 0, plugin.line


def test_stopped_service(pg: Daemon, agreement: Agreement) -> None:
    port = pg.info["PORT"]
    pg.stop()
    result = probe(pg, **scram(pg))
    plugin = run_plugin("check_pgsql", "-H", "127.0.0.1", "-P", port, "-t", "5")
    agreement.record(NAME, "stopped service", "CRITICAL/connect", result, plugin)
    assert result.error is not None, result.summary()
    assert result.error.kind is ErrorKind.CONNECT, result.summary()
    assert plugin.code == 2, plugin.line
