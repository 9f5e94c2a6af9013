"""probekit exporter beside Debian's blackbox_exporter: one blackbox.yml, the same targets (a
local nginx with plain, TLS, redirect, JSON, 404 and slow endpoints, a TCP port, a DNS server,
ICMP to loopback), the same /probe requests. Per request: the same metric names (less the
differences docs/exporter.md lists), equal probe_success and status codes, phases within
PHASE_TOLERANCE.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from loopback_dns import loopback_dns
from prometheus_client.parser import text_string_to_metric_families

from conftest import _ROWS, Daemon, Row, free_port, wait_for_port

#: Seconds two measurements of one phase may differ by. Loopback phases take well under 1 ms,
#: but the exporters run one after the other on a shared 2-core machine, and blackbox_exporter's
#: first DNS request of a process took 85 ms in one run (probekit's 3 ms).
PHASE_TOLERANCE = 0.25

#: blackbox_exporter's families probekit exporter does not emit, per prober (docs/exporter.md,
#: "Other differences").
NOT_EXPORTED = {
    "http": {"probe_http_last_modified_timestamp_seconds"},
    "tcp": set(),
    "dns": set(),
    "icmp": {"probe_icmp_reply_hop_limit"},
}

BLACKBOX_YML = """
modules:
  http_2xx:
    prober: http
    timeout: 5s
    http: {{preferred_ip_protocol: ip4}}
  http_json:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      fail_if_body_not_matches_regexp: ['"status": "ok"']
      fail_if_header_not_matches: [{{header: Content-Type, regexp: json}}]
  http_404:
    prober: http
    http: {{preferred_ip_protocol: ip4, valid_status_codes: [404]}}
  http_no_redirect:
    prober: http
    http: {{preferred_ip_protocol: ip4, no_follow_redirects: true, valid_status_codes: [302]}}
  https_ca:
    prober: http
    http:
      preferred_ip_protocol: ip4
      fail_if_not_ssl: true
      tls_config: {{ca_file: {ca}}}
  https_untrusted:
    prober: http
    http: {{preferred_ip_protocol: ip4}}
  tcp_connect:
    prober: tcp
    timeout: 3s
    tcp: {{preferred_ip_protocol: ip4}}
  tcp_tls:
    prober: tcp
    tcp: {{preferred_ip_protocol: ip4, tls: true, tls_config: {{ca_file: {ca}}}}}
  dns_a:
    prober: dns
    timeout: 3s
    dns:
      preferred_ip_protocol: ip4
      query_name: www.probekit.test
      query_type: A
      validate_answer_rrs:
        fail_if_none_matches_regexp: ['192\\.0\\.2\\.10']
  dns_nx:
    prober: dns
    timeout: 3s
    dns:
      preferred_ip_protocol: ip4
      query_name: gone.probekit.test
      query_type: A
      valid_rcodes: [NXDOMAIN]
  icmp:
    prober: icmp
    timeout: 3s
    icmp: {{preferred_ip_protocol: ip4}}
"""

#: (module, family) pairs whose values differ by design (docs/exporter.md, "Other differences").
DIFFERENT_BY_DESIGN = {
    # a redirect not followed: blackbox_exporter reports 0, probekit the redirect's body it read
    ("http_no_redirect", "probe_http_uncompressed_body_length"),
}

#: Values that must be equal in both answers, when blackbox_exporter has them.
EQUAL = (
    "probe_success",
    "probe_http_status_code",
    "probe_http_redirects",
    "probe_http_ssl",
    "probe_http_version",
    "probe_http_content_length",
    "probe_http_uncompressed_body_length",
    "probe_failed_due_to_regex",
    "probe_ip_protocol",
    "probe_ip_addr_hash",
    "probe_dns_answer_rrs",
    "probe_dns_authority_rrs",
    "probe_dns_additional_rrs",
    "probe_dns_query_succeeded",
)


# -- a DNS server for both ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dns_port() -> Iterator[int]:
    with loopback_dns() as port:
        yield port


# -- the two exporters ------------------------------------------------------------------------


def _blackbox_binary() -> str:
    for name in ("prometheus-blackbox-exporter", "blackbox_exporter"):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError("prometheus-blackbox-exporter is missing: run interop/install.sh")


@dataclass
class Exporters:
    blackbox: str
    probekit: str
    nginx: Daemon
    dns_port: int


@pytest.fixture(scope="module")
def exporters(
    start_daemon: type[Daemon], dns_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Exporters]:
    nginx = start_daemon("nginx")
    workdir = tmp_path_factory.mktemp("blackbox")
    config = workdir / "blackbox.yml"
    config.write_text(BLACKBOX_YML.format(ca=nginx.info["CA_FILE"]))
    port = free_port()
    blackbox = subprocess.Popen(
        [_blackbox_binary(), f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "blackbox.log").open("w"),
    )
    probekit = subprocess.Popen(
        [
            *(sys.executable, "-m", "probekit", "exporter", "--config", str(config)),
            *("--listen", "127.0.0.1:0"),
        ],
        stdout=subprocess.PIPE,
        stderr=(workdir / "probekit.log").open("w"),
        text=True,
    )
    try:
        wait_for_port(port)
        assert probekit.stdout is not None
        line = probekit.stdout.readline()
        assert "serving" in line, (workdir / "probekit.log").read_text()
        url = line.rsplit(" ", 1)[1].strip().removesuffix("/probe")
        yield Exporters(f"http://127.0.0.1:{port}", url, nginx, dns_port)
    finally:
        for process in (blackbox, probekit):
            process.terminate()
            process.wait(timeout=10)


def _scrape(base: str, module: str, target: str) -> dict[str, dict[str, float]]:
    """name -> {labels text: value} of one /probe answer."""
    url = f"{base}/probe?module={module}&target={urllib.request.quote(target, safe=':/')}"
    assert url.startswith("http://127.0.0.1:")
    request = urllib.request.Request(  # noqa: S310 - loopback http only (asserted above)
        url, headers={"X-Prometheus-Scrape-Timeout-Seconds": "10"}
    )
    with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310
        text = response.read().decode()
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out.setdefault(sample.name, {})[labels] = sample.value
    return out


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CASES = [
    # (module, target template, prober, expected probe_success)
    ("http_2xx", "http://127.0.0.1:{http}/", "http", 1),
    ("http_2xx", "http://127.0.0.1:{http}/missing", "http", 0),
    ("http_2xx", "http://127.0.0.1:{http}/redirect", "http", 1),
    ("http_2xx", "http://127.0.0.1:{http}/slow", "http", 1),  # about 1 s in transfer
    ("http_json", "http://127.0.0.1:{http}/json", "http", 1),
    ("http_json", "http://127.0.0.1:{http}/", "http", 0),
    ("http_404", "http://127.0.0.1:{http}/missing", "http", 1),
    ("http_no_redirect", "http://127.0.0.1:{http}/redirect", "http", 1),
    ("https_ca", "https://127.0.0.1:{https}/", "http", 1),
    ("https_untrusted", "https://127.0.0.1:{https}/", "http", 0),
    ("tcp_connect", "127.0.0.1:{http}", "tcp", 1),
    ("tcp_connect", "127.0.0.1:{closed}", "tcp", 0),
    ("tcp_tls", "127.0.0.1:{https}", "tcp", 1),
    ("dns_a", "127.0.0.1:{dns}", "dns", 1),
    ("dns_nx", "127.0.0.1:{dns}", "dns", 1),
    ("icmp", "127.0.0.1", "icmp", 1),
]


@pytest.mark.parametrize(
    ("module", "template", "prober", "success"),
    CASES,
    ids=[f"{m}-{t.rsplit('/', 1)[-1] or 'root'}" for m, t, _, _ in CASES],
)
def test_probekit_exporter_answers_as_blackbox_exporter(
    exporters: Exporters, module: str, template: str, prober: str, success: int
) -> None:
    if prober == "icmp" and os.geteuid() != 0:
        pytest.skip("ICMP needs root for blackbox_exporter")  # CI runs as root
    target = template.format(
        http=exporters.nginx.port("HTTP_PORT"),
        https=exporters.nginx.port("HTTPS_PORT"),
        dns=exporters.dns_port,
        closed=_closed_port(),
    )
    started = time.perf_counter()
    theirs = _scrape(exporters.blackbox, module, target)
    ours = _scrape(exporters.probekit, module, target)
    elapsed = time.perf_counter() - started
    problems: list[str] = []
    their_names = set(theirs)
    our_names = {n for n in ours if not n.startswith("probekit_")}
    missing = their_names - our_names - NOT_EXPORTED[prober]
    if missing:
        problems.append(f"names only blackbox_exporter has: {sorted(missing)}")
    extra = our_names - their_names
    if extra:
        problems.append(f"names only probekit has: {sorted(extra)}")
    for name in EQUAL:
        if (module, name) in DIFFERENT_BY_DESIGN:
            continue
        if name in theirs and theirs[name] != ours.get(name):
            problems.append(f"{name}: blackbox {theirs[name]} probekit {ours.get(name)}")
    phases = 0
    for name in ("probe_http_duration_seconds", "probe_dns_duration_seconds"):
        for labels, value in theirs.get(name, {}).items():
            phases += 1
            mine = ours.get(name, {}).get(labels)
            if mine is None or abs(mine - value) > PHASE_TOLERANCE:
                problems.append(f"{name}{{{labels}}}: blackbox {value:.6f} probekit {mine}")
    their_success = int(theirs["probe_success"][""])
    our_success = int(ours["probe_success"][""])
    status = theirs.get("probe_http_status_code", {}).get("")
    _ROWS.append(
        Row(
            "blackbox_exporter",
            f"{module} {target}",
            "success" if success else "failure",
            f"probe_success {our_success}",
            f"{len(ours)} families, {phases} phases compared, {elapsed * 1000:.0f} ms both",
            f"probe_success {their_success}",
            "",
            "; ".join(problems) or (f"status {int(status)}" if status is not None else "same"),
        )
    )
    print(
        f"\n[blackbox] {module} {target}: blackbox {their_success} probekit {our_success}"
        f" {'; '.join(problems) or 'same names and values'}"
    )
    assert their_success == success, f"blackbox_exporter: {theirs['probe_success']}"
    assert not problems, problems


def test_unknown_module_and_missing_target_answer_400_as_blackbox_does(
    exporters: Exporters,
) -> None:
    for base in (exporters.blackbox, exporters.probekit):
        for query in ("module=nope&target=127.0.0.1:1", "module=http_2xx"):
            url = f"{base}/probe?{query}"
            assert url.startswith("http://127.0.0.1:")
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(url, timeout=10)  # noqa: S310 - loopback http only
            assert info.value.code == 400, (base, query)


def _relabel(labels: dict[str, str], rules: list[dict[str, object]]) -> dict[str, str]:
    """Prometheus' `replace` relabelling (the only action the documented config uses)."""
    labels = dict(labels)
    for rule in rules:
        assert rule.get("action", "replace") == "replace", rule
        sources = [labels.get(str(name), "") for name in rule.get("source_labels", [])]  # type: ignore[attr-defined]
        value = str(rule.get("separator", ";")).join(sources)
        regex = str(rule.get("regex", "(.*)"))
        match = re.fullmatch(regex, value)
        if match is None:
            continue
        replacement = str(rule.get("replacement", "$1"))
        groups = [match.group(0), *match.groups()]
        value = re.sub(r"\$(\d+)", lambda m, g=groups: g[int(m.group(1))] or "", replacement)
        labels[str(rule["target_label"])] = value
    return labels


def test_the_documented_scrape_config_works_unchanged(exporters: Exporters) -> None:
    """docs/exporter.md's scrape config, written for blackbox_exporter, pointed at probekit
    exporter: Prometheus' relabelling turns each target into the /probe request it scrapes."""
    import yaml

    text = (Path(__file__).parents[1] / "docs" / "exporter.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "scrape_configs" in b)
    job = yaml.safe_load(block)["scrape_configs"][0]
    http = exporters.nginx.port("HTTP_PORT")
    targets = [f"http://127.0.0.1:{http}/", f"http://127.0.0.1:{http}/json"]
    address = exporters.probekit.removeprefix("http://")
    rules = job["relabel_configs"]
    for rule in rules:
        if rule.get("target_label") == "__address__":
            rule["replacement"] = address  # where this run's probekit exporter listens
    for target in targets:
        labels = _relabel({"__address__": target}, rules)
        assert labels["instance"] == target
        params = {k: v[0] for k, v in job["params"].items()}
        params["target"] = labels["__param_target"]
        url = (
            f"http://{labels['__address__']}{job['metrics_path']}?{urllib.parse.urlencode(params)}"
        )
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=15) as response:
            body = response.read().decode()
        assert "probe_success 1" in body, body
