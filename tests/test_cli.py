"""The command line, in-process through main() and as `python -m probekit`, against loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from probekit import ErrorKind, Phase, ProbeError, Result, Status, cli, result_from_json
from probekit.cli import COMMANDS, _loop_factory, build_parser, main
from servers import closed_port

NAGIOS = re.compile(
    r"^(HTTP|TCP) (OK|WARNING|CRITICAL|UNKNOWN) - [^|\n]+ \| "
    r"time=[0-9.]+s;[0-9.]*;[0-9.]*;0(?: [a-z_]+=[0-9.]+(?:s|B)?(?:;[0-9.]*){0,4})*$"
)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/":
            self.reply(200, b"hello probekit", {"X-App": "demo"})
        elif self.path == "/fail":
            self.reply(500, b"broken")
        elif self.path == "/echo":
            self.reply(200, self.headers.as_string().encode())
        elif self.path == "/api":
            self.reply(200, b'{"status": "ok", "items": [1, 2, 3], "count": 3}')
        else:
            self.reply(404, b"not found")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.reply(200, b"posted " + self.rfile.read(length))

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    """A threaded HTTP server on loopback; yields its base URL (no trailing slash)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def tls_web(ca: trustme.CA) -> Iterator[str]:
    """The same server over TLS, with a certificate from the test CA; yields its base URL."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- check -----------------------------------------------------------------------------------


def test_check_human_output(web: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "check", "http", f"{web}/")
    assert code == 0
    first, *rest = out.splitlines()
    assert re.match(rf"^http {re.escape(web)}/ UP in [0-9.]+ ms$", first)
    assert [line.split()[0] for line in rest] == [
        "resolve",
        "connect",
        "processing",
        "transfer",
        "status",
    ]


def test_check_nagios_up_and_down(web: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "check", "http", f"{web}/", "--nagios", "--warn", "5")
    assert code == 0
    assert NAGIOS.match(out.strip()), out
    assert out.startswith("HTTP OK - status 200 in ")
    assert ";5;;0 " in out  # the warn threshold in the time perfdata

    code, out, _ = run_cli(capsys, "check", "http", f"{web}/fail", "--nagios")
    assert code == 2
    assert out.startswith("HTTP CRITICAL - status 500 in ")
    assert NAGIOS.match(out.strip()), out

    code, out, _ = run_cli(
        capsys, "check", "http", f"http://127.0.0.1:{closed_port()}/", "--nagios"
    )
    assert code == 2
    assert "connect during connect" in out
    assert NAGIOS.match(out.strip()), out


def test_check_json_output_parses_as_a_result(web: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "check", "http", f"{web}/", "--json")
    assert code == 0
    result = result_from_json(out)
    assert result.status is Status.UP
    assert result.metrics["status_code"] == 200
    assert result.phase_names()[:2] == ("resolve", "connect")


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--expect-status", "500"], 0),
        (["--expect-status", "200-299,301"], 2),
        (["--contains", "broken"], 2),
        (["--expect-status", "500", "--contains", "broken", "--regex", "^bro"], 0),
        (["--expect-status", "500", "--regex", "^hello"], 2),
    ],
)
def test_check_assertion_options(
    web: str, capsys: pytest.CaptureFixture[str], args: list[str], code: int
) -> None:
    assert run_cli(capsys, "check", "http", f"{web}/fail", *args)[0] == code


def test_check_header_method_data_and_request_headers(
    web: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(capsys, "check", "http", f"{web}/", "--header", "x-app:^demo$")[0] == 0
    assert run_cli(capsys, "check", "http", f"{web}/", "--header", "X-App:nope")[0] == 2
    code, out, _ = run_cli(capsys, "check", "http", f"{web}/", "--data", "abc", "--json")
    assert code == 0
    assert result_from_json(out).metrics["body_bytes"] == len(b"posted abc")
    code, out, _ = run_cli(
        capsys, "check", "http", f"{web}/echo", "-H", "X-Probe: yes", "--contains", "X-Probe: yes"
    )
    assert code == 0, out


def test_check_warn_and_crit_thresholds(web: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "check", "http", f"{web}/", "--nagios", "--warn", "0.000001")
    assert code == 1
    assert out.startswith("HTTP WARNING - status 200 in ")
    code, out, _ = run_cli(
        capsys, "check", "http", f"{web}/", "--nagios", "--warn", "0.000001", "--crit", "0.000002"
    )
    assert code == 2
    assert ";0.000001;0.000002;0 " in out


def test_check_tcp_with_send_and_expect(web: str, capsys: pytest.CaptureFixture[str]) -> None:
    target = web.removeprefix("http://")
    code, out, _ = run_cli(
        capsys,
        "check",
        "tcp",
        target,
        "--send",
        r"GET / HTTP/1.0\r\n\r\n",
        "--expect",
        r"^HTTP/1\.[01] 200",
        "--expect",
        "hello",
        "--contains",
        "X-App: demo",
        "--nagios",
    )
    assert code == 0, out
    assert out.startswith(f"TCP OK - {target} in ")
    assert NAGIOS.match(out.strip()), out
    code, out, _ = run_cli(capsys, "check", "tcp", f"127.0.0.1:{closed_port()}", "--json")
    assert code == 2
    result = result_from_json(out)
    assert result.error is not None and result.error.kind is ErrorKind.CONNECT


def test_check_tls_options(
    tls_web: str, ca: trustme.CA, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    code, out, _ = run_cli(capsys, "check", "http", f"{tls_web}/", "--nagios")
    assert code == 2
    assert "tls during tls" in out
    code, out, _ = run_cli(
        capsys, "check", "http", f"{tls_web}/", "--ca-file", str(ca_file), "--nagios"
    )
    assert code == 0, out
    assert NAGIOS.match(out.strip()), out
    assert " tls=" in out
    assert re.search(r" cert_days_left=[0-9.]+( |$)", out.strip())
    assert run_cli(capsys, "check", "http", f"{tls_web}/", "--insecure")[0] == 0
    target = tls_web.removeprefix("https://")
    assert run_cli(capsys, "check", "tcp", target, "--tls", "--ca-file", str(ca_file))[0] == 0
    assert run_cli(capsys, "check", "tcp", target, "--tls")[0] == 2
    code, _, err = run_cli(capsys, "check", "tcp", target, "--insecure")
    assert code == 3
    assert "--insecure/--ca-file: need --tls for tcp checks" in err
    code, _, err = run_cli(capsys, "check", "http", f"{tls_web}/", "--ca-file", "/nonexistent/ca")
    assert code == 3
    assert "--ca-file: cannot read /nonexistent/ca" in err


def test_check_deny_refuses_before_dialling(web: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "check", "http", f"{web}/", "--deny", "127.0.0.0/8", "--json")
    assert code == 2
    result = result_from_json(out)
    assert result.error is not None and result.error.kind is ErrorKind.POLICY_DENIED


def test_check_reports_every_bad_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys,
        "check",
        "http",
        "ftp://x/",
        "--regex",
        "(",
        "--header",
        "nocolon",
        "--warn",
        "2",
        "--crit",
        "1",
        "--deny",
        "not-a-network",
    )
    assert code == 3
    assert out == ""
    lines = err.splitlines()
    assert all(line.startswith("probekit check: error: ") for line in lines)
    problems = sorted(line.removeprefix("probekit check: error: ").split(":")[0] for line in lines)
    assert problems == ["--deny", "--header", "--regex", "--warn", "TARGET"]


def test_check_bad_options_in_nagios_mode_print_an_unknown_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run_cli(capsys, "check", "tcp", "nocolon", "--nagios")
    assert code == 3
    assert out.startswith("TCP UNKNOWN - invalid options: TARGET: expected HOST:PORT")


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["check", "http", "http://x/", "--nagios", "--bogus"],
            "HTTP UNKNOWN - invalid options: unrecognized arguments: --bogus",
        ),
        (
            ["check", "http", "--nagios"],
            "HTTP UNKNOWN - invalid options: the following arguments are required: URL",
        ),
        (
            ["check", "--nagios", "gopher", "x"],
            "CHECK UNKNOWN - invalid options: argument KIND: invalid choice: 'gopher'",
        ),
        (
            ["check", "tcp", "--nagios", "h:1", "--expect"],
            "TCP UNKNOWN - invalid options: argument --expect: expected one argument",
        ),
    ],
)
def test_usage_errors_in_nagios_mode_print_an_unknown_line_on_stdout(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/cli.md: an invalid option in --nagios mode prints `KIND UNKNOWN - ...` on stdout,
    exit 3 (argparse's own errors too, not only the values the kind checks)."""
    code, out, err = run_cli(capsys, *argv)
    assert code == 3
    assert out.startswith(line), out
    assert len(out.splitlines()) == 1
    assert "usage: probekit check" in err


def test_usage_errors_without_nagios_print_nothing_on_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(capsys, "check", "http", "http://x/", "--bogus")
    assert (code, out) == (3, "")
    assert "unrecognized arguments: --bogus" in err
    # --nagios after "--" is an argument, not the option: no plugin line
    code, out, _ = run_cli(capsys, "check", "http", "--bogus", "--", "--nagios")
    assert (code, out) == (3, "")


def test_check_http_jsonpath(web: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"{web}/api"
    ok = ["--jsonpath", "$.status", "eq", "ok", "--jsonpath", "$.count", "ge", "3"]
    ok += ["--jsonpath", "$.items[1]", "eq", "2", "--jsonpath", "$.missing", "absent", "-"]
    code, out, _ = run_cli(capsys, "check", "http", url, "--json", *ok)
    assert code == 0, out
    result = result_from_json(out)
    assert [a.name for a in result.assertions].count("json_path") == 4
    assert all(a.passed for a in result.assertions)
    code, out, _ = run_cli(
        capsys, "check", "http", url, "--json", "--jsonpath", "$.count", "gt", "3"
    )
    assert code == 2
    result = result_from_json(out)
    assert result.error is not None and result.error.kind is ErrorKind.ASSERTION
    failed = [a for a in result.assertions if not a.passed]
    assert [(a.expected, a.observed) for a in failed] == [("$.count gt 3", "'3'")]
    # "3" in JSON quotes is the string: the number 3 is not equal to it
    code, _, _ = run_cli(capsys, "check", "http", url, "--jsonpath", "$.count", "eq", '"3"')
    assert code == 2


def test_check_http_jsonpath_bad_expression_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(
        capsys, "check", "http", "http://x/", "--nagios", "--jsonpath", "status", "eq", "1"
    )
    assert code == 3
    assert out.startswith("HTTP UNKNOWN - invalid options: --jsonpath: a JSON path starts")
    code, _, err = run_cli(
        capsys, "check", "http", "http://x/", "--jsonpath", "$.a", "between", "1"
    )
    assert code == 3
    assert "--jsonpath: unknown operator 'between'" in err


def test_check_http_sni_cert_days_and_http2(
    tls_web: str, ca: trustme.CA, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    base = ["check", "http", f"{tls_web}/", "--ca-file", str(ca_file), "--json"]
    code, out, _ = run_cli(capsys, *base, "--cert-warn-days", "30", "--cert-crit-days", "7")
    assert code == 0, out
    assert [a.name for a in result_from_json(out).assertions] == ["status", "cert_expiry"]
    # trustme's certificates end in the year 3000, within 1,000,000 days: DEGRADED, then DOWN
    code, out, _ = run_cli(capsys, *base, "--cert-warn-days", "1000000")
    assert code == 1, out
    code, out, _ = run_cli(capsys, *base, "--cert-crit-days", "1000000")
    assert code == 2, out
    # --sni names what is sent and verified: the certificate is for 127.0.0.1, not this name
    code, out, _ = run_cli(capsys, *base, "--sni", "other.example")
    assert code == 2
    result = result_from_json(out)
    assert result.error is not None and result.error.kind is ErrorKind.TLS
    assert result.tls is None or result.tls.server_name != "127.0.0.1"
    # --http2 offers h2 by ALPN; the test server has no h2, so HTTP/1.x is used
    code, out, _ = run_cli(capsys, *base, "--http2")
    assert code == 0, out
    assert result_from_json(out).metrics["http_version"] < 2
    code, _, err = run_cli(capsys, *base, "--cert-warn-days", "5", "--cert-crit-days", "9")
    assert code == 3
    assert "--cert-warn-days" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["check"],
        ["check", "gopher", "x"],
        ["check", "http", "http://x/", "--timeout", "-1"],
        ["check", "http", "http://x/", "--json", "--nagios"],
        ["frobnicate"],
        [],
    ],
)
def test_usage_errors_exit_3(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 3
    assert "usage: probekit" in capsys.readouterr().err


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "check" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("probekit ")


def test_commands_are_one_table() -> None:
    names = ["check", "run", "demo", "control", "checkpoint", "exporter"]
    assert [c.name for c in COMMANDS] == names
    subparsers = next(
        a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction"
    )
    assert list(subparsers.choices) == names  # type: ignore[union-attr]


def test_python_m_probekit_nagios(web: str) -> None:
    def run(url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "probekit", "check", "http", url, "--nagios"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    up = run(f"{web}/")
    assert up.returncode == 0, up.stderr
    assert NAGIOS.match(up.stdout.strip()), up.stdout
    assert up.stdout.startswith("HTTP OK - status 200 in ")
    down = run(f"{web}/fail")
    assert down.returncode == 2, down.stderr
    assert down.stdout.startswith("HTTP CRITICAL - status 500 in ")
    refused = run(f"http://127.0.0.1:{closed_port()}/")
    assert refused.returncode == 2
    assert refused.stdout.startswith("HTTP CRITICAL - ")


# -- run -------------------------------------------------------------------------------------


def config_file(tmp_path: Path, web: str, interval: float = 60) -> Path:
    target = web.removeprefix("http://")
    host, port = target.split(":")
    path = tmp_path / "monitors.toml"
    path.write_text(
        f"""
[defaults]
interval = {interval}
timeouts = {{ total = 5 }}

[policy]
allow = ["127.0.0.0/8"]

[[monitors]]
id = "web"
kind = "http"
url = "{web}/"
assertions = [{{ type = "body_contains", text = "hello" }}]

[[monitors]]
id = "web-tcp"
kind = "tcp"
host = "{host}"
port = {port}

[[monitors]]
id = "broken"
kind = "http"
url = "{web}/fail"

[[monitors]]
id = "closed"
kind = "tcp"
host = "127.0.0.1"
port = {closed_port()}
"""
    )
    return path


def test_run_once_prints_a_table_and_exits_with_the_worst_status(
    tmp_path: Path, web: str, capsys: pytest.CaptureFixture[str]
) -> None:
    jsonl = tmp_path / "results.jsonl"
    code, out, _ = run_cli(
        capsys, "run", str(config_file(tmp_path, web)), "--once", "--jsonl", str(jsonl)
    )
    assert code == 2
    header, *rows = out.splitlines()
    assert header.split() == ["MONITOR", "STATUS", "TIME", "PHASES", "(ms)", "DETAIL"]
    assert [row.split()[:2] for row in rows] == [
        ["web", "UP"],
        ["web-tcp", "UP"],
        ["broken", "DOWN"],
        ["closed", "DOWN"],
    ]
    assert "status 200" in rows[0]
    assert "connect during connect" in rows[3]
    lines = jsonl.read_text().splitlines()
    assert [json.loads(line)["monitor"] for line in lines] == ["web", "web-tcp", "broken", "closed"]
    assert [result_from_json(line).status for line in lines] == [
        Status.UP,
        Status.UP,
        Status.DOWN,
        Status.DOWN,
    ]


def test_run_once_all_up_exits_0(
    tmp_path: Path, web: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "up.json"
    path.write_text(json.dumps({"monitors": [{"id": "web", "kind": "http", "url": f"{web}/"}]}))
    code, out, _ = run_cli(capsys, "run", str(path), "--once")
    assert code == 0
    assert out.splitlines()[1].split()[:2] == ["web", "UP"]


def test_run_once_in_worker_processes(
    tmp_path: Path, web: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(
        capsys, "run", str(config_file(tmp_path, web)), "--once", "--processes", "2"
    )
    assert code == 2
    _header, *rows = out.splitlines()
    assert [row.split()[:2] for row in rows] == [
        ["web", "UP"],
        ["web-tcp", "UP"],
        ["broken", "DOWN"],
        ["closed", "DOWN"],
    ]


def test_run_on_schedule_in_worker_processes_with_the_config_policy(
    tmp_path: Path, web: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "deny.toml"
    path.write_text(
        f'[policy]\ndeny = ["127.0.0.0/8"]\n'
        f'[[monitors]]\nid = "web"\nkind = "http"\nurl = "{web}/"\ninterval = 0.3\n'
    )
    code, out, _ = run_cli(capsys, "run", str(path), "--processes", "2", "--duration", "1.2")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) >= 2, out
    assert all(" web DOWN " in line and "policy_denied" in line for line in lines), out


def test_run_processes_must_be_positive(
    tmp_path: Path, web: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        capsys, "run", str(config_file(tmp_path, web)), "--once", "--processes", "0"
    )
    assert code == 3
    assert "--processes" in err


def test_run_policy_from_the_config_applies(
    tmp_path: Path, web: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "deny.toml"
    path.write_text(
        f'[policy]\ndeny = ["127.0.0.0/8"]\n'
        f'[[monitors]]\nid = "web"\nkind = "http"\nurl = "{web}/"\n'
    )
    code, out, _ = run_cli(capsys, "run", str(path), "--once")
    assert code == 2
    assert "policy_denied" in out


def test_run_prints_a_line_per_result_until_the_duration_ends(
    tmp_path: Path, web: str, capsys: pytest.CaptureFixture[str]
) -> None:
    jsonl = tmp_path / "results.jsonl"
    started = time.monotonic()
    code, out, _ = run_cli(
        capsys,
        "run",
        str(config_file(tmp_path, web, interval=0.3)),
        "--duration",
        "1.2",
        "--jsonl",
        str(jsonl),
    )
    assert code == 0
    assert 1.1 < time.monotonic() - started < 5
    lines = out.splitlines()
    seen = {line.split()[1] for line in lines}
    assert seen == {"web", "web-tcp", "broken", "closed"}
    assert len(lines) >= 8  # every monitor ran more than once
    assert all(re.match(r"^\d\d:\d\d:\d\d \S+ (UP|DOWN) [0-9.]+ ms", line) for line in lines)
    assert len(jsonl.read_text().splitlines()) == len(lines)


def test_run_serves_prometheus_metrics(tmp_path: Path, web: str) -> None:
    port = free_port()
    path = config_file(tmp_path, web, interval=0.2)
    codes: list[int] = []
    thread = threading.Thread(
        target=lambda: codes.append(
            main(["run", str(path), "--metrics-port", str(port), "--duration", "1.5"])
        )
    )
    thread.start()
    try:
        text = ""
        while thread.is_alive():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
                    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                    text = r.read().decode()
            except (urllib.error.URLError, ConnectionError):
                pass
            if text.count("probekit_up{") == 4:
                break
            time.sleep(0.05)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=1)
        assert info.value.code == 404
    finally:
        thread.join(10)
    assert codes == [0]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    up = {s.labels["monitor"]: s.value for s in families["probekit_up"].samples}
    assert up == {"web": 1, "web-tcp": 1, "broken": 0, "closed": 0}
    phases = {
        s.labels["phase"]
        for s in families["probekit_duration_seconds"].samples
        if s.labels["monitor"] == "web"
    }
    assert {"resolve", "connect", "processing", "transfer"} <= phases
    codes_seen = {
        s.labels["monitor"]: s.value for s in families["probekit_http_status_code"].samples
    }
    assert codes_seen == {"web": 200, "broken": 500}
    with pytest.raises(ConnectionRefusedError):  # the server is gone with the command
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_run_stops_cleanly_on_ctrl_c(tmp_path: Path, web: str) -> None:
    path = config_file(tmp_path, web, interval=0.2)
    # SIGINT is ignored in processes started in the background by a non-interactive shell, and
    # children inherit that; a terminal's Ctrl-C arrives with the default handler, so set it.
    script = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from probekit.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "run", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # wait for the first result
        assert first.split()[1] in {"web", "web-tcp", "broken", "closed"}
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_run_option_clashes_and_bad_files(
    tmp_path: Path, web: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(config_file(tmp_path, web))
    code, _, err = run_cli(capsys, "run", path, "--once", "--duration", "1", "--metrics-port", "0")
    assert code == 3
    assert "it does not take --duration, --metrics-port" in err
    code, _, err = run_cli(capsys, "run", str(tmp_path / "missing.toml"), "--once")
    assert code == 3
    assert "cannot read" in err
    code, _, err = run_cli(capsys, "run", path, "--once", "--jsonl", str(tmp_path / "no/such/dir"))
    assert code == 3
    assert "--jsonl: cannot open" in err


def test_console_script_is_declared() -> None:
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "probekit"]
    assert script.value == "probekit.cli:main"
    assert script.load() is main


# -- uvloop -------------------------------------------------------------------------------------


@pytest.fixture
def fake_uvloop(monkeypatch: pytest.MonkeyPatch) -> list[asyncio.AbstractEventLoop]:
    """Make ``import uvloop`` give a stand-in whose loops (asyncio's own) are recorded."""
    made: list[asyncio.AbstractEventLoop] = []

    def new_event_loop() -> asyncio.AbstractEventLoop:
        loop = asyncio.SelectorEventLoop()
        made.append(loop)
        return loop

    module = types.ModuleType("uvloop")
    module.new_event_loop = new_event_loop  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uvloop", module)
    return made


def _monitors_file(tmp_path: Path, port: int) -> str:
    path = tmp_path / "monitors.toml"
    path.write_text(f'[[monitors]]\nkind = "tcp"\nhost = "127.0.0.1"\nport = {port}\n')
    return str(path)


def test_commands_run_on_uvloop_when_it_is_importable(
    web: str, tmp_path: Path, fake_uvloop: list[asyncio.AbstractEventLoop]
) -> None:
    assert main(["check", "http", web]) == 0
    assert len(fake_uvloop) == 1
    assert main(["run", _monitors_file(tmp_path, closed_port()), "--once"]) == 2
    assert len(fake_uvloop) == 2
    assert all(loop.is_closed() for loop in fake_uvloop)


def test_no_uvloop_opts_out(
    web: str, tmp_path: Path, fake_uvloop: list[asyncio.AbstractEventLoop]
) -> None:
    assert main(["--no-uvloop", "check", "http", web]) == 0
    assert main(["--no-uvloop", "run", _monitors_file(tmp_path, closed_port()), "--once"]) == 2
    assert fake_uvloop == []


def test_commands_run_without_uvloop_installed(
    web: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert _loop_factory(True) is None
    assert main(["check", "http", web]) == 0
    assert main(["run", _monitors_file(tmp_path, closed_port()), "--once"]) == 2


def test_every_command_runs_its_loop_through_the_uvloop_choice() -> None:
    for module in Path(cli.__file__).parent.glob("*.py"):
        source = module.read_text()
        assert "asyncio.run(" not in source.replace("_asyncio_run(", ""), module.name
    assert _loop_factory(False) is None


def test_the_real_uvloop_is_used_when_installed(web: str, monkeypatch: pytest.MonkeyPatch) -> None:
    uvloop = pytest.importorskip("uvloop")
    seen: list[str] = []
    original = cli.check._check_once

    async def spy(probe: Any, context: Any) -> Any:
        seen.append(type(asyncio.get_running_loop()).__module__)
        return await original(probe, context)

    monkeypatch.setattr(cli.check, "_check_once", spy)
    assert _loop_factory(True) is uvloop.new_event_loop
    assert main(["check", "http", web]) == 0
    assert main(["--no-uvloop", "check", "http", web]) == 0
    assert seen[0].startswith("uvloop")
    assert not seen[1].startswith("uvloop")


# -- the live table (rich) ----------------------------------------------------------------------


def _recorded_results() -> dict[str, Result]:
    started = dt.datetime(2026, 11, 26, 14, 22, 14, tzinfo=dt.UTC)
    return {
        "intranet": Result(
            kind="http",
            target="https://intranet.example/health",
            status=Status.UP,
            started_at=started,
            duration=0.0123,
            phases=(Phase("resolve", 0.0, 0.0004), Phase("connect", 0.0004, 0.0008)),
            metrics={"status_code": 200.0},
        ),
        "db": Result(
            kind="tcp",
            target="db.internal:5432",
            status=Status.DOWN,
            started_at=started,
            duration=0.001,
            error=ProbeError(ErrorKind.CONNECT, "connection refused", phase="connect"),
            phases=(Phase("connect", 0.0, 0.001),),
        ),
    }


def test_live_table_renders_status_duration_and_phases() -> None:
    from rich.console import Console

    console = Console(record=True, width=160, color_system="truecolor")
    console.print(cli.run._live_table(["intranet", "db", "mail"], _recorded_results()))
    text = console.export_text(clear=False)
    rows = {line.split()[1]: line for line in text.splitlines() if line.startswith("│")}
    assert "UP" in rows["intranet"]
    assert "12.3 ms" in rows["intranet"]
    assert "resolve 0.4 connect 0.8" in rows["intranet"]
    assert "status 200" in rows["intranet"]
    assert "DOWN" in rows["db"]
    assert "connect during connect: connection refused" in rows["db"]
    assert "waiting" in rows["mail"]  # not run yet
    html = console.export_html()
    assert "color: #008000" in html or "color: #00ff00" in html  # UP is green


def test_live_table_only_on_a_terminal_with_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.run._rich_live(["a"]) is None  # captured standard output is not a terminal
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert cli.run._rich_live(["a"]) is not None
    monkeypatch.setitem(sys.modules, "rich.live", None)  # rich not installed
    assert cli.run._rich_live(["a"]) is None


def test_run_shows_the_live_table_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("COLUMNS", "200")
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    assert main(["run", _monitors_file(tmp_path, closed_port()), "--duration", "1.5"]) == 0
    output = screen.getvalue()
    assert "monitor" in output
    assert "DOWN" in output
    assert "connect during connect" in output


def test_run_once_shows_a_progress_bar_on_a_terminal(
    tmp_path: Path, web: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    assert cli.run._rich_progress() is not None
    assert main(["run", str(config_file(tmp_path, web)), "--once"]) == 2
    output = screen.getvalue()
    assert "checking" in output  # the bar was drawn
    rows = [
        line.split()[:2]
        for line in output.splitlines()
        if line.split()[:1] in (["web"], ["broken"])
    ]
    assert ["web", "UP"] in rows and ["broken", "DOWN"] in rows
    monkeypatch.setitem(sys.modules, "rich.progress", None)  # rich not installed: no bar
    assert cli.run._rich_progress() is None


async def test_check_http2_speaks_h2_with_prior_knowledge(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from h2server import H2Server

    async with H2Server(None) as server:
        url = f"http://127.0.0.1:{server.port}/x"
        code = await asyncio.to_thread(main, ["check", "http", url, "--http2", "--json"])
        out = capsys.readouterr().out
        assert code == 0, out
        assert result_from_json(out).metrics["http_version"] == 2.0
        code = await asyncio.to_thread(main, ["check", "http", url, "--json"])
        assert code == 2  # without --http2 the h2-only server does not answer HTTP/1.1


def test_the_command_line_loads_no_server_side_package() -> None:
    """`probekit check` starts a process per check in Nagios setups: importing the command line
    must not load the control plane, the checkpoint, the exporter or optional libraries."""
    code = (
        "import sys, probekit.cli\n"
        "heavy = ('probekit.control', 'probekit.checkpoint', 'probekit.exporter', 'yaml',\n"
        "         'asyncssh', 'dns', 'OpenSSL', 'prometheus_client', 'websockets')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
