"""SftpProbe against an in-process asyncssh server with SFTP confined to a temporary directory."""

from __future__ import annotations

import asyncio
import os
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from probekit import (
    BodyContains,
    DefinitionErrors,
    ErrorKind,
    ProbeContext,
    Secret,
    SftpProbe,
    Status,
    Timeouts,
    build_probe,
    probe_to_dict,
    result_to_json,
)
from probekit.probes import get_kind
from probekit.probes._registry import describe
from probekit.probes.sftp import KIND
from sshserver import PASSWORD, USER, SshServer, ssh_server

PHASES = ("resolve", "connect", "banner", "kex", "auth", "sftp")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """``drop/`` with two files (the newer one 10 s old), ``old/`` with one from a day ago,
    ``empty/``, ``big`` (3 MB) and ``motd``."""
    now = time.time()
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.csv").write_bytes(b"x" * 100)
    os.utime(drop / "a.csv", (now - 500, now - 500))
    (drop / "b.csv").write_bytes(b"y" * 50)
    os.utime(drop / "b.csv", (now - 10, now - 10))
    (drop / "sub").mkdir()
    os.utime(drop / "sub", (now - 1000, now - 1000))
    old = tmp_path / "old"
    old.mkdir()
    (old / "stale.csv").write_bytes(b"z")
    os.utime(old / "stale.csv", (now - 86400, now - 86400))
    (tmp_path / "empty").mkdir()
    (tmp_path / "big").write_bytes(os.urandom(3 * 1024 * 1024))
    (tmp_path / "motd").write_bytes(b"welcome to the drop box\n")
    return tmp_path


@pytest.fixture
async def server(root: Path) -> AsyncIterator[SshServer]:
    async with ssh_server(root) as running:
        yield running


def sftp(server: SshServer, **fields: Any) -> SftpProbe:
    return SftpProbe("127.0.0.1", server.port, username=USER, password=Secret(PASSWORD), **fields)


def outcomes(result: Any) -> dict[str, Any]:
    return {a.name: a for a in result.assertions}


async def test_stat_a_file(server: SshServer, ctx: ProbeContext) -> None:
    result = await sftp(server, path="/motd").check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == PHASES
    assert result.metrics["size_bytes"] == 24
    assert result.metrics["auth"] == 1
    assert outcomes(result)["path"].observed == "a file of 24 bytes"
    assert 0 <= result.metrics["newest_age_seconds"] < 3600
    assert describe(result).startswith("SSH-2.0-ProbekitTestServer_1.0, host key ssh-ed25519")


async def test_stat_the_login_directory_by_default(server: SshServer, ctx: ProbeContext) -> None:
    result = await sftp(server).check(ctx)
    assert result.status is Status.UP, result.summary()
    assert outcomes(result)["path"].observed == "a directory"


async def test_list_a_directory(server: SshServer, ctx: ProbeContext) -> None:
    result = await sftp(server, path="/drop", operation="list", max_age=60).check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["entries"] == 3  # a.csv, b.csv, sub; not . and ..
    assert result.metrics["size_bytes"] == 150  # files only
    assert 9 <= result.metrics["newest_age_seconds"] < 60
    assert outcomes(result)["freshness"].observed.startswith("b.csv modified")


async def test_a_stale_drop_is_down(server: SshServer, ctx: ProbeContext) -> None:
    result = await sftp(server, path="/old", operation="list", max_age=3600).check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert "stale.csv" in result.error.message
    assert result.metrics["newest_age_seconds"] >= 86400 - 60


async def test_an_empty_directory_fails_freshness(server: SshServer, ctx: ProbeContext) -> None:
    result = await sftp(server, path="/empty", operation="list", max_age=60).check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert result.metrics["entries"] == 0
    empty = await sftp(server, path="/empty", operation="list").check(ctx)
    assert empty.status is Status.UP


async def test_a_listing_stops_at_max_entries(server: SshServer, ctx: ProbeContext) -> None:
    result = await sftp(server, path="/drop", operation="list", max_entries=2).check(ctx)
    assert result.status is Status.UP
    assert result.metrics["entries"] == 2
    assert "stopped at max_entries 2" in outcomes(result)["path"].observed


async def test_read_a_file_with_an_assertion(server: SshServer, ctx: ProbeContext) -> None:
    probe = sftp(server, path="/motd", operation="read", assertions=(BodyContains("drop box"),))
    result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["read_bytes"] == 24
    assert outcomes(result)["path"].observed == "read 24 bytes"
    wrong = sftp(server, path="/motd", operation="read", assertions=(BodyContains("nope"),))
    failed = await wrong.check(ctx)
    assert failed.error is not None and failed.error.kind is ErrorKind.ASSERTION


async def test_a_read_stops_at_max_bytes_and_holds_no_more(
    server: SshServer, ctx: ProbeContext
) -> None:
    probe = sftp(server, path="/big", operation="read", max_bytes=256 * 1024)
    tracemalloc.start()
    try:
        result = await probe.check(ctx)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status is Status.UP, result.summary()
    assert result.metrics["read_bytes"] == 256 * 1024
    assert result.metrics["size_bytes"] == 3 * 1024 * 1024
    assert "of 3145728 (max_bytes)" in outcomes(result)["path"].observed
    # the file is 3 MiB; the server in this process reads in chunks too, so the whole check
    # (both sides) stays far below the file's size
    assert peak < 2 * 1024 * 1024, peak


async def test_a_whole_read_without_assertions_keeps_nothing(
    server: SshServer, ctx: ProbeContext
) -> None:
    tracemalloc.start()
    try:
        result = await sftp(server, path="/big", operation="read", max_bytes=2**30).check(ctx)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status is Status.UP, result.summary()
    assert peak < 1024 * 1024, peak  # the 3 MiB file passed through, 32 KiB at a time
    assert result.metrics["read_bytes"] == 3 * 1024 * 1024
    assert outcomes(result)["path"].observed == "read 3145728 bytes"


@pytest.mark.parametrize(
    ("path", "operation", "expected"),
    [
        ("/missing", "stat", "exists"),
        ("/missing", "list", "a readable directory"),
        ("/missing/file", "read", "a readable file"),
    ],
)
async def test_a_missing_path_is_down_assertion(
    path: str, operation: str, expected: str, server: SshServer, ctx: ProbeContext
) -> None:
    result = await sftp(server, path=path, operation=operation).check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert outcomes(result)["path"].expected == f"{path}: {expected}"
    assert result.phase_names() == PHASES


async def test_reading_a_directory_is_down(server: SshServer, ctx: ProbeContext) -> None:
    result = await sftp(server, path="/drop", operation="read").check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert outcomes(result)["path"].observed == "Is a directory"


async def test_the_wrong_password(server: SshServer, ctx: ProbeContext) -> None:
    probe = SftpProbe("127.0.0.1", server.port, username=USER, password=Secret("nope-77#"))
    result = await probe.check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert result.error.phase == "auth"
    assert "nope-77#" not in result_to_json(result)


async def test_without_a_username_nothing_is_dialled(server: SshServer, ctx: ProbeContext) -> None:
    result = await SftpProbe("127.0.0.1", server.port).check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert "username" in result.error.message
    assert result.phases == ()


async def test_a_pin_mismatch_stops_before_the_login(server: SshServer, ctx: ProbeContext) -> None:
    result = await sftp(server, host_key_fingerprint="SHA256:" + "Z" * 43).check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert server.fingerprint in result.error.message
    assert server.passwords == []


async def test_a_server_without_sftp(tmp_path: Path, ctx: ProbeContext) -> None:
    server = await asyncssh.create_server(
        _PasswordOnly,
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
    )
    try:
        port = server.sockets[0].getsockname()[1]
        probe = SftpProbe("127.0.0.1", port, username=USER, password=Secret(PASSWORD))
        result = await probe.check(ctx)
    finally:
        server.close()
        await server.wait_closed()
    assert result.error is not None and result.error.kind is ErrorKind.PROTOCOL
    assert result.error.phase == "sftp"
    assert "SFTP" in result.error.message


class _PasswordOnly(asyncssh.SSHServer):
    """Accepts the test password; offers no subsystem (no sftp_factory)."""

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return password == PASSWORD


async def test_a_slow_sftp_request_times_out_in_sftp(
    server: SshServer, ctx: ProbeContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def stall(self: Any, path: bytes) -> Any:
        await asyncio.sleep(3600)

    monkeypatch.setattr(asyncssh.SFTPServer, "stat", stall)
    result = await sftp(server, path="/motd", timeouts=Timeouts(total=0.5)).check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
    assert result.error.phase == "sftp"


# -- definitions -----------------------------------------------------------------------------------


def test_defaults_and_round_trip() -> None:
    probe = build_probe({"kind": "sftp", "host": "files.internal"})
    assert isinstance(probe, SftpProbe)
    assert (probe.port, probe.path, probe.operation) == (22, ".", "stat")
    full = SftpProbe("h", path="/in", operation="list", max_age=900, max_entries=50)
    assert build_probe(probe_to_dict(full)) == full


INVALID: list[Any] = [
    pytest.param({"path": ""}, "path", "path", id="empty-path"),
    pytest.param({"path": "a\x00b"}, "path", "path", id="nul-path"),
    pytest.param({"operation": "delete"}, "operation", "one of", id="operation"),
    pytest.param({"max_age": 0}, "max_age", "positive", id="max-age"),
    pytest.param({"max_bytes": 0}, "max_bytes", "1 to", id="max-bytes"),
    pytest.param({"max_entries": -1}, "max_entries", "1 to", id="max-entries"),
    pytest.param(
        {"assertions": [{"type": "body_contains", "text": "x"}]},
        "assertions[0]",
        "read",
        id="body-assertion-without-read",
    ),
    pytest.param({"username": "u"}, "username", "password or a private_key", id="user-alone"),
]


@pytest.mark.parametrize(("data", "path", "message"), INVALID)
def test_invalid_definitions(data: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(DefinitionErrors) as info:
        build_probe({"kind": "sftp", "host": "h", **data})
    problems = {e.path: e.message for e in info.value.errors}
    assert path in problems, problems
    assert message in problems[path]


def test_the_kind_is_registered() -> None:
    kind = get_kind("sftp")
    assert kind is KIND and kind.cls is SftpProbe and kind.docs == "probes/sftp.md"
    assert {m.key for m in kind.metrics} == {
        "auth",
        "entries",
        "size_bytes",
        "read_bytes",
        "newest_age_seconds",
    }


def test_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFTP_PASSWORD", "pw")
    definition: dict[str, Any] = {
        "kind": "sftp",
        **KIND.target.parse("files:2222"),
        "username": "u",
        "path": "/in",
        "operation": "list",
        "max_age": 600.0,
    }
    assert KIND.to_definition is not None
    KIND.to_definition({"password_env": "SFTP_PASSWORD"}, definition)
    probe = build_probe(definition)
    assert probe.password == Secret("pw") and probe.max_age == 600


def test_check_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    from probekit.cli import main

    assert main(["check", "sftp", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--path", "--operation", "--max-age", "--max-bytes", "--host-key"):
        assert flag in out
