"""The tls kind's revocation check: a private CA made with ``cryptography``, leaves whose AIA
names a loopback responder, and two responders:

* the real one, ``openssl ocsp`` with an index file and a delegated responder certificate. Its
  ``-port`` takes a bare port and listens on every interface, so it is not started as a server:
  a loopback HTTP front hands each request to ``openssl ocsp -reqin ... -respout ...`` (the same
  responder code: index lookup, status, signing) and returns what it wrote;
* an in-process fake for what openssl will not do: garbage, a wrong signature, a stale answer,
  an oversized or stalled reply, an undelegated signer.

Addresses that must not be dialled go through the guarded connector (tests/servers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probekit import (
    DefinitionErrors,
    EgressPolicy,
    ErrorKind,
    Result,
    Status,
    Timeouts,
    TlsOptions,
    TlsProbe,
    build_probe,
    probe_to_dict,
)
from probekit.probes import _ocsp
from probekit.probes.tls import KIND
from servers import GuardedConnector, TcpServer, closed_port, make_context

OPENSSL = shutil.which("openssl")
NOW = dt.datetime.now(dt.UTC)
Key = ec.EllipticCurvePrivateKey
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# -- the private CA ----------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


@attrs.define
class Pki:
    ca_key: Key
    ca: x509.Certificate
    responder_key: Key
    responder: x509.Certificate  # delegated: issued by the CA, OCSPSigning
    rogue_key: Key
    rogue: x509.Certificate  # issued by the CA, without OCSPSigning
    directory: Path

    @property
    def ca_pem(self) -> str:
        return self.ca.public_bytes(serialization.Encoding.PEM).decode()

    def issue(
        self,
        cn: str,
        *,
        key: Key | None = None,
        ocsp_url: str | None = None,
        eku: x509.ObjectIdentifier | None = ExtendedKeyUsageOID.SERVER_AUTH,
        ca: bool = False,
        serial: int | None = None,
    ) -> x509.Certificate:
        key = key or _key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.ca.subject)
            .public_key(key.public_key())
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        if cn == "localhost":
            import ipaddress

            san = x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            )
            builder = builder.add_extension(san, critical=False)
        if ocsp_url is not None:
            aia = x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP,
                        x509.UniformResourceIdentifier(ocsp_url),
                    )
                ]
            )
            builder = builder.add_extension(aia, critical=False)
        return builder.sign(self.ca_key, hashes.SHA256())


def _pem(path: Path, *items: x509.Certificate | Key) -> Path:
    with path.open("wb") as out:
        for item in items:
            if isinstance(item, x509.Certificate):
                out.write(item.public_bytes(serialization.Encoding.PEM))
            else:
                out.write(
                    item.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca_key = _key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("probekit test CA"))
        .issuer_name(_name("probekit test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=2))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    half = Pki(ca_key, ca, ca_key, ca, ca_key, ca, tmp_path_factory.mktemp("pki"))
    responder_key, rogue_key = _key(), _key()
    half.responder_key = responder_key
    half.responder = half.issue(
        "probekit test OCSP responder", key=responder_key, eku=ExtendedKeyUsageOID.OCSP_SIGNING
    )
    half.rogue_key = rogue_key
    half.rogue = half.issue("rogue responder", key=rogue_key)
    return half


def _server_tls(pki: Pki, leaf_key: Key, leaf: x509.Certificate, name: str) -> ssl.SSLContext:
    cert = _pem(pki.directory / f"{name}.pem", leaf)
    key = _pem(pki.directory / f"{name}.key", leaf_key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def _hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await reader.read()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("POST ") and lines[0].endswith(" HTTP/1.1"), lines[0]
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["content-type"] == "application/ocsp-request"
    return await reader.readexactly(int(headers["content-length"]))


def _http(body: bytes, status: str = "200 OK") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/ocsp-response\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


# -- the real responder: openssl ocsp ----------------------------------------------------------


def _stamp(moment: dt.datetime) -> str:
    return moment.strftime("%y%m%d%H%M%SZ")


REVOKED_AT = (NOW - dt.timedelta(hours=3)).replace(microsecond=0)


@attrs.define
class OpensslResponder:
    pki: Pki
    index: Path
    requests: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_request(reader)
        self.requests += 1
        directory = self.pki.directory
        req = directory / f"req{self.requests}.der"
        resp = directory / f"resp{self.requests}.der"
        req.write_bytes(request)
        assert OPENSSL is not None
        process = await asyncio.create_subprocess_exec(
            OPENSSL,
            "ocsp",
            "-index",
            str(self.index),
            "-CA",
            str(directory / "ca.pem"),
            "-rsigner",
            str(directory / "rsigner.pem"),
            "-rkey",
            str(directory / "rsigner.key"),
            "-ndays",
            "1",
            "-reqin",
            str(req),
            "-respout",
            str(resp),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _out, err = await process.communicate()
        assert process.returncode == 0, err
        writer.write(_http(resp.read_bytes()))


def _index_line(cert: x509.Certificate, revoked: str | None = None) -> str:
    expiry = _stamp(cert.not_valid_after_utc)
    serial = format(cert.serial_number, "X")
    if len(serial) % 2:
        serial = "0" + serial
    subject = "/CN=" + cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    if revoked is None:
        return f"V\t{expiry}\t\t{serial}\tunknown\t{subject}\n"
    return f"R\t{expiry}\t{revoked}\t{serial}\tunknown\t{subject}\n"


async def _check(probe: TlsProbe, guard: GuardedConnector | None = None) -> Result:
    return await probe.check(make_context(connector=guard))


@pytest.fixture
def openssl_pki(pki: Pki) -> Pki:
    if OPENSSL is None:
        pytest.skip("openssl is not installed")
    _pem(pki.directory / "ca.pem", pki.ca)
    _pem(pki.directory / "rsigner.pem", pki.responder)
    _pem(pki.directory / "rsigner.key", pki.responder_key)
    return pki


async def _with_site(
    pki: Pki,
    url: str,
    body: Callable[[TlsProbe, x509.Certificate], Awaitable[None]],
    **fields: Any,
) -> None:
    key = _key()
    leaf = pki.issue("localhost", key=key, ocsp_url=url)
    async with TcpServer(_hold, _server_tls(pki, key, leaf, "leaf")) as server:
        probe = TlsProbe("127.0.0.1", server.port, tls=TlsOptions(ca_data=pki.ca_pem), **fields)
        await body(probe, leaf)


async def _openssl_case(pki: Pki, status: str, **fields: Any) -> tuple[Result, OpensslResponder]:
    """One leaf, listed in the index as ``status`` (good, revoked, or absent: unknown)."""
    index = pki.directory / f"index-{status}.txt"
    responder = OpensslResponder(pki, index)
    results: list[Result] = []
    async with TcpServer(responder.handle) as front:
        url = f"http://127.0.0.1:{front.port}/"

        async def body(probe: TlsProbe, leaf: x509.Certificate) -> None:
            if status == "good":
                index.write_text(_index_line(leaf))
            elif status == "revoked":
                index.write_text(_index_line(leaf, f"{_stamp(REVOKED_AT)},keyCompromise"))
            else:
                index.write_text(_index_line(pki.rogue))  # another certificate only
            results.append(await _check(probe))

        await _with_site(pki, url, body, **fields)
    return results[0], responder


# -- against openssl ocsp ----------------------------------------------------------------------


async def test_good_is_up_with_the_ocsp_phase(openssl_pki: Pki) -> None:
    result, responder = await _openssl_case(openssl_pki, "good")
    assert result.status is Status.UP, result.summary()
    assert responder.requests == 1
    assert result.phase_names()[:3] == ("resolve", "connect", "tls")
    assert "ocsp" in result.phase_names()
    assert result.metrics["revoked"] == 0
    (outcome,) = [a for a in result.assertions if a.name == "revocation"]
    assert outcome.passed and outcome.observed.startswith("good per http://127.0.0.1:")
    assert "nextUpdate" in outcome.observed
    # The result keeps naming the checked server, not the responder.
    assert result.address == f"127.0.0.1:{result.target.rsplit(':', 1)[1]}"


async def test_revoked_is_down_tls_with_time_and_reason(openssl_pki: Pki) -> None:
    result, _ = await _openssl_case(openssl_pki, "revoked")
    assert result.status is Status.DOWN, result.summary()
    assert result.error is not None and result.error.kind is ErrorKind.TLS
    assert "revoked at " + REVOKED_AT.strftime("%Y-%m-%dT%H:%M:%SZ") in result.error.message
    assert "keyCompromise" in result.error.message
    assert result.metrics["revoked"] == 1


async def test_revoked_is_down_even_when_soft_failures_are_off(openssl_pki: Pki) -> None:
    result, _ = await _openssl_case(openssl_pki, "revoked", revocation="hard")
    assert result.status is Status.DOWN and result.error is not None
    assert result.error.kind is ErrorKind.TLS


async def test_unknown_is_degraded_soft_and_down_hard(openssl_pki: Pki) -> None:
    soft, _ = await _openssl_case(openssl_pki, "unknown")
    assert soft.status is Status.DEGRADED, soft.summary()
    assert soft.error is not None and soft.error.kind is ErrorKind.ASSERTION
    assert "does not know the certificate" in soft.error.message
    hard, _ = await _openssl_case(openssl_pki, "unknown", revocation="hard")
    assert hard.status is Status.DOWN and hard.error is not None
    assert hard.error.kind is ErrorKind.TLS
    assert "unknown per http://127.0.0.1:" in hard.error.message


async def test_off_asks_nobody(openssl_pki: Pki) -> None:
    result, responder = await _openssl_case(openssl_pki, "revoked", revocation="off")
    assert result.status is Status.UP, result.summary()
    assert responder.requests == 0
    assert "ocsp" not in result.phase_names()
    assert "revoked" not in result.metrics


async def test_the_command_line_flag(openssl_pki: Pki) -> None:
    pki = openssl_pki
    index = pki.directory / "index-cli.txt"
    responder = OpensslResponder(pki, index)
    ca_file = _pem(pki.directory / "ca-cli.pem", pki.ca)
    async with TcpServer(responder.handle) as front:
        url = f"http://127.0.0.1:{front.port}/"

        async def body(probe: TlsProbe, leaf: x509.Certificate) -> None:
            index.write_text(_index_line(leaf, f"{_stamp(REVOKED_AT)},superseded"))
            outputs = []
            for mode in ("hard", "off"):
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "probekit",
                    "check",
                    "tls",
                    f"127.0.0.1:{probe.port}",
                    "--ca-file",
                    str(ca_file),
                    "--revocation",
                    mode,
                    "--nagios",
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env={**os.environ},
                )
                out, err = await process.communicate()
                outputs.append((process.returncode, out.decode(), err.decode()))
            (hard_rc, hard_out, _), (off_rc, off_out, _) = outputs
            assert hard_rc == 2, outputs
            assert "revoked" in hard_out and "superseded" in hard_out
            assert off_rc == 0 and off_out.startswith("TLS OK"), outputs

        await _with_site(pki, url, body)
    assert responder.requests == 1


# -- the responder cannot be asked -------------------------------------------------------------


async def test_responder_down_is_degraded_soft_and_down_hard(pki: Pki) -> None:
    url = f"http://127.0.0.1:{closed_port()}/ocsp"
    results: list[Result] = []

    async def body(probe: TlsProbe, leaf: x509.Certificate) -> None:
        results.append(await _check(probe))
        results.append(await _check(attrs.evolve(probe, revocation="hard")))

    await _with_site(pki, url, body)
    soft, hard = results
    assert soft.status is Status.DEGRADED, soft.summary()
    assert soft.error is not None and "connection refused" in soft.error.message
    assert url in soft.error.message
    assert hard.status is Status.DOWN and hard.error is not None
    assert hard.error.kind is ErrorKind.CONNECT and hard.error.phase == "ocsp"


async def test_a_metadata_responder_is_denied_and_never_dialled(pki: Pki) -> None:
    url = "http://169.254.169.254/latest/meta-data/"
    results: list[Result] = []
    guard = GuardedConnector()

    async def body(probe: TlsProbe, leaf: x509.Certificate) -> None:
        results.append(await _check(probe, guard))
        results.append(await _check(attrs.evolve(probe, revocation="hard"), guard))

    await _with_site(pki, url, body)
    soft, hard = results
    assert guard.refused == []
    assert {ip for ip, _ in guard.dialled} == {"127.0.0.1"}
    assert soft.status is Status.DEGRADED and soft.error is not None
    assert "169.254.169.254" in soft.error.message and "denied" in soft.error.message
    assert hard.status is Status.DOWN and hard.error is not None
    assert hard.error.kind is ErrorKind.POLICY_DENIED and hard.error.phase == "ocsp"


async def test_an_operator_policy_denying_loopback_responders(pki: Pki) -> None:
    """The responder's address is checked by the same policy as the target's."""
    url = "http://responder.test:8080/"
    guard = GuardedConnector()
    results: list[Result] = []

    async def body(probe: TlsProbe, leaf: x509.Certificate) -> None:
        policy = EgressPolicy(deny_hosts=["responder.test"])
        ctx = make_context(policy=policy, hosts={"responder.test": ["127.0.0.1"]}, connector=guard)
        results.append(await attrs.evolve(probe, revocation="hard").check(ctx))

    await _with_site(pki, url, body)
    (result,) = results
    assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED
    assert [port for _, port in guard.dialled if port == 8080] == []


async def test_no_responder_named_is_not_checked(pki: Pki) -> None:
    key = _key()
    leaf = pki.issue("localhost", key=key)
    async with TcpServer(_hold, _server_tls(pki, key, leaf, "plain")) as server:
        probe = TlsProbe("127.0.0.1", server.port, tls=TlsOptions(ca_data=pki.ca_pem))
        result = await _check(probe)
    assert result.status is Status.UP, result.summary()
    assert result.phase_names() == ("resolve", "connect", "tls")
    assert not [a for a in result.assertions if a.name == "revocation"]


async def test_only_an_https_responder_named(pki: Pki) -> None:
    results: list[Result] = []

    async def body(probe: TlsProbe, leaf: x509.Certificate) -> None:
        results.append(await _check(probe))

    await _with_site(pki, "https://127.0.0.1:1/", body)
    assert results[0].status is Status.DEGRADED
    assert results[0].error is not None and "no http:// OCSP responder" in results[0].error.message


# -- misbehaving responders (in-process) -------------------------------------------------------


def _answer(
    pki: Pki,
    leaf: x509.Certificate,
    *,
    signer: tuple[x509.Certificate, Key] | None = None,
    include: bool = False,
    this_update: dt.datetime | None = None,
    next_update: dt.datetime | None = None,
    status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
) -> bytes:
    cert, key = signer or (pki.ca, pki.ca_key)
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=leaf,
        issuer=pki.ca,
        algorithm=hashes.SHA1(),  # noqa: S303 - the CertID hash responders use
        cert_status=status,
        this_update=this_update or NOW - dt.timedelta(minutes=1),
        next_update=next_update or NOW + dt.timedelta(hours=4),
        revocation_time=None,
        revocation_reason=None,
    )
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, cert)
    if include:
        builder = builder.certificates([cert])
    der = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    return der


async def _fake(
    pki: Pki, make: Callable[[x509.Certificate], bytes | None], **fields: Any
) -> tuple[Result, int]:
    """A responder answering ``make(leaf)`` (raw HTTP bytes; None: silence)."""
    seen: list[x509.Certificate] = []
    results: list[Result] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = ocsp.load_der_ocsp_request(await _read_request(reader))
        assert request.serial_number == seen[0].serial_number
        raw = make(seen[0])
        if raw is None:
            await reader.read()  # a stall: keep the connection, say nothing
            return
        writer.write(raw)

    async with TcpServer(handle) as front:

        async def body(probe: TlsProbe, leaf: x509.Certificate) -> None:
            seen.append(leaf)
            results.append(await _check(probe))

        await _with_site(pki, f"http://127.0.0.1:{front.port}/", body, **fields)
        return results[0], front.connections


async def test_the_fake_agrees_with_openssl_on_good(pki: Pki) -> None:
    """The fake itself is sound: its correct answer, from the issuer or the delegate, is UP."""
    result, asked = await _fake(pki, lambda leaf: _http(_answer(pki, leaf)))
    assert result.status is Status.UP, result.summary()
    assert asked == 1
    delegated = (pki.responder, pki.responder_key)
    result, _ = await _fake(
        pki, lambda leaf: _http(_answer(pki, leaf, signer=delegated, include=True))
    )
    assert result.status is Status.UP, result.summary()


def _flip_last_byte(der: bytes) -> bytes:
    return der[:-1] + bytes([der[-1] ^ 0x01])


BAD_ANSWERS: list[tuple[str, Callable[[Pki, x509.Certificate], bytes | None], str]] = [
    ("garbage", lambda pki, leaf: _http(b"this is not DER at all"), "not an OCSP response"),
    ("empty", lambda pki, leaf: _http(b""), "not an OCSP response"),
    (
        "tryLater",
        lambda pki, leaf: _http(
            ocsp.OCSPResponseBuilder.build_unsuccessful(
                ocsp.OCSPResponseStatus.TRY_LATER
            ).public_bytes(serialization.Encoding.DER)
        ),
        "'try_later'",
    ),
    ("http 500", lambda pki, leaf: _http(b"oops", "500 Internal Server Error"), "HTTP 500"),
    ("not http", lambda pki, leaf: b"SSH-2.0-OpenSSH\r\n", "HTTP/1.x status line"),
    (
        "wrong signature",
        lambda pki, leaf: _http(_flip_last_byte(_answer(pki, leaf))),
        "signature does not verify",
    ),
    (
        "signed by a stranger",
        lambda pki, leaf: _http(
            _answer(pki, leaf, signer=(pki.rogue, pki.rogue_key), include=True)
        ),
        "not delegated for OCSP signing",
    ),
    (
        "signer not included",
        lambda pki, leaf: _http(_answer(pki, leaf, signer=(pki.responder, pki.responder_key))),
        "neither the certificate's issuer nor",
    ),
    (
        "stale nextUpdate",
        lambda pki, leaf: _http(
            _answer(
                pki,
                leaf,
                this_update=NOW - dt.timedelta(days=3),
                next_update=NOW - dt.timedelta(days=2),
            )
        ),
        "stale: nextUpdate",
    ),
    (
        "thisUpdate in the future",
        lambda pki, leaf: _http(
            _answer(
                pki,
                leaf,
                this_update=NOW + dt.timedelta(days=1),
                next_update=NOW + dt.timedelta(days=2),
            )
        ),
        "in the future",
    ),
    (
        "about another certificate",
        lambda pki, leaf: _http(_answer(pki, pki.rogue)),
        "says nothing about this certificate",
    ),
    (
        "oversized",
        lambda pki, leaf: _http(b"\x30" * (_ocsp.MAX_RESPONSE + 1)),
        f"exceeds {_ocsp.MAX_RESPONSE} bytes",
    ),
    (
        "oversized, unframed",
        lambda pki, leaf: b"HTTP/1.1 200 OK\r\n\r\n" + b"\x00" * (4 * _ocsp.MAX_RESPONSE),
        f"exceeds {_ocsp.MAX_RESPONSE} bytes",
    ),
]


@pytest.mark.parametrize(
    ("make", "message"), [row[1:] for row in BAD_ANSWERS], ids=[row[0] for row in BAD_ANSWERS]
)
@pytest.mark.parametrize("mode", ["soft", "hard"])
async def test_an_answer_that_cannot_be_used(
    pki: Pki, make: Callable[[Pki, x509.Certificate], bytes], message: str, mode: str
) -> None:
    result, asked = await _fake(pki, lambda leaf: make(pki, leaf), revocation=mode)
    assert asked == 1
    assert result.error is not None, result.summary()
    assert message in result.error.message, result.error.message
    assert "revoked" not in result.metrics
    if mode == "soft":
        assert result.status is Status.DEGRADED
        assert result.error.kind is ErrorKind.ASSERTION
    else:
        assert result.status is Status.DOWN
        assert result.error.kind in (ErrorKind.TLS, ErrorKind.PROTOCOL)
        assert result.error.phase == "ocsp"


async def test_a_stalled_responder_is_reported_before_the_deadline(pki: Pki) -> None:
    """Soft: DEGRADED naming the timeout in ``ocsp`` (not the check's own DOWN/timeout, which
    it would be if the query used up the deadline). Hard: DOWN/timeout in phase ``ocsp``."""
    total = Timeouts(total=1.0)
    soft, _ = await _fake(pki, lambda leaf: None, timeouts=total)
    assert soft.status is Status.DEGRADED, soft.summary()
    assert soft.error is not None and "timed out during ocsp" in soft.error.message
    hard, _ = await _fake(pki, lambda leaf: None, timeouts=total, revocation="hard")
    assert hard.status is Status.DOWN and hard.error is not None
    assert hard.error.kind is ErrorKind.TIMEOUT and hard.error.phase == "ocsp"


async def test_a_good_answer_without_next_update_ages_out(pki: Pki) -> None:
    def old(leaf: x509.Certificate) -> bytes:
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=leaf,
            issuer=pki.ca,
            algorithm=hashes.SHA1(),  # noqa: S303 - the CertID hash responders use
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=NOW - dt.timedelta(days=2),
            next_update=None,
            revocation_time=None,
            revocation_reason=None,
        )
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.NAME, pki.ca)
        return _http(
            builder.sign(pki.ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
        )

    result, _ = await _fake(pki, old)
    assert result.status is Status.DEGRADED
    assert result.error is not None and "no nextUpdate" in result.error.message


# -- definitions and the unit pieces -----------------------------------------------------------


def test_revocation_is_validated() -> None:
    with pytest.raises(DefinitionErrors) as info:
        build_probe({"kind": "tls", "host": "example.test", "revocation": "maybe"})
    assert any(e.path == "revocation" for e in info.value.errors)
    probe = build_probe({"kind": "tls", "host": "example.test", "revocation": "hard"})
    assert isinstance(probe, TlsProbe) and probe.revocation == "hard"
    assert TlsProbe("example.test").revocation == "soft"


def test_the_option_is_declared() -> None:
    (option,) = [o for o in KIND.options if o.field == "revocation"]
    assert option.flags == ("--revocation",)
    assert tuple(option.choices or ()) == ("off", "soft", "hard")
    assert "revoked" in {m.key for m in KIND.metrics}


def test_responder_urls(pki: Pki) -> None:
    assert _ocsp.responder_url(pki.issue("a")) == (None, [])
    leaf = pki.issue("b", ocsp_url="http://ocsp.example.test/x")
    assert _ocsp.responder_url(leaf) == (
        "http://ocsp.example.test/x",
        ["http://ocsp.example.test/x"],
    )


def test_the_issuer_must_have_signed_the_leaf(pki: Pki) -> None:
    leaf = pki.issue("c")
    impostor_key = _key()
    impostor = (
        x509.CertificateBuilder()
        .subject_name(pki.ca.subject)  # the same name, another key
        .issuer_name(pki.ca.subject)
        .public_key(impostor_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(impostor_key, hashes.SHA256())
    )
    assert _ocsp.find_issuer(leaf, [impostor]) is None
    assert _ocsp.find_issuer(leaf, [impostor, pki.ca]) == pki.ca


@pytest.mark.parametrize(
    "url", ["http://", "ftp://ocsp.test/", "http://ocsp.test:99999/", "http://h/a b"]
)
def test_unusable_urls(url: str) -> None:
    with pytest.raises(_ocsp.OcspProblem):
        _ocsp._target(url)


def test_request_targets() -> None:
    assert _ocsp._target("http://ocsp.test") == ("ocsp.test", 80, "/", "ocsp.test")
    assert _ocsp._target("http://[::1]:8080/p?q=1") == ("::1", 8080, "/p?q=1", "[::1]:8080")


# -- stapling: openssl s_server -status_file -------------------------------------------------


class SServer:
    """``openssl s_server`` on a loopback high port serving ``leaf`` (and ``staple``, if any)."""

    def __init__(self, pki: Pki, key: Key, leaf: x509.Certificate, staple: bytes | None) -> None:
        self.directory = pki.directory
        self.cert = _pem(pki.directory / "sserver.pem", leaf)
        self.key = _pem(pki.directory / "sserver.key", key)
        self.staple = staple
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> SServer:
        assert OPENSSL is not None
        self.port = closed_port()
        extra: list[str] = []
        if self.staple is not None:
            status = self.directory / "staple.der"
            status.write_bytes(self.staple)
            extra = ["-status_file", str(status)]
        self.process = await asyncio.create_subprocess_exec(
            OPENSSL,
            "s_server",
            "-accept",
            f"127.0.0.1:{self.port}",
            "-cert",
            str(self.cert),
            "-key",
            str(self.key),
            "-www",
            *extra,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
        )
        for _ in range(200):
            try:
                _r, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.025)
                continue
            writer.close()
            return self
        raise RuntimeError("openssl s_server did not start")

    async def __aexit__(self, *exc: object) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.terminate()
        await self.process.wait()


async def _openssl_staple(pki: Pki, leaf: x509.Certificate, revoked: bool) -> bytes:
    """The staple openssl's responder makes for ``leaf``."""
    index = pki.directory / "index-staple.txt"
    reason = f"{_stamp(REVOKED_AT)},cessationOfOperation" if revoked else None
    index.write_text(_index_line(leaf, reason))
    responder = OpensslResponder(pki, index)
    reader = asyncio.StreamReader()
    request = _ocsp.build_request(leaf, pki.ca)
    reader.feed_data(
        b"POST / HTTP/1.1\r\nContent-Type: application/ocsp-request\r\n"
        + f"Content-Length: {len(request)}\r\n\r\n".encode()
        + request
    )

    class Sink:
        data = b""

        def write(self, data: bytes) -> None:
            Sink.data += data

    await responder.handle(reader, Sink())  # type: ignore[arg-type]
    return Sink.data.split(b"\r\n\r\n", 1)[1]


async def _staple_case(
    pki: Pki, make: Callable[[x509.Certificate], Awaitable[bytes | None]], **fields: Any
) -> Result:
    """A leaf whose responder is down, served by s_server with ``staple(leaf)``."""
    key = _key()
    leaf = pki.issue("localhost", key=key, ocsp_url=f"http://127.0.0.1:{closed_port()}/")
    async with SServer(pki, key, leaf, await make(leaf)) as server:
        fields.setdefault("staple", True)
        probe = TlsProbe("127.0.0.1", server.port, tls=TlsOptions(ca_data=pki.ca_pem), **fields)
        return await _check(probe)


async def test_a_good_staple_is_up_without_asking_the_responder(openssl_pki: Pki) -> None:
    pki = openssl_pki

    async def good(leaf: x509.Certificate) -> bytes:
        return await _openssl_staple(pki, leaf, revoked=False)

    result = await _staple_case(pki, good)
    assert result.status is Status.UP, result.summary()
    assert "staple" in result.phase_names() and "ocsp" not in result.phase_names()
    (outcome,) = [a for a in result.assertions if a.name == "revocation"]
    assert outcome.observed.startswith("good per the staple")
    # Without staple = true the same server is only as good as its (down) responder.
    unstapled = await _staple_case(pki, good, staple=False)
    assert unstapled.status is Status.DEGRADED, unstapled.summary()
    assert "staple" not in unstapled.phase_names()


async def test_a_revoked_staple_is_down(openssl_pki: Pki) -> None:
    pki = openssl_pki

    async def revoked(leaf: x509.Certificate) -> bytes:
        return await _openssl_staple(pki, leaf, revoked=True)

    result = await _staple_case(pki, revoked)
    assert result.status is Status.DOWN and result.error is not None
    assert result.error.kind is ErrorKind.TLS
    assert "revoked at" in result.error.message and "cessationOfOperation" in result.error.message
    assert "per the staple" in result.error.message


async def test_no_staple_falls_back_to_the_responder(openssl_pki: Pki) -> None:
    async def none(leaf: x509.Certificate) -> None:
        return None

    result = await _staple_case(openssl_pki, none)
    assert result.status is Status.DEGRADED, result.summary()
    assert result.error is not None
    assert "no staple sent" in result.error.message
    assert "connection refused" in result.error.message
    assert {"staple", "ocsp"} <= set(result.phase_names())


async def test_a_stale_staple_is_ignored(openssl_pki: Pki) -> None:
    pki = openssl_pki

    async def stale(leaf: x509.Certificate) -> bytes:
        return _answer(
            pki,
            leaf,
            this_update=NOW - dt.timedelta(days=3),
            next_update=NOW - dt.timedelta(days=2),
        )

    result = await _staple_case(pki, stale, revocation="hard")
    assert result.status is Status.DOWN and result.error is not None
    assert "staple ignored: the answer is stale" in result.error.message
    assert result.error.phase == "ocsp"


async def test_staple_without_pyopenssl_says_what_to_install(
    openssl_pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "OpenSSL", None)

    async def none(leaf: x509.Certificate) -> None:
        return None

    result = await _staple_case(openssl_pki, none)
    assert result.status is Status.UNKNOWN and result.error is not None
    assert "install probekit[ocsp]" in result.error.message


async def test_staple_after_starttls_replays_the_dialogue(pki: Pki) -> None:
    """After STARTTLS the second handshake needs the dialogue again; a server that staples
    nothing (Python's ssl cannot) falls back to the responder."""
    from test_tls import smtp

    key = _key()
    leaf = pki.issue("localhost", key=key, ocsp_url=f"http://127.0.0.1:{closed_port()}/")
    async with TcpServer(smtp(_server_tls(pki, key, leaf, "smtp"))) as server:
        probe = TlsProbe(
            "127.0.0.1",
            server.port,
            starttls="smtp",
            staple=True,
            tls=TlsOptions(ca_data=pki.ca_pem),
        )
        result = await _check(probe)
        assert server.connections == 2
    assert result.status is Status.DEGRADED, result.summary()
    assert result.error is not None and "no staple sent" in result.error.message
    assert [p.name for p in result.phases].count("starttls") == 2


def test_the_fields_round_trip() -> None:
    probe = TlsProbe("example.test", revocation="hard", staple=True)
    plain = probe_to_dict(probe)
    assert plain["revocation"] == "hard" and plain["staple"] is True
    assert build_probe(plain) == probe


def test_the_staple_flag(tmp_path: Path) -> None:
    (option,) = [o for o in KIND.options if o.field == "staple"]
    assert option.flags == ("--staple",) and option.action == "flag"
    with pytest.raises(DefinitionErrors) as info:
        build_probe({"kind": "tls", "host": "example.test", "staple": "yes"})
    assert any(e.path == "staple" for e in info.value.errors)


# -- arbitrary answers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def judged(pki: Pki) -> tuple[x509.Certificate, bytes]:
    leaf = pki.issue("judged")
    return leaf, _answer(pki, leaf)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_answer_is_a_verdict_or_a_problem(
    pki: Pki, judged: tuple[x509.Certificate, bytes], data: st.DataObject
) -> None:
    """Arbitrary bytes, and a valid answer with bytes changed, cut or added, are judged or
    refused with an OcspProblem; nothing else escapes."""
    leaf, valid = judged
    answer = data.draw(
        st.binary(max_size=600)
        | st.builds(
            lambda at, value: valid[:at] + bytes([value]) + valid[at + 1 :],
            st.integers(0, len(valid) - 1),
            st.integers(0, 255),
        )
        | st.builds(lambda cut: valid[:cut], st.integers(0, len(valid)))
        | st.builds(lambda extra: valid + extra, st.binary(min_size=1, max_size=20))
    )
    problem: _ocsp.OcspProblem | None = None
    try:
        verdict = _ocsp.judge(answer, leaf, pki.ca, dt.datetime.now(dt.UTC), "test")
    except _ocsp.OcspProblem as exc:
        problem = exc
    if problem is not None:
        assert problem.kind in (ErrorKind.PROTOCOL, ErrorKind.TLS)
    else:
        assert verdict.status == "good"


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    raw=st.binary(max_size=400)
    | st.builds(
        lambda body: _http(body),
        st.binary(max_size=400),
    )
    | st.sampled_from([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", b""])
)
def test_any_responder_bytes_give_a_degraded_result(pki: Pki, raw: bytes) -> None:
    result, _ = asyncio.run(_fake(pki, lambda leaf: raw, timeouts=Timeouts(total=2.0)))
    assert result.status is Status.DEGRADED, result.summary()
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    assert result.error.message.startswith("revocation failed: expected a trusted OCSP answer")
