"""DnsProbe against an in-process DNS server on loopback (UDP and TCP on one port), built with
dnspython: answers from a small zone, and modes for every way a server goes wrong."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import attrs
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probekit import (
    BodyContains,
    DefinitionError,
    DefinitionErrors,
    Dialer,
    EgressPolicy,
    ErrorKind,
    ProbeContext,
    ResponseTime,
    Result,
    Secret,
    StaticResolver,
    Status,
    Timeouts,
    TlsOptions,
    build_probe,
    probe_to_dict,
    result_to_json,
)
from probekit.probes import dns as dns_module
from probekit.probes import get_kind
from probekit.probes.dns import KIND, DnsProbe
from servers import GuardedConnector, closed_port, make_context

SERIAL = 2024061501
ZONE: dict[tuple[str, str], list[str]] = {
    ("www.probekit.test.", "A"): ["192.0.2.10", "192.0.2.11"],
    ("www.probekit.test.", "AAAA"): ["2001:db8::10"],
    ("alias.probekit.test.", "CNAME"): ["www.probekit.test."],
    ("probekit.test.", "MX"): ["10 mail.probekit.test.", "20 backup.probekit.test."],
    ("probekit.test.", "NS"): ["ns1.probekit.test.", "ns2.probekit.test."],
    ("probekit.test.", "SOA"): [
        f"ns1.probekit.test. hostmaster.probekit.test. {SERIAL} 7200 900 1209600 300"
    ],
    ("probekit.test.", "TXT"): ['"v=spf1 -all"', '"two " "strings"'],
    ("probekit.test.", "CAA"): ['0 issue "letsencrypt.org"'],
    ("_sip._tcp.probekit.test.", "SRV"): ["0 5 5060 sip.probekit.test."],
    ("10.2.0.192.in-addr.arpa.", "PTR"): ["www.probekit.test."],
    ("big.probekit.test.", "TXT"): [f'"{i:03d}' + "x" * 200 + '"' for i in range(20)],
    ("mid.probekit.test.", "TXT"): [f'"{i:03d}' + "x" * 200 + '"' for i in range(3)],
    ("empty.probekit.test.", "TXT"): [],  # the name exists, with no TXT records: NODATA
}
TSIG_NAME = "monitor-key."
TSIG_CANARY = base64.b64encode(b"tsig-canary-5f1d9c-" + bytes(13)).decode()  # 32 bytes


@attrs.define
class FakeDns:
    """The server side of one test: the zone it answers from, a ``mode`` for UDP and one for TCP
    (``tcp_mode``, default the same), and the questions it received as ``(transport, name,
    type)``. Modes: ``answer``, ``servfail``, ``refused``, ``silence``, ``garbage``, ``wrong_id``,
    ``not_response``, ``other_question``, ``short``, ``truncate`` (UDP: TC and no records),
    ``close`` (TCP: read the query, then hang up), ``reset`` (TCP: hang up at once), ``half``
    (TCP: hang up mid-reply), ``raw`` (send ``raw(query)``). An answer too big for the payload
    the query offers comes back over UDP truncated, as from a real server. With ``tsig_key`` a
    query must be signed with it, and the reply is signed too."""

    zone: dict[tuple[str, str], list[str]] = attrs.field(factory=lambda: dict(ZONE))
    mode: str = "answer"
    tcp_mode: str | None = None
    ttl: int = 300
    tsig_key: str | None = None
    raw: Callable[[bytes], bytes] | None = None
    seen: list[tuple[str, str, str]] = attrs.field(factory=list)

    def reply(self, wire: bytes, transport: str) -> bytes | None:
        mode = self.mode if transport == "udp" else (self.tcp_mode or self.mode)
        if mode == "raw":
            assert self.raw is not None
            return self.raw(wire)
        keyring = None
        if self.tsig_key is not None:
            keyring = {dns.name.from_text(TSIG_NAME): dns.tsig.Key(TSIG_NAME, self.tsig_key)}
        try:
            query = dns.message.from_wire(wire, keyring=keyring)
        except dns.message.UnknownTSIGKey:
            return _refused_tsig(wire, dns.rcode.BADKEY)
        except dns.tsig.BadSignature:
            return _refused_tsig(wire, dns.rcode.BADSIG)
        question = query.question[0]
        name, rtype = question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype)
        self.seen.append((transport, name, rtype))
        if mode == "silence":
            return None
        if mode == "garbage":
            return b"HTTP/1.1 400 Bad Request\r\n\r\n"
        if mode == "short":
            return wire[:7]
        response = dns.message.make_response(query)
        if mode == "wrong_id":
            response.id = (query.id + 1) % 65536
        if mode == "not_response":
            response.flags &= ~dns.flags.QR
        if mode == "other_question":
            response.question[0] = dns.rrset.RRset(
                dns.name.from_text("evil.example."), question.rdclass, question.rdtype
            )
        if mode in ("servfail", "refused"):
            response.set_rcode(dns.rcode.from_text(mode.upper()))
            return response.to_wire()
        if mode == "truncate":
            response.flags |= dns.flags.TC
            return response.to_wire()
        response.flags |= dns.flags.AA
        self._answer(response, name, rtype)
        if transport == "tcp":
            return response.to_wire(max_size=65535)
        try:
            return response.to_wire()  # at most the payload size the query offered
        except dns.exception.TooBig:  # as a server does: no records, and the TC bit
            response.answer.clear()
            response.authority.clear()
            response.flags |= dns.flags.TC
            return response.to_wire()

    def _answer(self, response: dns.message.Message, name: str, rtype: str) -> None:
        for _ in range(8):  # follow a CNAME chain, as a recursive server does
            records = self.zone.get((name, rtype))
            if records:
                response.answer.append(dns.rrset.from_text(name, self.ttl, "IN", rtype, *records))
                return
            alias = self.zone.get((name, "CNAME"))
            if alias and rtype != "CNAME":
                response.answer.append(dns.rrset.from_text(name, 60, "IN", "CNAME", *alias))
                name = alias[0].lower()
                continue
            break
        if not any(owner == name for owner, _ in self.zone):
            response.set_rcode(dns.rcode.NXDOMAIN)
        soa = self.zone[("probekit.test.", "SOA")]
        response.authority.append(dns.rrset.from_text("probekit.test.", 300, "IN", "SOA", *soa))


def _refused_tsig(wire: bytes, error: int) -> bytes:
    """NOTAUTH, unsigned (the server cannot sign with a key it does not have)."""
    query = dns.message.from_wire(wire, keyring=False)
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.NOTAUTH)
    response.keyring = None
    response.tsig = None
    return response.to_wire()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: FakeDns) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = self.server.reply(data, "udp")
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)


async def _tcp(server: FakeDns, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        mode = server.tcp_mode or server.mode
        if mode == "reset":  # hang up at once: the probe's query meets a reset
            return
        if mode == "close":  # read the query, then an orderly close (FIN) without a reply
            await reader.readexactly(int.from_bytes(await reader.readexactly(2), "big"))
            writer.close()
            await writer.wait_closed()
            return
        size = int.from_bytes(await reader.readexactly(2), "big")
        answer = server.reply(await reader.readexactly(size), "tcp")
        if answer is None:
            await reader.read()  # until the probe gives up and hangs up
            return
        framed = len(answer).to_bytes(2, "big") + answer
        if mode == "half":
            framed = framed[: len(framed) // 2]
        elif mode == "raw":
            framed = answer  # raw bytes, length prefix and all
        writer.write(framed)
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.transport.abort()


@contextlib.asynccontextmanager
async def serving(server: FakeDns, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """UDP and TCP listeners on one loopback port; yields the port."""
    loop = asyncio.get_running_loop()
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await _tcp(server, reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()
        finally:
            handlers.discard(task)

    for _ in range(20):
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(server), local_addr=("127.0.0.1", 0)
        )
        port = transport.get_extra_info("sockname")[1]
        try:
            listener = await asyncio.start_server(handle, "127.0.0.1", port, ssl=ssl_context)
        except OSError:
            transport.close()
            continue
        try:
            yield port
        finally:
            transport.close()
            listener.close()
            for task in list(handlers):
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
        return
    raise RuntimeError("no loopback port free for both UDP and TCP")


async def check(server: FakeDns, ctx: ProbeContext, **fields: Any) -> Result:
    async with serving(server) as port:
        fields.setdefault("name", "www.probekit.test")
        probe = DnsProbe(server="127.0.0.1", port=port, **fields)
        return await probe.check(ctx)


# -- up ----------------------------------------------------------------------------------------

UP: list[Any] = [
    pytest.param("www.probekit.test", "A", ["192.0.2.10", "192.0.2.11"], id="A"),
    pytest.param("www.probekit.test", "AAAA", ["2001:db8::10"], id="AAAA"),
    pytest.param("alias.probekit.test", "CNAME", ["www.probekit.test."], id="CNAME"),
    pytest.param("alias.probekit.test", "A", ["192.0.2.10", "192.0.2.11"], id="A-via-CNAME"),
    pytest.param(
        "probekit.test", "MX", ["10 mail.probekit.test.", "20 backup.probekit.test."], id="MX"
    ),
    pytest.param("probekit.test", "NS", ["ns1.probekit.test.", "ns2.probekit.test."], id="NS"),
    pytest.param("192.0.2.10", "PTR", ["www.probekit.test."], id="PTR-of-an-address"),
    pytest.param(
        "10.2.0.192.in-addr.arpa", "PTR", ["www.probekit.test."], id="PTR-of-a-reverse-name"
    ),
    pytest.param(
        "probekit.test",
        "SOA",
        [f"ns1.probekit.test. hostmaster.probekit.test. {SERIAL} 7200 900 1209600 300"],
        id="SOA",
    ),
    pytest.param("_sip._tcp.probekit.test", "SRV", ["0 5 5060 sip.probekit.test."], id="SRV"),
    pytest.param("probekit.test", "TXT", ["v=spf1 -all", "two strings"], id="TXT"),
    pytest.param("probekit.test", "CAA", ['0 issue "letsencrypt.org"'], id="CAA"),
]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize(("name", "rtype", "answers"), UP)
async def test_up(
    name: str, rtype: str, answers: list[str], transport: str, ctx: ProbeContext
) -> None:
    server = FakeDns()
    result = await check(server, ctx, name=name, type=rtype, transport=transport)
    assert result.status is Status.UP, result.summary()
    assert result.kind == "dns"
    phases = ("resolve", "query") if transport == "udp" else ("resolve", "connect", "query")
    assert result.phase_names() == phases
    assert result.metrics["rcode"] == 0
    assert result.metrics["answers"] == len(answers)
    outcome = next(a for a in result.assertions if a.name == "answers")
    for answer in answers:
        assert answer in outcome.observed
    assert sorted(server.seen) == [(transport, server.seen[0][1], rtype)]
    assert result.metrics.get("truncated") == (0 if transport == "udp" else None)
    assert result.address is not None and result.address.startswith("127.0.0.1:")


async def test_metrics_and_description(ctx: ProbeContext) -> None:
    result = await check(FakeDns(ttl=120), ctx, name="alias.probekit.test", type="AAAA")
    assert result.status is Status.UP, result.summary()
    assert result.metrics["ttl_min"] == 60  # the CNAME's TTL counts
    assert result.metrics["authoritative"] == 1
    assert result.metrics["bytes_received"] > 12
    assert KIND.describe is not None
    assert KIND.describe(result) == "NOERROR, answers 1: 2001:db8::10 (TTL 60 s)"
    soa = await check(FakeDns(), ctx, name="probekit.test", type="SOA")
    assert soa.metrics["soa_serial"] == SERIAL


async def test_truncated_udp_is_asked_again_over_tcp(ctx: ProbeContext) -> None:
    server = FakeDns(mode="truncate", tcp_mode="answer")
    result = await check(server, ctx)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "query", "connect", "query_tcp")
    assert result.metrics["truncated"] == 1
    assert result.metrics["answers"] == 2
    assert [s[0] for s in server.seen] == ["udp", "tcp"]
    assert KIND.describe is not None
    assert "asked again over TCP" in (KIND.describe(result) or "")


async def test_a_large_answer_comes_over_tcp(ctx: ProbeContext) -> None:
    """A reply over the EDNS payload the query offers comes truncated over UDP, whole over TCP."""
    server = FakeDns()
    result = await check(server, ctx, name="big.probekit.test", type="TXT")
    assert result.status is Status.UP, result.summary()
    assert result.metrics["answers"] == 20
    assert result.metrics["bytes_received"] > dns_module.EDNS_PAYLOAD


async def test_nxdomain_can_be_the_expected_answer(ctx: ProbeContext) -> None:
    result = await check(FakeDns(), ctx, name="gone.probekit.test", valid_rcodes=("NXDOMAIN",))
    assert result.status is Status.UP, result.summary()
    assert result.metrics["rcode"] == 3
    assert result.metrics["answers"] == 0
    # the section counts blackbox_exporter reports: no answer, the zone's SOA as authority,
    # nothing additional (the EDNS OPT record is not counted)
    assert result.metrics["answer_rrs"] == 0
    assert result.metrics["authority_rrs"] == 1
    assert result.metrics["additional_rrs"] == 0


async def test_section_counts_cover_every_record_of_the_answer(ctx: ProbeContext) -> None:
    """answer_rrs counts the whole answer section (CNAMEs too); answers only the asked type."""
    server = FakeDns()
    server.zone[("alias.probekit.test.", "CNAME")] = ["www.probekit.test."]
    result = await check(server, ctx, name="alias.probekit.test")
    assert result.status is Status.UP, result.summary()
    assert result.metrics["answer_rrs"] == result.metrics["answers"] + 1


async def test_no_recursion_clears_the_rd_bit(ctx: ProbeContext) -> None:
    seen: list[int] = []

    def record(wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        seen.append(int(query.flags))
        return dns.message.make_response(query).to_wire()

    server = FakeDns(mode="raw", raw=record)
    await check(server, ctx, recursion=False, min_answers=0)
    await check(server, ctx, min_answers=0)
    assert [bool(flags & dns.flags.RD) for flags in seen] == [False, True]


# -- answer assertions -------------------------------------------------------------------------

ANSWERS: list[Any] = [
    pytest.param({"expect_answers": ("192.0.2.10",)}, "", id="expect-address"),
    pytest.param({"expect_answers": ("192.0.2.11", "192.0.2.10")}, "", id="expect-both"),
    pytest.param({"type": "AAAA", "expect_answers": ("2001:DB8:0::10",)}, "", id="v6-spelling"),
    pytest.param(
        {"name": "probekit.test", "type": "MX", "expect_answers": ("MAIL.probekit.test",)},
        "",
        id="mx-target-any-case",
    ),
    pytest.param(
        {"name": "probekit.test", "type": "MX", "expect_answers": ("20 backup.probekit.test.",)},
        "",
        id="mx-whole",
    ),
    pytest.param(
        {"name": "probekit.test", "type": "TXT", "expect_answers": ("v=spf1 -all",)},
        "",
        id="txt",
    ),
    pytest.param(
        {"name": "probekit.test", "type": "CAA", "expect_answers": ("letsencrypt.org",)},
        "",
        id="caa-value",
    ),
    pytest.param({"answers_match": r"^192\.0\.2\."}, "", id="all-match"),
    pytest.param({"answers_not_match": r"^10\."}, "", id="none-match"),
    pytest.param({"min_answers": 2, "max_answers": 2}, "", id="count"),
    pytest.param(
        {"expect_answers": ("192.0.2.99",)},
        "expect_answer failed: expected 192.0.2.99 among the A answers, got 2: 192.0.2.1",
        id="expect-missing",
    ),
    pytest.param(
        {"answers_match": r"\.10$"},
        "answers_match failed: expected every answer to match /\\.10$/, got 1: 192.0.2.11 not "
        "matching",
        id="not-all-match",
    ),
    pytest.param(
        {"answers_not_match": r"\.11$"},
        "answers_not_match failed: expected no answer to match /\\.11$/, got 1: 192.0.2.11 "
        "matching",
        id="one-matches",
    ),
    pytest.param(
        {"max_answers": 1},
        "answers failed: expected exactly 1 A answer, got 2: 192.0.2.1",
        id="too-many",
    ),
    pytest.param(
        {"min_answers": 3},
        "answers failed: expected at least 3 A answers",
        id="too-few",
    ),
    pytest.param(
        {"name": "empty.probekit.test", "type": "TXT"},
        "answers failed: expected at least 1 TXT answer, got no answers",
        id="nodata",
    ),
    pytest.param(
        {"name": "probekit.test", "type": "MX", "expect_answers": ("mail.other.test",)},
        "expected mail.other.test among the MX answers",
        id="mx-missing",
    ),
]


@pytest.mark.parametrize(("fields", "message"), ANSWERS)
async def test_answer_assertions(fields: dict[str, Any], message: str, ctx: ProbeContext) -> None:
    result = await check(FakeDns(), ctx, **fields)
    if not message:
        assert result.status is Status.UP, result.summary()
        return
    assert result.status is Status.DOWN, result.summary()
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert message in result.error.message


async def test_nodata_is_up_when_no_answers_are_required(ctx: ProbeContext) -> None:
    result = await check(FakeDns(), ctx, name="empty.probekit.test", type="TXT", min_answers=0)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["answers"] == 0


@pytest.mark.parametrize(
    ("assertion", "status"),
    [
        (BodyContains("192.0.2.11"), Status.UP),
        (BodyContains("192.0.2.99"), Status.DOWN),
        (ResponseTime(warn=0.000001), Status.DEGRADED),
    ],
)
async def test_assertions_see_the_answers_as_the_body(
    assertion: Any, status: Status, ctx: ProbeContext
) -> None:
    result = await check(FakeDns(), ctx, assertions=(assertion,))
    assert result.status is status, result.summary()


# -- down --------------------------------------------------------------------------------------

DOWN: list[Any] = [
    pytest.param(FakeDns(), {"name": "gone.probekit.test"}, ErrorKind.PROTOCOL, "query",
                 "answered NXDOMAIN (expected NOERROR)", id="nxdomain"),
    pytest.param(FakeDns(mode="servfail"), {}, ErrorKind.PROTOCOL, "query",
                 "answered SERVFAIL", id="servfail"),
    pytest.param(FakeDns(mode="servfail"), {"transport": "tcp"}, ErrorKind.PROTOCOL, "query",
                 "answered SERVFAIL", id="servfail-tcp"),
    pytest.param(FakeDns(mode="refused"), {}, ErrorKind.PROTOCOL, "query", "answered REFUSED",
                 id="refused"),
    pytest.param(FakeDns(), {"name": "www.probekit.test", "valid_rcodes": ("NXDOMAIN",)},
                 ErrorKind.PROTOCOL, "query", "answered NOERROR (expected NXDOMAIN)",
                 id="exists-but-should-not"),
    pytest.param(FakeDns(mode="garbage"), {}, ErrorKind.PROTOCOL, "query", "QR bit is clear",
                 id="garbage"),
    pytest.param(FakeDns(mode="garbage"), {"transport": "tcp"}, ErrorKind.PROTOCOL, "query",
                 "QR bit is clear", id="garbage-tcp"),
    pytest.param(FakeDns(mode="raw", raw=lambda q: q[:2] + b"\x81\x80" + b"junk" * 5), {},
                 ErrorKind.PROTOCOL, "query", "not a DNS message", id="garbage-after-header"),
    pytest.param(FakeDns(mode="wrong_id"), {}, ErrorKind.PROTOCOL, "query", "spoofed or stray",
                 id="wrong-id"),
    pytest.param(FakeDns(mode="wrong_id"), {"transport": "tcp"}, ErrorKind.PROTOCOL, "query",
                 "is not the query's", id="wrong-id-tcp"),
    pytest.param(FakeDns(mode="not_response"), {}, ErrorKind.PROTOCOL, "query", "QR bit",
                 id="not-a-response"),
    pytest.param(FakeDns(mode="other_question"), {}, ErrorKind.PROTOCOL, "query",
                 "another question (evil.example. A)", id="other-question"),
    pytest.param(FakeDns(mode="short"), {}, ErrorKind.PROTOCOL, "query",
                 "shorter than a DNS header", id="short"),
    pytest.param(FakeDns(mode="raw", raw=lambda q: q[:2] + b"\x81\x80" + b"\x00\x01" + bytes(6)
                         + b"\x03www"), {}, ErrorKind.PROTOCOL, "query",
                 "not a DNS message", id="cut-short"),
    pytest.param(FakeDns(mode="close"), {"transport": "tcp"}, ErrorKind.PROTOCOL, "query",
                 "closed after 0 of the reply's length prefix's 2 bytes", id="tcp-closed"),
    pytest.param(FakeDns(mode="reset"), {"transport": "tcp"}, ErrorKind.PROTOCOL, "query",
                 "", id="tcp-reset"),
    pytest.param(FakeDns(mode="half"), {"transport": "tcp"}, ErrorKind.PROTOCOL, "query",
                 "connection closed after", id="tcp-half-reply"),
    pytest.param(FakeDns(mode="truncate", tcp_mode="close"), {}, ErrorKind.PROTOCOL,
                 "query_tcp", "closed after 0", id="truncated-then-closed"),
    pytest.param(FakeDns(mode="truncate", tcp_mode="servfail"), {}, ErrorKind.PROTOCOL,
                 "query_tcp", "answered SERVFAIL", id="truncated-then-servfail"),
    pytest.param(FakeDns(), {"name": "big.probekit.test", "type": "TXT", "max_bytes": 512,
                             "transport": "tcp"}, ErrorKind.PROTOCOL, "query",
                 "over max_bytes (512); not read", id="oversized-tcp"),
    pytest.param(FakeDns(), {"name": "mid.probekit.test", "type": "TXT", "max_bytes": 512},
                 ErrorKind.PROTOCOL, "query", "over max_bytes (512 bytes)", id="oversized-udp"),
    pytest.param(FakeDns(tcp_mode="raw", raw=lambda q: b"\xff\xff" + bytes(100)),
                 {"transport": "tcp"}, ErrorKind.PROTOCOL, "query",
                 "closed after 100 of the 65535-byte reply's 65535 bytes", id="tcp-short-reply"),
]  # fmt: skip


@pytest.mark.parametrize(("server", "fields", "kind", "phase", "message"), DOWN)
async def test_down(
    server: FakeDns,
    fields: dict[str, Any],
    kind: ErrorKind,
    phase: str,
    message: str,
    ctx: ProbeContext,
) -> None:
    result = await check(server, ctx, timeouts=Timeouts(total=5), **fields)
    assert result.status is Status.DOWN, result.summary()
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (kind, phase), result.error
    assert message in result.error.message
    assert "answers" not in result.metrics


async def test_wrong_rcode_is_a_failed_outcome_too(ctx: ProbeContext) -> None:
    result = await check(FakeDns(mode="servfail"), ctx)
    assert [(a.name, a.passed, a.observed) for a in result.assertions] == [
        ("rcode", False, "SERVFAIL")
    ]
    assert result.metrics["rcode"] == 2


async def test_nothing_listening_is_down_connect(ctx: ProbeContext) -> None:
    probe = DnsProbe("www.probekit.test", server="127.0.0.1", port=closed_port())
    result = await probe.check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.CONNECT
    assert "port unreachable" in result.error.message
    tcp = await DnsProbe(
        "www.probekit.test", server="127.0.0.1", port=closed_port(), transport="tcp"
    ).check(ctx)
    assert tcp.error is not None and tcp.error.kind is ErrorKind.CONNECT
    assert tcp.error.phase == "connect"


# -- timeouts: each phase, within the deadline + 100 ms ----------------------------------------


class _SlowResolver:
    async def resolve(self, host: str, family: str = "any") -> list[Any]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


TIMEOUTS: list[Any] = [
    pytest.param(FakeDns(mode="silence"), {}, "query", id="udp-silence"),
    pytest.param(FakeDns(mode="silence"), {"transport": "tcp"}, "query", id="tcp-silence"),
    pytest.param(
        FakeDns(mode="truncate", tcp_mode="silence"), {}, "query_tcp", id="tcp-after-truncation"
    ),
    pytest.param(
        FakeDns(mode="silence"),
        {"transport": "tcp", "server": "ns.slow.test"},
        "resolve",
        id="server-name-resolution",
    ),
]


@pytest.mark.parametrize(("server", "fields", "phase"), TIMEOUTS)
async def test_a_stall_is_a_timeout_naming_its_phase(
    server: FakeDns, fields: dict[str, Any], phase: str, connector: GuardedConnector
) -> None:
    resolver = StaticResolver({"localhost": ["127.0.0.1"]})
    if fields.get("server") == "ns.slow.test":
        resolver = cast(Any, _SlowResolver())
    ctx = ProbeContext(
        dialer=Dialer(resolver=resolver, connector=connector, socket_connector=connector.socket)
    )
    deadline = 0.3
    async with serving(server) as port:
        fields = {"server": "127.0.0.1", **fields}
        probe = DnsProbe(
            "www.probekit.test", port=port, timeouts=Timeouts(total=deadline), **fields
        )
        started = time.monotonic()
        result = await probe.check(ctx)
        elapsed = time.monotonic() - started
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT, result.error
    assert result.error.phase == phase
    assert deadline <= elapsed < deadline + 0.1


async def test_read_timeout_bounds_the_wait_for_a_reply(ctx: ProbeContext) -> None:
    result = await check(FakeDns(mode="silence"), ctx, timeouts=Timeouts(total=5, read=0.1))
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
    assert result.error.phase == "query"
    assert result.duration < 1


# -- DNS over TLS ------------------------------------------------------------------------------


async def test_dns_over_tls(ctx: ProbeContext, good_tls: ssl.SSLContext, ca_pem: str) -> None:
    server = FakeDns()
    async with serving(server, good_tls) as port:
        probe = DnsProbe(
            "www.probekit.test",
            server="localhost",
            port=port,
            transport="tcp",
            tls=TlsOptions(ca_data=ca_pem),
        )
        result = await probe.check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "tls", "query")
    assert result.tls is not None
    assert server.seen == [("tcp", "www.probekit.test.", "A")]


async def test_dns_over_tls_with_an_untrusted_certificate_is_down_tls(
    ctx: ProbeContext, self_signed_tls: ssl.SSLContext
) -> None:
    server = FakeDns()
    async with serving(server, self_signed_tls) as port:
        probe = DnsProbe(
            "www.probekit.test", server="localhost", port=port, transport="tcp", tls=TlsOptions()
        )
        result = await probe.check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.TLS
    assert result.error.phase == "tls"
    assert server.seen == []


# -- TSIG: the key is a secret ----------------------------------------------------------------


async def test_tsig_signed_query_and_reply(ctx: ProbeContext) -> None:
    server = FakeDns(tsig_key=TSIG_CANARY)
    result = await check(server, ctx, tsig_name=TSIG_NAME, tsig_key=Secret(TSIG_CANARY))
    assert result.status is Status.UP, result.summary()
    assert server.seen == [("udp", "www.probekit.test.", "A")]


AUTH: list[Any] = [
    pytest.param(
        {"tsig_name": TSIG_NAME, "tsig_key": Secret(base64.b64encode(b"wrong" * 6).decode())},
        "NOTAUTH",
        id="wrong-key",
    ),
    pytest.param(
        {"tsig_name": "other-key.", "tsig_key": Secret(TSIG_CANARY)}, "NOTAUTH", id="unknown-name"
    ),
    pytest.param(
        {"tsig_name": TSIG_NAME, "tsig_key": Secret(TSIG_CANARY), "transport": "tcp"},
        "",
        id="right-key-tcp",
    ),
]


@pytest.mark.parametrize(("fields", "message"), AUTH)
async def test_tsig_refused_is_down_auth(
    fields: dict[str, Any], message: str, ctx: ProbeContext
) -> None:
    result = await check(FakeDns(tsig_key=TSIG_CANARY), ctx, **fields)
    if not message:
        assert result.status is Status.UP, result.summary()
        return
    assert result.status is Status.DOWN, result.summary()
    assert result.error is not None and result.error.kind is ErrorKind.AUTH, result.error
    assert result.error.phase == "query"
    assert message in result.error.message


async def test_an_unsigned_reply_to_a_signed_query_is_refused(ctx: ProbeContext) -> None:
    def unsigned(wire: bytes) -> bytes:
        query = dns.message.from_wire(wire, keyring=False)
        return dns.message.make_response(query, tsig_error=0).to_wire()

    result = await check(
        FakeDns(mode="raw", raw=unsigned),
        ctx,
        tsig_name=TSIG_NAME,
        tsig_key=Secret(TSIG_CANARY),
    )
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.PROTOCOL
    assert "TSIG" in result.error.message


async def test_a_reply_signed_with_another_key_is_down_auth(ctx: ProbeContext) -> None:
    other = base64.b64encode(b"another-key-entirely-32-bytes-xx").decode()

    def sign_wrongly(wire: bytes) -> bytes:
        query = dns.message.from_wire(wire, keyring=False)
        response = dns.message.make_response(query)
        response.use_tsig(dns.tsig.Key(TSIG_NAME, other))
        return response.to_wire()

    result = await check(
        FakeDns(mode="raw", raw=sign_wrongly),
        ctx,
        tsig_name=TSIG_NAME,
        tsig_key=Secret(TSIG_CANARY),
    )
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.AUTH, result.error
    assert "does not verify" in result.error.message


async def test_the_tsig_key_shows_nowhere(
    ctx: ProbeContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for key in (TSIG_CANARY, base64.b64encode(b"wrong" * 6).decode()):
        probe_fields = {"tsig_name": TSIG_NAME, "tsig_key": Secret(TSIG_CANARY)}
        result = await check(FakeDns(tsig_key=key, mode="truncate", tcp_mode="answer"), ctx,
                             **probe_fields)  # fmt: skip
        probe = DnsProbe("www.probekit.test", server="127.0.0.1", **probe_fields)
        for shown in (result_to_json(result), repr(result), repr(probe), str(probe_to_dict(probe))):
            assert TSIG_CANARY not in shown
    assert TSIG_CANARY not in caplog.text
    assert "query_tcp" in caplog.text or "asking again over TCP" in caplog.text


def test_a_key_that_is_not_a_secret_is_refused_without_showing_it() -> None:
    with pytest.raises(DefinitionError) as info:
        DnsProbe("www.probekit.test", tsig_name=TSIG_NAME, tsig_key=TSIG_CANARY)  # type: ignore[arg-type]
    assert info.value.path == "tsig_key"
    assert TSIG_CANARY not in str(info.value)
    with pytest.raises(DefinitionError) as bad:
        DnsProbe("www.probekit.test", tsig_name=TSIG_NAME, tsig_key=Secret("not base64 canary!"))
    assert bad.value.path == "tsig_key"
    assert "canary" not in str(bad.value)


# -- the egress policy applies to the server, never to the name --------------------------------


async def test_a_denied_server_is_never_contacted() -> None:
    guard = GuardedConnector()
    ctx = make_context(policy=EgressPolicy(deny=["127.0.0.0/8"]), connector=guard)
    server = FakeDns()
    result = await check(server, ctx, transport="udp")
    tcp = await check(server, ctx, transport="tcp")
    await asyncio.sleep(0.05)
    for each in (result, tcp):
        assert each.status is Status.DOWN
        assert each.error is not None and each.error.kind is ErrorKind.POLICY_DENIED
    assert guard.dialled == []
    assert server.seen == []


async def test_the_name_asked_about_is_not_policed(ctx: ProbeContext) -> None:
    """A name whose records point at a denied network is only asked about, never dialled."""
    zone = {("metadata.probekit.test.", "A"): ["169.254.169.254"]}
    result = await check(FakeDns(zone={**ZONE, **zone}), ctx, name="metadata.probekit.test")
    assert result.status is Status.UP, result.summary()


async def test_a_denied_system_nameserver_is_never_contacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# the machine's own\nnameserver 10.255.255.53\n")
    monkeypatch.setattr(dns_module, "RESOLV_CONF", str(resolv))
    guard = GuardedConnector()
    ctx = make_context(policy=EgressPolicy(deny=["10.0.0.0/8"]), connector=guard)
    result = await DnsProbe("www.probekit.test").check(ctx)
    assert result.status is Status.DOWN
    assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED
    assert "10.255.255.53" in result.error.message
    assert guard.dialled == [] and guard.refused == []


# -- the system's nameserver ------------------------------------------------------------------


async def test_the_system_nameserver_is_read_at_check_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctx: ProbeContext
) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search probekit.test ; a comment\noptions ndots:2\nnameserver 127.0.0.1\n")
    probe = DnsProbe("www.probekit.test")  # built before the file is pointed at
    monkeypatch.setattr(dns_module, "RESOLV_CONF", str(resolv))
    server = FakeDns()
    async with serving(server) as port:
        result = await attrs.evolve(probe, port=port).check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.address == f"127.0.0.1:{port}"
    assert result.target == f"www.probekit.test A port {port}"


@pytest.mark.parametrize("content", [None, "search probekit.test\n", "nameserver\n"])
async def test_no_system_nameserver_is_unknown(
    content: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctx: ProbeContext
) -> None:
    resolv = tmp_path / "resolv.conf"
    if content is not None:
        resolv.write_text(content)
    monkeypatch.setattr(dns_module, "RESOLV_CONF", str(resolv))
    result = await DnsProbe("www.probekit.test").check(ctx)
    assert result.status is Status.UNKNOWN
    assert result.error is not None and "give the probe a server" in result.error.message


async def test_without_dnspython_the_check_is_unknown_and_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, ctx: ProbeContext
) -> None:
    monkeypatch.setitem(sys.modules, "dns.message", None)
    result = await DnsProbe("www.probekit.test", server="127.0.0.1").check(ctx)
    assert result.status is Status.UNKNOWN
    assert result.error is not None
    assert "install probekit[dns]" in result.error.message
    assert result.phases == ()


# -- hostile servers: any bytes are a classified result ---------------------------------------


def _with_id(data: bytes) -> Callable[[bytes], bytes]:
    """The query's id and the QR bit, then ``data``: past the header checks, into the parser."""
    return lambda query: query[:2] + bytes([0x80 | (data[:1] or b"\0")[0]]) + data[1:]


def _mutated(positions: list[tuple[int, int]]) -> Callable[[bytes], bytes]:
    """A real answer with some bytes after the id replaced."""

    def build(query: bytes) -> bytes:
        good = bytearray(FakeDns().reply(query, "udp") or b"")
        for at, value in positions:
            if good:
                good[2 + at % max(len(good) - 2, 1)] = value
        return bytes(good)

    return build


REPLIES = st.one_of(
    st.binary(max_size=64).map(lambda data: lambda _query: data),
    st.binary(max_size=200).map(_with_id),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6).map(_mutated),
)


@settings(max_examples=60, deadline=None)
@given(
    reply=REPLIES,
    transport=st.sampled_from(["udp", "tcp"]),
    rtype=st.sampled_from(dns_module.TYPES),
)
def test_any_reply_is_a_result_never_a_crash(
    reply: Callable[[bytes], bytes], transport: str, rtype: str
) -> None:
    def framed(query: bytes) -> bytes:
        data = reply(query)
        return data if transport == "udp" else len(data).to_bytes(2, "big") + data

    server = FakeDns(mode="raw", raw=framed)

    async def scenario() -> Result:
        fields = {"transport": transport, "type": rtype, "timeouts": Timeouts(total=0.2)}
        return await check(server, make_context(), **fields)

    result = asyncio.run(scenario())
    assert result.error is None or result.error.kind is not ErrorKind.INTERNAL, result.error
    assert result.status in (Status.UP, Status.DOWN)


# -- definitions -----------------------------------------------------------------------------


def test_defaults_target_and_host() -> None:
    probe = DnsProbe("www.probekit.test")
    assert (probe.type, probe.server, probe.port, probe.transport) == ("A", None, 53, "udp")
    assert probe.valid_rcodes == ("NOERROR",) and probe.recursion is True
    assert probe.target == "www.probekit.test A"
    assert probe.host == "resolv.conf"
    asked = DnsProbe("probekit.test", type="mx", server="ns1.internal", valid_rcodes=["noerror"])
    assert (asked.type, asked.valid_rcodes) == ("MX", ("NOERROR",))
    assert asked.target == "probekit.test MX @ns1.internal"
    assert asked.host == "ns1.internal"
    assert DnsProbe("x.test", server="[::1]", port=5353).target == "x.test A @[::1] port 5353"
    assert DnsProbe("x.test", server="127.0.0.1", port=5353).target == "x.test A @127.0.0.1:5353"


ROUND_TRIP = [
    DnsProbe("www.probekit.test"),
    DnsProbe(
        "probekit.test",
        type="MX",
        server="::1",
        port=5353,
        transport="tcp",
        valid_rcodes=("NOERROR", "NXDOMAIN"),
        recursion=False,
        expect_answers=("mail.probekit.test",),
        answers_match=r"probekit\.test\.$",
        answers_not_match="backup",
        min_answers=1,
        max_answers=4,
        max_bytes=4096,
        ip_family="ipv6",
        assertions=(BodyContains("mail"),),
        timeouts=Timeouts(total=3, read=1),
    ),
    DnsProbe(
        "www.probekit.test",
        server="dns.internal",
        port=853,
        transport="tcp",
        tls=TlsOptions(server_name="dns.internal", ca_file="/etc/ssl/internal-ca.pem"),
    ),
]


@pytest.mark.parametrize("probe", ROUND_TRIP)
def test_round_trip_through_plain_data(probe: DnsProbe) -> None:
    assert build_probe(probe_to_dict(probe)) == probe


def test_a_tsig_key_round_trips_by_reference() -> None:
    probe = DnsProbe(
        "www.probekit.test",
        server="127.0.0.1",
        tsig_name=TSIG_NAME,
        tsig_key=Secret(TSIG_CANARY),
        tsig_algorithm="hmac-sha512",
    )
    plain = probe_to_dict(probe)
    assert plain["tsig_key"] == "<secret>"
    assert TSIG_CANARY not in repr(plain)
    plain["tsig_key"] = {"secret": "dns-key"}
    assert build_probe(plain, secrets={"dns-key": Secret(TSIG_CANARY)}) == probe
    other = base64.b64encode(b"other").decode()
    assert build_probe(plain, secrets={"dns-key": Secret(other)}) != probe


INVALID_DATA: list[Any] = [
    pytest.param({}, "name", "required", id="no-name"),
    pytest.param({"name": ""}, "name", "required", id="empty-name"),
    pytest.param({"name": "a b.test"}, "name", "not a DNS name", id="spaced-name"),
    pytest.param({"name": "a..test"}, "name", "empty label", id="empty-label"),
    pytest.param({"name": "x" * 64 + ".test"}, "name", "over 63", id="long-label"),
    pytest.param({"name": ".".join(["abcdefgh"] * 30)}, "name", "over 253", id="long-name"),
    pytest.param({"name": "x.test", "type": "ANY"}, "type", "one of A, AAAA", id="type"),
    pytest.param({"name": "x.test", "port": 0}, "port", "1 to 65535", id="port-zero"),
    pytest.param({"name": "x.test", "port": "53"}, "port", "integer", id="port-text"),
    pytest.param({"name": "x.test", "server": "a b"}, "server", "not a host", id="server"),
    pytest.param({"name": "x.test", "transport": "quic"}, "transport", "one of", id="transport"),
    pytest.param({"name": "x.test", "tls": {}}, "tls", 'transport = "tcp"', id="tls-over-udp"),
    pytest.param({"name": "x.test", "valid_rcodes": []}, "valid_rcodes", "at least one",
                 id="no-rcodes"),
    pytest.param({"name": "x.test", "valid_rcodes": ["NOERROR", "NOPE"]}, "valid_rcodes[1]",
                 "one of NOERROR", id="bad-rcode"),
    pytest.param({"name": "x.test", "recursion": "yes"}, "recursion", "true or false",
                 id="recursion"),
    pytest.param({"name": "x.test", "expect_answers": ["example.com"]}, "expect_answers[0]",
                 "not an IPv4 address", id="expect-a-name-for-A"),
    pytest.param({"name": "x.test", "type": "AAAA", "expect_answers": ["192.0.2.1"]},
                 "expect_answers[0]", "not an IPv6 address", id="expect-v4-for-AAAA"),
    pytest.param({"name": "x.test", "answers_match": "("}, "answers_match", "invalid regex",
                 id="regex"),
    pytest.param({"name": "x.test", "answers_not_match": "[x"}, "answers_not_match",
                 "invalid regex", id="not-regex"),
    pytest.param({"name": "x.test", "min_answers": -1}, "min_answers", ">= 0", id="min"),
    pytest.param({"name": "x.test", "min_answers": 3, "max_answers": 2}, "min_answers",
                 "above max_answers", id="min-above-max"),
    pytest.param({"name": "x.test", "max_bytes": 5}, "max_bytes", "12 to 65535", id="max-bytes"),
    pytest.param({"name": "x.test", "tsig_name": "k."}, "tsig_key", "needs a tsig_key",
                 id="tsig-name-alone"),
    pytest.param({"name": "x.test", "tsig_key": TSIG_CANARY}, "tsig_name", "needs its name",
                 id="tsig-key-alone"),
    pytest.param({"name": "x.test", "tsig_name": "k.", "tsig_key": "c2VjcmV0",
                  "tsig_algorithm": "hmac-sha3"}, "tsig_algorithm", "hmac-sha256",
                 id="tsig-algorithm"),
    pytest.param({"name": "x.test", "tsig_name": "k.", "tsig_key": {"env": "DNS_KEY"}},
                 "tsig_key.env", "local configuration", id="env-secret-remote"),
    pytest.param({"name": "x.test", "ip_family": "ipv5"}, "ip_family", "ipv4", id="family"),
    pytest.param({"name": "x.test", "timeouts": {"total": 0}}, "timeouts.total", "positive",
                 id="timeout"),
    pytest.param({"name": "x.test", "nmae": "y"}, "nmae", "did you mean 'name'", id="typo"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "path", "message"), INVALID_DATA)
def test_invalid_definitions(data: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(DefinitionErrors) as info:
        build_probe({"kind": "dns", **data})
    problems = {e.path: e.message for e in info.value.errors}
    assert path in problems, problems
    assert message in problems[path]
    assert TSIG_CANARY not in str(info.value)


INVALID_PYTHON: list[Any] = [
    (lambda: DnsProbe(None), "name"),  # type: ignore[arg-type]
    (lambda: DnsProbe("x.test", type="TLSA"), "type"),
    (lambda: DnsProbe("x.test", port=True), "port"),
    (lambda: DnsProbe("x.test", server=5), "server"),  # type: ignore[arg-type]
    (lambda: DnsProbe("x.test", valid_rcodes="NOERROR"), "valid_rcodes"),
    (lambda: DnsProbe("x.test", expect_answers="192.0.2.1"), "expect_answers"),
    (lambda: DnsProbe("x.test", tls="yes", transport="tcp"), "tls"),  # type: ignore[arg-type]
    (lambda: DnsProbe("x.test", max_answers=True), "max_answers"),
    (lambda: DnsProbe("x.test", timeouts=5), "timeouts"),  # type: ignore[arg-type]
    (lambda: DnsProbe("x.test", assertions=("x",)), "assertions[0]"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("factory", "path"), INVALID_PYTHON)
def test_invalid_constructor_arguments(factory: Any, path: str) -> None:
    with pytest.raises(DefinitionError) as info:
        factory()
    assert info.value.path == path


def test_international_names_are_accepted() -> None:
    assert DnsProbe("bücher.example").name == "bücher.example"
    assert DnsProbe(".", type="NS").target == ". NS"


# -- the kind's declaration and command-line form ---------------------------------------------


def test_the_kind_is_registered() -> None:
    kind = get_kind("dns")
    assert kind is KIND
    assert kind.cls is DnsProbe
    assert kind.docs == "probes/dns.md"
    assert {m.key for m in kind.metrics} == {
        "rcode",
        "answers",
        "ttl_min",
        "soa_serial",
        "authoritative",
        "truncated",
        "bytes_received",
        "answer_rrs",
        "authority_rrs",
        "additional_rrs",
    }
    flags = {f for o in kind.options for f in o.flags}
    assert {"--server", "--port", "--type", "--tcp", "--rcode", "--expect-address"} <= flags
    assert {"--expect", "--no-recursion", "--tsig-key-env"} <= flags
    assert "--tsig-key" not in flags  # only from the environment
    assert KIND.target.parse("www.probekit.test") == {"name": "www.probekit.test"}


def _from_options(target: str, **values: Any) -> Any:
    definition: dict[str, Any] = {"kind": "dns", **KIND.target.parse(target)}
    for option in KIND.options:
        value = values.get(option.name)
        if option.field is not None and value not in (None, [], False):
            definition[option.field] = value
    assert KIND.to_definition is not None
    KIND.to_definition(values, definition)
    return build_probe(definition)


def test_options_make_the_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DNS_KEY", TSIG_CANARY)
    probe = _from_options(
        "probekit.test",
        server="127.0.0.1",
        port=5353,
        type="MX",
        tcp=True,
        valid_rcodes=["NOERROR", "NXDOMAIN"],
        expect_answers=["mail.probekit.test"],
        no_recursion=True,
        tsig_name=TSIG_NAME,
        tsig_key_env="DNS_KEY",
    )
    assert probe == DnsProbe(
        "probekit.test",
        type="MX",
        server="127.0.0.1",
        port=5353,
        transport="tcp",
        valid_rcodes=("NOERROR", "NXDOMAIN"),
        expect_answers=("mail.probekit.test",),
        recursion=False,
        tsig_name=TSIG_NAME,
        tsig_key=Secret(TSIG_CANARY),
    )
    dot = _from_options("x.test", server="dns.internal", tls=True, insecure=True)
    assert (dot.transport, dot.port, dot.tls) == ("tcp", 853, TlsOptions(verify=False))


def test_option_problems_name_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DNS_KEY", raising=False)
    with pytest.raises(DefinitionErrors) as info:
        _from_options("x.test", insecure=True, tsig_key_env="DNS_KEY")
    assert [e.path for e in info.value.errors] == ["--insecure/--ca-file", "--tsig-key-env"]


@contextlib.contextmanager
def _server_thread(server: FakeDns) -> Iterator[int]:
    """The fake server on a loop of its own, for the CLI, which runs its own loop."""
    loop = asyncio.new_event_loop()
    ready: list[int] = []
    started = threading.Event()
    stop: asyncio.Future[None] | None = None

    async def main() -> None:
        nonlocal stop
        stop = loop.create_future()
        async with serving(server) as port:
            ready.append(port)
            started.set()
            await stop

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(5)
    try:
        yield ready[0]
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(5)
        loop.close()


@pytest.mark.parametrize(
    ("args", "code", "shown"),
    [
        (["--expect-address", "192.0.2.10"], 0, "DNS OK"),
        (["--expect", "192.0.2.99"], 2, "expect_answer failed"),
        (["--type", "txt", "--tcp"], 0, "query="),
        (["--rcode", "nxdomain"], 2, "answered NOERROR (expected NXDOMAIN)"),
    ],
)
def test_the_command_line(
    args: list[str], code: int, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from probekit.cli import main

    name = "probekit.test" if "txt" in args else "www.probekit.test"
    with _server_thread(FakeDns()) as port:
        exit_code = main(
            ["check", "--nagios", "dns", name, "--server", "127.0.0.1", "--port", str(port), *args]
        )
    out = capsys.readouterr().out
    assert exit_code == code, out
    assert shown in out
    assert out.startswith("DNS ")


def test_the_command_line_refuses_a_bad_rcode(capsys: pytest.CaptureFixture[str]) -> None:
    from probekit.cli import main

    assert main(["check", "dns", "x.test", "--rcode", "MAYBE"]) == 3
    captured = capsys.readouterr()
    assert "MAYBE" in captured.out + captured.err
