"""`probekit demo` (the README's main command) shows a failover: run it and read its output."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import probekit
from probekit.cli._ca import write_local_ca


def test_demo_shows_unconfirmed_then_confirmed_error_alert_and_recovery() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "probekit",
            "demo",
            "--duration",
            "14",
            "--interval",
            "1",
            "--break-after",
            "4",
            "--mend-after",
            "9",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    lines = out.splitlines()
    broke = next(i for i, line in enumerate(lines) if ">>> breaking 'web'" in line)
    unconfirmed = next(
        i for i, line in enumerate(lines) if "UNCONFIRMED ERROR: web failed on" in line
    )
    alert = next(
        i for i, line in enumerate(lines) if "CONFIRMED ERROR -> ALERT: web is down" in line
    )
    resolved = next(i for i, line in enumerate(lines) if "ALERT RESOLVED: web is up again" in line)
    assert broke < unconfirmed < alert < resolved
    # the confirmation ran on the other instance
    assert (
        "failed on instance-a, again on instance-b" in lines[alert]
        or "failed on instance-b, again on instance-a" in lines[alert]
    )
    # every monitor reported, from both instances, and only 'web' alerted
    for monitor in ("web", "secure", "mail"):
        assert any(
            f" {monitor} " in line and "UP" in line and "instance-a" in line for line in lines
        ), monitor
        assert any(
            f" {monitor} " in line and "UP" in line and "instance-b" in line for line in lines
        ), monitor
    assert sum("CONFIRMED ERROR -> ALERT" in line for line in lines) == 1
    assert "done (1 alert(s) opened)" in out


def _serve_once(listener: socket.socket, ctx: ssl.SSLContext) -> None:
    conn, _ = listener.accept()
    with conn:
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError):
            pass  # the client refused the certificate: the test on its side says so


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str) -> Any:
    """One real TLS handshake on loopback; returns the server certificate the client verified."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        server = threading.Thread(target=_serve_once, args=(listener, server_ctx))
        server.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=10) as raw,
                client_ctx.wrap_socket(raw, server_hostname=hostname) as tls,
            ):
                assert tls.recv(2) == b"ok"
                return tls.getpeercert()
        finally:
            server.join(10)


def test_local_ca_verifies_its_leaf_for_localhost_and_127_0_0_1(tmp_path: Path) -> None:
    ca = write_local_ca(tmp_path)
    assert ca.ca_pem == ca.ca_file.read_text()
    assert ca.ca_pem.startswith("-----BEGIN CERTIFICATE-----")
    assert stat.S_IMODE(ca.key_file.stat().st_mode) & 0o077 == 0
    client = ssl.create_default_context(cadata=ca.ca_pem)
    for hostname in ("localhost", "127.0.0.1"):
        peer = _handshake(ca.server_context(), client, hostname)
        assert ("DNS", "localhost") in peer["subjectAltName"]
        assert ("IP Address", "127.0.0.1") in peer["subjectAltName"]
    # the check is real: another name, or a client trusting another CA, is refused
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(ca.server_context(), client, "example.com")
    (tmp_path / "other").mkdir()
    other = write_local_ca(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(
            ca.server_context(), ssl.create_default_context(cadata=other.ca_pem), "localhost"
        )


def test_local_ca_certificates_have_the_extensions_and_validity_asked_for(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca = write_local_ca(tmp_path)
    ca_cert = x509.load_pem_x509_certificate(ca.ca_file.read_bytes())
    leaf = x509.load_pem_x509_certificate(ca.cert_file.read_bytes())
    now = dt.datetime.now(dt.UTC)
    for cert in (ca_cert, leaf):
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert abs(cert.not_valid_before_utc - (now - dt.timedelta(hours=1))).total_seconds() < 60
        assert abs(cert.not_valid_after_utc - (now + dt.timedelta(days=90))).total_seconds() < 60
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca_cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert leaf.issuer == ca_cert.subject
    leaf.verify_directly_issued_by(ca_cert)


_WITHOUT_TRUSTME = """
import asyncio, ssl, sys, tempfile
from pathlib import Path

sys.modules["trustme"] = None  # `import trustme` now fails, as where it is not installed
import probekit
from probekit.cli import _demo

assert "cryptography" not in sys.modules, "cryptography is imported lazily"


async def main() -> None:
    targets = _demo._Targets()
    with tempfile.TemporaryDirectory() as tmp:
        await targets.start(Path(tmp))
        try:
            client = ssl.create_default_context(cadata=targets.ca_pem)
            _, writer = await asyncio.open_connection(
                "127.0.0.1", targets.https_port, ssl=client, server_hostname="localhost"
            )
            writer.close()
        finally:
            await targets.stop()


asyncio.run(main())
assert "cryptography" in sys.modules
assert sys.modules["trustme"] is None
print("ok")
"""


def test_demo_targets_serve_https_without_trustme() -> None:
    src = str(Path(probekit.__file__).resolve().parents[1])
    path = [src, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TRUSTME],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
