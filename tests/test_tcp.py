"""TcpProbe against in-process TCP servers on loopback."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from probekit import (
    BodyContains,
    DefinitionError,
    ErrorKind,
    Expect,
    Probe,
    ProbeContext,
    Secret,
    Send,
    StartTls,
    Status,
    TcpProbe,
    Timeouts,
    TlsOptions,
    build_probe,
    probe_to_dict,
    result_from_json,
    result_to_json,
)
from servers import GuardedConnector, TcpServer, closed_port

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


async def _silent(_reader: Reader, _writer: Writer) -> None:
    await asyncio.sleep(3600)


async def _banner_then_echo(reader: Reader, writer: Writer) -> None:
    writer.write(b"220 probekit test ready\r\n")
    while line := await reader.readline():
        writer.write(b"echo " + line)
        await writer.drain()


def _starttls_handler(server_tls: ssl.SSLContext, *, inject: bytes = b"") -> Any:
    async def handler(reader: Reader, writer: Writer) -> None:
        writer.write(b"220 ready\r\n")
        if await reader.readline() != b"STARTTLS\r\n":
            writer.write(b"500 say STARTTLS first\r\n")
            return
        writer.write(b"220 go\r\n" + inject)
        await writer.drain()
        await writer.start_tls(server_tls)
        line = await reader.readline()
        writer.write(b"echo " + line)
        await writer.drain()
        await asyncio.sleep(3600)

    return handler


STARTTLS_STEPS = (
    Expect(pattern=r"^220 ready\r\n"),
    Send("STARTTLS\r\n"),
    Expect(exact=b"220 go\r\n"),
)


# -- connect-only ------------------------------------------------------------------------------


async def test_connect_only_is_up_with_resolve_and_connect(ctx: ProbeContext) -> None:
    async with TcpServer(_silent) as server:
        probe = TcpProbe("localhost", server.port)
        result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.error is None
    assert result.kind == "tcp"
    assert result.target == f"localhost:{server.port}"
    assert result.phase_names() == ("resolve", "connect")
    assert all(p.duration > 0 for p in result.phases)
    assert result.address == f"127.0.0.1:{server.port}"
    assert result.metrics["bytes_sent"] == 0
    assert result.metrics["bytes_received"] == 0
    assert server.connections == 1
    assert isinstance(probe, Probe)


async def test_closed_port_is_down_connect(ctx: ProbeContext) -> None:
    result = await TcpProbe("test.local", closed_port()).check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None
    assert result.error.kind is ErrorKind.CONNECT
    assert result.error.phase == "connect"
    assert result.phase_names() == ("resolve", "connect")


async def test_policy_denies_metadata_address_before_dialling(
    ctx: ProbeContext, connector: GuardedConnector
) -> None:
    result = await TcpProbe("169.254.169.254", 80).check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None
    assert result.error.kind is ErrorKind.POLICY_DENIED
    assert connector.dialled == []
    assert connector.refused == []
    assert result.address is None


# -- the exchange ------------------------------------------------------------------------------


async def test_banner_regex_is_up(ctx: ProbeContext) -> None:
    async with TcpServer(_banner_then_echo) as server:
        probe = TcpProbe("localhost", server.port, steps=(Expect(pattern=r"^220 \S+"),))
        result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "exchange")
    assert result.phase("exchange") is not None
    (outcome,) = result.assertions
    assert outcome.name == "expect"
    assert outcome.passed
    assert outcome.expected == "pattern '^220 \\\\S+'"
    assert "220 probekit" in outcome.observed
    assert result.metrics["bytes_received"] == len(b"220 probekit test ready\r\n")


async def test_send_expect_round_trip_is_up(ctx: ProbeContext) -> None:
    steps = (
        Expect(exact=b"ready\r\n"),
        Send("PING one\r\n"),
        Expect(exact=b"echo PING one\r\n"),
        Send(b"PING two\r\n"),
        Expect(pattern=r"echo PING (\w+)\r\n"),
    )
    async with TcpServer(_banner_then_echo) as server:
        probe = TcpProbe("test.local", server.port, steps=steps, assertions=(BodyContains("two"),))
        result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert [a.name for a in result.assertions] == ["expect", "expect", "expect", "body_contains"]
    assert all(a.passed for a in result.assertions)
    assert result.metrics["bytes_sent"] == len(b"PING one\r\nPING two\r\n")
    assert result.phase_names() == ("resolve", "connect", "exchange")


async def test_remainder_is_kept_for_the_next_expect(ctx: ProbeContext) -> None:
    async def handler(_reader: Reader, writer: Writer) -> None:
        writer.write(b"a1b2\r\n")  # one write: both expects are served by one read
        await writer.drain()
        await asyncio.sleep(3600)

    steps = (Expect(exact=b"a1"), Expect(pattern=r"^b2\r\n"))
    async with TcpServer(handler) as server:
        result = await TcpProbe("localhost", server.port, steps=steps).check(ctx)
    assert result.status is Status.UP, result.summary()
    assert [a.observed for a in result.assertions] == ["match b'a1'", "match b'b2\\r\\n'"]


async def test_pattern_sees_every_byte_as_latin1(ctx: ProbeContext) -> None:
    async def handler(_reader: Reader, writer: Writer) -> None:
        writer.write(b"\x00\x01\xff\xfeOK\n")
        await writer.drain()
        await asyncio.sleep(3600)

    async with TcpServer(handler) as server:
        probe = TcpProbe("localhost", server.port, steps=(Expect(pattern="\xff\xfeOK"),))
        result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()


async def test_mismatch_then_eof_is_down_protocol(ctx: ProbeContext) -> None:
    async def handler(_reader: Reader, writer: Writer) -> None:
        writer.write(b"hello\r\n")
        await writer.drain()
        writer.close()

    async with TcpServer(handler) as server:
        probe = TcpProbe("localhost", server.port, steps=(Expect(exact=b"goodbye"),))
        result = await probe.check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None
    assert result.error.kind is ErrorKind.PROTOCOL
    assert result.error.phase == "exchange"
    assert "connection closed" in result.error.message
    assert "hello" in result.error.message
    (outcome,) = result.assertions
    assert outcome.name == "expect"
    assert not outcome.passed
    assert outcome.expected == "exact b'goodbye'"
    assert outcome.observed == "b'hello\\r\\n'"


async def test_silent_server_times_out_in_exchange(ctx: ProbeContext) -> None:
    async with TcpServer(_silent) as server:
        probe = TcpProbe(
            "localhost", server.port, steps=(Expect(pattern="^SSH-"),), timeouts=Timeouts(total=0.5)
        )
        result = await probe.check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None
    assert result.error.kind is ErrorKind.TIMEOUT
    assert result.error.phase == "exchange"
    assert 0.45 < result.duration < 0.6
    assert result.phase_names() == ("resolve", "connect", "exchange")
    (outcome,) = result.assertions
    assert not outcome.passed
    assert outcome.observed == "nothing"


async def test_read_timeout_bounds_each_wait(ctx: ProbeContext) -> None:
    async with TcpServer(_silent) as server:
        probe = TcpProbe(
            "localhost",
            server.port,
            steps=(Expect(pattern="x"),),
            timeouts=Timeouts(total=5, read=0.2),
        )
        result = await probe.check(ctx)
    assert result.error is not None
    assert result.error.kind is ErrorKind.TIMEOUT
    assert result.error.phase == "exchange"
    assert result.duration < 1.0


async def test_max_bytes_cap_is_down_protocol(ctx: ProbeContext) -> None:
    async def flood(_reader: Reader, writer: Writer) -> None:
        while True:
            writer.write(b"x" * 4096)
            await writer.drain()

    async with TcpServer(flood) as server:
        probe = TcpProbe(
            "localhost", server.port, steps=(Expect(pattern="never"),), max_bytes=10_000
        )
        result = await probe.check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None
    assert result.error.kind is ErrorKind.PROTOCOL
    assert result.error.phase == "exchange"
    assert "max_bytes (10000)" in result.error.message
    assert result.metrics["bytes_received"] == 10_000
    (outcome,) = result.assertions
    assert not outcome.passed
    assert "10000 bytes" in outcome.observed


async def test_max_bytes_spans_the_whole_exchange(ctx: ProbeContext) -> None:
    steps = (
        Expect(exact=b"ready\r\n"),
        Send("x" * 20 + "\r\n"),
        Expect(exact=b"x\r\n"),
    )
    async with TcpServer(_banner_then_echo) as server:
        probe = TcpProbe("localhost", server.port, steps=steps, max_bytes=40)
        result = await probe.check(ctx)
    # 25 bytes of banner + 27 of echo > 40: the second expect runs out of room.
    assert result.status is Status.DOWN
    assert result.error is not None
    assert result.error.kind is ErrorKind.PROTOCOL
    assert result.metrics["bytes_received"] == 40
    assert [a.passed for a in result.assertions] == [True, False]


async def test_body_assertion_failure_is_down_assertion(ctx: ProbeContext) -> None:
    async with TcpServer(_banner_then_echo) as server:
        probe = TcpProbe(
            "localhost",
            server.port,
            steps=(Expect(exact=b"\r\n"),),
            assertions=(BodyContains("SSH-2.0"),),
        )
        result = await probe.check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None
    assert result.error.kind is ErrorKind.ASSERTION
    assert [(a.name, a.passed) for a in result.assertions] == [
        ("expect", True),
        ("body_contains", False),
    ]


async def test_peer_reset_during_send_is_a_result(ctx: ProbeContext) -> None:
    async def slam(_reader: Reader, writer: Writer) -> None:
        writer.transport.abort()

    async with TcpServer(slam) as server:
        probe = TcpProbe(
            "localhost",
            server.port,
            steps=(Send(b"x" * 1024), Expect(exact=b"y")),
            timeouts=Timeouts(total=2),
        )
        result = await probe.check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None
    assert result.error.kind is ErrorKind.PROTOCOL
    assert result.error.phase == "exchange"


# -- TLS ---------------------------------------------------------------------------------------


async def test_direct_tls_is_up_with_tls_phase(
    ctx: ProbeContext, good_tls: ssl.SSLContext, ca_pem: str
) -> None:
    async with TcpServer(_banner_then_echo, ssl_context=good_tls) as server:
        probe = TcpProbe(
            "localhost",
            server.port,
            tls=TlsOptions(ca_data=ca_pem),
            steps=(Expect(pattern="^220 "), Send("hi\r\n"), Expect(exact=b"echo hi\r\n")),
        )
        result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "tls", "exchange")
    assert result.tls is not None
    assert result.tls.version.startswith("TLSv1.")
    assert result.tls.server_name == "localhost"
    assert result.metrics["cert_days_left"] > 30


async def test_direct_tls_untrusted_is_down_tls(
    ctx: ProbeContext, self_signed_tls: ssl.SSLContext, ca_pem: str
) -> None:
    async with TcpServer(_silent, ssl_context=self_signed_tls) as server:
        probe = TcpProbe("localhost", server.port, tls=TlsOptions(ca_data=ca_pem))
        result = await probe.check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None
    assert result.error.kind is ErrorKind.TLS
    assert result.error.phase == "tls"


async def test_starttls_upgrades_mid_exchange(
    ctx: ProbeContext, good_tls: ssl.SSLContext, ca_pem: str
) -> None:
    steps = (
        *STARTTLS_STEPS,
        StartTls(TlsOptions(ca_data=ca_pem)),
        Send("PING\r\n"),
        Expect(exact=b"echo PING\r\n"),
    )
    async with TcpServer(_starttls_handler(good_tls)) as server:
        result = await TcpProbe("localhost", server.port, steps=steps).check(ctx)
    assert result.status is Status.UP, result.summary()
    assert [p.name for p in result.phases] == ["resolve", "connect", "exchange", "tls", "exchange"]
    assert result.tls is not None
    assert result.tls.version.startswith("TLSv1.")
    assert result.metrics["cert_days_left"] > 30
    assert [a.passed for a in result.assertions] == [True, True, True]


async def test_starttls_wrong_name_is_down_tls(
    ctx: ProbeContext, wrong_name_tls: ssl.SSLContext, ca_pem: str
) -> None:
    steps = (*STARTTLS_STEPS, StartTls(TlsOptions(ca_data=ca_pem)))
    async with TcpServer(_starttls_handler(wrong_name_tls)) as server:
        result = await TcpProbe("localhost", server.port, steps=steps).check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None
    assert result.error.kind is ErrorKind.TLS
    assert result.error.phase == "tls"
    assert [p.name for p in result.phases] == ["resolve", "connect", "exchange", "tls"]


async def test_plaintext_after_starttls_go_ahead_is_refused(
    ctx: ProbeContext, good_tls: ssl.SSLContext, ca_pem: str
) -> None:
    steps = (*STARTTLS_STEPS, StartTls(TlsOptions(ca_data=ca_pem)))
    async with TcpServer(_starttls_handler(good_tls, inject=b"250 injected\r\n")) as server:
        result = await TcpProbe("localhost", server.port, steps=steps).check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None
    assert result.error.kind is ErrorKind.PROTOCOL
    assert result.error.phase == "exchange"
    assert "before the TLS upgrade" in result.error.message
    assert result.tls is None


# -- definitions -------------------------------------------------------------------------------


def test_target_and_host() -> None:
    assert TcpProbe("db.internal", 5432).target == "db.internal:5432"
    assert TcpProbe("::1", 22).target == "[::1]:22"
    bracketed = TcpProbe("[2001:db8::1]", 443)
    assert bracketed.host == "2001:db8::1"
    assert bracketed.target == "[2001:db8::1]:443"
    assert TcpProbe.kind == "tcp"


def test_steps_convert_and_compare() -> None:
    assert Send("é").data == "é".encode()
    assert Expect(exact="ok").exact == b"ok"
    probe = TcpProbe("h", 1, steps=[Send("a"), Expect(pattern="b")])  # type: ignore[arg-type]
    assert probe.steps == (Send(b"a"), Expect(pattern="b"))
    assert probe == TcpProbe("h", 1, steps=(Send("a"), Expect(pattern="b")))
    assert hash(probe) == hash(TcpProbe("h", 1, steps=(Send("a"), Expect(pattern="b"))))


INVALID: list[tuple[Callable[[], object], str]] = [
    (lambda: TcpProbe("", 80), "host"),
    (lambda: TcpProbe("bad host", 80), "host"),
    (lambda: TcpProbe(None, 80), "host"),  # type: ignore[arg-type]
    (lambda: TcpProbe("h", 0), "port"),
    (lambda: TcpProbe("h", 65536), "port"),
    (lambda: TcpProbe("h", True), "port"),
    (lambda: TcpProbe("h", "80"), "port"),  # type: ignore[arg-type]
    (lambda: TcpProbe("h", 80, max_bytes=0), "max_bytes"),
    (lambda: TcpProbe("h", 80, steps=("hello",)), "steps[0]"),  # type: ignore[arg-type]
    (lambda: TcpProbe("h", 80, steps="hello"), "steps"),  # type: ignore[arg-type]
    (lambda: TcpProbe("h", 80, steps=(Send("x"), StartTls(), StartTls())), "steps[2]"),
    (lambda: TcpProbe("h", 80, tls=TlsOptions(), steps=(StartTls(),)), "steps[0]"),
    (lambda: TcpProbe("h", 80, assertions=("x",)), "assertions[0]"),  # type: ignore[arg-type]
    (lambda: TcpProbe("h", 80, ip_family="ipv5"), "ip_family"),  # type: ignore[arg-type]
    (lambda: TcpProbe("h", 80, tls="yes"), "tls"),  # type: ignore[arg-type]
    (lambda: Expect(), "pattern"),
    (lambda: Expect(pattern="a", exact=b"a"), "exact"),
    (lambda: Expect(pattern="("), "pattern"),
    (lambda: Expect(pattern=""), "pattern"),
    (lambda: Expect(exact=b""), "exact"),
    (lambda: Expect(exact=3), "exact"),  # type: ignore[arg-type]
    (lambda: Send(b""), "data"),
    (lambda: Send(3), "data"),  # type: ignore[arg-type]
    (lambda: StartTls(options="x"), "options"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("factory", "path"), INVALID)
def test_invalid_definitions(factory: Callable[[], object], path: str) -> None:
    with pytest.raises(DefinitionError) as info:
        factory()
    assert info.value.path == path


def test_invalid_regex_message() -> None:
    with pytest.raises(DefinitionError, match="invalid regex"):
        Expect(pattern="[unclosed")


# -- serialisation -----------------------------------------------------------------------------


async def test_result_json_round_trip(
    ctx: ProbeContext, good_tls: ssl.SSLContext, ca_pem: str
) -> None:
    steps = (*STARTTLS_STEPS, StartTls(TlsOptions(ca_data=ca_pem)), Send("A\r\n"), Expect("A"))
    async with TcpServer(_starttls_handler(good_tls)) as server:
        result = await TcpProbe("localhost", server.port, steps=steps).check(ctx)
    assert result.status is Status.UP, result.summary()
    loaded = result_from_json(result_to_json(result))
    assert loaded == result
    assert loaded.tls is not None
    assert loaded.tls.chain
    assert loaded.phases[-2].name == "tls"


async def test_expect_anchors_match_at_line_starts(ctx: ProbeContext) -> None:
    async def smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mail ready\r\n")
        await reader.readline()
        writer.write(b"221 bye\r\n")

    async with TcpServer(smtp) as server:
        probe = TcpProbe(
            "localhost",
            server.port,
            steps=(Expect(pattern=r"^220 "), Send(b"QUIT\r\n"), Expect(pattern=r"^221")),
        )
        result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert [a.passed for a in result.assertions] == [True, True]


# -- raw bytes from the command line, secrets in a send step (issue 12) -------------------------


def test_cli_send_escape_is_the_raw_byte() -> None:
    from probekit.probes.tcp import unescape

    # PostgreSQL's SSLRequest: length 8, code 80877103 (0x04d2162f); \x80 and up are one byte.
    assert unescape(r"\x00\x00\x00\x08\x04\xd2\x16\x2f") == bytes.fromhex("0000000804d2162f")
    assert unescape(r"\x80é\r\n") == b"\x80" + "é".encode() + b"\r\n"
    assert unescape(r"a\\x41") == b"a\\x41"  # an escaped backslash is not an escape


async def test_cli_send_of_bytes_that_are_not_utf8_reaches_the_server_unchanged(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from probekit.cli import main

    got = bytearray()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.extend(await reader.readexactly(4))
        writer.write(b"S")
        await writer.drain()

    async with TcpServer(handle) as server:
        argv = ["check", "tcp", f"127.0.0.1:{server.port}", "--send", r"\x80\xff\x00A"]
        code = await asyncio.to_thread(main, [*argv, "--expect", "S"])
    assert code == 0, capsys.readouterr()
    assert bytes(got) == b"\x80\xff\x00A"


async def test_a_send_step_may_carry_a_secret_that_never_shows(
    ctx: ProbeContext, caplog: pytest.LogCaptureFixture
) -> None:
    canary = "tok-canary-51f"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        writer.write(b"NO " + line)  # a server that echoes the token back
        await writer.drain()

    probe = build_probe(
        {
            "kind": "tcp",
            "host": "127.0.0.1",
            "port": 1,
            "steps": [{"send": {"secret": "tok"}}, {"send": "\r\n"}, {"expect": "^OK"}],
        },
        secrets={"tok": Secret(canary)},
    )
    assert canary not in repr(probe)
    assert probe_to_dict(probe)["steps"][0] == {"send": "<secret>"}
    async with TcpServer(handle) as server:
        probe = attrs.evolve(probe, port=server.port)
        with caplog.at_level("DEBUG"):
            result = await probe.check(ctx)
    assert result.status is Status.DOWN  # the server said NO
    assert result.metrics["bytes_sent"] == len(canary) + 2
    text = result_to_json(result)
    assert canary not in text and "<secret>" in text
    assert canary not in caplog.text
