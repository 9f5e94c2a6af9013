"""TLS settings, shared SSL contexts, and what a handshake tells about the peer."""

from __future__ import annotations

import _ssl
import datetime as dt
import functools
import hashlib
import ssl
from typing import Any, Literal

import attrs

from ._exceptions import DefinitionError
from ._result import CertInfo, TlsInfo
from ._secret import Secret

__all__ = ["TlsOptions", "TlsVersion", "cert_info", "ssl_context", "tls_info", "warm_up"]

TlsVersion = Literal["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]

_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


def _version(_inst: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and value not in _VERSIONS:
        raise DefinitionError(
            attribute.name, f"unknown TLS version {value!r}; use one of {sorted(_VERSIONS)}"
        )


def _key_password(value: Secret | str | None) -> Secret | None:
    if value is None or isinstance(value, Secret):
        return value
    if isinstance(value, str):  # taken as a Secret at definition time, never shown
        return Secret(value)
    raise DefinitionError(
        "client_key_password",
        f"expected a Secret (a str is taken as one), got {type(value).__name__}",
    )


@attrs.frozen
class TlsOptions:
    """How to do TLS.

    ``server_name`` overrides the SNI name and the name the certificate is checked against
    (default: the target's host). ``ca_file``/``ca_data`` replace the system trust store.
    ``client_cert``/``client_key`` are file paths for mutual TLS (``client_key_password`` is a
    :class:`Secret`; a ``str`` is taken as one). ``alpn`` lists protocols to
    offer (the HTTP probe fills it in).
    """

    verify: bool = True
    ca_file: str | None = None
    ca_data: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    client_key_password: Secret | None = attrs.field(default=None, converter=_key_password)
    server_name: str | None = None
    min_version: TlsVersion | None = attrs.field(default=None, validator=_version)
    max_version: TlsVersion | None = attrs.field(default=None, validator=_version)
    alpn: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.client_key and not self.client_cert:
            raise DefinitionError("client_key", "client_key needs client_cert")
        if (
            self.min_version
            and self.max_version
            and _VERSIONS[self.min_version] > _VERSIONS[self.max_version]
        ):
            raise DefinitionError("min_version", "min_version is above max_version")


@functools.lru_cache(maxsize=128)
def ssl_context(options: TlsOptions) -> ssl.SSLContext:
    """Build (once per distinct options value) the client SSL context for ``options``.

    Building a context costs milliseconds of CPU (loading the trust store); probes share them.
    """
    ctx = ssl.create_default_context(cafile=options.ca_file, cadata=options.ca_data)
    if not options.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if options.client_cert:
        password = options.client_key_password.reveal() if options.client_key_password else None
        ctx.load_cert_chain(options.client_cert, options.client_key, password=password)
    if options.min_version:
        ctx.minimum_version = _VERSIONS[options.min_version]
    if options.max_version:
        ctx.maximum_version = _VERSIONS[options.max_version]
    if options.alpn:
        ctx.set_alpn_protocols(list(options.alpn))
    return ctx


def warm_up(options: TlsOptions) -> None:
    """Do a process's one-time TLS set-up for ``options`` now, outside any check's clock: build
    (and cache) the SSL context, and import what describing a peer's certificates needs."""
    ssl_context(options)
    from cryptography import x509  # noqa: F401 - imported for the side effect, see cert_info


# The DER constant lives in the private _ssl module before 3.13.
_ENCODING_DER: int = int(getattr(_ssl, "ENCODING_DER", 2))


def _name(name: Any) -> str:
    return str(name.rfc4514_string())


@functools.lru_cache(maxsize=1024)
def cert_info(der: bytes) -> CertInfo:
    """Describe one DER certificate (cached by content: targets present the same chain)."""
    from cryptography import x509  # lazily: only TLS checks need it

    cert = x509.load_der_x509_certificate(der)
    sans: list[str] = []
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans.extend(str(v) for v in ext.get_values_for_type(x509.DNSName))
        sans.extend(str(v) for v in ext.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        pass
    return CertInfo(
        subject=_name(cert.subject),
        issuer=_name(cert.issuer),
        sans=tuple(sans),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sha256=hashlib.sha256(der).hexdigest(),
        serial=format(cert.serial_number, "x"),
    )


def peer_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> tuple[CertInfo, ...]:
    """The chain the peer sent, leaf first (falls back to the leaf alone where unavailable)."""
    # CPython 3.10-3.12 has the chain only on the private _sslobj (public from 3.13).
    raw = getattr(ssl_object, "_sslobj", None)
    ders: list[bytes] = []
    getter = getattr(raw, "get_unverified_chain", None)
    if getter is not None:
        ders = [c.public_bytes(_ENCODING_DER) for c in getter() or ()]
    if not ders:
        leaf = ssl_object.getpeercert(binary_form=True)
        ders = [leaf] if leaf else []
    return tuple(cert_info(d) for d in ders)


def tls_info(
    ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, verified: bool
) -> TlsInfo:
    cipher = ssl_object.cipher()
    return TlsInfo(
        version=ssl_object.version() or "",
        cipher=cipher[0] if cipher else "",
        alpn=ssl_object.selected_alpn_protocol(),
        server_name=server_name,
        verified=verified,
        chain=peer_chain(ssl_object),
    )


def earliest_expiry_days(info: TlsInfo, now: dt.datetime) -> float | None:
    """Days until the first certificate of the chain expires (negative once expired)."""
    if not info.chain:
        return None
    return min(c.days_left(now) for c in info.chain)
