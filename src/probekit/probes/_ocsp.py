"""OCSP for the ``tls`` kind: ask the responder a certificate names whether it is revoked.

The pieces, each usable alone and each bounded:

* :func:`leaf_and_issuer` finds the leaf and its issuer among what the handshake saw (the
  verified chain, the chain as sent, and ``tls.ca_data``); the issuer is needed to name the
  certificate in the request and to check who signed the answer.
* :func:`responder_url` takes the first ``http://`` OCSP URL of the leaf's Authority
  Information Access extension.
* :func:`ask` sends one HTTP/1.1 ``POST`` of ``application/ocsp-request`` through the dial path
  (``attempt.connect``: resolution, the egress policy, the timed ``connect``) and reads one
  response with the strict HTTP/1.x parser, at most :data:`MAX_HEAD` bytes of head and
  :data:`MAX_RESPONSE` bytes of body.
* :func:`judge` parses the answer with ``cryptography.x509.ocsp`` and trusts it only when it is
  about this certificate, signed by the issuer or by a responder certificate the issuer issued
  with the OCSP-signing extended key usage, and fresh (``thisUpdate`` not in the future,
  ``nextUpdate`` not passed, both with :data:`CLOCK_SKEW` of leeway; with no ``nextUpdate``,
  ``thisUpdate`` at most :data:`MAX_AGE_WITHOUT_NEXT_UPDATE` old).

Whatever is wrong with a responder or its answer raises :class:`OcspProblem` (a
:class:`ProbeFailure`), so the probe decides once what a failed query means (``revocation``).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Final, Literal, TypeAlias, get_args
from urllib.parse import urlsplit

import attrs

from .._exceptions import ProbeFailure
from .._h1 import ResponseParser, header
from .._result import ErrorKind

if TYPE_CHECKING:
    import ssl

    from cryptography import x509

    from .._dial import Connection
    from ._base import Attempt

__all__ = [
    "CLOCK_SKEW",
    "MAX_AGE_WITHOUT_NEXT_UPDATE",
    "MAX_HANDSHAKE",
    "MAX_HEAD",
    "MAX_RESPONSE",
    "REVOCATION_MODES",
    "OcspProblem",
    "Revocation",
    "Verdict",
    "Staple",
    "ask",
    "build_request",
    "fetch_staple",
    "judge",
    "leaf_and_issuer",
    "responder_url",
]

log = logging.getLogger("probekit.probe.ocsp")

#: ``off``: no revocation check; ``soft``: a responder that cannot be asked, or whose answer
#: cannot be trusted, makes the check DEGRADED; ``hard``: it makes the check DOWN.
Revocation: TypeAlias = Literal["off", "soft", "hard"]
REVOCATION_MODES: Final[tuple[str, ...]] = get_args(Revocation)
#: The most body bytes of an OCSP answer read (real ones are 1-4 KB, with a responder
#: certificate or two).
MAX_RESPONSE: Final = 64 * 1024
#: The most bytes of the HTTP head of the answer.
MAX_HEAD: Final = 16 * 1024
#: How far the responder's clock may be from ours.
CLOCK_SKEW: Final = dt.timedelta(minutes=5)
#: How old an answer without ``nextUpdate`` may be (RFC 6960 leaves it to the client).
MAX_AGE_WITHOUT_NEXT_UPDATE: Final = dt.timedelta(days=1)
_READ: Final = 16 * 1024


class OcspProblem(ProbeFailure):
    """The responder could not be asked, or its answer cannot be used (a failure of the query,
    not a statement about the certificate)."""


@attrs.frozen
class Verdict:
    """What a trusted OCSP answer says about the leaf."""

    status: Literal["good", "revoked", "unknown"]
    source: str
    this_update: dt.datetime
    next_update: dt.datetime | None
    revocation_time: dt.datetime | None = None
    reason: str | None = None

    def describe(self) -> str:
        """``good per http://ocsp.example/ (thisUpdate ..., nextUpdate ...)``."""
        when = f"thisUpdate {_stamp(self.this_update)}"
        if self.next_update is not None:
            when += f", nextUpdate {_stamp(self.next_update)}"
        if self.status == "revoked":
            assert self.revocation_time is not None
            reason = self.reason or "no reason given"
            return (
                f"revoked at {_stamp(self.revocation_time)} ({reason}) per {self.source} ({when})"
            )
        return f"{self.status} per {self.source} ({when})"


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the certificates ------------------------------------------------------------------------------


def _ders(ssl_object: ssl.SSLObject | ssl.SSLSocket, which: str) -> list[bytes]:
    # CPython 3.10-3.12 has the chains only on the private _sslobj (public from 3.13).
    raw = getattr(ssl_object, "_sslobj", ssl_object)
    getter = getattr(raw, which, None)
    if getter is None:
        return []
    try:
        certs = getter() or ()
    except ValueError:  # no verified chain when verification was off
        return []
    return [c.public_bytes(2) for c in certs]  # 2: ssl's ENCODING_DER


def leaf_and_issuer(
    ssl_object: ssl.SSLObject | ssl.SSLSocket, ca_data: str | None = None
) -> tuple[x509.Certificate | None, x509.Certificate | None]:
    """The peer's leaf and the certificate that issued it (None when neither the chains nor
    ``ca_data`` hold it: the issuer's signature on the leaf is checked, not only its name)."""
    from cryptography import x509

    verified = _ders(ssl_object, "get_verified_chain")
    sent = _ders(ssl_object, "get_unverified_chain")
    leaf_der = (verified or sent or [ssl_object.getpeercert(binary_form=True) or b""])[0]
    if not leaf_der:
        return None, None
    leaf = x509.load_der_x509_certificate(leaf_der)
    candidates = [x509.load_der_x509_certificate(d) for d in verified[1:] + sent[1:]]
    if ca_data:
        try:
            candidates.extend(x509.load_pem_x509_certificates(ca_data.encode()))
        except ValueError:
            log.debug("ca_data holds no PEM certificates")
    return leaf, find_issuer(leaf, candidates)


def find_issuer(
    leaf: x509.Certificate, candidates: list[x509.Certificate]
) -> x509.Certificate | None:
    """The candidate whose subject is the leaf's issuer and whose key signed the leaf."""
    from cryptography.exceptions import InvalidSignature

    for candidate in candidates:
        if candidate.subject != leaf.issuer:
            continue
        try:
            leaf.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return candidate
    return None


def responder_url(leaf: x509.Certificate) -> tuple[str | None, list[str]]:
    """The first ``http://`` OCSP responder URL of the leaf's AIA, and all OCSP URLs named."""
    from cryptography import x509
    from cryptography.x509.oid import AuthorityInformationAccessOID

    try:
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None, []
    urls = [
        str(d.access_location.value)
        for d in aia
        if d.access_method == AuthorityInformationAccessOID.OCSP
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
    ]
    usable = [u for u in urls if u.lower().startswith("http://")]
    return (usable[0] if usable else None), urls


def build_request(leaf: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """A DER OCSP request for the leaf (CertID hashed with SHA-1, as RFC 5019 responders
    expect), without a nonce: freshness is judged from the answer's own times."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp

    # SHA-1 only names the certificate (CertID), it protects nothing; responders expect it.
    sha1 = hashes.SHA1()  # noqa: S303
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, sha1).build()
    return request.public_bytes(serialization.Encoding.DER)


# -- the query -------------------------------------------------------------------------------------


def _target(url: str) -> tuple[str, int, str, str]:
    """host, port, request target and Host header of an ``http://`` URL."""
    try:
        parts = urlsplit(url)
        port = parts.port or 80
    except ValueError as exc:
        raise OcspProblem(ErrorKind.PROTOCOL, f"unusable OCSP URL {url[:200]!r}: {exc}") from None
    host = parts.hostname
    if parts.scheme.lower() != "http" or not host:
        raise OcspProblem(ErrorKind.PROTOCOL, f"unusable OCSP URL {url[:200]!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in path):
        raise OcspProblem(ErrorKind.PROTOCOL, f"unusable OCSP URL path {path[:200]!r}")
    shown = f"[{host}]" if ":" in host else host
    authority = shown if port == 80 else f"{shown}:{port}"
    return host, port, path, authority


async def ask(attempt: Attempt, url: str, request: bytes) -> bytes:
    """POST ``request`` to the responder at ``url`` through the dial path; the DER answer.

    The connection is the attempt's (closed with the check at the latest); the attempt's
    ``address`` keeps naming the checked target, not the responder.
    """
    host, port, path, authority = _target(url)
    checked = attempt.address
    try:
        conn = await attempt.connect(host, port)
    finally:
        attempt.address = checked
    try:
        head = (
            f"POST {path} HTTP/1.1\r\n"
            f"Host: {authority}\r\n"
            "Content-Type: application/ocsp-request\r\n"
            "Accept: application/ocsp-response\r\n"
            f"Content-Length: {len(request)}\r\n"
            "Connection: close\r\n"
            "User-Agent: probekit\r\n\r\n"
        )
        await attempt.write(conn, head.encode("ascii") + request)
        return await _answer(attempt, conn)
    finally:
        conn.close()


async def _answer(attempt: Attempt, conn: Connection) -> bytes:
    parser = ResponseParser(max_head_bytes=MAX_HEAD)
    body = bytearray()
    while not parser.done:
        data = await attempt.read(conn, _READ)
        chunks = parser.feed(data)
        if parser.head_done and parser.status != 200:
            raise OcspProblem(
                ErrorKind.PROTOCOL, f"the responder answered HTTP {parser.status} {parser.reason}"
            )
        for chunk in chunks:
            body += chunk
        if len(body) > MAX_RESPONSE:
            raise OcspProblem(ErrorKind.PROTOCOL, f"the answer exceeds {MAX_RESPONSE} bytes")
    kind = header(parser.headers, "content-type")
    if kind is not None and kind.split(";")[0].strip().lower() != "application/ocsp-response":
        log.debug("OCSP answer with content type %r", kind[:80])
    return bytes(body)


# -- the answer ------------------------------------------------------------------------------------


def _responder_is(cert: x509.Certificate, response: x509.ocsp.OCSPResponse) -> bool:
    from cryptography import x509

    name = response.responder_name
    if name is not None:
        return bool(cert.subject == name)
    digest = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    return digest == response.responder_key_hash


def _signer(
    response: x509.ocsp.OCSPResponse, issuer: x509.Certificate, now: dt.datetime
) -> x509.Certificate:
    """The certificate entitled to sign the answer: the issuer, or a responder certificate
    the issuer issued for OCSP signing (RFC 6960 section 4.2.2.2), valid now."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    if _responder_is(issuer, response):
        return issuer
    for cert in response.certificates:
        if not _responder_is(cert, response):
            continue
        if find_issuer(cert, [issuer]) is None:
            raise OcspProblem(
                ErrorKind.TLS,
                f"the answer is signed by {cert.subject.rfc4514_string()!r}, "
                "which the certificate's issuer did not issue",
            )
        try:
            usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usage = x509.ExtendedKeyUsage([])
        if ExtendedKeyUsageOID.OCSP_SIGNING not in usage:
            raise OcspProblem(
                ErrorKind.TLS,
                f"the responder certificate {cert.subject.rfc4514_string()!r} is not "
                "delegated for OCSP signing (no OCSPSigning extended key usage)",
            )
        if not cert.not_valid_before_utc - CLOCK_SKEW <= now <= cert.not_valid_after_utc:
            raise OcspProblem(
                ErrorKind.TLS,
                f"the responder certificate {cert.subject.rfc4514_string()!r} is not valid now",
            )
        return cert
    raise OcspProblem(
        ErrorKind.TLS,
        "the answer is signed by neither the certificate's issuer nor a responder "
        "certificate it includes",
    )


def _verify_signature(response: x509.ocsp.OCSPResponse, signer: x509.Certificate) -> None:
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
    from cryptography.x509.oid import SignatureAlgorithmOID

    key = signer.public_key()
    data = response.tbs_response_bytes
    signature = response.signature
    try:
        digest = response.signature_hash_algorithm
        if isinstance(key, rsa.RSAPublicKey) and digest is not None:
            if response.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS:
                pss = padding.PSS(padding.MGF1(digest), padding.PSS.AUTO)
                key.verify(signature, data, pss, digest)
            else:
                key.verify(signature, data, padding.PKCS1v15(), digest)
        elif isinstance(key, ec.EllipticCurvePublicKey) and digest is not None:
            key.verify(signature, data, ec.ECDSA(digest))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, data)
        else:
            raise OcspProblem(
                ErrorKind.TLS, f"cannot verify a signature by a {type(key).__name__} key"
            )
    except InvalidSignature:
        raise OcspProblem(
            ErrorKind.TLS,
            f"the answer's signature does not verify with the key of "
            f"{signer.subject.rfc4514_string()!r}",
        ) from None
    except (UnsupportedAlgorithm, ValueError, TypeError) as exc:
        raise OcspProblem(ErrorKind.TLS, f"cannot verify the answer's signature: {exc}") from None


def _single(
    response: x509.ocsp.OCSPResponse, leaf: x509.Certificate, issuer: x509.Certificate
) -> x509.ocsp.OCSPSingleResponse:
    """The answer's entry for the leaf (serial number and issuer hashes must match)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.x509 import ocsp

    for single in response.responses:
        if single.serial_number != leaf.serial_number:
            continue
        try:
            mine = (
                ocsp.OCSPRequestBuilder()
                .add_certificate(leaf, issuer, single.hash_algorithm)
                .build()
            )
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
        if (
            single.issuer_name_hash == mine.issuer_name_hash
            and single.issuer_key_hash == mine.issuer_key_hash
        ):
            return single
    raise OcspProblem(ErrorKind.PROTOCOL, "the answer says nothing about this certificate")


def judge(
    der: bytes,
    leaf: x509.Certificate,
    issuer: x509.Certificate,
    now: dt.datetime,
    source: str,
) -> Verdict:
    """Parse and check an OCSP answer about ``leaf``; raise :class:`OcspProblem` when it
    cannot be trusted (malformed, not about this certificate, badly signed, not fresh)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.x509 import ocsp

    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise OcspProblem(
            ErrorKind.PROTOCOL, f"not an OCSP response ({len(der)} bytes): {exc}"
        ) from None
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        status = response.response_status.name.lower()
        raise OcspProblem(ErrorKind.PROTOCOL, f"the responder answered {status!r}")
    try:
        single = _single(response, leaf, issuer)
        _verify_signature(response, _signer(response, issuer, now))
        this_update = single.this_update_utc
        next_update = single.next_update_utc
        state = single.certificate_status
        revoked_at = single.revocation_time_utc if state is ocsp.OCSPCertStatus.REVOKED else None
        reason = single.revocation_reason
    except (ValueError, UnsupportedAlgorithm) as exc:  # a field cryptography cannot decode
        raise OcspProblem(ErrorKind.PROTOCOL, f"malformed OCSP response: {exc}") from None
    if this_update > now + CLOCK_SKEW:
        raise OcspProblem(ErrorKind.TLS, f"thisUpdate {_stamp(this_update)} is in the future")
    if next_update is not None and next_update + CLOCK_SKEW < now:
        raise OcspProblem(ErrorKind.TLS, f"the answer is stale: nextUpdate {_stamp(next_update)}")
    if next_update is None and now - this_update > MAX_AGE_WITHOUT_NEXT_UPDATE:
        raise OcspProblem(
            ErrorKind.TLS, f"the answer is stale: thisUpdate {_stamp(this_update)}, no nextUpdate"
        )
    names: dict[ocsp.OCSPCertStatus, Literal["good", "revoked", "unknown"]] = {
        ocsp.OCSPCertStatus.GOOD: "good",
        ocsp.OCSPCertStatus.REVOKED: "revoked",
        ocsp.OCSPCertStatus.UNKNOWN: "unknown",
    }
    return Verdict(
        status=names[state],
        source=source,
        this_update=this_update,
        next_update=next_update,
        revocation_time=revoked_at,
        reason=reason.value if reason is not None else None,
    )


# -- the staple ------------------------------------------------------------------------------------

#: The most handshake bytes read from the server while fetching a staple (a chain of a few
#: certificates and a staple take 5-20 KB).
MAX_HANDSHAKE: Final = 256 * 1024


@attrs.frozen
class Staple:
    """What a handshake that asked for certificate status saw: the leaf, and the staple (None
    when the server sent none)."""

    leaf_der: bytes
    response: bytes | None


def _require_pyopenssl() -> None:
    try:
        import OpenSSL  # noqa: F401 - the optional extra, imported to see that it is there
    except ImportError:
        raise ProbeFailure(
            ErrorKind.INTERNAL, "staple = true needs pyOpenSSL: install probekit[ocsp]"
        ) from None


async def fetch_staple(attempt: Attempt, conn: Connection, server_name: str | None) -> Staple:
    """Do a TLS handshake over ``conn`` (a dial-path connection, not yet TLS) with pyOpenSSL,
    asking for certificate status (``status_request``), and return the leaf and the staple.

    The handshake verifies nothing: the staple is trusted only after :func:`judge` (signed by
    the issuer, about this leaf), and the leaf is compared with the one the verified handshake
    saw. At most :data:`MAX_HANDSHAKE` bytes are read.
    """
    _require_pyopenssl()
    from OpenSSL import SSL

    seen: list[bytes] = []

    def on_status(_conn: SSL.Connection, data: bytes, _extra: object) -> bool:
        seen.append(bytes(data))
        return True  # judged afterwards, with the issuer at hand

    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE)
    ctx.set_ocsp_client_callback(on_status)
    tls = SSL.Connection(ctx, None)
    if server_name:
        tls.set_tlsext_host_name(server_name.encode("idna"))
    tls.request_ocsp()
    tls.set_connect_state()
    received = 0
    while True:
        try:
            tls.do_handshake()
            finished = True
        except SSL.WantReadError:
            finished = False
        except SSL.Error as exc:
            raise ProbeFailure(ErrorKind.TLS, f"the stapling handshake failed: {exc}") from None
        outgoing = _drain(tls)
        if outgoing:
            await attempt.write(conn, outgoing)
        if finished:
            break
        data = await attempt.read(conn, _READ)
        if not data:
            raise ProbeFailure(ErrorKind.TLS, "the server closed the stapling handshake")
        received += len(data)
        if received > MAX_HANDSHAKE:
            raise ProbeFailure(ErrorKind.TLS, f"the handshake exceeds {MAX_HANDSHAKE} bytes")
        tls.bio_write(data)
    cert = tls.get_peer_certificate(as_cryptography=True)
    if cert is None:
        raise ProbeFailure(ErrorKind.TLS, "the server presented no certificate when stapling")
    from cryptography.hazmat.primitives import serialization

    der = cert.public_bytes(serialization.Encoding.DER)
    return Staple(der, seen[0] if seen and seen[0] else None)


def _drain(tls: object) -> bytes:
    from OpenSSL import SSL

    assert isinstance(tls, SSL.Connection)
    out = bytearray()
    while True:
        try:
            chunk = tls.bio_read(_READ)
        except SSL.WantReadError:
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)
