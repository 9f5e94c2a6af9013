"""SshProbe against an in-process asyncssh server on loopback (password and key logins, commands)
and hand-written TCP servers for what asyncssh will not do: garbage, stalls in each phase."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probekit import (
    BodyContains,
    BodyMatches,
    DefinitionError,
    DefinitionErrors,
    EgressPolicy,
    ErrorKind,
    ProbeContext,
    Secret,
    SshProbe,
    Status,
    Timeouts,
    build_probe,
    probe_to_dict,
    result_to_json,
)
from probekit.probes import get_kind
from probekit.probes._registry import describe
from probekit.probes._sshcommon import PRE_BANNER_LIMIT
from probekit.probes.ssh import KIND
from servers import GuardedConnector, TcpServer, closed_port, make_context
from sshserver import KEY_USER, PASSWORD, USER, SshServer, ssh_server

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter

NO_LOGIN = ("resolve", "connect", "banner", "kex")
LOGIN = (*NO_LOGIN, "auth")
COMMAND = (*LOGIN, "command")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[SshServer]:
    async with ssh_server(tmp_path) as running:
        yield running


def login(server: SshServer, **fields: Any) -> SshProbe:
    return SshProbe("127.0.0.1", server.port, username=USER, password=Secret(PASSWORD), **fields)


def outcomes(result: Any) -> dict[str, Any]:
    return {a.name: a for a in result.assertions}


# -- the real server ---------------------------------------------------------------------------


async def test_without_a_login_the_check_ends_after_the_key_exchange(
    server: SshServer, ctx: ProbeContext
) -> None:
    result = await SshProbe("127.0.0.1", server.port).check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == NO_LOGIN
    seen = outcomes(result)
    assert seen["server_version"].observed == "SSH-2.0-ProbekitTestServer_1.0"
    assert seen["host_key"].observed == f"ssh-ed25519 {server.fingerprint}"
    assert seen["host_key"].expected == "any (not pinned)"
    assert result.metrics["auth"] == 0
    assert result.address == f"127.0.0.1:{server.port}"
    assert describe(result) == (
        f"SSH-2.0-ProbekitTestServer_1.0, host key ssh-ed25519 {server.fingerprint}"
    )
    assert server.passwords == []
    assert server.users == []  # not even a "none" authentication request was sent


async def test_the_pinned_host_key_matches(server: SshServer, ctx: ProbeContext) -> None:
    probe = login(server, host_key_fingerprint=server.fingerprint, command="echo hi")
    result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == COMMAND
    assert outcomes(result)["host_key"].expected == server.fingerprint


async def test_another_host_key_is_down_naming_both_and_no_password_is_sent(
    server: SshServer, ctx: ProbeContext
) -> None:
    pin = "SHA256:" + "A" * 43
    result = await login(server, host_key_fingerprint=pin).check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert pin in result.error.message and server.fingerprint in result.error.message
    assert result.phase_names() == NO_LOGIN  # no auth phase: nothing was sent after the kex
    assert server.passwords == []
    assert result.metrics.get("auth") is None


async def test_the_host_key_algorithm_can_be_chosen(tmp_path: Path, ctx: ProbeContext) -> None:
    server = SshServer(tmp_path)
    ecdsa = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    server.host_key = ecdsa
    await server.start()
    try:
        wanted = ecdsa.get_fingerprint("sha256")
        good = SshProbe(
            "127.0.0.1",
            server.port,
            host_key_fingerprint=wanted,
            host_key_algorithm="ecdsa-sha2-nistp256",
        )
        assert (await good.check(ctx)).status is Status.UP
        # A server without a key of the asked type cannot finish the key exchange.
        other = SshProbe("127.0.0.1", server.port, host_key_algorithm="ssh-ed25519")
        result = await other.check(ctx)
    finally:
        await server.stop()
    assert result.error is not None and result.error.kind is ErrorKind.PROTOCOL
    assert result.error.phase == "kex"


async def test_password_login_and_command(server: SshServer, ctx: ProbeContext) -> None:
    probe = login(server, command="echo all good", assertions=(BodyContains("all good"),))
    result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == COMMAND
    assert result.metrics["auth"] == 1
    assert result.metrics["exit_status"] == 0
    assert result.metrics["output_bytes"] == len(b"all good\n")
    assert outcomes(result)["exit_status"].passed
    assert describe(result).endswith("logged in")


async def test_login_without_a_command(server: SshServer, ctx: ProbeContext) -> None:
    result = await login(server).check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == LOGIN
    assert server.passwords == [PASSWORD]


async def test_an_output_assertion_that_fails(server: SshServer, ctx: ProbeContext) -> None:
    probe = login(server, command="echo hello", assertions=(BodyMatches("^bye"),))
    result = await probe.check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION


async def test_the_wrong_password_is_down_auth_and_never_shown(
    server: SshServer, ctx: ProbeContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-canary-91#x"
    probe = SshProbe("127.0.0.1", server.port, username=USER, password=Secret(wrong))
    result = await probe.check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert result.error.phase == "auth"
    assert "monitor" in result.error.message
    assert server.passwords and set(server.passwords) == {wrong}  # it was sent, and only there
    for text in (result_to_json(result), repr(probe), json.dumps(probe_to_dict(probe))):
        assert wrong not in text
    assert wrong not in caplog.text


def _key_text(key: asyncssh.SSHKey, passphrase: str | None = None) -> str:
    # Encrypted keys as PKCS#8 PEM: OpenSSH's own encrypted format needs bcrypt.
    if passphrase is None:
        return key.export_private_key("openssh").decode()
    return key.export_private_key("pkcs8-pem", passphrase=passphrase).decode()


async def test_key_login(server: SshServer, ctx: ProbeContext) -> None:
    probe = SshProbe(
        "127.0.0.1",
        server.port,
        username=KEY_USER,
        private_key=Secret(_key_text(server.client_key)),
        command="exit 0",
    )
    result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == COMMAND


async def test_a_key_is_read_once_per_process(
    server: SshServer, ctx: ProbeContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    from probekit.probes import _sshcommon

    calls: list[int] = []
    real = asyncssh.import_private_key

    def counting(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(asyncssh, "import_private_key", counting)
    _sshcommon._private_key.cache_clear()
    text = _key_text(server.client_key)
    probe = SshProbe("127.0.0.1", server.port, username=KEY_USER, private_key=Secret(text))
    results = [await probe.check(ctx) for _ in range(3)]
    assert [r.status for r in results] == [Status.UP] * 3
    assert len(calls) == 1
    _sshcommon._private_key.cache_clear()


async def test_an_encrypted_key_with_its_passphrase(server: SshServer, ctx: ProbeContext) -> None:
    probe = SshProbe(
        "127.0.0.1",
        server.port,
        username=KEY_USER,
        private_key=Secret(_key_text(server.client_key, "open-sesame-1")),
        passphrase=Secret("open-sesame-1"),
    )
    result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["auth"] == 1


@pytest.mark.parametrize(
    ("key", "passphrase"),
    [
        pytest.param("encrypted", "not-the-passphrase", id="wrong-passphrase"),
        pytest.param("encrypted", None, id="no-passphrase"),
        pytest.param("garbage", None, id="not-a-key"),
    ],
)
async def test_a_key_that_cannot_be_used_is_down_auth_before_anything_is_sent(
    key: str, passphrase: str | None, server: SshServer, connector: GuardedConnector
) -> None:
    text = _key_text(server.client_key, "open-sesame-1") if key == "encrypted" else "garbage-key"
    probe = SshProbe(
        "127.0.0.1",
        server.port,
        username=KEY_USER,
        private_key=Secret(text),
        passphrase=Secret(passphrase) if passphrase else None,
    )
    result = await probe.check(make_context(connector=connector))
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert "private_key" in result.error.message
    assert result.phase_names() == ("resolve", "connect")
    assert server.passwords == []
    assert "open-sesame" not in result_to_json(result) and "garbage-key" not in result_to_json(
        result
    )


async def test_a_key_the_server_does_not_accept(server: SshServer, ctx: ProbeContext) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519")
    probe = SshProbe(
        "127.0.0.1", server.port, username=KEY_USER, private_key=Secret(_key_text(other))
    )
    result = await probe.check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.AUTH
    assert result.error.phase == "auth"


async def test_an_exit_status_that_is_not_the_one_expected(
    server: SshServer, ctx: ProbeContext
) -> None:
    result = await login(server, command="exit 3").check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert outcomes(result)["exit_status"].observed == "3"
    assert result.metrics["exit_status"] == 3
    assert (await login(server, command="exit 3", expect_exit_status=3).check(ctx)).status is (
        Status.UP
    )
    anything = await login(server, command="exit 3", expect_exit_status=None).check(ctx)
    assert anything.status is Status.UP and "exit_status" not in outcomes(anything)


async def test_endless_output_is_read_up_to_the_limit(server: SshServer, ctx: ProbeContext) -> None:
    result = await login(server, command="yes", max_output_bytes=10_000).check(ctx)
    assert result.metrics["output_bytes"] == 10_000
    assert result.status is Status.DOWN
    assert "over max_output_bytes" in outcomes(result)["exit_status"].observed
    without_status = login(server, command="yes", max_output_bytes=10_000, expect_exit_status=None)
    assert (await without_status.check(ctx)).status is Status.UP


async def test_expected_version_and_protocol(server: SshServer, ctx: ProbeContext) -> None:
    probe = SshProbe(
        "127.0.0.1", server.port, expect_version="ProbekitTestServer_1.0", expect_protocol="2.0"
    )
    assert (await probe.check(ctx)).status is Status.UP
    other = SshProbe("127.0.0.1", server.port, expect_version="OpenSSH_9.2p1")
    result = await other.check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert "OpenSSH_9.2p1" in result.error.message
    assert result.phase_names() == ("resolve", "connect", "banner")  # no key exchange after


async def test_a_slow_login_times_out_in_auth(tmp_path: Path, ctx: ProbeContext) -> None:
    async with ssh_server(tmp_path, auth_delay=30) as slow:
        probe = login(slow, timeouts=Timeouts(total=0.5))
        result = await probe.check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
    assert result.error.phase == "auth"


async def test_a_command_that_never_ends_times_out_in_command(
    server: SshServer, ctx: ProbeContext
) -> None:
    result = await login(server, command="sleep", timeouts=Timeouts(total=0.5)).check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
    assert result.error.phase == "command"


async def test_the_read_limit_bounds_each_phase(server: SshServer, ctx: ProbeContext) -> None:
    result = await login(server, command="sleep", timeouts=Timeouts(total=5, read=0.2)).check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
    assert result.error.phase == "command"
    assert result.duration < 5


async def test_many_checks_in_a_row_reuse_nothing_stale(
    server: SshServer, ctx: ProbeContext
) -> None:
    # Each check's socket is closed while asyncssh's transport closes its own descriptor a turn
    # later; a reused descriptor number must not trip the next check.
    results = [await SshProbe("127.0.0.1", server.port).check(ctx) for _ in range(5)]
    assert [r.status for r in results] == [Status.UP] * 5


def test_the_phases_hold_on_uvloop(tmp_path: Path) -> None:
    """uvloop (the CLI's loop) binds a protocol's data_received when it makes the transport:
    the banner watch must be in place before, or the check never sees the banner end."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> tuple[Any, Any]:
        async with ssh_server(tmp_path) as running:
            bare = await SshProbe("127.0.0.1", running.port).check(make_context())
            logged = await login(running, command="echo hi").check(make_context())
            return bare, logged

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        bare, logged = runner.run(main())
    assert bare.status is Status.UP, bare.summary()
    assert bare.phase_names() == NO_LOGIN
    assert logged.status is Status.UP, logged.summary()
    assert logged.phase_names() == COMMAND
    assert bare.phases[-1].duration > 0  # the key exchange is a phase of its own


# -- hostile and broken servers ------------------------------------------------------------------


async def _serve(handler: Any, probe_fields: dict[str, Any], ctx: ProbeContext) -> Any:
    async with TcpServer(handler) as tcp:
        probe = SshProbe("127.0.0.1", tcp.port, **probe_fields)
        return await probe.check(ctx)


async def silent(reader: Reader, writer: Writer) -> None:
    await reader.read()


async def version_then_silence(reader: Reader, writer: Writer) -> None:
    writer.write(b"SSH-2.0-Stall_1.0\r\n")
    await reader.read()


async def http_reply(reader: Reader, writer: Writer) -> None:
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    writer.close()


async def endless_line(reader: Reader, writer: Writer) -> None:
    try:
        while True:
            writer.write(b"x" * 4096)
            await writer.drain()
    except ConnectionError:
        pass


async def endless_lines(reader: Reader, writer: Writer) -> None:
    try:
        while True:
            writer.write(b"not ssh at all\r\n" * 256)
            await writer.drain()
    except ConnectionError:
        pass


async def ssh1(reader: Reader, writer: Writer) -> None:
    writer.write(b"SSH-1.5-Ancient\r\n")
    await reader.read()


async def version_then_garbage(reader: Reader, writer: Writer) -> None:
    writer.write(b"SSH-2.0-Liar_1.0\r\n" + b"\xff" * 64)
    await reader.read()


async def version_then_close(reader: Reader, writer: Writer) -> None:
    writer.write(b"SSH-2.0-Quitter_1.0\r\n")
    await writer.drain()
    writer.close()


HOSTILE = [
    pytest.param(silent, ErrorKind.TIMEOUT, "banner", id="silence"),
    pytest.param(version_then_silence, ErrorKind.TIMEOUT, "kex", id="stall-in-kex"),
    pytest.param(http_reply, ErrorKind.PROTOCOL, "banner", id="http-reply"),
    pytest.param(endless_line, ErrorKind.PROTOCOL, "banner", id="endless-line"),
    pytest.param(endless_lines, ErrorKind.PROTOCOL, "banner", id="endless-lines"),
    pytest.param(ssh1, ErrorKind.PROTOCOL, "banner", id="ssh-1.5"),
    pytest.param(version_then_garbage, ErrorKind.PROTOCOL, "kex", id="garbage-in-kex"),
    pytest.param(version_then_close, ErrorKind.PROTOCOL, "kex", id="close-in-kex"),
]


@pytest.mark.parametrize(("handler", "kind", "phase"), HOSTILE)
async def test_hostile_servers(
    handler: Any, kind: ErrorKind, phase: str, ctx: ProbeContext
) -> None:
    fields = {"username": USER, "password": Secret(PASSWORD), "timeouts": Timeouts(total=0.5)}
    result = await _serve(handler, fields, ctx)
    assert result.status is Status.DOWN, result.summary()
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (kind, phase), result.error
    assert PASSWORD not in result_to_json(result)
    assert result.duration < 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=600),
        st.builds(
            lambda head, tail: b"SSH-2.0-Fuzz_1.0\r\n" + head + tail,
            st.binary(min_size=0, max_size=40),
            st.binary(max_size=600),
        ),
        st.lists(
            st.sampled_from([b"SSH-", b"2.0-", b"\r\n", b"\n", b"\x00", b" ", b"x" * 300])
        ).map(b"".join),
    )
)
def test_arbitrary_server_bytes_are_classified(data: bytes) -> None:
    """Whatever a server sends before closing, the result is a classified DOWN, never a crash."""

    async def send(reader: Reader, writer: Writer) -> None:
        writer.write(data)
        await writer.drain()
        writer.close()

    async def main() -> Any:
        fields = {"username": USER, "password": Secret(PASSWORD), "timeouts": Timeouts(total=2)}
        return await _serve(send, fields, make_context())

    result = asyncio.run(main())
    assert result.status is Status.DOWN, result.summary()
    assert result.error is not None
    assert result.error.kind in (ErrorKind.PROTOCOL, ErrorKind.TIMEOUT), result.error
    assert result.error.phase in ("banner", "kex"), result.error
    assert PASSWORD not in result_to_json(result)


async def test_the_bytes_before_the_banner_are_bounded(ctx: ProbeContext) -> None:
    result = await _serve(endless_lines, {"timeouts": Timeouts(total=5)}, ctx)
    assert result.error is not None and "identification" in result.error.message
    received = int(result.error.message.split("first ")[1].split(" bytes")[0])
    # checked after each segment asyncio delivers (at most 256 KiB at a time)
    assert PRE_BANNER_LIMIT < received <= PRE_BANNER_LIMIT + 256 * 1024
    assert result.duration < 5


async def test_refused_connection(ctx: ProbeContext) -> None:
    result = await SshProbe("127.0.0.1", closed_port()).check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.CONNECT


async def test_the_egress_policy_holds(connector: GuardedConnector) -> None:
    ctx = make_context(policy=EgressPolicy(deny=("127.0.0.0/8",)), connector=connector)
    result = await SshProbe("127.0.0.1", 22).check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED
    assert connector.dialled == []


async def test_without_asyncssh_the_result_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, ctx: ProbeContext
) -> None:
    monkeypatch.setitem(sys.modules, "asyncssh", None)  # import asyncssh now raises ImportError
    result = await SshProbe("127.0.0.1", 22).check(ctx)
    assert result.status is Status.UNKNOWN
    assert result.error is not None and result.error.kind is ErrorKind.INTERNAL
    assert "install probekit[ssh]" in result.error.message


# -- definitions -----------------------------------------------------------------------------------


def test_defaults_and_round_trip() -> None:
    probe = build_probe({"kind": "ssh", "host": "sshd.internal"})
    assert isinstance(probe, SshProbe)
    assert (probe.port, probe.target, probe.expect_exit_status) == (22, "sshd.internal:22", 0)
    full = SshProbe(
        "::1",
        2222,
        username="u",
        password=Secret("p"),
        host_key_fingerprint="SHA256:" + "b" * 43 + "=",
        command="uptime",
        assertions=(BodyContains("load"),),
    )
    assert full.host_key_fingerprint == "SHA256:" + "b" * 43  # padding dropped
    assert full.target == "[::1]:2222"
    assert probe_to_dict(full)["password"] == "<secret>"
    pinned = SshProbe("h", host_key_fingerprint="SHA256:" + "c" * 43, expect_version="X_1")
    assert build_probe(probe_to_dict(pinned)) == pinned


INVALID: list[Any] = [
    pytest.param({"port": 0}, "port", "1 to 65535", id="port"),
    pytest.param({"host_key_fingerprint": "abc"}, "host_key_fingerprint", "SHA256", id="pin"),
    pytest.param(
        {"host_key_fingerprint": "MD5:aa:bb"}, "host_key_fingerprint", "SHA256", id="md5-pin"
    ),
    pytest.param({"username": "u"}, "username", "password or a private_key", id="user-alone"),
    pytest.param({"password": "p"}, "password", "username", id="password-alone"),
    pytest.param({"username": "u", "password": ""}, "password", "empty", id="empty-password"),
    pytest.param(
        {"username": "u", "password": "p", "passphrase": "x"},
        "passphrase",
        "private_key",
        id="passphrase-without-key",
    ),
    pytest.param({"command": "uptime"}, "command", "login", id="command-without-login"),
    pytest.param(
        {"username": "u", "password": "p", "command": " "}, "command", "command", id="blank"
    ),
    pytest.param({"expect_exit_status": 256}, "expect_exit_status", "0 to 255", id="status"),
    pytest.param({"max_output_bytes": 0}, "max_output_bytes", "bytes", id="max-output"),
    pytest.param({"host_key_algorithm": "dsa"}, "host_key_algorithm", "one of", id="alg"),
    pytest.param({"expect_version": "a\tb"}, "expect_version", "printable", id="version"),
    pytest.param({"expect_protocol": " 2.0"}, "expect_protocol", "printable", id="protocol"),
    pytest.param(
        {"assertions": [{"type": "body_contains", "text": "x"}]},
        "assertions[0]",
        "set command",
        id="assertions-without-command",
    ),
    pytest.param({"ip_family": "ipx"}, "ip_family", "one of", id="family"),
    pytest.param({"username": "a\nb", "password": "p"}, "username", "user name", id="newline"),
]


@pytest.mark.parametrize(("data", "path", "message"), INVALID)
def test_invalid_definitions(data: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(DefinitionErrors) as info:
        build_probe({"kind": "ssh", "host": "h", **data})
    problems = {e.path: e.message for e in info.value.errors}
    assert path in problems, problems
    assert message in problems[path]


def test_a_response_time_assertion_needs_no_command() -> None:
    probe = build_probe(
        {"kind": "ssh", "host": "h", "assertions": [{"type": "response_time", "warn": 1}]}
    )
    assert len(probe.assertions) == 1


def test_a_password_that_is_not_a_secret_is_refused_without_showing_it() -> None:
    with pytest.raises(DefinitionError) as info:
        SshProbe("h", username="u", password="hunter2-plain")  # type: ignore[arg-type]
    assert info.value.path == "password"
    assert "hunter2-plain" not in str(info.value)


# -- the kind's declaration and command-line form --------------------------------------------------


def test_the_kind_is_registered() -> None:
    kind = get_kind("ssh")
    assert kind is KIND and kind.cls is SshProbe and kind.docs == "probes/ssh.md"
    assert {m.key for m in kind.metrics} == {"auth", "exit_status", "output_bytes"}
    flags = {f for o in kind.options for f in o.flags}
    assert "--password" not in flags  # only from the environment
    assert {"--remote-version", "-r", "--remote-protocol", "-P", "-4", "-6"} <= flags


def _from_options(target: str, fields: dict[str, Any] | None = None, **values: Any) -> Any:
    definition: dict[str, Any] = {"kind": "ssh", **KIND.target.parse(target), **(fields or {})}
    assert KIND.to_definition is not None
    KIND.to_definition(values, definition)
    return build_probe(definition)


def test_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SSH_PASSWORD", "pw-from-env")
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot read until a check\n")
    monkeypatch.setenv("KEY_PASS", "kp")
    probe = _from_options(
        "sshd:2222",
        {"username": "u", "command": "true"},
        password_env="SSH_PASSWORD",
        key_file=str(key),
        passphrase_env="KEY_PASS",
        ipv6=True,
        contains=["ok"],
        any_exit_status=True,
    )
    assert (probe.host, probe.port) == ("sshd", 2222)
    assert probe.password == Secret("pw-from-env")
    assert probe.private_key == Secret(key.read_text())
    assert probe.passphrase == Secret("kp")
    assert probe.ip_family == "ipv6"
    assert probe.assertions == (BodyContains("ok"),)
    assert probe.expect_exit_status is None


def test_option_problems(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOPE", raising=False)
    with pytest.raises(DefinitionErrors) as info:
        _from_options(
            "sshd",
            password_env="NOPE",
            key_file=str(tmp_path / "missing"),
            ipv4=True,
            ipv6=True,
        )
    assert [e.path for e in info.value.errors] == ["--password-env", "--key-file", "--ipv4/--ipv6"]


def test_check_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    from probekit.cli import main

    assert main(["check", "ssh", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--host-key", "--remote-version", "--user", "--key-file", "--command"):
        assert flag in out
