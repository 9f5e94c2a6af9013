"""A throwaway certificate authority for local TLS, made with ``cryptography``.

``probekit demo`` serves HTTPS on loopback with a certificate from a CA that exists only for that
run: :func:`write_local_ca` makes the CA and one leaf certificate, writes them as PEM files and
returns where they are. ``cryptography`` is imported only when it is called, so ``import probekit``
does not load it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from pathlib import Path

import attrs

__all__ = ["LocalCA", "write_local_ca"]


@attrs.frozen
class LocalCA:
    """The PEM files :func:`write_local_ca` wrote, and the CA certificate's text.

    Clients trust ``ca_pem`` (or ``ca_file``); the server presents ``cert_file`` with
    ``key_file`` (see :meth:`server_context`).
    """

    ca_pem: str
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        """A server-side SSL context that presents the leaf certificate."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def write_local_ca(
    directory: Path,
    names: Sequence[str] = ("localhost", "127.0.0.1"),
    *,
    lifetime: datetime.timedelta = datetime.timedelta(days=90),
) -> LocalCA:
    """Make a CA and a leaf certificate for ``names``; write both to ``directory`` as PEM.

    Each name becomes a subjectAltName entry: an IP address entry when it parses as one, a DNS
    entry otherwise. Both certificates are valid from an hour ago (clock skew) for ``lifetime``
    and use EC P-256 keys (fast to make). The files are ``ca.pem``, ``cert.pem`` and ``key.pem``
    (the leaf's unencrypted PKCS#8 key, created readable by the owner only); the CA's key is
    never written anywhere.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not names:
        raise ValueError("write_local_ca needs at least one name")
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(hours=1), now + lifetime

    def key_usage(*, cert_sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=not cert_sign,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=cert_sign,
            crl_sign=cert_sign,
            encipher_only=False,
            decipher_only=False,
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "probekit"),
            x509.NameAttribute(NameOID.COMMON_NAME, "probekit throwaway CA"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ca = LocalCA(
        ca_pem=ca_pem.decode("ascii"),
        ca_file=directory / "ca.pem",
        cert_file=directory / "cert.pem",
        key_file=directory / "key.pem",
    )
    ca.ca_file.write_bytes(ca_pem)
    ca.cert_file.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(ca.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    return ca
