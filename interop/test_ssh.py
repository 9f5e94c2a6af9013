"""The ssh and sftp kinds against OpenSSH's sshd (interop/daemons/openssh.sh: a loopback high
port, its own ed25519 host key, ``Subsystem sftp internal-sftp``, a test user with a password
and a key), beside ``check_ssh``.

``check_ssh`` connects, reads the identification line and compares it with ``-r``/``-P``; it
checks no host key and logs in to nothing, so it says OK wherever sshd answers. The rows where
probekit is CRITICAL and the plugin OK are the checks it cannot make (a changed host key, a
wrong password, a missing path); each row's note says so. The stopped service is the last case:
it stops the daemon.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import Agreement, Daemon, PluginVerdict, run_plugin
from probekit import ErrorKind, Secret, SftpProbe, SshProbe, Status

NO_HOST_KEY = "check_ssh checks no host key: it cannot see this"
NO_LOGIN = "check_ssh logs in to nothing: it cannot see this"


@pytest.fixture(scope="module")
def sshd(start_daemon: type[Daemon]) -> Daemon:
    return start_daemon("openssh")


def check_ssh(daemon: Daemon, *args: str) -> PluginVerdict:
    port = daemon.port("SSH_PORT")
    return run_plugin("check_ssh", "-H", "127.0.0.1", "-p", str(port), "-t", "10", *args)


def password(daemon: Daemon, value: str | None = None) -> dict[str, Any]:
    return {
        "username": daemon.info["SSH_USER"],
        "password": Secret(value or daemon.info["SSH_PASSWORD"]),
    }


def key(daemon: Daemon) -> dict[str, Any]:
    text = Path(daemon.info["SSH_KEY_FILE"]).read_text(encoding="utf-8")
    return {"username": daemon.info["SSH_USER"], "private_key": Secret(text)}


def outcome(result: Any, name: str) -> str:
    return next(a.observed for a in result.assertions if a.name == name)


async def test_version_and_pinned_host_key(sshd: Daemon, agreement: Agreement) -> None:
    pin = sshd.info["SSH_HOST_KEY_FINGERPRINT"]
    probe = SshProbe("127.0.0.1", sshd.port("SSH_PORT"), host_key_fingerprint=pin)
    result = await probe.check()
    plugin = check_ssh(sshd)
    agreement.record("openssh", "ssh: version, pinned host key", "OK", result, plugin)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "banner", "kex")
    assert outcome(result, "server_version").startswith("SSH-2.0-OpenSSH_")
    assert outcome(result, "host_key") == f"ssh-ed25519 {pin}"
    assert plugin.state == "OK", plugin.line
    # both saw the same server
    software = outcome(result, "server_version").split("-", 2)[2].split(" ")[0]
    assert software in plugin.line


async def test_expected_version(sshd: Daemon, agreement: Agreement) -> None:
    port = sshd.port("SSH_PORT")
    seen = await SshProbe("127.0.0.1", port).check()
    software = outcome(seen, "server_version").split("-", 2)[2]  # with its comments, as -r has it
    result = await SshProbe("127.0.0.1", port, expect_version=software).check()
    plugin = check_ssh(sshd, "-r", software)
    agreement.record("openssh", f"ssh: -r {software}", "OK", result, plugin)
    assert result.status is Status.UP, result.summary()
    assert plugin.state == "OK", plugin.line


async def test_another_version_expected(sshd: Daemon, agreement: Agreement) -> None:
    port = sshd.port("SSH_PORT")
    result = await SshProbe("127.0.0.1", port, expect_version="OpenSSH_1.0").check()
    plugin = check_ssh(sshd, "-r", "OpenSSH_1.0")
    agreement.record("openssh", "ssh: -r OpenSSH_1.0 (another version)", "CRITICAL", result, plugin)
    assert result.error is not None
    assert result.error.kind is ErrorKind.ASSERTION
    assert plugin.state == "CRITICAL", plugin.line


async def test_wrong_host_key_pin(sshd: Daemon, agreement: Agreement) -> None:
    pin = "SHA256:" + "A" * 43
    probe = SshProbe("127.0.0.1", sshd.port("SSH_PORT"), host_key_fingerprint=pin, **password(sshd))
    result = await probe.check()
    plugin = check_ssh(sshd)
    agreement.record("openssh", "ssh: wrong host-key pin", "CRITICAL", result, plugin, NO_HOST_KEY)
    assert result.error is not None
    assert result.error.kind is ErrorKind.ASSERTION
    assert pin in result.error.message
    assert sshd.info["SSH_HOST_KEY_FINGERPRINT"] in result.error.message
    assert "auth" not in result.phase_names()  # no password went to the wrong server


async def test_password_login_and_command(sshd: Daemon, agreement: Agreement) -> None:
    home = sshd.info["SSH_HOME"]
    probe = SshProbe(
        "127.0.0.1",
        sshd.port("SSH_PORT"),
        host_key_fingerprint=sshd.info["SSH_HOST_KEY_FINGERPRINT"],
        command=f"cat {home}/drop/a.csv",
        **password(sshd),
    )
    result = await probe.check()
    plugin = check_ssh(sshd)
    agreement.record("openssh", "ssh: password login, command", "OK", result, plugin)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names()[-2:] == ("auth", "command")
    assert result.metrics["exit_status"] == 0
    assert result.metrics["output_bytes"] == len(b"id,value\n1,a\n")


async def test_key_login_and_a_failing_command(sshd: Daemon, agreement: Agreement) -> None:
    probe = SshProbe("127.0.0.1", sshd.port("SSH_PORT"), command="exit 3", **key(sshd))
    result = await probe.check()
    plugin = check_ssh(sshd)
    agreement.record(
        "openssh", "ssh: key login, command exits 3", "CRITICAL", result, plugin, NO_LOGIN
    )
    assert result.error is not None
    assert result.error.kind is ErrorKind.ASSERTION
    assert result.metrics["auth"] == 1
    assert result.metrics["exit_status"] == 3


async def test_wrong_password(sshd: Daemon, agreement: Agreement) -> None:
    wrong = "not-" + sshd.info["SSH_PASSWORD"]
    probe = SshProbe("127.0.0.1", sshd.port("SSH_PORT"), **password(sshd, wrong))
    result = await probe.check()
    plugin = check_ssh(sshd)
    agreement.record("openssh", "ssh: wrong password", "CRITICAL", result, plugin, NO_LOGIN)
    assert result.error is not None, result.summary()
    assert (result.error.kind, result.error.phase) == (ErrorKind.AUTH, "auth")
    assert wrong not in result.error.message


async def test_sftp_list_with_freshness(sshd: Daemon, agreement: Agreement) -> None:
    drop = f"{sshd.info['SSH_HOME']}/drop"
    probe = SftpProbe(
        "127.0.0.1",
        sshd.port("SSH_PORT"),
        path=drop,
        operation="list",
        max_age=24 * 3600,
        **key(sshd),
    )
    result = await probe.check()
    plugin = check_ssh(sshd)
    agreement.record("openssh", "sftp: key login, list drop/, max_age 1 day", "OK", result, plugin)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names()[-1] == "sftp"
    assert result.metrics["entries"] == 3
    assert result.metrics["size_bytes"] == 3 * len(b"id,value\n1,a\n")


async def test_sftp_read(sshd: Daemon, agreement: Agreement) -> None:
    path = f"{sshd.info['SSH_HOME']}/drop/b.csv"
    probe = SftpProbe(
        "127.0.0.1", sshd.port("SSH_PORT"), path=path, operation="read", **password(sshd)
    )
    result = await probe.check()
    plugin = check_ssh(sshd)
    agreement.record("openssh", "sftp: password login, read drop/b.csv", "OK", result, plugin)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["read_bytes"] == len(b"id,value\n1,b\n")


async def test_sftp_path_missing(sshd: Daemon, agreement: Agreement) -> None:
    path = f"{sshd.info['SSH_HOME']}/drop/missing.csv"
    probe = SftpProbe("127.0.0.1", sshd.port("SSH_PORT"), path=path, **password(sshd))
    result = await probe.check()
    plugin = check_ssh(sshd)
    agreement.record("openssh", "sftp: path missing", "CRITICAL", result, plugin, NO_LOGIN)
    assert result.error is not None
    assert result.error.kind is ErrorKind.ASSERTION
    assert "No such file" in result.error.message


async def test_stopped_service(sshd: Daemon, agreement: Agreement) -> None:
    """Last: it stops the daemon (the session's stop at the end is then a no-op)."""
    sshd.stop()
    result = await SshProbe("127.0.0.1", sshd.port("SSH_PORT")).check()
    plugin = check_ssh(sshd)
    agreement.record("openssh", "stopped service", "CRITICAL", result, plugin)
    assert result.error is not None
    assert result.error.kind is ErrorKind.CONNECT
    assert plugin.state == "CRITICAL", plugin.line
