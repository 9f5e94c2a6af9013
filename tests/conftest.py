from __future__ import annotations

import datetime as dt
import os
import secrets
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trustme
from hypothesis import HealthCheck, settings

from _pgserver import PgServer, find_bin
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


# -- the control plane's storage: SQLite and PostgreSQL ------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL for the session (see tests/_pgserver.py). Without its binaries or psycopg
    the PostgreSQL variants are skipped, unless ``PROBEKIT_PG_REQUIRED`` is set (``nox -s
    control_pg``), which makes that a failure."""
    required = bool(os.environ.get("PROBEKIT_PG_REQUIRED"))
    bin_dir = find_bin()
    problem = None
    if bin_dir is None:
        problem = "PostgreSQL binaries not found (initdb, pg_ctl; set PROBEKIT_PG_BIN)"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            problem = "psycopg is not installed (pip install probekit[postgres-store])"
    if problem is not None:
        if required:
            pytest.fail(f"PROBEKIT_PG_REQUIRED is set but {problem}")
        pytest.skip(f"PostgreSQL variant skipped: {problem}")
    assert bin_dir is not None
    server = PgServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def control_store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a control-plane test on each storage backend. On ``postgresql`` every control plane
    the test makes (``probekit.control.Store``) keeps its database in the session's PostgreSQL
    instead: each ``:memory:`` database a schema of its own, each file path one schema (the
    same path reopened is the same database), all dropped after the test. A test marked
    ``sqlite_only`` (it reads the SQLite file itself) runs on SQLite alone."""
    backend: str = request.param
    if backend == "sqlite":
        yield backend
        return
    if request.node.get_closest_marker("sqlite_only") is not None:
        pytest.skip("reads the SQLite file itself")
    server: PgServer = request.getfixturevalue("pg_server")
    import psycopg

    import probekit.control as control
    from probekit._secret import Secret

    real = control.Store
    schemas: dict[str, str] = {}
    admin = psycopg.connect(server.admin_dsn, autocommit=True)

    def store(db: str, password: Secret | None = None) -> Any:
        if db == ":memory:" or db not in schemas:
            name = f"cp_{secrets.token_hex(6)}"
            admin.execute(f"CREATE SCHEMA {name} AUTHORIZATION probekit")
            if db != ":memory:":
                schemas[db] = name
        else:
            name = schemas[db]
        if db == ":memory:":
            schemas[name] = name
        url = f"{server.url}?options=-csearch_path%3D{name}"
        return real(url, Secret(server.password))

    monkeypatch.setattr(control, "Store", store)
    try:
        yield backend
    finally:
        for name in set(schemas.values()):
            admin.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        admin.close()
