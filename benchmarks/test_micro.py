"""Micro benchmarks of per-check work, each next to the plain-Python floor measured in the same run.

* result → JSON: ``result_to_json`` of a typical HTTPS result, against ``json.dumps`` of the same
  data already as a plain dict (the floor: all the converter adds is the walk over attrs classes).
* policy decision: ``EgressPolicy.decide_host`` on a dotted IPv4 under the default policy plus a
  ten-network deny list (remembered after the first time; the first-sight cost is reported as
  ``uncached_us``), against a bare ``ipaddress`` parse and membership loop over the same networks.
* assertion evaluation: a ``BodyMatches``, a ``JsonPath`` and a ``StatusIn`` on a 2 KiB body,
  against ``re.search`` plus ``json.loads`` plus a set lookup.

Each test stores ``ratio_vs_floor`` (ours ÷ floor; lower is better) in ``extra_info``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import timeit
from typing import Any

from probekit import (
    AssertionOutcome,
    BodyMatches,
    CertInfo,
    EgressPolicy,
    JsonPath,
    Observation,
    Phase,
    Result,
    Status,
    StatusIn,
    TlsInfo,
    converter,
    result_to_json,
)


def _floor(fn: Any, number: int = 2000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number


def _record(benchmark: Any, ours_mean: float, floor: float, label: str) -> None:
    ratio = ours_mean / floor
    benchmark.extra_info.update(floor_us=round(floor * 1e6, 2), ratio_vs_floor=round(ratio, 2))
    print(f"\n{label}: {ours_mean * 1e6:.1f} µs vs floor {floor * 1e6:.1f} µs (ratio {ratio:.2f})")


def _result() -> Result:
    now = dt.datetime.now(dt.UTC)
    cert = CertInfo("CN=intranet", "CN=Corp CA", ("intranet",), now, now, "ab" * 32, "1f")
    return Result(
        kind="http",
        target="https://intranet.example/health",
        status=Status.UP,
        started_at=now,
        duration=0.0042,
        phases=tuple(
            Phase(n, i * 0.001, 0.001)
            for i, n in enumerate(("resolve", "connect", "tls", "processing", "transfer"))
        ),
        metrics={
            "status_code": 200,
            "body_bytes": 1234,
            "wire_bytes": 1234,
            "cert_days_left": 88.5,
        },
        assertions=(AssertionOutcome("status", True, "status in 200-299", "status 200"),),
        tls=TlsInfo(
            "TLSv1.3", "TLS_AES_256_GCM_SHA384", "http/1.1", "intranet.example", True, (cert,)
        ),
        address="10.0.4.17:443",
    )


def test_result_to_json(benchmark: Any) -> None:
    result = _result()
    plain = converter.unstructure(result)
    benchmark(result_to_json, result)
    floor = _floor(lambda: json.dumps(plain, separators=(",", ":")))
    _record(benchmark, benchmark.stats.stats.mean, floor, "result_to_json")


def test_policy_decision(benchmark: Any) -> None:
    deny = [f"10.{i}.0.0/16" for i in range(10)]
    policy = EgressPolicy(deny=deny)
    nets = [ipaddress.ip_network(n) for n in (*deny, *policy.deny_default)]

    def floor_fn() -> bool:
        ip = ipaddress.ip_address("192.168.7.9")
        return not any(ip in n for n in nets)

    assert policy.decide_host("192.168.7.9").allowed
    benchmark(policy.decide_host, "192.168.7.9")  # steady state: the decision is remembered
    cold = _floor(lambda: policy._decide_host("192.168.7.9"))  # first sight of an address
    benchmark.extra_info["uncached_us"] = round(cold * 1e6, 2)
    print(f"\npolicy decision, first sight of an address: {cold * 1e6:.1f} µs")
    _record(benchmark, benchmark.stats.stats.mean, _floor(floor_fn), "policy decision (remembered)")


def test_assertion_evaluation(benchmark: Any) -> None:
    doc = {"status": "ok", "items": list(range(300)), "db": {"latency_ms": 12}}
    body = json.dumps(doc).encode()
    assertions = (
        StatusIn(ranges=((200, 299),)),
        BodyMatches(r'"status":\s*"ok"'),
        JsonPath("$.db.latency_ms", "lt", 50),
    )
    pattern = re.compile(r'"status":\s*"ok"')

    def ours() -> list[Any]:
        obs = Observation(elapsed=0.01, status_code=200, body=body)
        return [a.evaluate(obs) for a in assertions]

    def floor_fn() -> bool:
        return (
            bool(pattern.search(body.decode()))
            and json.loads(body)["db"]["latency_ms"] < 50
            and 200 in range(200, 300)
        )

    assert all(o.passed for o in ours())
    benchmark(ours)
    _record(benchmark, benchmark.stats.stats.mean, _floor(floor_fn), "assertions")
