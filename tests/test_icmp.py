"""IcmpProbe: real echo requests to 127.0.0.1 and ::1, and scripted hosts for what loopback never
does (loss, delay, garbage, duplicates, oversized and corrupt replies).

The scripted host (:class:`FakeHost`) is the other end of a datagram socket pair that the
socket connector hands to the probe in place of an ICMP socket: it reads the probe's echo
requests as they would go on the wire and answers with what each test says. Real ICMP goes
through :class:`IcmpConnector`, the guarded connector with one addition: where the kernel refuses
an unprivileged ICMP socket (``net.ipv4.ping_group_range``) but the tests run with CAP_NET_RAW, it
opens a raw ICMP socket to the same loopback address, which the probe reads just as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import probekit._dial
from probekit import (
    DefinitionErrors,
    Dialer,
    EgressPolicy,
    ErrorKind,
    ProbeContext,
    ResponseTime,
    Result,
    StaticResolver,
    Status,
    Timeouts,
    build_probe,
    load_config,
    probe_to_dict,
    result_to_json,
)
from probekit._dial import Datagram
from probekit.probes import get_kind
from probekit.probes._registry import describe
from probekit.probes.icmp import KIND, MAX_SIZE, IcmpProbe, echo_request, parse_reply
from servers import GuardedConnector, NonLoopbackDial, make_context

# Answers of a scripted host: for one echo request (as sent), the datagrams to send back and
# the delay before each.
Answer = Callable[[bytes, int], list[tuple[float, bytes]]]

FAST = {"ping_interval": 0.02, "timeouts": Timeouts(total=2, read=0.2)}


# -- real ICMP on loopback ---------------------------------------------------------------------


def _raw_socket(ip: str) -> socket.socket:
    version = ipaddress.ip_address(ip).version
    if version == 6:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setblocking(False)
    sock.connect((ip, 0))
    return sock


class IcmpConnector(GuardedConnector):
    """The guarded connector; where datagram ICMP sockets are refused, a raw one to the same
    (loopback, already guarded) address. ``sockets`` keeps a duplicate of each socket handed
    out, so a test can read its options after the check closed the original."""

    def __init__(self) -> None:
        super().__init__()
        self.sockets: list[socket.socket] = []

    async def socket(
        self, ip: str, port: int, source: tuple[str, int] | None, protocol: str
    ) -> socket.socket:
        try:
            sock = await super().socket(ip, port, source, protocol)
        except PermissionError:
            if protocol != "icmp":
                raise
            sock = _raw_socket(ip)  # the guard above has passed: ip is loopback
        self.sockets.append(sock.dup())
        return sock

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def _can_open(ip: str) -> str | None:
    """Why real ICMP to ``ip`` cannot be tested here, or None."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if ":" in ip else socket.IPPROTO_ICMP
    try:
        socket.socket(family, socket.SOCK_DGRAM, proto).close()
        return None
    except PermissionError:
        pass
    except OSError as exc:
        return f"no ICMP socket for {ip}: {exc}"
    try:
        _raw_socket(ip).close()
        return None
    except OSError as exc:
        return f"neither a datagram ICMP socket (ping_group_range) nor a raw one: {exc}"


V4_MISSING = _can_open("127.0.0.1")
V6_MISSING = _can_open("::1")
needs_v4 = pytest.mark.skipif(V4_MISSING is not None, reason=str(V4_MISSING))
needs_v6 = pytest.mark.skipif(V6_MISSING is not None, reason=f"IPv6 loopback: {V6_MISSING}")


@pytest.fixture
def icmp() -> Any:
    connector = IcmpConnector()
    yield connector
    connector.close()


def icmp_context(connector: GuardedConnector, policy: EgressPolicy | None = None) -> ProbeContext:
    return make_context(connector=connector, policy=policy, hosts={"v6.test": ["::1"]})


def _check_up(result: Result, count: int) -> None:
    assert result.status is Status.UP, result.summary()
    assert result.error is None
    assert result.phase_names() == ("resolve", "ping")
    metrics = result.metrics
    assert (metrics["sent"], metrics["received"], metrics["loss_ratio"]) == (count, count, 0)
    assert 0 < metrics["rtt_min"] <= metrics["rtt_avg"] <= metrics["rtt_max"] < 1
    assert metrics["rtt_stddev"] >= 0


@needs_v4
@pytest.mark.parametrize(
    ("host", "fields", "address"),
    [
        pytest.param("127.0.0.1", {}, "127.0.0.1", id="v4-defaults"),
        pytest.param("localhost", {"count": 2, "size": 0}, "127.0.0.1", id="by-name-empty"),
        pytest.param("127.0.0.1", {"count": 1, "size": 8000}, "127.0.0.1", id="large"),
        pytest.param("127.0.0.1", {"count": 1, "size": MAX_SIZE}, "127.0.0.1", id="largest"),
    ],
)
async def test_up_v4(host: str, fields: dict[str, Any], address: str, icmp: IcmpConnector) -> None:
    probe = IcmpProbe(host, **{"ping_interval": 0.02, **fields})
    result = await probe.check(icmp_context(icmp))
    _check_up(result, probe.count)
    assert result.kind == "icmp" and result.target == host
    assert result.address == address
    assert icmp.dialled == [(address, 0)]


@needs_v6
@pytest.mark.parametrize("host", ["::1", "[::1]", "v6.test"])
async def test_up_v6(host: str, icmp: IcmpConnector) -> None:
    result = await IcmpProbe(host, count=2, ping_interval=0.02).check(icmp_context(icmp))
    _check_up(result, 2)
    assert result.address == "::1"


@needs_v4
async def test_ttl_is_set_on_the_socket(icmp: IcmpConnector) -> None:
    result = await IcmpProbe("127.0.0.1", count=1, ttl=7).check(icmp_context(icmp))
    assert result.status is Status.UP, result.summary()
    (sock,) = icmp.sockets
    assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 7


@needs_v6
async def test_hop_limit_is_set_on_the_v6_socket(icmp: IcmpConnector) -> None:
    result = await IcmpProbe("::1", count=1, ttl=9).check(icmp_context(icmp))
    assert result.status is Status.UP, result.summary()
    (sock,) = icmp.sockets
    assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS) == 9


@needs_v4
async def test_thresholds_met_are_passed_outcomes(icmp: IcmpConnector) -> None:
    probe = IcmpProbe(
        "127.0.0.1", count=2, ping_interval=0.02, rtt_warn=0.5, rtt_crit=0.9, loss_crit=0.5
    )
    result = await probe.check(icmp_context(icmp))
    assert result.status is Status.UP, result.summary()
    assert [(a.name, a.passed, a.expected) for a in result.assertions] == [
        ("loss", True, "<= 50%"),
        ("rtt", True, "<= 500.000 ms average"),
    ]


@needs_v4
async def test_response_time_assertion_applies(icmp: IcmpConnector) -> None:
    probe = IcmpProbe("127.0.0.1", count=1, assertions=(ResponseTime(warn=5.0),))
    result = await probe.check(icmp_context(icmp))
    assert result.status is Status.UP, result.summary()
    assert [a.name for a in result.assertions] == ["response_time"]


# -- a scripted host ---------------------------------------------------------------------------


def ones_complement_sum(data: bytes) -> int:
    total = sum(word for (word,) in struct.iter_unpack("!H", data + b"\0" * (len(data) % 2)))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def reply(
    version: int,
    identifier: int,
    sequence: int,
    payload: bytes,
    *,
    kind: int | None = None,
    checksum: bool = True,
) -> bytes:
    """An echo reply (or any message of ``kind``) as the kernel hands it to a datagram socket."""
    kind = (0 if version == 4 else 129) if kind is None else kind
    head = struct.pack("!BBHHH", kind, 0, 0, identifier, sequence)
    if version == 6:
        return head + payload
    value = ~ones_complement_sum(head + payload) & 0xFFFF
    if not checksum:
        value ^= 0x5A5A
    return struct.pack("!BBHHH", kind, 0, value, identifier, sequence) + payload


def request_of(data: bytes) -> tuple[int, int, bytes]:
    """(identifier, sequence, payload) of an echo request the probe sent."""
    _kind, _code, _sum, identifier, sequence = struct.unpack_from("!BBHHH", data)
    return identifier, sequence, data[8:]


def echo(data: bytes, version: int) -> list[tuple[float, bytes]]:
    return [(0.0, reply(version, *request_of(data)))]


def silent(data: bytes, version: int) -> list[tuple[float, bytes]]:
    return []


def delayed(seconds: float) -> Answer:
    def answer(data: bytes, version: int) -> list[tuple[float, bytes]]:
        return [(seconds, reply(version, *request_of(data)))]

    return answer


def every_other() -> Answer:
    seen = [0]

    def answer(data: bytes, version: int) -> list[tuple[float, bytes]]:
        seen[0] += 1
        return echo(data, version) if seen[0] % 2 else []

    return answer


def only(*datagrams: Callable[[int, int, bytes, int], bytes]) -> Answer:
    """Answer each request with ``make(identifier, sequence, payload, version)`` for each."""

    def answer(data: bytes, version: int) -> list[tuple[float, bytes]]:
        identifier, sequence, payload = request_of(data)
        return [(0.0, make(identifier, sequence, payload, version)) for make in datagrams]

    return answer


def _send(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the probe is gone
        sock.send(data)


class FakeHost(GuardedConnector):
    """A guarded socket connector whose ICMP "socket" is one end of a datagram socket pair; the
    host at the other end answers each request with ``answer``."""

    def __init__(self, answer: Answer) -> None:
        super().__init__()
        self.answer = answer
        self.requests: list[bytes] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: list[asyncio.TimerHandle] = []
        self._peers: list[socket.socket] = []

    async def socket(
        self, ip: str, port: int, source: tuple[str, int] | None, protocol: str
    ) -> socket.socket:
        if not ipaddress.ip_address(ip).is_loopback:
            self.refused.append((ip, port))
            raise NonLoopbackDial(f"test tried to ping {ip}")
        assert protocol == "icmp"
        self.dialled.append((ip, port))
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ours.setblocking(False)
        theirs.setblocking(False)
        self._peers.append(theirs)
        version = ipaddress.ip_address(ip).version
        self._tasks.append(asyncio.create_task(self._serve(theirs, version)))
        return ours

    async def _serve(self, sock: socket.socket, version: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                request = await loop.sock_recv(sock, 70000)
            except OSError:
                return
            self.requests.append(request)
            for delay, data in self.answer(request, version):
                if delay:
                    self._timers.append(loop.call_later(delay, _send, sock, data))
                else:
                    _send(sock, data)

    async def aclose(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sock in self._peers:
            sock.close()


@asynccontextmanager
async def fake_host(answer: Answer) -> AsyncIterator[FakeHost]:
    host = FakeHost(answer)
    try:
        yield host
    finally:
        await host.aclose()


async def ping(answer: Answer, host: str = "127.0.0.1", **fields: Any) -> tuple[Result, FakeHost]:
    async with fake_host(answer) as fake:
        probe = IcmpProbe(host, **{**FAST, **fields})
        result = await probe.check(make_context(connector=fake))
    return result, fake


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_the_requests_on_the_wire(host: str) -> None:
    result, fake = await ping(echo, host, count=3, size=20)
    assert result.status is Status.UP, result.summary()
    assert len(fake.requests) == 3
    version = 6 if ":" in host else 4
    kinds = {r[0] for r in fake.requests}
    assert kinds == {128 if version == 6 else 8}
    sequences = [request_of(r)[1] for r in fake.requests]
    assert [(s - sequences[0]) & 0xFFFF for s in sequences] == [0, 1, 2]
    payloads = {request_of(r)[2] for r in fake.requests}
    assert len(payloads) == 1 and len(payloads.pop()) == 20
    if version == 4:  # the probe fills the IPv4 checksum; the kernel fills ICMPv6's
        assert all(ones_complement_sum(r) == 0xFFFF for r in fake.requests)


async def test_requests_keep_their_interval() -> None:
    started = time.monotonic()
    result, _ = await ping(echo, count=4, ping_interval=0.1)
    took = time.monotonic() - started
    assert result.status is Status.UP, result.summary()
    assert 0.3 <= result.phase("ping") <= 0.6  # type: ignore[operator]
    assert took < 1.0


def _ip_header(data: bytes) -> bytes:
    return bytes([0x45]) + bytes(19) + data


# What a scripted host answers, and what the check makes of it: status, received, ignored.
SCRIPTED: list[Any] = [
    pytest.param(echo, {}, Status.UP, 3, 0, id="echo"),
    pytest.param(delayed(0.03), {}, Status.UP, 3, 0, id="delayed"),
    pytest.param(every_other(), {"count": 4}, Status.UP, 2, 0, id="half-lost-no-threshold"),
    pytest.param(
        only(lambda i, s, p, v: reply(v, i, s, p), lambda i, s, p, v: reply(v, i, s, p)),
        {},
        Status.UP,
        3,
        2,  # the check ends on the last request's first reply: its duplicate is never read
        id="duplicates",
    ),
    pytest.param(
        only(lambda i, s, p, v: b"\xff" * 5, lambda i, s, p, v: reply(v, i, s, p)),
        {},
        Status.UP,
        3,
        3,
        id="garbage-then-reply",
    ),
    pytest.param(
        only(lambda i, s, p, v: _ip_header(reply(v, i, s, p))),
        {},
        Status.UP,
        3,
        0,
        id="with-ipv4-header",
    ),
    pytest.param(
        only(lambda i, s, p, v: reply(v, i, s, p, kind=8)),
        {},
        Status.DOWN,
        0,
        0,
        id="own-requests-echoed",
    ),
]


@pytest.mark.parametrize(("answer", "fields", "status", "received", "ignored"), SCRIPTED)
async def test_scripted(
    answer: Answer, fields: dict[str, Any], status: Status, received: int, ignored: int
) -> None:
    result, _ = await ping(answer, **fields)
    assert result.status is status, result.summary()
    assert result.metrics["received"] == received
    assert result.metrics["ignored"] == ignored
    assert result.phase_names() == ("resolve", "ping")


# Replies that are not replies to this check: each ignored and counted, the check DOWN/timeout
# (nothing else came), the message saying what was ignored.
IGNORED: list[Any] = [
    pytest.param(lambda i, s, p, v: b"", "short", id="empty"),
    pytest.param(lambda i, s, p, v: reply(v, i, s, p)[:7], "short", id="short"),
    pytest.param(lambda i, s, p, v: b"\x00\x00\x12\x34" + b"\xab" * 20, "corrupt", id="garbage"),
    pytest.param(lambda i, s, p, v: reply(v, i, s, p, checksum=False), "corrupt", id="checksum"),
    pytest.param(lambda i, s, p, v: reply(v, i, s, p + b"x" * 30), "oversized", id="oversized"),
    pytest.param(lambda i, s, p, v: reply(v, i, s, p + b"x" * 100), "oversized", id="over-buffer"),
    pytest.param(
        lambda i, s, p, v: reply(v, i, s, p + b"x" * 60000), "oversized", id="huge-truncated"
    ),
    pytest.param(lambda i, s, p, v: reply(v, i, s, p[:-1]), "not ours", id="truncated-payload"),
    pytest.param(
        lambda i, s, p, v: reply(v, i, s, bytes([p[0] ^ 1]) + p[1:]), "not ours", id="payload"
    ),
    pytest.param(lambda i, s, p, v: reply(v, i, s ^ 0x8000, p), "not ours", id="sequence"),
    pytest.param(lambda i, s, p, v: reply(v, i, s, p, kind=3), "type 3", id="unreachable"),
    pytest.param(lambda i, s, p, v: _ip_header(b"\x00\x00"), "short", id="header-only"),
]


@pytest.mark.parametrize(("make", "reason"), IGNORED)
async def test_ignored_replies(make: Callable[..., bytes], reason: str) -> None:
    result, _ = await ping(only(make))
    assert result.status is Status.DOWN, result.summary()
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.TIMEOUT, "ping")
    assert "100% loss" in result.error.message
    assert f"3 {reason}" in result.error.message, result.error.message
    assert result.metrics["ignored"] == 3
    assert (result.metrics["sent"], result.metrics["received"]) == (3, 0)
    assert result.metrics["loss_ratio"] == 1
    assert "rtt_avg" not in result.metrics


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_silence_is_down_timeout_in_ping_after_the_last_wait(host: str) -> None:
    started = time.monotonic()
    result, fake = await ping(
        silent, host, count=3, ping_interval=0.05, timeouts=Timeouts(read=0.2)
    )
    took = time.monotonic() - started
    assert result.status is Status.DOWN
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.TIMEOUT, "ping")
    assert "no echo reply" in result.error.message and "100% loss" in result.error.message
    assert len(fake.requests) == 3
    assert 0.3 - 0.01 <= took < 0.3 + 0.1  # the last request at 0.1 s, its wait 0.2 s
    assert result.metrics["loss_ratio"] == 1


async def test_a_late_reply_is_lost() -> None:
    result, _ = await ping(delayed(0.3), count=1, timeouts=Timeouts(read=0.1))
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT


async def test_a_reply_after_its_wait_but_before_the_end_is_late() -> None:
    # Request 1 (at 0 s) may be answered until 0.15 s; its reply comes at 0.2 s, while the check
    # still waits for request 2 (sent at 0.1 s, never answered): read, and counted as late.
    requests = [0]

    def answer(data: bytes, version: int) -> list[tuple[float, bytes]]:
        requests[0] += 1
        answered = reply(version, *request_of(data))
        return {1: [(0.2, answered)], 2: []}.get(requests[0], [(0.0, answered)])

    result, _ = await ping(answer, count=3, ping_interval=0.1, timeouts=Timeouts(read=0.15))
    assert result.status is Status.UP, result.summary()
    assert (result.metrics["received"], result.metrics["ignored"]) == (1, 1)


# Thresholds: loss and average round trip, warn → DEGRADED, crit → DOWN, both as outcomes.
THRESHOLDS: list[Any] = [
    pytest.param(every_other(), {"count": 4, "loss_warn": 0.25}, Status.DEGRADED, "loss", id="lw"),
    pytest.param(
        every_other(),
        {"count": 4, "loss_warn": 0.1, "loss_crit": 0.4},
        Status.DOWN,
        "loss",
        id="lc",
    ),
    pytest.param(
        every_other(), {"count": 4, "loss_warn": 0.5}, Status.UP, "loss", id="loss-at-warn"
    ),
    pytest.param(delayed(0.05), {"rtt_warn": 0.02}, Status.DEGRADED, "rtt", id="rtt-warn"),
    pytest.param(
        delayed(0.05), {"rtt_warn": 0.01, "rtt_crit": 0.03}, Status.DOWN, "rtt", id="rtt-crit"
    ),
    pytest.param(delayed(0.01), {"rtt_crit": 0.5}, Status.UP, "rtt", id="rtt-under-crit"),
]


@pytest.mark.parametrize(("answer", "fields", "status", "name"), THRESHOLDS)
async def test_thresholds(
    answer: Answer, fields: dict[str, Any], status: Status, name: str
) -> None:
    result, _ = await ping(answer, **fields)
    assert result.status is status, result.summary()
    (outcome,) = [a for a in result.assertions if a.name == name]
    assert outcome.passed is (status is Status.UP)
    if status is not Status.UP:
        assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
        assert result.error.message == outcome.describe()
        assert outcome.severity is status
    if name == "loss":
        assert "(2 of 4 lost)" in outcome.observed
    else:
        assert outcome.expected.endswith(" ms average") and outcome.observed.endswith(" ms")


async def test_loss_outcome_explains_itself() -> None:
    result, _ = await ping(every_other(), count=4, loss_warn=0.1, loss_crit=0.4)
    assert result.error is not None
    assert result.error.message == "loss failed: expected <= 40%, got 50% (2 of 4 lost)"


# -- errors the network reports ----------------------------------------------------------------


async def test_unreachable_reported_by_the_kernel_is_down_connect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = Datagram.recv
    errors = [0]

    async def recv(self: Datagram, size: int = 65535, limit: float | None = None) -> bytes:
        # A connected ICMP socket reports a router's "host unreachable" once, on the next read.
        if errors[0] < 2:
            errors[0] += 1
            raise OSError(errno.EHOSTUNREACH, "No route to host")
        return await original(self, size, limit)

    monkeypatch.setattr(Datagram, "recv", recv)
    result, _ = await ping(silent, count=2)
    assert result.status is Status.DOWN
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.CONNECT, "ping")
    assert "No route to host (EHOSTUNREACH)" in result.error.message
    assert result.metrics["sent"] == 2


async def test_a_send_refused_locally_is_down_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    async def send(self: Datagram, data: bytes) -> None:
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(Datagram, "send", send)
    result, fake = await ping(echo, count=2)
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.CONNECT, "ping")
    assert "Network is unreachable (ENETUNREACH)" in result.error.message
    assert fake.requests == []
    assert result.duration < 0.1  # no wait for replies to requests that never left


async def test_some_replies_despite_errors_is_up(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Datagram.send
    calls = [0]

    async def send(self: Datagram, data: bytes) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise OSError(errno.ENOBUFS, "No buffer space available")
        await original(self, data)

    monkeypatch.setattr(Datagram, "send", send)
    result, _ = await ping(echo, count=3)
    assert result.status is Status.UP, result.summary()
    assert (result.metrics["received"], result.metrics["loss_ratio"]) == (2, pytest.approx(1 / 3))


async def test_an_endless_socket_error_ends_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    async def recv(self: Datagram, size: int = 65535, limit: float | None = None) -> bytes:
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(Datagram, "recv", recv)
    result, _ = await ping(echo, count=1)
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.CONNECT, "ping")
    assert "keeps failing" in result.error.message
    assert result.duration < 0.5


# -- no ICMP socket for this process -------------------------------------------------------------


class Refusing(GuardedConnector):
    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code

    async def socket(
        self, ip: str, port: int, source: tuple[str, int] | None, protocol: str
    ) -> socket.socket:
        self.dialled.append((ip, port))
        raise PermissionError(self.code, "Permission denied" if self.code == 13 else "Not allowed")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_no_icmp_socket_is_unknown_saying_what_to_change(host: str) -> None:
    result = await IcmpProbe(host).check(make_context(connector=Refusing(errno.EACCES)))
    assert result.status is Status.UNKNOWN
    assert result.error is not None
    message = result.error.message
    assert 'sysctl -w net.ipv4.ping_group_range="0 2147483647"' in message
    assert "EACCES" in message and "gid " in message
    assert result.phase_names() == ("resolve",)


async def test_icmp_forbidden_by_a_sandbox_is_unknown() -> None:
    result = await IcmpProbe("127.0.0.1").check(make_context(connector=Refusing(errno.EPERM)))
    assert result.status is Status.UNKNOWN
    assert result.error is not None and "seccomp" in result.error.message


async def test_no_ipv6_is_down_connect() -> None:
    class NoV6(GuardedConnector):
        async def socket(self, *args: Any) -> socket.socket:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")

    result = await IcmpProbe("::1").check(make_context(connector=NoV6()))
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.CONNECT
    assert "EAFNOSUPPORT" in result.error.message


# -- deadlines -----------------------------------------------------------------------------------


class HangingResolver(StaticResolver):
    async def resolve(self, host: str, family: Any = "any") -> Any:
        await asyncio.sleep(3600)


async def test_a_stalled_resolve_times_out_naming_it_within_the_deadline() -> None:
    guard = FakeHost(echo)
    ctx = ProbeContext(
        dialer=Dialer(resolver=HangingResolver({}), connector=guard, socket_connector=guard.socket)
    )
    probe = IcmpProbe("slow.test", count=1, timeouts=Timeouts(total=0.3, read=0.1))
    started = time.monotonic()
    result = await probe.check(ctx)
    took = time.monotonic() - started
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.TIMEOUT, "resolve")
    assert took < 0.3 + 0.1
    assert guard.dialled == []


async def test_a_deadline_in_ping_times_out_naming_it_within_the_deadline() -> None:
    async with fake_host(silent) as fake:
        ctx = make_context(connector=fake)
        ctx = ctx.with_deadline(ctx.clock.monotonic() + 0.3)
        started = time.monotonic()
        result = await IcmpProbe("127.0.0.1", count=5).check(ctx)  # 1.8 s of pings
        took = time.monotonic() - started
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (ErrorKind.TIMEOUT, "ping")
    assert result.error.message == "timed out during ping"
    assert 0.3 - 0.01 <= took < 0.3 + 0.1


# -- the egress policy ---------------------------------------------------------------------------

DENIED: list[Any] = [
    pytest.param("169.254.169.254", None, id="metadata-by-default"),
    pytest.param("fe80::1", None, id="link-local-v6"),
    pytest.param("metadata.test", None, id="name-resolving-to-metadata"),
    pytest.param("127.0.0.1", EgressPolicy(deny=["127.0.0.0/8"]), id="denied-network"),
    pytest.param("10.1.2.3", EgressPolicy(allow=["127.0.0.0/8"]), id="outside-allow"),
]


@pytest.mark.parametrize(("host", "policy"), DENIED)
async def test_a_denied_address_is_never_pinged(host: str, policy: EgressPolicy | None) -> None:
    guard = GuardedConnector()
    ctx = make_context(connector=guard, policy=policy, hosts={"metadata.test": ["169.254.169.254"]})
    result = await IcmpProbe(host).check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED
    assert guard.dialled == [] and guard.refused == []
    assert "sent" not in result.metrics


# -- hostile bytes -------------------------------------------------------------------------------


@given(st.binary(max_size=200), st.sampled_from([4, 6]))
def test_parse_reply_never_raises(data: bytes, version: int) -> None:
    parsed = parse_reply(data, version)
    assert isinstance(parsed, str) or (isinstance(parsed, tuple) and len(parsed) == 2)


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=100))
def test_a_request_with_its_reply_type_parses_back(ident: int, seq: int, payload: bytes) -> None:
    for version in (4, 6):
        request = echo_request(version, ident, seq, payload)
        assert parse_reply(request, version) == "request"
        answered = reply(version, ident, seq, payload)
        assert parse_reply(answered, version) == (seq, payload)


def _mangled(valid: bytes, how: str, junk: bytes) -> bytes:
    if how == "junk":
        return junk
    if how == "truncate":
        return valid[: len(junk) % (len(valid) + 1)]
    if how == "append":
        return valid + junk
    if how == "flip" and valid:
        at = len(junk) % len(valid)
        return valid[:at] + bytes([valid[at] ^ 0xFF]) + valid[at + 1 :]
    return valid


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["junk", "truncate", "append", "flip", "valid"]), st.binary(max_size=80)
        ),
        max_size=4,
    ),
    st.sampled_from(["127.0.0.1", "::1"]),
)
async def test_any_answer_is_a_classified_result(
    answers: list[tuple[str, bytes]], host: str
) -> None:
    def answer(data: bytes, version: int) -> list[tuple[float, bytes]]:
        valid = reply(version, *request_of(data))
        return [(0.0, _mangled(valid, how, junk)) for how, junk in answers]

    result, _ = await ping(answer, host, count=1, timeouts=Timeouts(total=1, read=0.03))
    assert result.status in (Status.UP, Status.DOWN), result.summary()
    if result.status is Status.DOWN:
        assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
    else:
        assert result.metrics["received"] == 1
    assert result.metrics["received"] + result.metrics["ignored"] <= max(len(answers), 1)


# -- definitions ---------------------------------------------------------------------------------


def test_round_trip_through_plain_data() -> None:
    probe = IcmpProbe(
        "gateway.internal",
        count=5,
        ping_interval=0.5,
        size=1400,
        ttl=32,
        rtt_warn=0.05,
        rtt_crit=0.2,
        loss_warn=0.2,
        loss_crit=0.6,
        ip_family="ipv4",
        assertions=(ResponseTime(warn=4.0),),
        timeouts=Timeouts(total=8, read=2),
    )
    plain = probe_to_dict(probe)
    assert json.loads(json.dumps(plain)) == plain
    assert build_probe(plain) == probe
    assert plain["kind"] == "icmp" and plain["ttl"] == 32 and plain["ping_interval"] == 0.5
    assert build_probe({"kind": "icmp", "host": "10.0.0.1"}) == IcmpProbe("10.0.0.1")


def test_the_kind_is_registered() -> None:
    assert get_kind("icmp") is KIND
    assert KIND.target.parse("192.0.2.1") == {"host": "192.0.2.1"}
    assert KIND.docs == "probes/icmp.md"
    assert {m.key for m in KIND.metrics} >= {
        "loss_ratio",
        "rtt_min",
        "rtt_avg",
        "rtt_max",
        "rtt_stddev",
        "sent",
        "received",
    }


INVALID: list[Any] = [
    pytest.param({"host": ""}, "host", "required", id="no-host"),
    pytest.param({"host": "a b"}, "host", "not a host", id="space"),
    pytest.param({"host": 7}, "host", "expected a string", id="host-number"),
    pytest.param({"count": 0}, "count", "from 1 to 100", id="count-0"),
    pytest.param({"count": 101}, "count", "from 1 to 100", id="count-101"),
    pytest.param({"count": True}, "count", "integer", id="count-bool"),
    pytest.param({"count": "3"}, "count", "integer", id="count-text"),
    pytest.param({"ping_interval": 0}, "ping_interval", "from 0.01 to 60", id="interval-0"),
    pytest.param({"ping_interval": 61}, "ping_interval", "from 0.01 to 60", id="interval-61"),
    pytest.param({"size": -1}, "size", "from 0 to 65507", id="size-negative"),
    pytest.param({"size": 65508}, "size", "from 0 to 65507", id="size-large"),
    pytest.param({"ttl": 0}, "ttl", "from 1 to 255", id="ttl-0"),
    pytest.param({"ttl": 256}, "ttl", "from 1 to 255", id="ttl-256"),
    pytest.param({"rtt_warn": 0}, "rtt_warn", "positive", id="rtt-warn-0"),
    pytest.param({"rtt_crit": -1}, "rtt_crit", "positive", id="rtt-crit-negative"),
    pytest.param({"loss_warn": 1}, "loss_warn", "below 1", id="loss-warn-1"),
    pytest.param({"loss_crit": 20}, "loss_crit", "0.2 is 20%", id="loss-percent"),
    pytest.param({"rtt_warn": 0.5, "rtt_crit": 0.1}, "rtt_warn", "above rtt_crit", id="rtt-order"),
    pytest.param(
        {"loss_warn": 0.5, "loss_crit": 0.1}, "loss_warn", "above loss_crit", id="loss-order"
    ),
    pytest.param({"ip_family": "ipv5"}, "ip_family", "not one of", id="family"),
    pytest.param(
        {"host": "::1", "ip_family": "ipv4"}, "ip_family", "IPv6 address", id="family-mismatch"
    ),
    pytest.param(
        {"assertions": [{"type": "body_contains", "text": "x"}]},
        "assertions[0]",
        "rtt_warn",
        id="body-assertion",
    ),
    pytest.param(
        {"count": 20, "ping_interval": 1}, "timeouts.total", "too short", id="longer-than-deadline"
    ),
    pytest.param(
        {"timeouts": {"total": 2, "read": 2}}, "timeouts.total", "too short", id="wait-too-long"
    ),
    pytest.param({"port": 7}, "port", "unknown field", id="no-port"),
]


@pytest.mark.parametrize(("fields", "path", "message"), INVALID)
def test_invalid_definitions(fields: dict[str, Any], path: str, message: str) -> None:
    definition = {"kind": "icmp", "host": "127.0.0.1", **fields}
    with pytest.raises(DefinitionErrors) as caught:
        build_probe({"monitors": definition}["monitors"], path="monitors[2]")
    errors = caught.value.errors
    assert [e.path for e in errors] == [f"monitors[2].{path}"], errors
    assert message in errors[0].message


# -- the command line ----------------------------------------------------------------------------


def test_options_to_definition() -> None:
    assert KIND.to_definition is not None
    definition: dict[str, Any] = {}
    values = {"warning": (0.1, 0.2), "critical": (0.5, 0.6), "ipv6": True}
    KIND.to_definition(values, definition)
    assert definition == {
        "rtt_warn": 0.1,
        "loss_warn": 0.2,
        "rtt_crit": 0.5,
        "loss_crit": 0.6,
        "ip_family": "ipv6",
    }


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from probekit.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def real_icmp(monkeypatch: pytest.MonkeyPatch, icmp: IcmpConnector) -> IcmpConnector:
    """The CLI's dialer opens its sockets with ``probekit._dial.open_socket``: route them
    through the guarded loopback connector."""
    monkeypatch.setattr(probekit._dial, "open_socket", icmp.socket)
    return icmp


@needs_v4
def test_cli_check_nagios(real_icmp: IcmpConnector, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _cli(
        ["check", "icmp", "127.0.0.1", "--nagios", "-p", "2", "-i", "0.05", "-w", "200,20%"],
        capsys,
    )
    assert code == 0, out
    assert out.startswith("ICMP OK - 2/2 replies, 0% loss")
    assert " | time=" in out and " ping=" in out
    assert real_icmp.dialled == [("127.0.0.1", 0)]


@needs_v4
def test_cli_check_human_describes_the_pings(
    real_icmp: IcmpConnector, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _cli(["check", "icmp", "localhost", "--count", "2", "--interval", "0.05"], capsys)
    assert code == 0, out
    assert "2/2 replies, 0% loss, rtt min/avg/max/stddev " in out
    assert "resolve" in out and "ping" in out


@needs_v4
def test_cli_round_trips_are_finer_than_the_loops_clock(
    real_icmp: IcmpConnector, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI runs on uvloop, whose clock ticks in milliseconds; loopback replies take tens of
    microseconds, which a millisecond clock reads as 0 or 1 ms."""
    code, out = _cli(["check", "icmp", "127.0.0.1", "--json", "-p", "3", "-i", "0.02"], capsys)
    assert code == 0, out
    metrics = json.loads(out)["metrics"]
    rtts = [metrics[key] for key in ("rtt_min", "rtt_avg", "rtt_max")]
    assert all(0 < rtt < 0.05 for rtt in rtts), rtts
    assert any(round(rtt * 1000, 6) % 1 for rtt in rtts), rtts


def test_a_config_file_sets_the_ping_fields(tmp_path: Path) -> None:
    path = tmp_path / "monitors.toml"
    path.write_text(
        "[[monitors]]\n"
        'id = "gw"\nkind = "icmp"\nhost = "10.0.0.1"\ninterval = 30\n'
        "count = 5\nping_interval = 0.5\nloss_crit = 0.5\n"
    )
    (monitor,) = load_config(path).monitors
    assert monitor.interval == 30
    assert monitor.probe == IcmpProbe("10.0.0.1", count=5, ping_interval=0.5, loss_crit=0.5)


def test_cli_unknown_when_the_kernel_refuses(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(probekit._dial, "open_socket", Refusing(errno.EACCES).socket)
    code, out = _cli(["check", "--nagios", "icmp", "127.0.0.1"], capsys)
    assert code == 3, out
    assert out.startswith("ICMP UNKNOWN - ")
    assert "ping_group_range" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-c", "5"], "the number of requests is -p/--count"),
        (["-w", "100,20"], "expected RTA,PL%"),
        (["-w", "abc,20%"], "not a round trip"),
        (["--loss-warn", "120"], "from 0 to below 100"),
        (["-p", "0"], "the count must be from 1 to 100"),
        (["-w", "100,20%", "--rtt-warn", "1"], "not both"),
        (["-4", "-6"], "not allowed together"),
        (["--rtt-warn", "0.5", "--rtt-crit", "0.1"], "above rtt_crit"),
        (["-p", "50", "-i", "1"], "too short"),
    ],
)
def test_cli_problems(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _cli(["check", "icmp", "127.0.0.1", *argv], capsys)
    assert code == 3
    assert message in out, out


# -- what the result says -----------------------------------------------------------------------


async def test_describe_and_json() -> None:
    result, _ = await ping(echo, count=2)
    assert describe(result).startswith("2/2 replies, 0% loss, rtt min/avg/max/stddev ")
    data = json.loads(result_to_json(result))
    assert data["metrics"]["sent"] == 2
    assert [p["name"] for p in data["phases"]] == ["resolve", "ping"]


async def test_describe_without_replies() -> None:
    result, _ = await ping(silent, count=1, timeouts=Timeouts(read=0.05))
    assert describe(result) == "0/1 replies, 100% loss"
