"""probekit's mysql kind against a real MariaDB (interop/daemons/mariadb.sh), beside
check_mysql and check_mysql_query run on the same server: UP with TLS and a login, the
handshake alone, a wrong password, query results (value, row count, an error), and the stopped
service. Every case records both verdicts in the agreement table."""

from __future__ import annotations

import asyncio

import pytest

from conftest import Agreement, Daemon, run_plugin
from probekit import ErrorKind, Result, Secret, Status, TlsOptions
from probekit.probes.mysql import MysqlProbe

DAEMON = "mariadb"


@pytest.fixture(scope="module")
def mariadb(start_daemon: type[Daemon]) -> Daemon:
    return start_daemon(DAEMON)


def probe(db: Daemon, **fields: object) -> MysqlProbe:
    defaults: dict[str, object] = {
        "username": db.info["USER"],
        "password": Secret(db.info["PASSWORD"]),
        "starttls": "required",
        "starttls_options": TlsOptions(ca_file=db.info["CA"]),
    }
    defaults.update(fields)
    return MysqlProbe("127.0.0.1", db.port("PORT"), **defaults)  # type: ignore[arg-type]


def run(p: MysqlProbe) -> Result:
    return asyncio.run(p.check())


def plugin_args(db: Daemon, password: str | None = None) -> list[str]:
    return [
        "-H",
        "127.0.0.1",
        "-P",
        db.info["PORT"],
        "-u",
        db.info["USER"],
        "-p",
        password if password is not None else db.info["PASSWORD"],
    ]


def test_up_with_tls_login_and_database(mariadb: Daemon, agreement: Agreement) -> None:
    result = run(probe(mariadb, database=mariadb.info["DATABASE"]))
    plugin = run_plugin(
        "check_mysql",
        *plugin_args(mariadb),
        "-d",
        mariadb.info["DATABASE"],
        "-l",
        "-C",
        mariadb.info["CA"],
    )
    agreement.record(DAEMON, "login over TLS", "OK", result, plugin)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "handshake", "tls", "auth")
    assert result.tls is not None
    assert result.tls.verified
    versions = [a.observed for a in result.assertions if a.name == "server_version"]
    assert versions
    assert "MariaDB" in versions[0]
    assert plugin.state == "OK", plugin.line


def test_handshake_only(mariadb: Daemon, agreement: Agreement) -> None:
    """No login: the greeting (and TLS) alone; check_mysql's -n ignores the refused login."""
    result = run(probe(mariadb, username=None, password=None))
    plugin = run_plugin("check_mysql", *plugin_args(mariadb, "not-the-password"), "-n")
    agreement.record(DAEMON, "handshake only", "OK", result, plugin, "check_mysql -n")
    assert result.status is Status.UP, result.summary()
    assert result.metrics["server_version"] >= 100000
    assert plugin.state == "OK", plugin.line


def test_optional_tls_with_an_untrusted_certificate(mariadb: Daemon, agreement: Agreement) -> None:
    """The server offers TLS with a self-made certificate and the probe is not told to trust
    it: probekit upgrades (starttls optional) and refuses the certificate; check_mysql without
    -l never asks for TLS, so it sees nothing wrong."""
    result = run(probe(mariadb, starttls="optional", starttls_options=None))
    plugin = run_plugin("check_mysql", *plugin_args(mariadb))
    agreement.record(
        DAEMON,
        "optional TLS, certificate not trusted",
        "CRITICAL/tls (probekit)",
        result,
        plugin,
        "disagree by design: probekit upgrades when offered and verifies; the plugin stays plain",
    )
    assert result.error is not None
    assert result.error.kind is ErrorKind.TLS
    assert "self-signed" in result.error.message
    assert plugin.state == "OK", plugin.line


def test_wrong_password(mariadb: Daemon, agreement: Agreement) -> None:
    result = run(probe(mariadb, password=Secret("not-the-password")))
    plugin = run_plugin("check_mysql", *plugin_args(mariadb, "not-the-password"))
    agreement.record(DAEMON, "wrong password", "CRITICAL", result, plugin)
    assert result.status is Status.DOWN
    assert result.error is not None
    assert result.error.kind is ErrorKind.AUTH
    assert "1045" in result.error.message
    assert "not-the-password" not in result.error.message
    assert plugin.state == "CRITICAL", plugin.line


def test_query_value(mariadb: Daemon, agreement: Agreement) -> None:
    result = run(probe(mariadb, query="SELECT 42", expect_value="42"))
    plugin = run_plugin(
        "check_mysql_query", *plugin_args(mariadb), "-q", "SELECT 42", "-w", "41:43", "-c", "40:44"
    )
    agreement.record(DAEMON, "query value 42", "OK", result, plugin)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["rows"] == 1
    assert plugin.state == "OK", plugin.line


def test_query_value_out_of_range(mariadb: Daemon, agreement: Agreement) -> None:
    result = run(probe(mariadb, query="SELECT 42", expect_value="7"))
    plugin = run_plugin("check_mysql_query", *plugin_args(mariadb), "-q", "SELECT 42", "-c", "6:8")
    agreement.record(DAEMON, "query value not expected", "CRITICAL", result, plugin)
    assert result.error is not None
    assert result.error.kind is ErrorKind.ASSERTION
    assert plugin.state == "CRITICAL", plugin.line


def test_query_rows_from_a_table(mariadb: Daemon, agreement: Agreement) -> None:
    db = mariadb.info["DATABASE"]
    query = "SELECT name FROM items ORDER BY id"
    result = run(probe(mariadb, database=db, query=query, expect_value="one", min_rows=3))
    plugin = run_plugin(
        "check_mysql_query",
        *plugin_args(mariadb),
        "-d",
        db,
        "-q",
        "SELECT COUNT(*) FROM items",
        "-c",
        "3:3",
    )
    agreement.record(
        DAEMON, "query rows", "OK", result, plugin, "plugin: COUNT(*) in 3:3 (it reads one value)"
    )
    assert result.status is Status.UP, result.summary()
    assert result.metrics["rows"] == 3
    assert plugin.state == "OK", plugin.line


def test_query_error(mariadb: Daemon, agreement: Agreement) -> None:
    db = mariadb.info["DATABASE"]
    result = run(probe(mariadb, database=db, query="SELECT * FROM missing_table"))
    plugin = run_plugin(
        "check_mysql_query", *plugin_args(mariadb), "-d", db, "-q", "SELECT * FROM missing_table"
    )
    agreement.record(DAEMON, "query error", "CRITICAL", result, plugin)
    assert result.error is not None
    assert result.error.kind is ErrorKind.ASSERTION
    assert "1146" in result.error.message
    assert plugin.state == "CRITICAL", plugin.line


def test_stopped_service(mariadb: Daemon, agreement: Agreement) -> None:
    """Last: stops the server (the session's stop then finds it stopped, which is fine)."""
    mariadb.stop()
    result = run(probe(mariadb))
    plugin = run_plugin("check_mysql", *plugin_args(mariadb))
    agreement.record(DAEMON, "stopped service", "CRITICAL", result, plugin)
    assert result.error is not None
    assert result.error.kind is ErrorKind.CONNECT
    assert plugin.state == "CRITICAL", plugin.line
