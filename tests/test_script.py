"""ScriptProbe (kind ``script``): local Python checks with an httpx client on the dial path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from probekit import DefinitionError, DefinitionErrors, ErrorKind, ProbeContext, Status, build_probe
from probekit.checkpoint._held import Definitions
from probekit.probes.script import CONTROL_PLANE_REFUSAL, ScriptProbe
from servers import GuardedConnector, HttpServer


def _script(tmp_path: Path, body: str, name: str = "check.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


async def test_a_script_checks_with_phases_metrics_and_outcomes(
    tmp_path: Path, http_server: HttpServer, ctx: ProbeContext
) -> None:
    path = _script(
        tmp_path,
        f"""
        async def check(client, script):
            with script.phase("login"):
                r = await client.get("{http_server.url("/json")}")
            doc = r.json()
            script.metric("latency_ms", doc["db"]["latency_ms"])
            script.outcome("db name", doc["db"]["name"] == "main", "main", doc["db"]["name"])
            r2 = await client.get("{http_server.url("/chain/1")}", follow_redirects=True)
            assert r2.status_code == 200, r2.status_code
        """,
    )
    result = await ScriptProbe(path).check(ctx)
    assert result.status is Status.UP, result.summary()
    assert result.metrics["latency_ms"] == 12
    assert result.metrics["requests"] == 4  # /json, then /chain/1 -> /chain/0 -> /ok: every hop
    names = result.phase_names()
    assert "login" in names and "http1.connect" in names and "http4.transfer" in names
    assert [a.name for a in result.assertions] == ["db name"]
    assert result.address == f"127.0.0.1:{http_server.port}"


async def test_assertion_error_is_a_failed_outcome(
    tmp_path: Path, http_server: HttpServer, ctx: ProbeContext
) -> None:
    path = _script(
        tmp_path,
        f"""
        async def check(client, script):
            r = await client.get("{http_server.url("/status/500")}")
            assert r.status_code == 200, f"status {{r.status_code}}"
        """,
    )
    result = await ScriptProbe(path).check(ctx)
    assert result.status is Status.DOWN and result.error is not None
    assert result.error.kind is ErrorKind.ASSERTION and "status 500" in result.error.message


async def test_redirect_to_metadata_is_policy_denied(
    tmp_path: Path, http_server: HttpServer, ctx: ProbeContext, connector: GuardedConnector
) -> None:
    target = http_server.url("/redirect?to=http://169.254.169.254/latest")
    path = _script(
        tmp_path,
        f"""
        async def check(client, script):
            await client.get("{target}", follow_redirects=True)
        """,
    )
    result = await ScriptProbe(path).check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED
    assert connector.refused == [] and connector.dialled == [("127.0.0.1", http_server.port)]


async def test_timeouts_and_script_bugs(
    tmp_path: Path, http_server: HttpServer, ctx: ProbeContext
) -> None:
    from probekit import Timeouts

    slow = _script(
        tmp_path,
        f"""
        async def check(client, script):
            await client.get("{http_server.url("/silent")}")
        """,
        "slow.py",
    )
    result = await ScriptProbe(slow, timeouts=Timeouts(total=5, read=0.2)).check(ctx)
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT
    buggy = _script(tmp_path, "async def check(client, script):\n    return 1 / 0\n", "bug.py")
    result = await ScriptProbe(buggy).check(ctx)
    assert result.status is Status.UNKNOWN and result.error is not None
    assert result.error.kind is ErrorKind.INTERNAL
    missing = await ScriptProbe(str(tmp_path / "nope.py")).check(ctx)
    assert missing.status is Status.UNKNOWN and missing.error is not None
    assert "cannot read the script" in missing.error.message
    sync = _script(tmp_path, "def check(client, script):\n    pass\n", "sync.py")
    result = await ScriptProbe(sync).check(ctx)
    assert result.error is not None and "async def check" in result.error.message


async def test_the_script_is_reloaded_when_it_changes(tmp_path: Path, ctx: ProbeContext) -> None:
    import os

    path = _script(tmp_path, "async def check(client, script):\n    script.metric('v', 1)\n")
    assert (await ScriptProbe(path).check(ctx)).metrics["v"] == 1
    Path(path).write_text("async def check(client, script):\n    script.metric('v', 2)\n")  # noqa: ASYNC240
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))
    assert (await ScriptProbe(path).check(ctx)).metrics["v"] == 2


def test_a_checkpoint_refuses_a_script_from_the_control_plane() -> None:
    with pytest.raises(DefinitionError) as info:
        Definitions({}).build({"kind": "script", "path": "/etc/probekit/check.py"})
    assert info.value.path == "definition.kind"
    assert "never sent from the control plane" in info.value.message
    assert info.value.message == CONTROL_PLANE_REFUSAL


def test_the_control_plane_refuses_to_send_a_script(tmp_path: Path) -> None:
    from probekit.control._config import load_control_config

    config = tmp_path / "control.toml"
    config.write_text(
        textwrap.dedent(
            """
            [control]
            listen = "127.0.0.1:0"

            [[checkpoints]]
            id = "office"
            token = "0123456789abcdef0123456789abcdef"

            [[monitors]]
            id = "scripted"
            checkpoint = "office"
            kind = "script"
            path = "/etc/probekit/check.py"
            """
        )
    )
    with pytest.raises(DefinitionErrors) as info:
        load_control_config(config, warn=lambda _text: None)
    messages = {e.path: e.message for e in info.value.errors}
    assert messages.get("monitors[0].kind") == CONTROL_PLANE_REFUSAL, messages


def test_a_local_definition_builds() -> None:
    probe = build_probe({"kind": "script", "path": "checks/login.py", "function": "login"})
    assert isinstance(probe, ScriptProbe) and probe.function == "login"
    with pytest.raises(DefinitionErrors):
        build_probe({"kind": "script", "path": "x.py", "function": "not valid"})


async def test_the_control_plane_refuses_to_add_a_script_at_run_time(tmp_path: Path) -> None:
    from probekit import Secret
    from probekit.control import ControlPlane, ControlSettings, MemorySink

    settings = ControlSettings(
        tokens={"office": Secret("0123456789abcdef0123456789abcdef")},
        db_path=str(tmp_path / "control.db"),
    )
    async with ControlPlane(settings, sinks=[MemorySink()]) as cp:
        with pytest.raises(DefinitionError) as info:
            await cp.add_monitor("s", "office", {"kind": "script", "path": "x.py"}, interval=60)
        assert info.value.message == CONTROL_PLANE_REFUSAL
        assert await cp.results("s") == []


async def test_probekit_check_script(tmp_path: Path, http_server: HttpServer) -> None:
    import asyncio
    import sys

    path = _script(
        tmp_path,
        f"""
        async def check(client, script):
            response = await client.get("{http_server.url("/ok")}")
            script.outcome("hello", response.text == "hello probekit", "hello", response.text)
        """,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "probekit",
        "check",
        "script",
        path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, (out, err)
    assert len(http_server.requests) == 1
