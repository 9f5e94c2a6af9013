"""The control plane on PostgreSQL: configuration (URL, password apart), migrations, errors.

The control-plane suites themselves run on both backends (the ``control_store`` fixture in
conftest.py); these are what only PostgreSQL has.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from _pgserver import PgServer
from probekit import Secret
from probekit._exceptions import DefinitionErrors
from probekit.control import ControlPlane, ControlSettings
from probekit.control import _store as db
from probekit.control._config import load_control_config

TOKEN = "a-token-of-enough-length-0123456789"
PASSWORD_CANARY = "pg-password-canary-4#w"

CONFIG = """
[control]
port = 0
db = "{db}"
{extra}

[[checkpoints]]
id = "office"
token = {{ env = "T_TOKEN" }}

[[monitors]]
id = "web"
checkpoint = "office"
kind = "http"
url = "http://127.0.0.1:1/"
"""


def _load(tmp_path: Path, db_url: str, extra: str = "", tail: str = "") -> Any:
    path = tmp_path / "control.toml"
    path.write_text(CONFIG.format(db=db_url, extra=extra) + tail)
    return load_control_config(path)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_TOKEN", TOKEN)
    monkeypatch.setenv("T_PG", PASSWORD_CANARY)


def test_a_postgresql_url_and_its_password_from_the_environment(tmp_path: Path, env: None) -> None:
    url = "postgresql://probekit@127.0.0.1:5999/probekit"
    config = _load(tmp_path, url, 'db_password = { env = "T_PG" }')
    assert config.settings.db_path == url
    assert config.settings.db_password == Secret(PASSWORD_CANARY)
    assert PASSWORD_CANARY not in repr(config.settings)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://probekit:{PASSWORD_CANARY}@127.0.0.1:5999/probekit",
        f"postgresql://probekit@127.0.0.1:5999/probekit?password={PASSWORD_CANARY}",
    ],
)
def test_a_password_in_the_url_is_refused_without_repeating_it(
    tmp_path: Path, env: None, url: str
) -> None:
    with pytest.raises(DefinitionErrors) as info:
        _load(tmp_path, url)
    assert "control.db: the URL holds a password" in str(info.value)
    assert PASSWORD_CANARY not in str(info.value)


def test_db_password_is_only_for_postgresql(tmp_path: Path, env: None) -> None:
    with pytest.raises(DefinitionErrors, match=r"control\.db_password: only for a postgresql"):
        _load(tmp_path, str(tmp_path / "c.db"), 'db_password = { env = "T_PG" }')


def test_alert_channels_on_postgresql_need_no_outbox_file(tmp_path: Path, env: None) -> None:
    url = "postgresql://probekit@127.0.0.1:5999/probekit"
    channel = '\n[[channels]]\ntype = "webhook"\nurl = "http://127.0.0.1:9/hook"\n'
    config = _load(tmp_path, url, tail=channel)  # the outbox is the database's
    assert {c.path for c in config.channels} == {":memory:"}
    outbox = tmp_path / "outbox.db"  # an older version's file: its events move at start
    config = _load(tmp_path, url, f'outbox = "{outbox}"', tail=channel)
    assert {c.path for c in config.channels} == {str(outbox)}


# -- against a real server --------------------------------------------------------------------


def _schema(pg_server: PgServer, name: str) -> str:
    import psycopg

    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        admin.execute(f"CREATE SCHEMA {name} AUTHORIZATION probekit")
    return f"{pg_server.url}?options=-csearch_path%3D{name}"


async def test_a_control_plane_keeps_its_monitors_in_postgresql(pg_server: PgServer) -> None:
    url = _schema(pg_server, "keeps")
    settings = ControlSettings(
        tokens={"office": Secret(TOKEN)}, db_path=url, db_password=Secret(pg_server.password)
    )
    definition = {"kind": "tcp", "host": "127.0.0.1", "port": 9}
    async with ControlPlane(settings, sinks=[]) as cp:
        await cp.add_monitor("m1", "office", definition, interval=60)
    async with ControlPlane(settings, sinks=[]) as cp:
        assert cp.monitors["m1"].definition == definition
        version = await cp._store.call(
            lambda c: c.execute("SELECT version FROM probekit_schema").fetchall()
        )
        assert version == [(db.SCHEMA_VERSION,)]


async def test_a_wrong_password_fails_the_start_and_is_never_shown(
    pg_server: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = _schema(pg_server, "wrongpw")
    settings = ControlSettings(
        tokens={"office": Secret(TOKEN)}, db_path=url, db_password=Secret(PASSWORD_CANARY)
    )
    import psycopg

    cp = ControlPlane(settings, sinks=[])
    caplog.set_level(logging.DEBUG)
    with pytest.raises(psycopg.OperationalError) as info:
        await cp.start()
    await cp.stop()
    assert "password authentication failed" in str(info.value)
    assert PASSWORD_CANARY not in str(info.value)
    assert PASSWORD_CANARY not in caplog.text


async def test_a_schema_from_a_newer_probekit_is_refused(pg_server: PgServer) -> None:
    url = _schema(pg_server, "newer")
    store = db.Store(url, Secret(pg_server.password))
    await store.call(lambda c: c.execute("UPDATE probekit_schema SET version = 99"))
    await store.close()
    again = db.Store(url, Secret(pg_server.password))
    with pytest.raises(again.errors, match="newer probekit"):
        await again.call(lambda c: None)
    await again.close()


async def test_a_schema_3_database_gets_the_outbox(pg_server: PgServer) -> None:
    url = _schema(pg_server, "schema3")
    store = db.Store(url, Secret(pg_server.password))
    await store.call(lambda c: c.execute("DROP TABLE alert_outbox"))
    await store.call(lambda c: c.execute("DROP TABLE sites"))
    await store.call(lambda c: c.execute("UPDATE probekit_schema SET version = 3"))
    await store.close()
    again = db.Store(url, Secret(pg_server.password))
    version = await again.call(
        lambda c: c.execute("SELECT version FROM probekit_schema").fetchall()
    )
    assert version == [(5,)] == [(db.SCHEMA_VERSION,)]
    rows = await again.call(lambda c: c.execute("SELECT count(*) FROM alert_outbox").fetchone())
    assert rows == (0,)
    rows = await again.call(lambda c: c.execute("SELECT count(*) FROM sites").fetchone())
    assert rows == (0,)
    await again.close()


async def test_two_control_planes_starting_together_migrate_once(pg_server: PgServer) -> None:
    url = _schema(pg_server, "together")
    stores = [db.Store(url, Secret(pg_server.password)) for _ in range(4)]
    await asyncio.gather(*(s.call(db.load_monitors) for s in stores))
    rows = await stores[0].call(lambda c: c.execute("SELECT * FROM probekit_schema").fetchall())
    assert rows == [(db.SCHEMA_VERSION,)]
    for store in stores:
        await store.close()


async def test_store_errors_are_the_ones_the_control_plane_catches(pg_server: PgServer) -> None:
    import psycopg

    store = db.Store(_schema(pg_server, "errs"), Secret(pg_server.password))
    with pytest.raises(store.errors) as info:
        await store.call(lambda c: c.execute("SELECT * FROM no_such_table"))
    assert isinstance(info.value, psycopg.Error)
    await store.close()
