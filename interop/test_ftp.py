"""The ftp kind against vsftpd (interop/daemons/vsftpd.sh: a plain server, and one that requires
TLS for logins and data with ``require_ssl_reuse=YES``), beside ``check_ftp``.

``check_ftp`` connects, reads the greeting and quits (``-S``: implicit TLS, which neither vsftpd
here speaks): it logs in to nothing, so it says OK wherever the greeting arrives. The rows where
probekit is CRITICAL and the plugin OK are the checks it cannot make (a wrong password, a missing
path, a plaintext login the server refuses); each row's note says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import Agreement, Daemon, run_plugin
from probekit import ErrorKind, FtpProbe, Secret, Status, Timeouts, TlsOptions

BANNER_ONLY = "check_ftp reads the greeting only (no login): it cannot see this"


@pytest.fixture(scope="module")
def vsftpd(start_daemon: type[Daemon]) -> Daemon:
    return start_daemon("vsftpd")


def login(daemon: Daemon, password: str | None = None) -> dict[str, Any]:
    return {
        "username": daemon.info["FTP_USER"],
        "password": Secret(password or daemon.info["FTP_PASSWORD"]),
    }


def tls_options(daemon: Daemon) -> TlsOptions:
    return TlsOptions(ca_file=daemon.info["FTP_CA_FILE"])


def check_ftp(port: int) -> Any:
    return run_plugin("check_ftp", "-H", "127.0.0.1", "-p", str(port), "-t", "10")


async def test_plain_login_and_listing(vsftpd: Daemon, agreement: Agreement) -> None:
    port = vsftpd.port("FTP_PORT")
    result = await FtpProbe("127.0.0.1", port, path="/drop", **login(vsftpd)).check()
    plugin = check_ftp(port)
    agreement.record("vsftpd", "plain: login, LIST /drop", "OK", result, plugin)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["entries"] == 3
    assert result.metrics["tls"] == 0
    assert "data" in result.phase_names()
    assert plugin.state == "OK", plugin.line


async def test_plain_stat_of_a_file(vsftpd: Daemon, agreement: Agreement) -> None:
    port = vsftpd.port("FTP_PORT")
    probe = FtpProbe("127.0.0.1", port, path="/drop/a.csv", operation="stat", **login(vsftpd))
    result = await probe.check()
    plugin = check_ftp(port)
    agreement.record("vsftpd", "plain: stat /drop/a.csv (SIZE, MDTM)", "OK", result, plugin)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["size_bytes"] > 0
    assert 0 <= result.metrics["age_seconds"] < 24 * 3600
    assert plugin.state == "OK", plugin.line


async def test_wrong_password(vsftpd: Daemon, agreement: Agreement) -> None:
    port = vsftpd.port("FTP_PORT")
    wrong = "not-" + vsftpd.info["FTP_PASSWORD"]
    result = await FtpProbe("127.0.0.1", port, **login(vsftpd, wrong)).check()
    plugin = check_ftp(port)
    agreement.record("vsftpd", "plain: wrong password", "CRITICAL", result, plugin, BANNER_ONLY)
    assert result.error is not None, result.summary()
    assert (result.error.kind, result.error.phase) == (ErrorKind.AUTH, "auth")
    assert "530" in result.error.message
    assert wrong not in result.error.message


async def test_missing_path(vsftpd: Daemon, agreement: Agreement) -> None:
    port = vsftpd.port("FTP_PORT")
    result = await FtpProbe("127.0.0.1", port, path="/no/such/dir", **login(vsftpd)).check()
    plugin = check_ftp(port)
    agreement.record("vsftpd", "plain: path missing", "CRITICAL", result, plugin, BANNER_ONLY)
    assert result.error is not None, result.summary()
    assert result.error.kind is ErrorKind.ASSERTION
    assert "550" in result.error.message
    assert "quit" in result.phase_names()


async def test_tls_required_login_and_protected_listing(
    vsftpd: Daemon, agreement: Agreement
) -> None:
    port = vsftpd.port("FTPS_PORT")
    probe = FtpProbe(
        "localhost",
        port,
        starttls="required",
        starttls_options=tls_options(vsftpd),
        path="/drop",
        **login(vsftpd),
    )
    result = await probe.check()
    plugin = check_ftp(port)
    agreement.record(
        "vsftpd",
        "TLS-only: AUTH TLS, PROT P, LIST (session reused)",
        "OK",
        result,
        plugin,
        "check_ftp: greeting only (it has no AUTH TLS)",
    )
    assert result.status is Status.UP, result.summary()
    assert result.metrics["tls"] == 1
    assert result.metrics["entries"] == 3
    assert result.tls is not None
    assert result.tls.verified
    assert plugin.state == "OK", plugin.line


async def test_tls_only_server_refuses_a_plaintext_login(
    vsftpd: Daemon, agreement: Agreement
) -> None:
    port = vsftpd.port("FTPS_PORT")
    result = await FtpProbe("127.0.0.1", port, starttls="off", **login(vsftpd)).check()
    plugin = check_ftp(port)
    agreement.record("vsftpd", "TLS-only: plaintext login", "CRITICAL", result, plugin, BANNER_ONLY)
    assert result.error is not None, result.summary()
    assert (result.error.kind, result.error.phase) == (ErrorKind.AUTH, "auth")
    assert "encryption" in result.error.message


async def test_tls_only_server_with_an_untrusted_certificate(
    vsftpd: Daemon, agreement: Agreement
) -> None:
    port = vsftpd.port("FTPS_PORT")
    result = await FtpProbe(
        "localhost", port, starttls="required", **login(vsftpd), timeouts=Timeouts(total=10)
    ).check()
    plugin = check_ftp(port)
    agreement.record(
        "vsftpd",
        "TLS-only: self-signed certificate not trusted",
        "CRITICAL",
        result,
        plugin,
        "check_ftp verifies no certificate",
    )
    assert result.error is not None, result.summary()
    assert (result.error.kind, result.error.phase) == (ErrorKind.TLS, "tls")


async def test_stopped_service(
    tmp_path_factory: pytest.TempPathFactory, agreement: Agreement
) -> None:
    """A pair started and stopped again by the script: its port no longer answers."""
    daemon = Daemon("vsftpd", Path(tmp_path_factory.mktemp("vsftpd-stopped")))
    daemon.start()
    port = daemon.port("FTP_PORT")
    daemon.stop()
    result = await FtpProbe("127.0.0.1", port, **login(daemon)).check()
    plugin = check_ftp(port)
    agreement.record("vsftpd", "stopped service", "CRITICAL", result, plugin)
    assert result.error is not None, result.summary()
    assert (result.error.kind, result.error.phase) == (ErrorKind.CONNECT, "connect")
    assert plugin.state == "CRITICAL", plugin.line
