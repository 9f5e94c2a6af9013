from __future__ import annotations

import datetime as dt
import os
import ssl
from collections.abc import AsyncIterator

import pytest
import trustme
from hypothesis import HealthCheck, settings

from probekit import ProbeContext
from servers import GuardedConnector, HttpServer, make_context, serving

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


def _server_ctx(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


@pytest.fixture(scope="session")
def good_tls(ca: trustme.CA) -> ssl.SSLContext:
    return _server_ctx(ca.issue_cert("localhost", "test.local", "127.0.0.1"))


@pytest.fixture(scope="session")
def expired_tls(ca: trustme.CA) -> ssl.SSLContext:
    now = dt.datetime.now(dt.UTC)
    cert = ca.issue_cert(
        "localhost",
        "127.0.0.1",
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=3),
    )
    return _server_ctx(cert)


@pytest.fixture(scope="session")
def wrong_name_tls(ca: trustme.CA) -> ssl.SSLContext:
    return _server_ctx(ca.issue_cert("other.example"))


@pytest.fixture(scope="session")
def self_signed_tls() -> ssl.SSLContext:
    other = trustme.CA()  # a CA nobody trusts: its leaf is as good as self-signed to the client
    return _server_ctx(other.issue_cert("localhost", "127.0.0.1"))


@pytest.fixture(scope="session")
def ca_pem(ca: trustme.CA) -> str:
    return ca.cert_pem.bytes().decode()


@pytest.fixture
def connector() -> GuardedConnector:
    return GuardedConnector()


@pytest.fixture
def ctx(connector: GuardedConnector) -> ProbeContext:
    return make_context(connector=connector)


@pytest.fixture
async def http_server() -> AsyncIterator[HttpServer]:
    async with serving(HttpServer()) as server:
        yield server


@pytest.fixture
async def https_server(good_tls: ssl.SSLContext) -> AsyncIterator[HttpServer]:
    async with serving(HttpServer(good_tls)) as server:
        yield server
