"""probekit exporter: blackbox.yml modules, /probe with blackbox_exporter's metric names, the
endpoints around it, and the egress policy on every target and redirect."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from probekit import DefinitionErrors, ProbeContext
from probekit.cli import main
from probekit.exporter import Exporter, Module, ip_hash, parse_blackbox, parse_toml_modules
from servers import GuardedConnector, HttpServer
from test_dns import FakeDns
from test_dns import serving as dns_serving

BLACKBOX = """
modules:
  http_2xx:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
  http_rich:
    prober: http
    timeout: 2500ms
    http:
      method: POST
      headers: {X-Probe: blackbox}
      body: hello
      valid_status_codes: [200, 204]
      valid_http_versions: [HTTP/1.1]
      no_follow_redirects: true
      fail_if_ssl: true
      fail_if_body_matches_regexp: ["error"]
      fail_if_body_not_matches_regexp: ["ok"]
      fail_if_header_matches:
        - {header: X-Bad, regexp: ".*", allow_missing: true}
      fail_if_header_not_matches:
        - {header: Content-Type, regexp: "json"}
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
      body_size_limit: 1MB
      tls_config: {insecure_skip_verify: true, server_name: intranet.test}
      basic_auth: {username: alice, password: s3cret}
  must_match:
    prober: http
    http:
      fail_if_body_not_matches_regexp: ["absent-text"]
  tcp_connect:
    prober: tcp
    tcp: {preferred_ip_protocol: ip4}
  tcp_banner:
    prober: tcp
    tcp:
      query_response:
        - expect: "^READY"
        - send: "PING"
        - expect: "^PONG"
  dns_a:
    prober: dns
    dns:
      query_name: www.probekit.test
      query_type: A
      valid_rcodes: [NOERROR]
      validate_answer_rrs:
        fail_if_not_matches_regexp: ["192\\\\.0\\\\.2\\\\."]
        fail_if_none_matches_regexp: ["^192\\\\.0\\\\.2\\\\.10$"]
  dns_nx:
    prober: dns
    dns:
      query_name: gone.probekit.test
      query_type: A
      valid_rcodes: [NXDOMAIN]
  icmp:
    prober: icmp
    icmp: {preferred_ip_protocol: ip4}
"""


@pytest.fixture
def modules() -> dict[str, Module]:
    return parse_blackbox(BLACKBOX)


@pytest.fixture
async def exporter(modules: dict[str, Module], ctx: ProbeContext) -> AsyncIterator[Exporter]:
    async with Exporter(modules, context=ctx) as exporter:
        yield exporter


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, parsed with prometheus_client's parser (so the text is valid)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


# -- reading blackbox.yml ------------------------------------------------------------------------


def test_a_blackbox_module_becomes_a_probekit_definition(modules: dict[str, Module]) -> None:
    rich = modules["http_rich"]
    assert (rich.prober, rich.kind, rich.timeout) == ("http", "http", 2.5)
    assert rich.valid_http_versions == ("HTTP/1.1",)
    d = rich.definition
    assert d["method"] == "POST" and d["body"] == "hello"
    assert d["headers"] == [["X-Probe", "blackbox"]]
    assert d["follow_redirects"] is False
    assert d["ip_family"] == "ipv4"
    assert d["max_body_bytes"] == 1_000_000 and d["fail_on_body_limit"] is True
    assert d["tls"] == {"verify": False, "server_name": "intranet.test"}
    assert d["basic_auth"] == {"username": "alice", "password": "s3cret"}
    types = [(a["type"], a.get("negate", False)) for a in d["assertions"]]
    assert types == [
        ("status_in", False),
        ("tls_forbidden", False),
        ("body_matches", True),
        ("body_matches", False),
        ("header_matches", True),
        ("header_matches", False),
    ]
    assert modules["http_2xx"].definition == {"kind": "http"}  # ip4 with fallback: any family
    steps = modules["tcp_banner"].definition["steps"]
    assert steps == [{"expect": "^READY"}, {"send": "PING\n"}, {"expect": "^PONG"}]
    assert modules["dns_nx"].definition["valid_rcodes"] == ["NXDOMAIN"]
    assert modules["icmp"].definition == {"kind": "icmp", "count": 1}


@pytest.mark.parametrize(
    ("yaml_text", "path", "message"),
    [
        ("modules: {g: {prober: grpc}}", "modules.g.prober", "prober 'grpc' is not supported"),
        (
            "modules: {h: {prober: http, http: {enable_http3: true}}}",
            "modules.h.http.enable_http3",
            "not supported by probekit exporter",
        ),
        (
            "modules: {h: {prober: http, http: {fail_if_body_json_matches_cel: x}}}",
            "modules.h.http.fail_if_body_json_matches_cel",
            "not supported",
        ),
        ("modules: {h: {prober: http, timeout: soon}}", "modules.h.timeout", "duration"),
        ("modules: {d: {prober: dns, dns: {query_name: x}}}", "modules.d.dns.query_type", "ANY"),
        (
            "modules: {t: {prober: tcp, tcp: {query_response: [{expect_bytes: x}]}}}",
            "modules.t.tcp.query_response[0].expect_bytes",
            "not supported",
        ),
        (
            "modules: {h: {prober: http, http: {valid_status_codes: [abc]}}}",
            "modules.h.http.valid_status_codes",
            "status codes",
        ),
        ("modules: {h: {prober: http, tcp: {}}}", "modules.h.tcp", "not an option"),
        ("modules: [1, 2]", "modules", "expected a 'modules:' mapping"),
        ("modules: {h: {prober: http", "", "not valid YAML"),
    ],
)
def test_what_probekit_does_not_support_is_an_error_naming_module_and_option(
    yaml_text: str, path: str, message: str
) -> None:
    with pytest.raises(DefinitionErrors) as info:
        parse_blackbox(yaml_text)
    assert any(e.path == path and message in e.message for e in info.value.errors), [
        str(e) for e in info.value.errors
    ]


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    text = "modules: {a: {prober: grpc}, b: {prober: http, http: {method: 3, bogus: 1}}}"
    with pytest.raises(DefinitionErrors) as info:
        parse_blackbox(text)
    paths = sorted(e.path for e in info.value.errors)
    assert "modules.a.prober" in paths
    assert "modules.b.http.bogus" in paths


def test_probekit_toml_modules() -> None:
    modules = parse_toml_modules(
        textwrap.dedent(
            """
            [modules.api]
            kind = "http"
            timeout = 3
            assertions = [{type = "json_path", path = "$.status", value = "ok"}]

            [modules.redis]
            kind = "redis"
            """
        )
    )
    assert modules["api"].timeout == 3 and modules["api"].prober is None
    probe = modules["redis"].probe_for("127.0.0.1:6379", 2.0)
    assert (probe.host, probe.port, probe.timeouts.total) == ("127.0.0.1", 6379, 2.0)
    with pytest.raises(DefinitionErrors) as info:
        parse_toml_modules('[modules.bad]\nkind = "http"\nmethod = 7\n')
    assert info.value.errors[0].path.startswith("modules.bad")


def test_ip_hash_is_blackbox_exporters() -> None:
    # what Debian's blackbox_exporter 0.23 reports for 127.0.0.1 (FNV-1a of the 4 bytes)
    assert ip_hash("127.0.0.1:80") == 3668918509.0
    assert ip_hash("127.0.0.1") == 3668918509.0
    assert ip_hash("[::1]:80") == ip_hash("::1") != 0
    assert ip_hash(None) == 0.0


def test_timeout_rule(modules: dict[str, Module]) -> None:
    exporter = Exporter(modules)
    assert exporter.timeout_for(modules["http_2xx"], None) == 5.0  # the module's
    assert exporter.timeout_for(modules["http_2xx"], 3.0) == 2.5  # the scrape's, less 0.5
    assert exporter.timeout_for(modules["tcp_connect"], None) == 119.5  # blackbox's default


# -- /probe, in-process -----------------------------------------------------------------------


async def test_http_2xx_up_with_blackbox_metric_names(
    exporter: Exporter, http_server: HttpServer
) -> None:
    status, content_type, body = await exporter.probe("http_2xx", http_server.url("/ok"))
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    got = samples(body.decode())
    assert got["probe_success"] == 1
    assert got["probe_http_status_code"] == 200
    assert got["probe_http_ssl"] == 0
    assert got["probe_http_redirects"] == 0
    assert got["probe_http_version"] == 1.1
    assert got["probe_http_content_length"] == len(b"hello probekit")
    assert got["probe_ip_protocol"] == 4
    assert got["probe_ip_addr_hash"] == 3668918509.0
    assert got["probe_failed_due_to_regex"] == 0
    for phase in ("resolve", "connect", "tls", "processing", "transfer"):
        assert f'probe_http_duration_seconds{{phase="{phase}"}}' in got
    assert got["probe_duration_seconds"] > 0
    assert got["probekit_status"] == 0
    assert got['probekit_phase_duration_seconds{phase="connect"}'] > 0


async def test_a_404_is_a_failure_with_its_status_code(
    exporter: Exporter, http_server: HttpServer
) -> None:
    _, _, body = await exporter.probe("http_2xx", http_server.url("/status/404"))
    got = samples(body.decode())
    assert got["probe_success"] == 0
    assert got["probe_http_status_code"] == 404
    assert got["probekit_status"] == 2
    assert got['probekit_error_info{kind="assertion",phase=""}'] == 1


async def test_a_body_regex_failure_sets_failed_due_to_regex(
    exporter: Exporter, http_server: HttpServer
) -> None:
    _, _, body = await exporter.probe("must_match", http_server.url("/ok"))
    got = samples(body.decode())
    assert got["probe_success"] == 0
    assert got["probe_failed_due_to_regex"] == 1


async def test_valid_http_versions_decides_success(http_server: HttpServer) -> None:
    modules = parse_blackbox(
        "modules: {h2only: {prober: http, http: {valid_http_versions: [HTTP/2.0]}}}"
    )
    async with Exporter(modules) as exporter:
        _, _, body = await exporter.probe("h2only", http_server.url("/ok"))
    got = samples(body.decode())
    assert got["probe_http_status_code"] == 200
    assert got["probe_success"] == 0  # the server answered HTTP/1.1


async def test_the_metadata_address_is_denied_and_never_dialled(
    exporter: Exporter, connector: GuardedConnector, http_server: HttpServer
) -> None:
    for target in ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"):
        _, _, body = await exporter.probe("http_2xx", target)
        got = samples(body.decode())
        assert got["probe_success"] == 0
        assert got['probekit_error_info{kind="policy_denied",phase=""}'] == 1
    # a redirect from an allowed target to the metadata address is refused too
    _, _, body = await exporter.probe(
        "http_2xx", http_server.url("/redirect?to=http://169.254.169.254/")
    )
    got = samples(body.decode())
    assert got["probe_success"] == 0
    assert any(k.startswith('probekit_error_info{kind="policy_denied"') for k in got)
    assert connector.refused == []  # the policy said no before any connect


async def test_tcp_query_response(exporter: Exporter) -> None:
    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"READY\n")
        if await reader.readline() == b"PING\n":
            writer.write(b"PONG\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(banner, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        _, _, body = await exporter.probe("tcp_banner", f"127.0.0.1:{port}")
        got = samples(body.decode())
        assert got["probe_success"] == 1 and got["probe_failed_due_to_regex"] == 0
        _, _, body = await exporter.probe("tcp_connect", f"127.0.0.1:{port}")
        assert samples(body.decode())["probe_success"] == 1
    finally:
        server.close()
        await server.wait_closed()


async def test_tcp_expect_that_does_not_match_sets_failed_due_to_regex(exporter: Exporter) -> None:
    async def wrong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"BUSY\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(wrong, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        _, _, body = await exporter.probe("tcp_banner", f"127.0.0.1:{port}")
    finally:
        server.close()
        await server.wait_closed()
    got = samples(body.decode())
    assert got["probe_success"] == 0
    assert got["probe_failed_due_to_regex"] == 1


async def test_dns_modules(exporter: Exporter) -> None:
    async with dns_serving(FakeDns()) as port:
        _, _, body = await exporter.probe("dns_a", f"127.0.0.1:{port}")
        got = samples(body.decode())
        assert got["probe_success"] == 1, body.decode()
        assert got["probe_dns_answer_rrs"] == 2
        assert got["probe_dns_query_succeeded"] == 1
        for phase in ("resolve", "connect", "request"):
            assert f'probe_dns_duration_seconds{{phase="{phase}"}}' in got
        assert got['probe_dns_duration_seconds{phase="request"}'] > 0
        assert "probe_dns_authority_rrs" in got and "probe_dns_additional_rrs" in got
        _, _, body = await exporter.probe("dns_nx", f"127.0.0.1:{port}")
        got = samples(body.decode())
        assert got["probe_success"] == 1
        assert got["probe_dns_answer_rrs"] == 0
        assert got["probe_dns_authority_rrs"] == 1
    async with dns_serving(FakeDns(mode="servfail")) as port:
        _, _, body = await exporter.probe("dns_a", f"127.0.0.1:{port}")
        got = samples(body.decode())
        assert got["probe_success"] == 0
        assert got["probe_dns_query_succeeded"] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="ICMP needs root or net.ipv4.ping_group_range")
async def test_icmp_module(exporter: Exporter) -> None:
    _, _, body = await exporter.probe("icmp", "127.0.0.1")
    got = samples(body.decode())
    assert got["probe_success"] == 1, body.decode()
    for phase in ("resolve", "setup", "rtt"):
        assert f'probe_icmp_duration_seconds{{phase="{phase}"}}' in got
    assert got['probe_icmp_duration_seconds{phase="rtt"}'] > 0


async def test_debug_shows_the_timeline_the_metrics_and_the_module(
    exporter: Exporter, http_server: HttpServer
) -> None:
    status, content_type, body = await exporter.probe(
        "http_2xx", http_server.url("/ok"), debug=True
    )
    text = body.decode()
    assert status == 200 and content_type.startswith("text/plain; charset=utf-8")
    assert "Logs for the probe:" in text
    assert "phase connect:" in text and "phase processing:" in text
    assert "Metrics that would have been returned:" in text
    assert "probe_success 1" in text
    assert "Module configuration:" in text and '"kind": "http"' in text


@pytest.mark.parametrize(
    ("module", "target", "message"),
    [
        ("nope", "x", "Unknown module 'nope'"),
        ("http_2xx", "", "Target parameter is missing"),
        ("tcp_connect", "nocolon", "Invalid target 'nocolon' for module 'tcp_connect'"),
    ],
)
async def test_bad_requests_are_400_with_a_reason(
    exporter: Exporter, module: str, target: str, message: str
) -> None:
    status, _, body = await exporter.probe(module, target)
    assert status == 400
    assert message in body.decode()


# -- served over HTTP -------------------------------------------------------------------------


def _get(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, str]:
    assert url.startswith("http://127.0.0.1:")
    request = urllib.request.Request(url, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_served_endpoints(tmp_path: Path, http_server: HttpServer) -> None:
    config = tmp_path / "blackbox.yml"
    config.write_text(BLACKBOX)
    async with Exporter(config=config) as exporter:
        server = await exporter.serve("127.0.0.1", 0)
        base = f"http://127.0.0.1:{server.address[1]}"
        target = http_server.url("/ok")
        status, text = await asyncio.to_thread(
            _get, f"{base}/probe?module=http_2xx&target={target}"
        )
        assert status == 200 and samples(text)["probe_success"] == 1
        status, text = await asyncio.to_thread(
            _get,
            f"{base}/probe?module=http_2xx&target={target}",
            "GET",
            {"X-Prometheus-Scrape-Timeout-Seconds": "soon"},
        )
        assert status == 400 and "X-Prometheus-Scrape-Timeout-Seconds" in text
        assert await asyncio.to_thread(_get, f"{base}/-/healthy") == (200, "Healthy\n")
        assert (await asyncio.to_thread(_get, f"{base}/-/reload"))[0] == 405
        # a broken file: the running modules stay, and the reload says why
        config.write_text("modules: {g: {prober: grpc}}")
        status, text = await asyncio.to_thread(_get, f"{base}/-/reload", "POST")
        assert status == 500 and "grpc" in text
        assert "http_2xx" in exporter.modules
        config.write_text("modules: {only: {prober: tcp}}")
        assert await asyncio.to_thread(_get, f"{base}/-/reload", "POST") == (200, "OK\n")
        assert list(exporter.modules) == ["only"]
        status, text = await asyncio.to_thread(_get, f"{base}/metrics")
        got = samples(text)
        assert got["blackbox_exporter_config_last_reload_successful"] == 1
        assert got['probekit_exporter_reloads_total{result="failure"}'] == 1
        assert got['probekit_exporter_probes_total{module="http_2xx",success="true"}'] == 1
        assert got["probekit_exporter_modules"] == 1
        status, _ = await asyncio.to_thread(_get, f"{base}/probe?module=http_2xx&target=x")
        assert status == 400
        got = samples((await asyncio.to_thread(_get, f"{base}/metrics"))[1])
        assert got["blackbox_module_unknown_total"] == 1


def test_cli_refuses_a_bad_config_with_every_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "blackbox.yml"
    config.write_text("modules: {a: {prober: grpc}, b: {prober: http, http: {bogus: 1}}}")
    assert main(["exporter", "--config", str(config)]) == 3
    err = capsys.readouterr().err
    assert "modules.a.prober" in err and "modules.b.http.bogus" in err
    assert main(["exporter", "--config", str(tmp_path / "missing.yml")]) == 3
    assert "cannot read" in capsys.readouterr().err


def test_cli_serves_and_reloads_on_sighup(tmp_path: Path) -> None:
    config = tmp_path / "blackbox.yml"
    config.write_text("modules: {tcp_connect: {prober: tcp}}")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "probekit",
            "exporter",
            "--config",
            str(config),
            "--listen",
            "127.0.0.1:0",
            "--duration",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "1 module(s)" in first, first
        url = first.rsplit(" ", 1)[1].strip().removesuffix("/probe")
        assert _get(f"{url}/-/healthy") == (200, "Healthy\n")
        config.write_text("modules: {a: {prober: tcp}, b: {prober: icmp}}")
        process.send_signal(signal.SIGHUP)
        assert "reloaded" in process.stdout.readline()
        assert samples(_get(f"{url}/metrics")[1])["probekit_exporter_modules"] == 2
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert process.returncode == 0
