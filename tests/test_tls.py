"""The tls kind against in-process loopback servers: direct TLS and each STARTTLS dialogue, every
failure class as a row of a table, the pins, thresholds and version floor, the egress policy,
secrets, definitions and the command-line form."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trustme
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probekit import (
    DefinitionError,
    DefinitionErrors,
    EgressPolicy,
    ErrorKind,
    Result,
    Secret,
    Status,
    Timeouts,
    TlsOptions,
    TlsProbe,
    build_probe,
    probe_to_dict,
    result_to_json,
)
from probekit.probes import get_kind
from probekit.probes.tls import KIND, LINE_LIMIT, MAX_LINES, describe
from servers import GuardedConnector, TcpServer, make_context

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
CANARY = "tls-canary-8c1e77d2"  # must show up nowhere


def _server_ctx(cert: trustme.LeafCert, **versions: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    for name, value in versions.items():
        setattr(ctx, name, value)
    return ctx


def _days_from_now(ca: trustme.CA, days: float) -> ssl.SSLContext:
    now = dt.datetime.now(dt.UTC)
    cert = ca.issue_cert(
        "localhost",
        "127.0.0.1",
        not_before=now - dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=days),
    )
    return _server_ctx(cert)


async def _hold(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await reader.read()


async def _upgrade(writer: asyncio.StreamWriter, tls: ssl.SSLContext) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
        await writer.start_tls(tls)


def script(before: bytes, commands: dict[bytes, bytes], go: bytes | None, tls: ssl.SSLContext):  # type: ignore[no-untyped-def]
    """A STARTTLS server: ``before`` first, then each command line answered from ``commands``;
    the one answered with ``go`` is followed by the TLS handshake; any other, by silence."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(before)
        while line := await reader.readline():
            verb = line.rstrip(b"\r\n")
            reply = commands.get(verb)
            if reply is None:
                break
            writer.write(reply)
            await writer.drain()
            if reply == go:
                await _upgrade(writer, tls)
                break
        await _hold(reader)

    return handle


def smtp(
    tls: ssl.SSLContext,
    ehlo: bytes = b"250-mx\r\n250-STARTTLS\r\n250 SIZE 1\r\n",
    go: bytes = b"220 go ahead\r\n",
    banner: bytes = b"220 mx ESMTP\r\n",
) -> Handler:
    return script(banner, {b"EHLO probekit.invalid": ehlo, b"STARTTLS": go}, go, tls)


def imap(tls: ssl.SSLContext, go: bytes = b"T1 OK begin\r\n") -> Handler:
    return script(
        b"* OK IMAP ready\r\n", {b"T1 STARTTLS": b"* note\r\n" + go}, b"* note\r\n" + go, tls
    )


def pop3(tls: ssl.SSLContext, go: bytes = b"+OK begin\r\n") -> Handler:
    return script(b"+OK POP3 ready\r\n", {b"STLS": go}, go, tls)


def ftp(tls: ssl.SSLContext, go: bytes = b"234 AUTH TLS ok\r\n") -> Handler:
    banner = b"220-welcome\r\n some text\r\n220 ready\r\n"
    return script(banner, {b"AUTH TLS": go}, go, tls)


def postgres(tls: ssl.SSLContext, answer: bytes = b"S") -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readexactly(8)
        assert request == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
        writer.write(answer)
        await writer.drain()
        if answer == b"S":
            await _upgrade(writer, tls)
        await _hold(reader)

    return handle


def plain(data: bytes, *, close: bool = False) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        if close:
            writer.close()
            return
        await _hold(reader)

    return handle


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _hold(reader)


async def _check(
    handler: Handler | None, server_tls: ssl.SSLContext | None, ca_pem: str, **fields: Any
) -> Result:
    server = await TcpServer(handler or silent, server_tls).start()
    try:
        fields.setdefault("tls", TlsOptions(ca_data=ca_pem))
        fields.setdefault("timeouts", Timeouts(total=1.0))
        probe = TlsProbe("localhost", server.port, **fields)
        return await probe.check(make_context())
    finally:
        await server.stop()


# -- UP --------------------------------------------------------------------------------------------


async def test_direct_tls_is_up_with_the_chain_and_metrics(
    good_tls: ssl.SSLContext, ca_pem: str
) -> None:
    result = await _check(None, good_tls, ca_pem)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "tls")
    assert result.tls is not None and result.tls.verified
    assert result.tls.version in ("TLSv1.2", "TLSv1.3") and result.tls.cipher
    assert result.metrics["tls_version"] == float(result.tls.version[4:])
    assert result.metrics["chain_length"] == len(result.tls.chain) >= 1
    assert result.metrics["days_left"] > 300
    assert "cert_days_left" in result.metrics
    assert [a.name for a in result.assertions] == ["cert_expiry"]
    text = describe(result)
    assert text is not None and text.startswith(result.tls.version) and "days left" in text


@pytest.mark.parametrize(
    ("protocol", "make", "phases"),
    [
        ("smtp", smtp, ("resolve", "connect", "banner", "ehlo", "starttls", "tls")),
        ("imap", imap, ("resolve", "connect", "banner", "starttls", "tls")),
        ("pop3", pop3, ("resolve", "connect", "banner", "starttls", "tls")),
        ("ftp", ftp, ("resolve", "connect", "banner", "starttls", "tls")),
        ("postgres", postgres, ("resolve", "connect", "starttls", "tls")),
    ],
)
async def test_starttls_is_up_with_its_phases(
    protocol: str,
    make: Callable[[ssl.SSLContext], Handler],
    phases: tuple[str, ...],
    good_tls: ssl.SSLContext,
    ca_pem: str,
) -> None:
    result = await _check(make(good_tls), None, ca_pem, starttls=protocol)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == phases
    assert result.tls is not None and result.tls.chain
    assert result.metrics["chain_length"] >= 1


# -- DOWN: a table of failures ---------------------------------------------------------------------

FAILURES: list[Any] = [
    # (id, server(tls contexts) -> (handler, server_tls), fields, kind, phase, message)
    ("untrusted", lambda t: (None, t["self_signed"]), {}, ErrorKind.TLS, "tls", "verify failed"),
    ("wrong-name", lambda t: (None, t["wrong_name"]), {}, ErrorKind.TLS, "tls", "verify failed"),
    ("expired", lambda t: (None, t["expired"]), {}, ErrorKind.TLS, "tls", "verify failed"),
    (
        "garbage-not-tls",
        lambda t: (plain(b"HTTP/1.0 200 OK\r\n\r\n" * 20), None),
        {},
        ErrorKind.TLS,
        "tls",
        "TLS",
    ),
    (
        "closed-before-handshake",
        lambda t: (plain(b"", close=True), None),
        {},
        ErrorKind.TLS,
        "tls",
        "",
    ),
    (
        "smtp-no-starttls",
        lambda t: (smtp(t["good"], ehlo=b"250-mx\r\n250 SIZE 1\r\n"), None),
        {"starttls": "smtp"},
        ErrorKind.TLS,
        "ehlo",
        "STARTTLS is not offered",
    ),
    (
        "smtp-starttls-refused",
        lambda t: (smtp(t["good"], go=b"454 not now\r\n"), None),
        {"starttls": "smtp"},
        ErrorKind.TLS,
        "starttls",
        "STARTTLS refused: 454",
    ),
    (
        "smtp-refused-session",
        lambda t: (smtp(t["good"], banner=b"554 go away\r\n"), None),
        {"starttls": "smtp"},
        ErrorKind.PROTOCOL,
        "banner",
        "refused the session",
    ),
    (
        "smtp-garbage",
        lambda t: (plain(b"\x00\xffgarbage\r\n"), None),
        {"starttls": "smtp"},
        ErrorKind.PROTOCOL,
        "banner",
        "not a SMTP greeting",
    ),
    (
        "smtp-closed",
        lambda t: (plain(b"", close=True), None),
        {"starttls": "smtp"},
        ErrorKind.PROTOCOL,
        "banner",
        "connection closed",
    ),
    (
        "smtp-oversized",
        lambda t: (plain(b"220 " + b"x" * (LINE_LIMIT + 10)), None),
        {"starttls": "smtp"},
        ErrorKind.PROTOCOL,
        "banner",
        f"exceeds {LINE_LIMIT} bytes",
    ),
    (
        "smtp-endless",
        lambda t: (plain(b"220-x\r\n" * (MAX_LINES + 5)), None),
        {"starttls": "smtp"},
        ErrorKind.PROTOCOL,
        "banner",
        f"more than {MAX_LINES} lines",
    ),
    (
        "smtp-untrusted",
        lambda t: (smtp(t["self_signed"]), None),
        {"starttls": "smtp"},
        ErrorKind.TLS,
        "tls",
        "verify failed",
    ),
    (
        "smtp-injection",
        lambda t: (smtp(t["good"], go=b"220 go\r\n250 injected\r\n"), None),
        {"starttls": "smtp"},
        ErrorKind.PROTOCOL,
        "tls",
        "plain-text bytes",
    ),
    (
        "imap-refused",
        lambda t: (imap(t["good"], go=b"T1 NO not now\r\n"), None),
        {"starttls": "imap"},
        ErrorKind.TLS,
        "starttls",
        "STARTTLS refused",
    ),
    (
        "imap-bye",
        lambda t: (plain(b"* BYE busy\r\n"), None),
        {"starttls": "imap"},
        ErrorKind.PROTOCOL,
        "banner",
        "refused the session",
    ),
    (
        "imap-preauth",
        lambda t: (plain(b"* PREAUTH hi\r\n"), None),
        {"starttls": "imap"},
        ErrorKind.TLS,
        "banner",
        "pre-authenticated",
    ),
    (
        "pop3-refused",
        lambda t: (pop3(t["good"], go=b"-ERR no\r\n"), None),
        {"starttls": "pop3"},
        ErrorKind.TLS,
        "starttls",
        "STLS refused",
    ),
    (
        "pop3-garbage",
        lambda t: (plain(b"hello\r\n"), None),
        {"starttls": "pop3"},
        ErrorKind.PROTOCOL,
        "banner",
        "not a POP3 greeting",
    ),
    (
        "ftp-refused",
        lambda t: (ftp(t["good"], go=b"502 no\r\n"), None),
        {"starttls": "ftp"},
        ErrorKind.TLS,
        "starttls",
        "AUTH TLS refused: 502",
    ),
    (
        "postgres-no-ssl",
        lambda t: (postgres(t["good"], b"N"), None),
        {"starttls": "postgres"},
        ErrorKind.TLS,
        "starttls",
        "does not accept TLS",
    ),
    (
        "postgres-garbage",
        lambda t: (postgres(t["good"], b"E"), None),
        {"starttls": "postgres"},
        ErrorKind.PROTOCOL,
        "starttls",
        "not an SSLRequest reply",
    ),
    (
        "min-version",
        lambda t: (None, t["tls12"]),
        {"min_version": "TLSv1.3"},
        ErrorKind.TLS,
        None,
        "negotiated TLSv1.2, below min_version TLSv1.3",
    ),
    (
        "expired-unverified",
        lambda t: (None, t["expired"]),
        {"verify": False},
        ErrorKind.ASSERTION,
        None,
        "cert_expiry failed",
    ),
]


@pytest.fixture(scope="module")
def contexts(
    ca: trustme.CA,
    good_tls: ssl.SSLContext,
    expired_tls: ssl.SSLContext,
    wrong_name_tls: ssl.SSLContext,
    self_signed_tls: ssl.SSLContext,
) -> dict[str, ssl.SSLContext]:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    return {
        "good": good_tls,
        "expired": expired_tls,
        "wrong_name": wrong_name_tls,
        "self_signed": self_signed_tls,
        "tls12": _server_ctx(cert, maximum_version=ssl.TLSVersion.TLSv1_2),
    }


@pytest.mark.parametrize(
    ("server", "fields", "kind", "phase", "message"),
    [pytest.param(*row[1:], id=row[0]) for row in FAILURES],
)
async def test_down(
    server: Callable[[dict[str, ssl.SSLContext]], tuple[Handler | None, ssl.SSLContext | None]],
    fields: dict[str, Any],
    kind: ErrorKind,
    phase: str | None,
    message: str,
    contexts: dict[str, ssl.SSLContext],
    ca_pem: str,
) -> None:
    handler, server_tls = server(contexts)
    result = await _check(handler, server_tls, ca_pem, **fields)
    assert result.status is Status.DOWN, result.summary()
    assert result.error is not None
    assert (result.error.kind, result.error.phase) == (kind, phase), result.summary()
    assert message in result.error.message, result.summary()


async def test_a_verification_failure_still_reports_the_chain(
    self_signed_tls: ssl.SSLContext, ca_pem: str
) -> None:
    result = await _check(None, self_signed_tls, ca_pem)
    assert result.error is not None and result.error.kind is ErrorKind.TLS
    assert result.tls is not None and result.tls.chain and not result.tls.verified


async def test_without_verification_an_untrusted_certificate_is_up(
    self_signed_tls: ssl.SSLContext, ca_pem: str
) -> None:
    result = await _check(None, self_signed_tls, ca_pem, verify=False)
    assert result.status is Status.UP, result.summary()
    assert result.tls is not None and not result.tls.verified


async def test_sni_names_the_certificate_checked(
    wrong_name_tls: ssl.SSLContext, ca_pem: str
) -> None:
    result = await _check(None, wrong_name_tls, ca_pem, server_name="other.example")
    assert result.status is Status.UP, result.summary()
    assert result.tls is not None and result.tls.server_name == "other.example"


# -- thresholds and pins ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "status"), [(20, Status.DEGRADED), (3, Status.DOWN), (60, Status.UP)]
)
async def test_expiry_thresholds(days: int, status: Status, ca: trustme.CA, ca_pem: str) -> None:
    result = await _check(None, _days_from_now(ca, days), ca_pem)
    assert result.status is status, result.summary()
    assert abs(result.metrics["days_left"] - days) < 1
    if status is not Status.UP:
        assert result.error is not None and result.error.kind is ErrorKind.ASSERTION


async def test_thresholds_can_be_turned_off(ca: trustme.CA, ca_pem: str) -> None:
    result = await _check(
        None, _days_from_now(ca, 3), ca_pem, cert_warn_days=None, cert_crit_days=None
    )
    assert result.status is Status.UP and result.assertions == ()


@pytest.fixture(scope="module")
def leaf(ca: trustme.CA) -> tuple[ssl.SSLContext, x509.Certificate]:
    cert = ca.issue_cert("localhost", "www.test.local", "127.0.0.1", organization_name="Acme")
    pem = cert.cert_chain_pems[0].bytes()
    return _server_ctx(cert), x509.load_pem_x509_certificate(pem)


def _colons(hexdigest: str) -> str:
    return ":".join(hexdigest[i : i + 2] for i in range(0, len(hexdigest), 2)).upper()


async def test_pins_that_match_are_up(
    leaf: tuple[ssl.SSLContext, x509.Certificate], ca_pem: str
) -> None:
    server_tls, cert = leaf
    der = cert.public_bytes(serialization_der())
    result = await _check(
        None,
        server_tls,
        ca_pem,
        expect_subject="O=Acme",
        expect_issuer="O=trustme",
        expect_san=("WWW.test.local", "127.0.0.1"),
        fingerprint_sha256=_colons(hashlib.sha256(der).hexdigest()),
    )
    assert result.status is Status.UP, result.summary()
    names = [a.name for a in result.assertions]
    assert names == ["cert_expiry", "subject", "issuer", "san", "fingerprint"]
    assert all(a.passed for a in result.assertions)


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"expect_subject": "O=Other"}, "subject"),
        ({"expect_issuer": "O=Let's Encrypt"}, "issuer"),
        ({"expect_san": ("localhost", "mail.test.local")}, "san"),
        ({"fingerprint_sha256": "ab" * 32}, "fingerprint"),
    ],
)
async def test_a_pin_that_does_not_match_is_down(
    fields: dict[str, Any], name: str, leaf: tuple[ssl.SSLContext, x509.Certificate], ca_pem: str
) -> None:
    result = await _check(None, leaf[0], ca_pem, **fields)
    assert result.status is Status.DOWN, result.summary()
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert result.error.message.startswith(f"{name} failed"), result.error.message


def serialization_der() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


# -- timeouts: a stall in each phase ---------------------------------------------------------------

TOTAL = 0.4


@pytest.mark.parametrize(
    ("protocol", "handler", "phase"),
    [
        ("none", silent, "tls"),
        ("smtp", silent, "banner"),
        ("smtp", plain(b"220 mx\r\n"), "ehlo"),
        (
            "smtp",
            script(
                b"220 mx\r\n",
                {b"EHLO probekit.invalid": b"250-mx\r\n250 STARTTLS\r\n"},
                None,
                ssl.create_default_context(),
            ),
            "starttls",
        ),
        (
            "smtp",
            script(
                b"220 mx\r\n",
                {
                    b"EHLO probekit.invalid": b"250-mx\r\n250 STARTTLS\r\n",
                    b"STARTTLS": b"220 go\r\n",
                },
                None,
                ssl.create_default_context(),
            ),
            "tls",
        ),
        ("imap", plain(b"* OK hi\r\n"), "starttls"),
        ("pop3", silent, "banner"),
        ("ftp", plain(b"220-still\r\n"), "banner"),
        ("postgres", silent, "starttls"),
    ],
)
async def test_a_stall_times_out_naming_its_phase_within_the_deadline(
    protocol: str, handler: Handler, phase: str, ca_pem: str
) -> None:
    started = time.monotonic()
    result = await _check(handler, None, ca_pem, starttls=protocol, timeouts=Timeouts(total=TOTAL))
    elapsed = time.monotonic() - started
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT, result.summary()
    assert result.error.phase == phase
    assert elapsed <= TOTAL + 0.1


# -- the egress policy -----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["none", "smtp", "postgres"])
async def test_a_denied_address_is_never_contacted(protocol: str) -> None:
    connector = GuardedConnector()
    ctx = make_context(
        policy=EgressPolicy(deny=["10.0.0.0/8"]),
        hosts={"internal.test": ["10.1.2.3"], "metadata.test": ["169.254.169.254"]},
        connector=connector,
    )
    for name in ("internal.test", "metadata.test"):
        result = await TlsProbe(name, 443, starttls=protocol).check(ctx)
        assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED
    assert connector.dialled == [] and connector.refused == []


# -- secrets ---------------------------------------------------------------------------------------


async def test_the_key_password_shows_nowhere(
    good_tls: ssl.SSLContext,
    ca: trustme.CA,
    ca_pem: str,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    client = ca.issue_cert("client.test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    client.cert_chain_pems[0].write_to_path(str(cert))
    client.private_key_pem.write_to_path(str(key))  # not encrypted: the password is wrong
    options = TlsOptions(
        ca_data=ca_pem,
        client_cert=str(cert),
        client_key=str(key),
        client_key_password=Secret(CANARY),
    )
    result = await _check(None, good_tls, ca_pem, tls=options)
    probe = TlsProbe("localhost", 443, tls=options)
    for text in (
        result_to_json(result),
        repr(result),
        result.summary(),
        repr(probe),
        str(probe),
        json.dumps(probe_to_dict(probe)),
        caplog.text,
    ):
        assert CANARY not in text
    plain = probe_to_dict(probe)
    assert plain["tls"]["client_key_password"] == "<secret>"
    plain["tls"]["client_key_password"] = {"secret": "key"}
    assert build_probe(plain, secrets={"key": Secret(CANARY)}) == probe
    assert build_probe(plain, secrets={"key": Secret("other")}) != probe


# -- definitions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "probe",
    [
        TlsProbe("example.test"),
        TlsProbe("::1", 993, starttls="imap", server_name="mail.test", verify=False),
        TlsProbe(
            "db.test",
            5432,
            starttls="postgres",
            tls=TlsOptions(ca_file="/etc/ca.pem"),
            min_version="TLSv1.3",
            cert_warn_days=14,
            cert_crit_days=None,
            expect_subject="CN=db.test",
            expect_issuer="O=Internal",
            expect_san=("db.test",),
            fingerprint_sha256="AB:" * 31 + "AB",
            ip_family="ipv6",
        ),
    ],
)
def test_round_trip_through_plain_data(probe: TlsProbe) -> None:
    plain = probe_to_dict(probe)
    assert json.loads(json.dumps(plain)) == plain
    assert build_probe(plain) == probe


def test_constructor_arguments_are_checked_too() -> None:
    with pytest.raises(DefinitionError, match="one string"):
        TlsProbe("h", expect_san="a.test")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="expected one of"):
        TlsProbe("h", starttls="ldap")  # type: ignore[arg-type]


def test_defaults_and_target() -> None:
    probe = build_probe({"kind": "tls", "host": "[::1]"})
    assert isinstance(probe, TlsProbe)
    assert (probe.port, probe.starttls, probe.verify) == (443, "none", True)
    assert (probe.cert_warn_days, probe.cert_crit_days) == (30, 7)
    assert probe.target == "[::1]:443" and probe.host == "::1"
    assert TlsProbe("h", fingerprint_sha256="AB:" * 31 + "AB").fingerprint_sha256 == "ab" * 32


INVALID: list[Any] = [
    ({}, "host", "required"),
    ({"host": "a b"}, "host", "not a host"),
    ({"host": "h", "port": 0}, "port", "1 to 65535"),
    ({"host": "h", "starttls": "ldap"}, "starttls", "not one of"),
    ({"host": "h", "server_name": "a/b"}, "server_name", "not a host"),
    ({"host": "h", "verify": "yes"}, "verify", ""),
    ({"host": "h", "min_version": "TLSv1.4"}, "min_version", ""),
    ({"host": "h", "cert_warn_days": -1}, "cert_warn_days", "from 0"),
    ({"host": "h", "cert_warn_days": 5, "cert_crit_days": 10}, "cert_warn_days", "below"),
    ({"host": "h", "expect_subject": " "}, "expect_subject", "expected text"),
    ({"host": "h", "expect_san": "a.test"}, "expect_san", "got a string"),
    ({"host": "h", "expect_san": ["a", ""]}, "expect_san[1]", "expected a name"),
    ({"host": "h", "fingerprint_sha256": "abc"}, "fingerprint_sha256", "64 hex digits"),
    ({"host": "h", "ip_family": "ipx"}, "ip_family", "not one of"),
    ({"host": "h", "server_name": "a", "tls": {"server_name": "b"}}, "server_name", "differs"),
    ({"host": "h", "tls": {"min_version": "SSLv3"}}, "tls.min_version", ""),
]


@pytest.mark.parametrize(("data", "path", "message"), INVALID)
def test_invalid_definitions(data: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(DefinitionErrors) as info:
        build_probe({"kind": "tls", **data})
    problems = {e.path: e.message for e in info.value.errors}
    assert path in problems, problems
    assert message in problems[path]


# -- the command-line form -------------------------------------------------------------------------


def _from_options(target: str, **values: Any) -> Any:
    definition: dict[str, Any] = {"kind": "tls", **KIND.target.parse(target)}
    for option in KIND.options:
        if option.field and option.name in values:
            value = values.pop(option.name)
            definition[option.field] = option.parse(value) if option.parse else value
    assert KIND.to_definition is not None
    KIND.to_definition(values, definition)
    return build_probe(definition)


def test_options_build_the_definition(tmp_path: Any) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("read when a check runs\n")
    probe = _from_options(
        "mail.test:587",
        starttls="smtp",
        server_name="mx.test",
        ca_file=str(ca),
        cert_warn_days="21",
        cert_crit_days="5",
        expect_san=["mx.test", "mail.test"],
        fingerprint_sha256="AB:" * 31 + "AB",
        min_version="1.3",
        ipv4=True,
    )
    assert probe == TlsProbe(
        "mail.test",
        587,
        starttls="smtp",
        server_name="mx.test",
        tls=TlsOptions(ca_file=str(ca)),
        cert_warn_days=21,
        cert_crit_days=5,
        expect_san=("mx.test", "mail.test"),
        fingerprint_sha256="ab" * 32,
        min_version="TLSv1.3",
        ip_family="ipv4",
    )
    assert _from_options("example.test", insecure=True) == TlsProbe("example.test", verify=False)
    assert _from_options("example.test").port == 443


def test_option_problems_name_the_option() -> None:
    with pytest.raises(DefinitionErrors) as info:
        _from_options("h", fingerprint_sha256="zz", ipv4=True, ipv6=True, ca_file="/nonexistent")
    assert {e.path for e in info.value.errors} == {"--fingerprint", "--ipv4/--ipv6", "--ca-file"}
    with pytest.raises(ValueError, match=r"1\.2, 1\.3"):
        _from_options("h", min_version="1.4")


def test_the_kind_is_registered() -> None:
    assert get_kind("tls") is KIND
    assert KIND.target.parse("example.test") == {"host": "example.test", "port": 443}


def test_describe_without_tls_is_none(ca_pem: str) -> None:
    result = Result(
        kind="tls",
        target="h:443",
        status=Status.DOWN,
        started_at=dt.datetime.now(dt.UTC),
        duration=0.1,
    )
    assert describe(result) is None


# -- arbitrary server bytes ------------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    protocol=st.sampled_from(["none", "smtp", "imap", "pop3", "ftp", "postgres"]),
    chunks=st.lists(
        st.binary(max_size=300)
        | st.sampled_from(
            [
                b"220 ok\r\n",
                b"220-a\r\n",
                b"250-STARTTLS\r\n",
                b"250 x\r\n",
                b"* OK\r\n",
                b"+OK\r\n",
                b"T1 OK\r\n",
                b"234 go\r\n",
                b"S",
                b"N",
                b"\x16\x03\x01\x00\x05hello",
            ]
        ),
        max_size=6,
    ),
    close=st.booleans(),
)
def test_any_server_bytes_give_a_classified_result(
    protocol: str, chunks: list[bytes], close: bool
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0)
        if close:
            writer.close()
        else:
            await _hold(reader)

    async def main() -> Result:
        server = await TcpServer(handle).start()
        try:
            probe = TlsProbe(
                "localhost",
                server.port,
                starttls=protocol,
                timeouts=Timeouts(total=0.3),  # type: ignore[arg-type]
            )
            return await probe.check(make_context())
        finally:
            await server.stop()

    result = asyncio.run(main())
    assert result.status is Status.DOWN, result.summary()
    assert result.error is not None and result.error.kind is not ErrorKind.INTERNAL
