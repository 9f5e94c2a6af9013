"""The public probe SDK: ProbeBase, Attempt, ProbeKind and the registry, as a third party uses them.

Every probe here is written the way docs/probes/writing.md tells a plugin author to write one,
and runs against loopback servers through a dialer whose connectors refuse anything else.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, cast

import attrs
import pytest

from probekit import (
    BodyContains,
    DefinitionError,
    DefinitionErrors,
    EgressPolicy,
    ErrorKind,
    ProbeContext,
    ProbeFailure,
    Status,
    Timeouts,
    build_probe,
    probe_to_dict,
)
from probekit.probes import (
    Attempt,
    HostPort,
    Metric,
    Name,
    Option,
    ProbeBase,
    ProbeKind,
    Url,
    get_kind,
    kinds,
    register_kind,
)
from servers import GuardedConnector, TcpServer, make_context


@attrs.frozen
class LineProbe(ProbeBase):
    """Send a word, expect it back: the smallest line protocol."""

    kind: ClassVar[str] = "sdk_line"

    host: str
    port: int
    word: str = "ping"
    mode: str = "connect"  # connect | socket
    assertions: tuple[Any, ...] = ()
    timeouts: Timeouts = attrs.field(factory=Timeouts)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    async def run(self, attempt: Attempt) -> None:
        if self.mode == "socket":
            sock = await attempt.open_socket(self.host, self.port)
            reader, writer = await asyncio.open_connection(sock=sock)
            with attempt.phase("exchange"):
                writer.write(self.word.encode() + b"\n")
                line = await attempt.wait(reader.readline())
            writer.transport.abort()
        else:
            conn = await attempt.connect(self.host, self.port)
            with attempt.phase("exchange"):
                await attempt.write(conn, self.word.encode() + b"\n")
                line = await attempt.read_line(conn, max_bytes=1024)
        attempt.metric("reply_bytes", len(line))
        attempt.observe(body=line)
        if line.strip() == b"bug":
            raise KeyError("a bug in the probe")
        if line.strip() != self.word.encode():
            raise ProbeFailure(ErrorKind.PROTOCOL, f"expected {self.word!r}, got {line!r}")
        attempt.outcome("echo", True, self.word, line.decode().strip())


LINE = ProbeKind(
    name="sdk_line",
    cls=LineProbe,
    summary="echo a word",
    target=HostPort(default_port=7),
    options=(Option(("--word",), field="word", help="the word"),),
    metrics=(Metric("reply_bytes", "probekit_sdk_line_reply_bytes", "Bytes of the reply."),),
)
register_kind(LINE, replace=True)


def echo_server(reply: bytes | None = None, *, delay: float = 0.0) -> TcpServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        await asyncio.sleep(delay)
        writer.write(reply if reply is not None else line)
        await writer.drain()
        await reader.read()  # until the probe closes: proves it did

    return TcpServer(handle)


async def test_up_with_phases_metrics_and_outcome(ctx: ProbeContext) -> None:
    async with echo_server() as server:
        result = await LineProbe("127.0.0.1", server.port).check(ctx)
    assert result.status is Status.UP, result.error
    assert list(result.phase_names()) == ["resolve", "connect", "exchange"]
    assert result.metrics["reply_bytes"] == 5
    assert [(a.name, a.passed) for a in result.assertions] == [("echo", True)]
    assert result.address == f"127.0.0.1:{server.port}"
    assert result.kind == "sdk_line"
    assert result.target == f"127.0.0.1:{server.port}"


async def test_probe_failure_is_down_naming_the_phase(ctx: ProbeContext) -> None:
    async with echo_server(b"pong\n") as server:
        result = await LineProbe("127.0.0.1", server.port).check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None
    assert result.error.kind is ErrorKind.PROTOCOL
    assert "expected 'ping'" in result.error.message


async def test_timeout_names_the_running_phase(ctx: ProbeContext) -> None:
    async with echo_server(delay=10) as server:
        probe = LineProbe("127.0.0.1", server.port, timeouts=Timeouts(total=0.3))
        result = await probe.check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None
    assert result.error.kind is ErrorKind.TIMEOUT
    assert result.error.phase == "exchange"
    assert result.duration < 2


async def test_a_bug_is_unknown_internal(ctx: ProbeContext) -> None:
    async with echo_server(b"bug\n") as server:
        result = await LineProbe("127.0.0.1", server.port).check(ctx)
    assert result.status is Status.UNKNOWN
    assert result.error is not None
    assert result.error.kind is ErrorKind.INTERNAL


async def test_connections_are_closed_when_the_check_ends(ctx: ProbeContext) -> None:
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"pong\n")  # a wrong answer: the probe raises while the connection is open
        await writer.drain()
        await reader.read()
        closed.set()

    async with TcpServer(handle) as server:
        result = await LineProbe("127.0.0.1", server.port).check(ctx)
        await asyncio.wait_for(closed.wait(), 2)
    assert result.status is Status.DOWN


async def test_assertions_are_evaluated_by_the_base(ctx: ProbeContext) -> None:
    async with echo_server() as server:
        good = LineProbe("127.0.0.1", server.port, assertions=(BodyContains("pin"),))
        bad = LineProbe("127.0.0.1", server.port, assertions=(BodyContains("nope"),))
        up = await good.check(ctx)
        down = await bad.check(ctx)
    assert up.status is Status.UP
    assert [a.name for a in up.assertions] == ["echo", "body_contains"]
    assert down.status is Status.DOWN
    assert down.error is not None
    assert down.error.kind is ErrorKind.ASSERTION


async def test_open_socket_hands_a_connected_socket_to_a_library(ctx: ProbeContext) -> None:
    async with echo_server() as server:
        result = await LineProbe("127.0.0.1", server.port, mode="socket").check(ctx)
    assert result.status is Status.UP, result.error
    assert list(result.phase_names()) == ["resolve", "connect", "exchange"]
    assert result.address == f"127.0.0.1:{server.port}"


@pytest.mark.parametrize("mode", ["connect", "socket"])
async def test_denied_addresses_are_never_dialled(mode: str) -> None:
    guard = GuardedConnector()
    ctx = make_context(policy=EgressPolicy(deny=["127.0.0.0/8"]), connector=guard)
    async with echo_server() as server:
        result = await LineProbe("127.0.0.1", server.port, mode=mode).check(ctx)
        assert server.connections == 0
    assert result.status is Status.DOWN
    assert result.error is not None
    assert result.error.kind is ErrorKind.POLICY_DENIED
    assert guard.dialled == []


@attrs.frozen
class UdpProbe(ProbeBase):
    kind: ClassVar[str] = "sdk_udp"

    host: str
    port: int
    timeouts: Timeouts = attrs.field(factory=Timeouts)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    async def run(self, attempt: Attempt) -> None:
        endpoint = await attempt.datagram(self.host, self.port)
        with attempt.phase("query"):
            await endpoint.send(b"hello")
            reply = await endpoint.recv(1024, attempt.timeouts.read)
        if reply != b"HELLO":
            raise ProbeFailure(ErrorKind.PROTOCOL, f"got {reply!r}")


class _Upper(asyncio.DatagramProtocol):
    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.seen = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen += 1
        if self.answer and self.transport is not None:
            self.transport.sendto(data.upper(), addr)


async def _udp_server(answer: bool = True) -> tuple[asyncio.DatagramTransport, _Upper, int]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _Upper(answer), local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    return transport, protocol, port


async def test_datagram_round_trip(ctx: ProbeContext) -> None:
    transport, _, port = await _udp_server()
    try:
        result = await UdpProbe("localhost", port).check(ctx)
    finally:
        transport.close()
    assert result.status is Status.UP, result.error
    assert list(result.phase_names()) == ["resolve", "query"]
    assert result.address == f"127.0.0.1:{port}"


async def test_datagram_silence_is_a_timeout_in_its_phase(ctx: ProbeContext) -> None:
    transport, server, port = await _udp_server(answer=False)
    try:
        probe = UdpProbe("127.0.0.1", port, timeouts=Timeouts(total=5, read=0.2))
        result = await probe.check(ctx)
    finally:
        transport.close()
    assert server.seen == 1
    assert result.error is not None
    assert result.error.kind is ErrorKind.TIMEOUT
    assert result.error.phase == "query"


async def test_datagram_to_a_denied_address_sends_nothing() -> None:
    guard = GuardedConnector()
    ctx = make_context(policy=EgressPolicy(deny=["127.0.0.0/8"]), connector=guard)
    transport, server, port = await _udp_server()
    try:
        result = await UdpProbe("127.0.0.1", port).check(ctx)
        await asyncio.sleep(0.05)
    finally:
        transport.close()
    assert result.error is not None
    assert result.error.kind is ErrorKind.POLICY_DENIED
    assert server.seen == 0
    assert guard.dialled == []


async def test_guarded_socket_connector_refuses_non_loopback() -> None:
    guard = GuardedConnector()
    with pytest.raises(AssertionError, match=r"192\.0\.2\.1"):
        await guard.socket("192.0.2.1", 9, None, "udp")
    assert guard.refused == [("192.0.2.1", 9)]


# -- declaring kinds ------------------------------------------------------------------------------


def test_registered_kind_builds_and_round_trips() -> None:
    assert get_kind("sdk_line") is LINE
    assert "sdk_line" in kinds()
    probe = build_probe({"kind": "sdk_line", "host": "127.0.0.1", "port": 7, "word": "x"})
    assert probe == LineProbe("127.0.0.1", 7, word="x")
    assert build_probe(probe_to_dict(probe)) == probe


def test_builtin_kinds_are_found_lazily() -> None:
    assert {"http", "tcp"} <= set(kinds())
    assert get_kind("http").target == Url()
    assert get_kind("tcp").cls.__name__ == "TcpProbe"


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        ({"host": "h", "port": 1}, "kind", "required"),
        ({"kind": 5}, "kind", "expected a string"),
        ({"kind": "sdk_lime", "host": "h"}, "kind", "did you mean 'sdk_line'"),
        ({"kind": "sdk_line", "host": "h", "port": 1, "wrod": "x"}, "wrod", "did you mean 'word'"),
        ({"kind": "sdk_line", "host": "h"}, "port", "required"),
    ],
)
def test_definition_errors_name_the_field(data: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(DefinitionErrors) as info:
        build_probe(data)
    assert any(e.path == path and message in e.message for e in info.value.errors), info.value


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(DefinitionError, match=r"unknown probe kind 'nope'; known: .*http"):
        get_kind("nope")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "Bad-Name"}, "name"),
        ({"name": "other"}, "cls"),  # LineProbe.kind is sdk_line
        ({"cls": dict}, "cls"),
        ({"options": (Option(("--a",), help=""), Option(("--a",), help=""))}, "options"),
    ],
)
def test_invalid_kind_declarations_are_refused(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(DefinitionError) as info:
        attrs.evolve(LINE, **changes)
    assert info.value.path == field


def test_registering_a_second_kind_under_a_taken_name_is_refused() -> None:
    other = attrs.evolve(LINE, summary="something else")
    with pytest.raises(ValueError, match="already registered"):
        register_kind(other)
    assert register_kind(LINE) is LINE  # the same declaration again is fine


def test_option_and_metric_declarations() -> None:
    with pytest.raises(DefinitionError, match="option flags"):
        Option(("word",), help="")
    with pytest.raises(DefinitionError, match="metric name"):
        Metric("x", "not a name", "")
    with pytest.raises(
        DefinitionError, match="probekit_sdk_items is a counter: a counter's name ends in '_total'"
    ):
        Metric("items", "probekit_sdk_items", "Items seen.", "counter")
    with pytest.raises(DefinitionError, match="metric _total is a counter"):
        Metric("items", "_total", "Items seen.", "counter")  # nothing before '_total'
    with pytest.raises(DefinitionError, match="'histogram' is not 'gauge' or 'counter'"):
        Metric("items", "probekit_sdk_items", "Items seen.", "histogram")  # type: ignore[arg-type]
    assert Metric("items", "probekit_sdk_items_total", "Items seen.", "counter").type == "counter"
    assert Metric("items", "probekit_sdk_items", "Items seen.").type == "gauge"
    assert Option(("-H", "--request-header"), help="").name == "request_header"
    assert Option(("--x",), field="body", help="").name == "body"
    assert Option(("--x",), dest="d", field="body", help="").label == "--x"
    with pytest.raises(DefinitionError, match="nargs is a positive count"):
        Option(("--x",), help="", action="flag", nargs=2)
    with pytest.raises(DefinitionError, match="nargs is a positive count"):
        Option(("--x",), help="", nargs=0)
    with pytest.raises(DefinitionError, match="expected 3 names"):
        Option(("--x",), help="", nargs=3, metavar=("A", "B"))
    with pytest.raises(DefinitionError, match="needs nargs"):
        Option(("--x",), help="", metavar=("A", "B"))
    assert Option(("--x",), help="", nargs=2, metavar=("A", "B")).nargs == 2


@pytest.mark.parametrize(
    ("syntax", "text", "fields"),
    [
        (HostPort(), "db.local:5432", {"host": "db.local", "port": 5432}),
        (HostPort(), "[::1]:53", {"host": "::1", "port": 53}),
        (HostPort(default_port=6379), "cache", {"host": "cache", "port": 6379}),
        (HostPort(default_port=6379), "[::1]", {"host": "::1", "port": 6379}),
        (Url(), "https://x/", {"url": "https://x/"}),
        (Name(), "example.internal", {"name": "example.internal"}),
    ],
)
def test_target_syntaxes(syntax: Any, text: str, fields: dict[str, Any]) -> None:
    assert syntax.parse(text) == fields


@pytest.mark.parametrize("text", ["cache", "h:0", "h:70000", "h:x", "[::1]x", ":80", "::1"])
def test_host_port_refuses(text: str) -> None:
    with pytest.raises(DefinitionError, match="expected HOST:PORT"):
        HostPort().parse(text)


def test_default_host_comes_from_the_target() -> None:
    assert LineProbe("db.local", 1).host == "db.local"

    @attrs.frozen
    class UrlProbe(ProbeBase):
        kind: ClassVar[str] = "sdk_url"
        url: str
        timeouts: Timeouts = attrs.field(factory=Timeouts)

        @property
        def target(self) -> str:
            return self.url

    assert UrlProbe("https://user@[::1]:8443/x").host == "::1"
    assert UrlProbe("http://web.local/").host == "web.local"


async def test_a_probe_without_a_body_is_a_clear_internal_error() -> None:
    @attrs.frozen
    class Empty(ProbeBase):
        kind: ClassVar[str] = "sdk_empty"
        timeouts: Timeouts = attrs.field(factory=Timeouts)

        @property
        def target(self) -> str:
            return "nothing"

    result = await Empty().check()
    assert result.status is Status.UNKNOWN
    assert result.error is not None
    assert "must define 'async def run(attempt)'" in result.error.message


def test_socket_connector_default_refuses_unknown_protocols() -> None:
    from probekit._dial import open_socket

    with pytest.raises(ValueError, match="unknown socket protocol"):
        asyncio.run(open_socket("127.0.0.1", 1, None, "sctp"))


def test_a_secret_can_be_handed_to_build_probe_from_python() -> None:
    from probekit import Secret

    probe = build_probe({"kind": "redis", "host": "127.0.0.1", "password": Secret("pw-canary")})
    assert probe.password == Secret("pw-canary")
    assert "pw-canary" not in repr(probe)


def test_a_class_whose_annotations_cannot_be_read_is_a_definition_error() -> None:
    namespace: dict[str, Any] = {}
    exec(  # noqa: S102 - a class defined where its annotations cannot be resolved
        "from __future__ import annotations\n"
        "import attrs\n"
        "from typing import ClassVar\n"
        "@attrs.frozen\n"
        "class Lost:\n"
        "    kind: ClassVar[str] = 'sdk_lost'\n"
        "    host: Nowhere\n",
        namespace,
    )
    spec = attrs.evolve(LINE, name="sdk_lost", cls=namespace["Lost"])
    register_kind(spec, replace=True)
    with pytest.raises(DefinitionErrors, match="cannot read the field types of Lost"):
        build_probe({"kind": "sdk_lost", "host": "x"})


def test_the_shared_options_are_public() -> None:
    from probekit.probes import BODY_OPTIONS, TLS_OPTIONS, body_assertions, tls_definition

    assert {o.label for o in BODY_OPTIONS} == {"--contains", "--regex"}
    assert {o.label for o in TLS_OPTIONS} == {"--insecure", "--ca-file"}
    definition: dict[str, Any] = {}
    body_assertions({"contains": ["a"], "regex": ["b+"]}, definition)
    assert [a["type"] for a in definition["assertions"]] == ["body_contains", "body_matches"]
    assert tls_definition({"insecure": True}) == {"verify": False}
    with pytest.raises(DefinitionErrors) as info:
        body_assertions({"regex": ["("]}, {})
    assert info.value.errors[0].path == "--regex"


def test_a_kind_describes_what_it_saw_for_human_output() -> None:
    import datetime as dt

    from probekit import Result
    from probekit.probes._registry import describe

    def result(kind: str, **metrics: float) -> Result:
        now = dt.datetime.now(dt.UTC)
        return Result(kind=kind, target="t", status=Status.UP, started_at=now, duration=0.0,
                      metrics=metrics)  # fmt: skip

    assert describe(result("http", status_code=204)) == "status 204"
    assert describe(result("redis", redis_version=70204)) == "redis 7.2.4"
    assert describe(result("tcp", bytes_received=3)) == ""  # tcp says nothing more
    assert describe(result("not-installed-here")) == ""


async def test_a_starttls_verify_failure_does_not_dial_again(
    ctx: ProbeContext, self_signed_tls: Any
) -> None:
    from probekit import Expect, Send, StartTls, TcpProbe

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ready\r\n")
        await reader.readline()
        writer.write(b"220 go ahead\r\n")
        await writer.drain()
        await writer.start_tls(self_signed_tls)
        await reader.read()

    async with TcpServer(handle) as server:
        steps = (Expect(pattern="^220"), Send("STARTTLS\r\n"), Expect(pattern="^220 go ahead\r\n"))
        probe = TcpProbe("127.0.0.1", server.port, steps=(*steps, StartTls()))
        result = await probe.check(ctx)
        await asyncio.sleep(0.05)
        connections = server.connections
    assert result.error is not None
    assert result.error.kind is ErrorKind.TLS
    assert result.error.phase == "tls"
    assert connections == 1  # no second connection that would meet a greeting, not a handshake


@pytest.mark.parametrize("raw_allowed", [True, False])
async def test_an_icmp_socket_falls_back_to_raw_where_datagram_icmp_is_refused(
    monkeypatch: pytest.MonkeyPatch, raw_allowed: bool
) -> None:
    import socket as socket_module

    from probekit import _dial

    real = socket_module.socket
    asked: list[int] = []

    def fake(family: int, kind: int, proto: int = 0) -> socket_module.socket:
        asked.append(kind)
        if kind == socket_module.SOCK_DGRAM or not raw_allowed:
            raise PermissionError(13, "Permission denied")
        return real(family, socket_module.SOCK_DGRAM)  # a stand-in that can connect to lo

    monkeypatch.setattr(_dial.socket, "socket", fake)
    if raw_allowed:
        sock = await _dial.open_socket("127.0.0.1", 0, None, "icmp")
        sock.close()
    else:
        with pytest.raises(PermissionError, match="Permission denied"):
            await _dial.open_socket("127.0.0.1", 0, None, "icmp")
    assert asked == [socket_module.SOCK_DGRAM, socket_module.SOCK_RAW]
    asked.clear()
    with pytest.raises(PermissionError):  # udp never falls back to raw
        await _dial.open_socket("127.0.0.1", 9, None, "udp")
    assert asked == [socket_module.SOCK_DGRAM]


@attrs.frozen
class _ShadowHttp(ProbeBase):
    """A plugin's class that claims a built-in kind's name."""

    kind: ClassVar[str] = "http"
    host: str = "h"
    timeouts: Timeouts = attrs.field(factory=Timeouts)

    @property
    def target(self) -> str:
        return self.host


SHADOW = ProbeKind(name="http", cls=_ShadowHttp, summary="shadow", target=HostPort())


def test_a_plugin_cannot_take_over_a_builtin_kind_under_another_entry_name(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from importlib import metadata

    from probekit.probes import _registry

    shadow = metadata.EntryPoint(
        name="shadow", value="test_sdk:SHADOW", group=_registry.ENTRY_POINT_GROUP
    )

    def entry_points(**selection: str) -> list[metadata.EntryPoint]:
        return [shadow] if selection.get("group") == _registry.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    _registry.reset_plugins()
    try:
        with caplog.at_level("WARNING", logger="probekit.probes"):
            assert get_kind("http").cls.__name__ == "HttpProbe"
            kinds()
        assert "kind 'http' of entry point shadow is ignored" in caplog.text
    finally:
        monkeypatch.undo()
        _registry.reset_plugins()


# -- secret fields (probes._fields.check_secret, shared by every kind with a password) ---------

_EMPTY_PASSWORD = {
    "RedisProbe": "an empty password",
    "SmtpProbe": "an empty password",
    "ImapProbe": "an empty password",
    "Pop3Probe": "an empty password",
    "PostgresProbe": "an empty password",
    "MysqlProbe": "an empty password (leave it out instead)",
    "MssqlProbe": "expected 1 to 128 characters",
    "SshProbe": "an empty password",
    "SftpProbe": "an empty password",
}


@pytest.mark.parametrize("name", sorted(_EMPTY_PASSWORD))
def test_a_password_that_is_not_a_secret_is_named_by_its_type_only(name: str) -> None:
    import probekit
    from probekit import Secret

    cls = getattr(probekit, name)
    extra = {"path": "/x"} if name == "SftpProbe" else {}
    with pytest.raises(DefinitionError) as plain:
        cls(host="db.internal", username="u", password="hunter2", **extra)
    assert str(plain.value) == "password: expected a Secret, got str"
    assert "hunter2" not in str(plain.value)
    with pytest.raises(DefinitionError) as empty:
        cls(host="db.internal", username="u", password=Secret(""), **extra)
    assert str(empty.value) == f"password: {_EMPTY_PASSWORD[name]}"


def test_check_secret() -> None:
    from probekit import Secret
    from probekit.probes._fields import check_secret

    key = Secret("k")
    assert check_secret("key", None) is None
    assert check_secret("key", key) is key
    with pytest.raises(DefinitionError, match=r"^key: expected a Secret, got bytes$"):
        check_secret("key", b"k")
    with pytest.raises(DefinitionError, match=r"^key: an empty key$"):
        check_secret("key", Secret(""))
    with pytest.raises(DefinitionError, match=r"^key: too short$"):
        check_secret("key", Secret(""), empty="too short")
