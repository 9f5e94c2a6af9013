"""A result in blackbox_exporter's metric names, types and labels, plus probekit's own.

The names, help texts and labels are blackbox_exporter's (read from its documentation and
source, and compared with Debian's ``prometheus-blackbox-exporter`` by the interop suite), so
dashboards and alert rules written for it keep working. Where probekit measures a value
differently, docs/exporter.md says how.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

from .._exporters import Exposition
from .._result import Result, Status, TlsInfo
from ._modules import Module

__all__ = ["blackbox_text", "ip_hash", "probe_succeeded"]

#: (name, help) of every family emitted, blackbox_exporter's first.
HELP: Final = {
    "probe_success": "Displays whether or not the probe was a success",
    "probe_duration_seconds": "Returns how long the probe took to complete in seconds",
    "probe_dns_lookup_time_seconds": "Returns the time taken for probe dns lookup in seconds",
    "probe_ip_protocol": "Specifies whether probe ip protocol is IP4 or IP6",
    "probe_ip_addr_hash": (
        "Specifies the hash of IP address. It's useful to detect if the IP address changes."
    ),
    "probe_failed_due_to_regex": "Indicates if probe failed due to regex",
    "probe_http_duration_seconds": "Duration of http request by phase, summed over all redirects",
    "probe_http_content_length": "Length of http content response",
    "probe_http_uncompressed_body_length": "Length of uncompressed response body",
    "probe_http_redirects": "The number of redirects",
    "probe_http_ssl": "Indicates if SSL was used for the final redirect",
    "probe_http_status_code": "Response HTTP status code",
    "probe_http_version": "Returns the version of HTTP of the probe response",
    "probe_ssl_earliest_cert_expiry": "Returns last SSL chain expiry in unixtime",
    "probe_ssl_last_chain_expiry_timestamp_seconds": "Returns last SSL chain expiry in timestamp",
    "probe_ssl_last_chain_info": "Contains SSL leaf certificate information",
    "probe_tls_version_info": "Returns the TLS version used or NaN when unknown",
    "probe_dns_duration_seconds": "Duration of DNS request by phase",
    "probe_dns_answer_rrs": "Returns number of entries in the answer resource record list",
    "probe_dns_authority_rrs": "Returns number of entries in the authority resource record list",
    "probe_dns_additional_rrs": (
        "Returns number of entries in the additional resource record list"
    ),
    "probe_dns_query_succeeded": "Displays whether or not the query was executed successfully",
    "probe_dns_serial": "Returns the serial number of the zone",
    "probe_icmp_duration_seconds": "Duration of icmp request by phase",
    "probekit_status": (
        "probekit's status of the check as its Nagios code: 0 UP, 1 DEGRADED, 2 DOWN, 3 UNKNOWN."
    ),
    "probekit_phase_duration_seconds": "Time the check spent in each of probekit's phases.",
    "probekit_assertion_passed": "1 for each assertion of the check that held, 0 for each failed.",
    "probekit_error_info": "1, labelled with the error kind and phase of a failed check.",
}

_Sample = tuple[dict[str, str], float]

_TLS_NAMES: Final = {
    "TLSv1": "TLS 1.0",
    "TLSv1.1": "TLS 1.1",
    "TLSv1.2": "TLS 1.2",
    "TLSv1.3": "TLS 1.3",
}


def probe_succeeded(result: Result, module: Module) -> bool:
    """blackbox_exporter's ``probe_success``: UP or DEGRADED, and an HTTP version the module's
    ``valid_http_versions`` lists (when it lists any)."""
    if result.status not in (Status.UP, Status.DEGRADED):
        return False
    if module.valid_http_versions:
        return _http_version_text(result.metrics.get("http_version")) in module.valid_http_versions
    return True


def _http_version_text(value: float | None) -> str | None:
    if value is None:
        return None
    return {1.0: "HTTP/1.0", 1.1: "HTTP/1.1", 2.0: "HTTP/2.0"}.get(round(value, 1))


def ip_hash(address: str | None) -> float:
    """blackbox_exporter's ``probe_ip_addr_hash``: FNV-1a (32 bit) of the address's bytes (4
    for IPv4, 16 for IPv6), 0 when there is no address."""
    ip = _ip(address)
    if ip is None:
        return 0.0
    value = 0x811C9DC5
    for byte in ip.packed:
        value ^= byte
        value = (value * 0x01000193) & 0xFFFFFFFF
    return float(value)


def _ip_version(address: str | None) -> int:
    ip = _ip(address)
    return ip.version if ip is not None else 0


def _ip(address: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP of ``ip:port``, ``[v6]:port`` or a bare address; None for anything else."""
    if not address:
        return None
    host = address
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _address(result: Result) -> str | None:
    """The address the check reached or, when it failed before connecting, the target's own
    address if it is written as one (blackbox_exporter reports the resolved address then)."""
    if result.address:
        return result.address
    target = result.target
    if "://" in target:
        target = urlsplit(target).netloc.rpartition("@")[2]
    return target if _ip(target) is not None else None


def _phase(result: Result, name: str) -> float:
    return result.phase(name) or 0.0


def _tls_samples(tls: TlsInfo | None) -> Iterable[tuple[str, _Sample]]:
    if tls is None:
        return
    if tls.chain:
        earliest = min(cert.not_after.timestamp() for cert in tls.chain)
        yield "probe_ssl_earliest_cert_expiry", ({}, earliest)
        yield "probe_ssl_last_chain_expiry_timestamp_seconds", ({}, earliest)
        leaf = tls.chain[0]
        labels = {
            "fingerprint_sha256": leaf.sha256,
            "subject": leaf.subject,
            "issuer": leaf.issuer,
            "subjectalternative": ",".join(leaf.sans),
            "serialnumber": leaf.serial,
        }
        yield "probe_ssl_last_chain_info", (labels, 1.0)
    yield "probe_tls_version_info", ({"version": _TLS_NAMES.get(tls.version, tls.version)}, 1.0)


def _redirects(result: Result, module: Module) -> float:
    """Redirects followed; a redirect answered to a module that does not follow them counts
    as one, as blackbox_exporter counts it."""
    followed = float(result.metrics.get("redirects", 0))
    status = result.metrics.get("status_code", 0)
    if module.definition.get("follow_redirects") is False and 300 <= status < 400:
        return followed + 1
    return followed


def _regex_failed(result: Result) -> float:
    """1 when a regular expression on the body, a header or the bytes read did not hold."""
    names = ("body_matches", "header_matches", "expect")
    return float(any(not a.passed and a.name in names for a in result.assertions))


def _samples(result: Result, module: Module) -> Iterable[tuple[str, _Sample]]:
    prober = module.prober
    yield "probe_dns_lookup_time_seconds", ({}, _phase(result, "resolve"))
    address = _address(result)
    yield "probe_ip_protocol", ({}, float(_ip_version(address)))
    yield "probe_ip_addr_hash", ({}, ip_hash(address))
    metrics = result.metrics
    if prober == "http":
        answered = "status_code" in metrics
        yield "probe_failed_due_to_regex", ({}, _regex_failed(result))
        for phase in ("resolve", "connect", "tls", "processing", "transfer"):
            yield "probe_http_duration_seconds", ({"phase": phase}, _phase(result, phase))
        wire = metrics.get("wire_bytes", metrics.get("body_bytes", 0))
        yield "probe_http_content_length", ({}, float(wire) if answered else 0.0)
        yield "probe_http_uncompressed_body_length", ({}, float(metrics.get("body_bytes", 0)))
        yield "probe_http_redirects", ({}, float(_redirects(result, module)))
        # as blackbox_exporter: TLS facts of a response, none for a failed handshake
        tls = result.tls if answered else None
        yield "probe_http_ssl", ({}, 1.0 if tls is not None else 0.0)
        yield "probe_http_status_code", ({}, float(metrics.get("status_code", 0)))
        yield "probe_http_version", ({}, float(metrics.get("http_version", 0)))
        yield from _tls_samples(tls)
    elif prober == "tcp":
        yield "probe_failed_due_to_regex", ({}, _regex_failed(result))
        yield from _tls_samples(result.tls)
    elif prober == "dns":
        yield "probe_dns_duration_seconds", ({"phase": "resolve"}, _phase(result, "resolve"))
        yield "probe_dns_duration_seconds", ({"phase": "connect"}, _phase(result, "connect"))
        request = _phase(result, "query") + _phase(result, "query_tcp")
        yield "probe_dns_duration_seconds", ({"phase": "request"}, request)
        for key in ("answer_rrs", "authority_rrs", "additional_rrs"):
            yield f"probe_dns_{key}", ({}, float(metrics.get(key, 0)))
        answered = "rcode" in metrics and (
            result.status in (Status.UP, Status.DEGRADED)
            or (result.error is not None and result.error.kind.value == "assertion")
        )
        yield "probe_dns_query_succeeded", ({}, float(answered))
        if "soa_serial" in metrics:
            yield "probe_dns_serial", ({}, float(metrics["soa_serial"]))
    elif prober == "icmp":
        rtt = float(metrics.get("rtt_avg", 0.0))
        setup = max(0.0, _phase(result, "ping") - rtt) if "rtt_avg" in metrics else 0.0
        yield "probe_icmp_duration_seconds", ({"phase": "resolve"}, _phase(result, "resolve"))
        yield "probe_icmp_duration_seconds", ({"phase": "rtt"}, rtt)
        yield "probe_icmp_duration_seconds", ({"phase": "setup"}, setup)
    # probekit's own additions
    yield "probekit_status", ({}, float(result.status.exit_code))
    for name in result.phase_names():
        yield "probekit_phase_duration_seconds", ({"phase": name}, _phase(result, name))
    if result.error is not None:
        error = {"kind": result.error.kind.value, "phase": result.error.phase or ""}
        yield "probekit_error_info", (error, 1.0)
    for outcome in result.assertions:
        labels = {"assertion": outcome.name, "expected": outcome.expected}
        yield "probekit_assertion_passed", (labels, 1.0 if outcome.passed else 0.0)


def blackbox_text(result: Result, module: Module, *, kind_metrics: bool = True) -> str:
    """The ``/probe`` answer for ``result``: blackbox_exporter's families for the module's
    prober (``probe_success``, ``probe_duration_seconds``, ...), then probekit's
    (``probekit_status``, ``probekit_phase_duration_seconds``, ``probekit_assertion_passed``
    and, with ``kind_metrics``, the metrics the result's kind declares, unlabelled)."""
    families: dict[str, list[_Sample]] = {
        "probe_success": [({}, float(probe_succeeded(result, module)))],
        "probe_duration_seconds": [({}, result.duration)],
    }
    for name, sample in _samples(result, module):
        families.setdefault(name, []).append(sample)
    helps: dict[str, tuple[str, str]] = {name: (HELP[name], "gauge") for name in families}
    if kind_metrics:
        _add_kind_metrics(result, families, helps)
    out = Exposition()
    for name in sorted(families):
        help_text, kind = helps[name]
        samples = sorted(families[name], key=lambda sample: sorted(sample[0].items()))
        out.family(name, help_text, kind, samples)
    return out.text()


def _add_kind_metrics(
    result: Result, families: dict[str, list[_Sample]], helps: dict[str, tuple[str, str]]
) -> None:
    from .._exceptions import DefinitionError
    from ..probes._registry import get_kind

    try:
        declared = get_kind(result.kind).metrics
    except DefinitionError:
        return
    for metric in declared:
        value = result.metrics.get(metric.key)
        if value is None or metric.name in families:
            continue
        families[metric.name] = [({}, float(value))]
        helps[metric.name] = (metric.help, metric.type)
