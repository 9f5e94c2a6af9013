"""`probekit control` and `probekit checkpoint`: the control plane and an agent, as commands.

The end-to-end test runs both as subprocesses on loopback against a local HTTP target; the rest
run the commands in-process through main(). Every wait is bounded.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import pytest

from probekit import DefinitionErrors
from probekit.cli import load_control_config, main
from servers import closed_port

TOKEN = "cli-token-canary-7%q"
API_KEY = "cli-api-key-canary-4&w"


class Handler(BaseHTTPRequestHandler):
    """200 with the right bearer token (the checkpoint's --secret), 401 without it."""

    def do_GET(self) -> None:
        ok = self.headers.get("Authorization") == f"Bearer {API_KEY}"
        body = b"fine" if ok else b"who are you?"
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def web() -> Iterator[int]:
    """A threaded HTTP server on loopback; yields its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


class Lines:
    """Collects a stream's lines on a thread, so a test can wait for one with a timeout."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first line (seen so far or arriving within ``timeout``) matching ``pattern``."""
        compiled = re.compile(pattern)
        for line in self.lines:
            if match := compiled.search(line):
                return match
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if match := compiled.search(line):
                return match
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))

    def rest(self, timeout: float = 5.0) -> str:
        """Everything, once the stream has ended (the process has exited)."""
        self._thread.join(timeout)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return "\n".join(self.lines)


def control_config(tmp_path: Path, port: int, **extra: str) -> Path:
    path = tmp_path / "control.toml"
    path.write_text(
        f"""
[control]
port = 0
db = "{tmp_path / "control.db"}"
heartbeat_interval = 1

[[checkpoints]]
id = "office"
token = {{ env = "PK_TEST_TOKEN" }}

[[monitors]]
id = "web"
checkpoint = "office"
interval = 0.3
kind = "http"
url = "http://127.0.0.1:{port}/"
bearer_token = {{ secret = "api" }}

[[monitors]]
id = "web-port"
checkpoint = "office"
interval = 0.3
kind = "tcp"
host = "127.0.0.1"
port = {port}
{extra.get("more", "")}
"""
    )
    return path


def probekit(*argv: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "probekit", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def stop(proc: subprocess.Popen[str], timeout: float) -> tuple[int, float]:
    """SIGTERM ``proc``; its exit code and how long it took to exit."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout)
    return code, time.monotonic() - started


def test_control_and_two_checkpoints_as_commands(tmp_path: Path, web: int) -> None:
    env = {**os.environ, "PK_TEST_TOKEN": TOKEN, "PK_TEST_API": API_KEY}
    procs: list[subprocess.Popen[str]] = []
    try:
        control = probekit("control", "--config", str(control_config(tmp_path, web)), env=env)
        procs.append(control)
        control_out, control_err = Lines(control.stdout), Lines(control.stderr)
        url = control_out.wait_for(r"listening on (ws://127\.0\.0\.1:\d+/)", 20).group(1)
        instances = []
        for name in ("a", "b"):
            extra = ["--metrics-port", "0"] if name == "a" else []
            instance = probekit(
                "checkpoint",
                *("--url", url, "--token-env", "PK_TEST_TOKEN", "--insecure"),
                *("--checkpoint-id", "office", "--instance-id", name),
                *("--spool", str(tmp_path / f"{name}.db"), "--secret", "api=PK_TEST_API"),
                *("--heartbeat-interval", "1", *extra),
                env=env,
            )
            procs.append(instance)
            instances.append((instance, Lines(instance.stdout), Lines(instance.stderr)))

        # Results for the monitor arrive at the control plane from both instances: the
        # definition went out with a secret reference, resolved on the checkpoint side.
        for name in ("a", "b"):
            control_out.wait_for(rf" web +UP +on {name} \(scheduled", 30)
            control_out.wait_for(rf" web-port +UP +on {name} \(scheduled", 10)
        found = instances[0][2].wait_for(r"/metrics and /ready at http://127\.0\.0\.1:(\d+)/", 5)
        port = int(found.group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert 'probekit_checkpoint_connected{checkpoint_id="office",instance_id="a"} 1' in (
                response.read().decode()
            )

        # SIGTERM: each instance drains and exits with 0, then the control plane.
        for instance, out, err in instances:
            code, took = stop(instance, 15)
            assert code == 0, err.rest()
            assert took < 8
            assert re.search(r"drained: \d+ results produced, \d+ acked, 0 left", err.rest())
            assert out.rest() == ""
        code, took = stop(control, 15)
        assert code == 0, control_err.rest()
        assert took < 5
        output = control_out.rest()
        assert re.search(r"stopped \(\d+ results stored, 0 duplicates dropped\)", output)
        assert "ALERT" not in output
        everything = output + control_err.rest() + "".join(e.rest() for _, _, e in instances)
        assert "Traceback" not in everything
        assert TOKEN not in everything
        assert API_KEY not in everything
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    with sqlite3.connect(tmp_path / "control.db") as db:
        rows = db.execute(
            "SELECT instance_id, status, count(*) FROM results WHERE monitor_id='web'"
            " GROUP BY instance_id, status"
        ).fetchall()
    assert {(instance, status) for instance, status, _ in rows} == {("a", "up"), ("b", "up")}


def test_control_lists_every_config_error_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PK_UNSET_TOKEN", raising=False)
    path = tmp_path / "bad.toml"
    path.write_text(
        """
[control]
port = 70000
heartbeat_interval = -1

[[checkpoints]]
id = "office"
token = { env = "PK_UNSET_TOKEN" }

[[monitors]]
id = "web"
checkpoint = "office"
kind = "http"
url = "ftp://files.internal/"

[[monitors]]
id = "smtp"
checkpoint = "elsewhere"
kind = "tcp"
host = "mail.internal"
port = 25
steps = [{ expect = "(" }]

[[monitors]]
id = "intranet"
checkpoint = "office"
kind = "http"
url = "https://intranet.internal/"
basic_auth = { username = "probe", password = "hunter2" }

[[webhooks]]
url = "gopher://hooks.internal/"
"""
    )
    code = main(["control", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 3
    expected = [
        "control.port: expected a port number (0-65535), got 70000",
        "control.db: required",
        "control.heartbeat_interval: must be a finite number of seconds above 0, got -1",
        "checkpoints[0].token.env: environment variable PK_UNSET_TOKEN is not set",
        "monitors[0].url: scheme must be http or https",
        "monitors[1].checkpoint: no [[checkpoints]] table has the id 'elsewhere'",
        "monitors[1].steps[0].pattern: invalid regex",
        "monitors[2].basic_auth.password: an inline secret would be sent to the checkpoint",
        "webhooks[0].url: scheme must be http or https",
    ]
    assert f"probekit control: {path}: {len(expected)} errors" in err
    for line in expected:
        assert f"  {line}" in err, line
    assert "hunter2" not in err


def test_control_config_ids_and_seconds_follow_the_shared_rules(tmp_path: Path) -> None:
    path = tmp_path / "ids.toml"
    path.write_text(
        f"""
[control]
port = 0
db = "control.db"
stale_after = true

[[checkpoints]]
id = "{"c" * 201}"
token = "tok-1"

[[checkpoints]]
token = "tok-2"

[[monitors]]
id = "a\\u0007b"
checkpoint = "office"
kind = "tcp"
host = "h"
port = 1
interval = 0

[[webhooks]]
url = "https://hooks.example/"
timeout = -2
"""
    )
    with pytest.raises(DefinitionErrors) as info:
        load_control_config(path, warn=lambda _: None)
    messages = [str(e) for e in info.value.errors]
    assert "control.stale_after: expected a number of seconds, got True" in messages
    assert "checkpoints[0].id: is longer than 200 characters" in messages
    assert "checkpoints[1].id: required: an id of 1 to 200 printable characters" in messages
    assert "monitors[0].id: contains a control or unprintable character" in messages
    assert "monitors[0].interval: must be a finite number of seconds above 0, got 0" in messages
    assert "webhooks[0].timeout: must be a finite number of seconds above 0, got -2" in messages


def test_the_control_config_loader_is_library_code() -> None:
    from probekit import cli
    from probekit.control import _config

    assert cli.load_control_config is _config.load_control_config
    assert cli.ControlConfig is _config.ControlConfig
    code = (
        "import sys, probekit.control._config; "
        "sys.exit(any(m.startswith('probekit.cli') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=30).returncode == 0


def test_control_config_warnings_are_logged_by_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "inline.toml"
    path.write_text(
        '[control]\nport = 0\ndb = "c.db"\n[[checkpoints]]\nid = "office"\ntoken = "tok"\n'
        '[[monitors]]\nid = "m"\ncheckpoint = "office"\nkind = "tcp"\nhost = "h"\nport = 1\n'
    )
    with caplog.at_level("WARNING", logger="probekit.control"):
        config = load_control_config(path)
    assert [m.monitor_id for m in config.monitors] == ["m"]
    assert any("the token is written in" in r.getMessage() for r in caplog.records)


def test_control_refuses_plain_ws_on_a_non_loopback_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PK_TEST_TOKEN", TOKEN)
    path = control_config(tmp_path, closed_port())
    path.write_text(path.read_text().replace("port = 0\n", 'port = 0\nhost = "0.0.0.0"\n', 1))
    assert main(["control", "--config", str(path)]) == 3
    err = capsys.readouterr().err
    assert "control.host: 0.0.0.0 is not a loopback address" in err
    assert "set tls_cert and tls_key, or pass --insecure" in err
    # --insecure allows it, with a warning (not started here: loopback only in tests)
    warnings: list[str] = []
    config = load_control_config(path, insecure=True, warn=warnings.append)
    assert config.settings.host == "0.0.0.0"
    assert any("control.host: serving plain ws://" in w for w in warnings)
    # TLS without its key, or an unreadable certificate, is an error too
    path.write_text(
        path.read_text().replace("heartbeat_interval", 'tls_cert = "none.pem"\nheartbeat_interval')
    )
    with pytest.raises(DefinitionErrors) as info:
        load_control_config(path)
    assert [str(e) for e in info.value.errors] == [
        "control.tls_key: required with tls_cert: a PEM file"
    ]


def test_control_with_an_inline_token_warns_runs_and_replaces_stale_monitors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], web: int
) -> None:
    path = control_config(tmp_path, web)
    path.write_text(path.read_text().replace('{ env = "PK_TEST_TOKEN" }', f'"{TOKEN}"'))
    assert main(["control", "--config", str(path), "--duration", "0.3"]) == 0
    out, err = capsys.readouterr()
    assert "warning: checkpoints[0].token: the token is written in" in err
    assert TOKEN not in out + err
    assert re.search(
        r"listening on ws://127\.0\.0\.1:\d+/ \(checkpoints: office; 2 monitors\)", out
    )
    assert "stopped (0 results stored, 0 duplicates dropped)" in out

    def stored() -> dict[str, int]:
        with sqlite3.connect(tmp_path / "control.db") as db:
            return dict(db.execute("SELECT monitor_id, revision FROM monitors").fetchall())

    assert stored() == {"web": 1, "web-port": 1}
    # The file is the source of truth: a monitor gone from it is gone from the control plane;
    # an unchanged one keeps its revision.
    # ... and so is a site policy stored through the API that the file does not have
    with sqlite3.connect(tmp_path / "control.db") as db:
        db.execute("INSERT INTO sites VALUES ('api-site', '[\"web\"]', 1)")
    text = path.read_text()
    path.write_text(text[: text.index('[[monitors]]\nid = "web-port"')])
    assert main(["control", "--config", str(path), "--duration", "0.3"]) == 0
    assert "1 monitor)" in capsys.readouterr().out
    assert stored() == {"web": 1}
    with sqlite3.connect(tmp_path / "control.db") as db:
        assert db.execute("SELECT * FROM sites").fetchall() == []


def checkpoint_args(tmp_path: Path, url: str, *extra: str) -> list[str]:
    return [
        "checkpoint",
        *("--url", url, "--token-env", "PK_TEST_TOKEN"),
        *("--checkpoint-id", "office", "--instance-id", "a"),
        *("--spool", str(tmp_path / "spool.db"), *extra),
    ]


def test_checkpoint_refuses_ws_without_insecure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PK_TEST_TOKEN", TOKEN)
    assert main(checkpoint_args(tmp_path, "ws://127.0.0.1:1/")) == 3
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "probekit checkpoint: error: --url: ws:// would send the token and every result in clear "
        "text; use wss://, or pass --insecure (meant for loopback and tests)"
    ]
    assert not (tmp_path / "spool.db").exists()  # refused before anything started


def test_checkpoint_reports_every_bad_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PK_UNSET", raising=False)
    argv = checkpoint_args(
        tmp_path, "wss://127.0.0.1:1/", "--secret", "api", "--deny", "10.0.0.0/33"
    )
    argv[argv.index("PK_TEST_TOKEN")] = "PK_UNSET"
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "--token-env: environment variable PK_UNSET is not set" in err
    assert "--secret: expected NAME=ENVVAR, got 'api'" in err
    assert "--deny: invalid network '10.0.0.0/33'" in err
    monkeypatch.setenv("PK_TEST_TOKEN", TOKEN)
    assert main(checkpoint_args(tmp_path, "wss://127.0.0.1:1/", "--ca-file", str(tmp_path))) == 3
    assert "--ca-file: cannot load" in capsys.readouterr().err
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    for name, message in [
        ("empty", "the token is empty"),
        ("binary", "is not UTF-8 text"),
        ("missing", "cannot read"),
    ]:
        argv = checkpoint_args(tmp_path, "wss://127.0.0.1:1/")
        argv[argv.index("--token-env") : argv.index("PK_TEST_TOKEN") + 1] = [
            "--token-file",
            str(tmp_path / name),
        ]
        assert main(argv) == 3
        assert f"--token-file: {message}" in capsys.readouterr().err.replace(
            f"{tmp_path / name} ", ""
        )
    monkeypatch.delenv("PK_UNSET_SECRET", raising=False)
    assert (
        main(checkpoint_args(tmp_path, "wss://127.0.0.1:1/", "--secret", "db=PK_UNSET_SECRET")) == 3
    )
    assert (
        "--secret: db: environment variable PK_UNSET_SECRET is not set" in capsys.readouterr().err
    )
    assert main(["checkpoint", "--url", "wss://127.0.0.1:1/"]) == 3  # required options
    assert "the following arguments are required" in capsys.readouterr().err


def test_checkpoint_without_its_control_plane_still_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    url = f"ws://127.0.0.1:{closed_port()}/"
    env = {**os.environ, "PK_TEST_TOKEN": TOKEN}
    proc = probekit(*checkpoint_args(tmp_path, url, "--insecure"), env=env)
    try:
        err = Lines(proc.stderr)
        err.wait_for(r"instance a of checkpoint office", 20)
        time.sleep(0.3)  # let it fail to connect and back off
        code, took = stop(proc, 15)
        assert code == 0, err.rest()
        assert took < 5
        assert "drained: 0 results produced, 0 acked, 0 left in the spool" in err.rest()
        assert TOKEN not in err.rest()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_the_liveness_settings_come_from_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "live.toml"
    (tmp_path / "tok").write_text("s3cret-token\n")
    rest = (
        f'[[checkpoints]]\nid = "office"\ntoken = {{file = "{tmp_path / "tok"}"}}\n'
        '[[monitors]]\nid = "m"\ncheckpoint = "office"\nkind = "tcp"\nhost = "h"\nport = 1\n'
    )
    path.write_text(
        '[control]\nport = 0\ndb = "c.db"\ngrace = 0.5\nunanswered_runs = 5\nstartup_grace = 7\n'
        + rest
    )
    config = load_control_config(path, warn=lambda _: None)
    assert (config.settings.grace, config.settings.unanswered_runs) == (0.5, 5)
    assert config.settings.startup_grace == 7.0
    path.write_text('[control]\nport = 0\ndb = "c.db"\ngrace = -1\nunanswered_runs = 0\n' + rest)
    with pytest.raises(DefinitionErrors) as info:
        load_control_config(path, warn=lambda _: None)
    assert {e.path for e in info.value.errors} == {"control.grace", "control.unanswered_runs"}


def test_retention_and_metrics_come_from_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "ops.toml"
    (tmp_path / "tok").write_text("s3cret-token\n")
    rest = (
        f'[[checkpoints]]\nid = "office"\ntoken = {{file = "{tmp_path / "tok"}"}}\n'
        '[[monitors]]\nid = "m"\ncheckpoint = "office"\nkind = "tcp"\nhost = "h"\nport = 1\n'
    )
    head = '[control]\nport = 0\ndb = "c.db"\n'
    path.write_text(head + rest)
    settings = load_control_config(path, warn=lambda _: None).settings
    assert (settings.retention, settings.prune_interval, settings.metrics_port) == (
        30 * 86400,
        60.0,
        None,
    )
    path.write_text(
        head + "retention = 3600\nprune_interval = 5\nprune_batch = 50\n"
        'metrics_host = "::1"\nmetrics_port = 9466\n' + rest
    )
    settings = load_control_config(path, warn=lambda _: None).settings
    assert (settings.retention, settings.prune_interval, settings.prune_batch) == (3600, 5, 50)
    assert (settings.metrics_host, settings.metrics_port) == ("::1", 9466)
    path.write_text(head + "retention = false\n" + rest)
    assert load_control_config(path, warn=lambda _: None).settings.retention is None
    path.write_text(
        head + 'retention = 0\nprune_interval = "1m"\nprune_batch = 0\nmetrics_port = 70000\n'
        "metrics_host = 1\n" + rest
    )
    with pytest.raises(DefinitionErrors) as info:
        load_control_config(path, warn=lambda _: None)
    assert {e.path for e in info.value.errors} == {
        *("control.retention", "control.prune_interval", "control.prune_batch"),
        *("control.metrics_port", "control.metrics_host"),
    }


def test_quiet_prints_alert_events_but_no_line_per_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, web: int
) -> None:
    monkeypatch.setenv("PK_TEST_TOKEN", TOKEN)
    port = closed_port()
    path = control_config(
        tmp_path, web, more=f'[[checkpoints]]\nid = "lab"\ntoken = "{TOKEN}-lab"\n'
    )
    text = path.read_text().replace("port = 0\n", f"port = {port}\n", 1)
    path.write_text(
        text.replace("heartbeat_interval = 1\n", "heartbeat_interval = 0.5\nstartup_grace = 0.5\n")
    )
    env = {**os.environ, "PK_TEST_TOKEN": TOKEN, "PK_TEST_API": API_KEY}
    url = f"ws://127.0.0.1:{port}/"
    instance = probekit(
        *checkpoint_args(tmp_path, url, "--insecure", "--secret", "api=PK_TEST_API"),
        *("--heartbeat-interval", "0.5"),
        env=env,
    )
    try:
        code = main(["control", "--config", str(path), "--duration", "8", "--quiet"])
    finally:
        instance.kill()
        instance.communicate(timeout=10)
    assert code == 0
    out = capsys.readouterr().out
    stored = re.search(r"stopped \((\d+) results stored", out)
    assert stored is not None
    assert int(stored.group(1)) > 0, out  # results arrived...
    assert not re.search(r" web(-port)? +(UP|DOWN)", out), out  # ...and none was printed
    assert "*** CHECKPOINT DOWN -> ALERT: " in out, out  # lab never connects: its alert prints


def test_sighup_reloads_the_monitors_and_a_bad_config_keeps_the_running_one(
    tmp_path: Path, web: int
) -> None:
    env = {**os.environ, "PK_TEST_TOKEN": TOKEN, "PK_TEST_API": API_KEY}
    path = control_config(tmp_path, web)
    control = probekit("control", "--config", str(path), "--metrics-port", "0", env=env)
    out, err = Lines(control.stdout), Lines(control.stderr)

    def stored() -> dict[str, int]:
        with sqlite3.connect(tmp_path / "control.db") as db:
            return dict(db.execute("SELECT monitor_id, revision FROM monitors").fetchall())

    try:
        out.wait_for(r"listening on ws://127\.0\.0\.1:\d+/", 20)
        metrics = int(out.wait_for(r"/metrics and /ready at http://127\.0\.0\.1:(\d+)/", 5)[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as response:
            assert 'probekit_control_instances_connected{checkpoint_id="office"} 0' in (
                response.read().decode()
            )
        assert stored() == {"web": 1, "web-port": 1}
        # web-port removed, web changed, new added
        text = path.read_text()
        text = text[: text.index('[[monitors]]\nid = "web-port"')].replace(
            "interval = 0.3", "interval = 0.5"
        )
        text += (
            '[[monitors]]\nid = "new"\ncheckpoint = "office"\nkind = "tcp"\n'
            f'host = "127.0.0.1"\nport = {web}\n'
        )
        path.write_text(text)
        control.send_signal(signal.SIGHUP)
        out.wait_for(r"reloaded .*: 2 monitors \(1 added, 1 changed, 1 removed\)", 10)
        assert stored() == {"web": 2, "new": 1}
        # a config with an error: reported, and the running config stays
        path.write_text(text.replace("interval = 0.5", "interval = -1"))
        control.send_signal(signal.SIGHUP)
        err.wait_for(r"reload failed, the running config stays: .*: 1 error$", 10)
        err.wait_for(r"^  monitors\[0\]\.interval: ", 1)
        assert stored() == {"web": 2, "new": 1}
        assert control.poll() is None
        code, _took = stop(control, 15)
        assert code == 0, err.rest()
        assert re.search(r"stopped \(\d+ results stored", out.rest())
    finally:
        if control.poll() is None:
            control.kill()
        control.wait(10)
        for stream in (control.stdout, control.stderr):
            if stream is not None:
                stream.close()
