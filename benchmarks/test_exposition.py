"""The Prometheus exposition of 5,000 monitors' latest results: ``prometheus_text`` per scrape.

What ``probekit run --metrics-port`` (and a checkpoint's results, were they exposed) renders on
every scrape: four HTTPS results in five (five phases, a certificate, four declared metrics)
and one TCP result in five (three phases, two declared metrics). The text goes through
``probekit._exporters.Exposition`` and ``prometheus_client``'s ``generate_latest``.
``extra_info`` holds the body size, the sample count and ``ms_per_scrape`` (the mean).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from probekit import CertInfo, Phase, Result, Status, TlsInfo, prometheus_text

MONITORS = 5_000


def monitors_results(count: int) -> dict[str, Result]:
    """``count`` monitors' latest results, one TCP monitor in five."""
    now = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
    cert = CertInfo("CN=svc", "CN=Corp CA", ("svc",), now, now, "ab" * 32, "1f")
    tls = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", "http/1.1", "svc", True, (cert,))
    out: dict[str, Result] = {}
    for i in range(count):
        if i % 5 == 4:
            out[f"tcp-{i:05d}"] = Result(
                kind="tcp",
                target=f"db{i}.internal:5432",
                status=Status.UP if i % 7 else Status.DOWN,
                started_at=now,
                duration=0.0021 + i * 1e-7,
                phases=(
                    Phase("resolve", 0.0, 0.0004),
                    Phase("connect", 0.0004, 0.0011),
                    Phase("exchange", 0.0015, 0.0006),
                ),
                metrics={"bytes_sent": 14, "bytes_received": 17 + i % 50},
            )
            continue
        out[f"web-{i:05d}"] = Result(
            kind="http",
            target=f"https://svc{i}.example/health",
            status=Status.UP if i % 11 else Status.DEGRADED,
            started_at=now,
            duration=0.0142 + i * 1e-7,
            phases=tuple(
                Phase(name, n * 0.002, 0.002 + i * 1e-8)
                for n, name in enumerate(("resolve", "connect", "tls", "processing", "transfer"))
            ),
            metrics={
                "status_code": 200,
                "body_bytes": 1234 + i % 100,
                "http_version": 1.1,
                "redirects": 0,
                "cert_days_left": 88.5 - i % 30,
            },
            tls=tls,
            address=f"10.0.{i // 250}.{i % 250}:443",
        )
    return out


def test_prometheus_text_of_5000_monitors(benchmark: Any) -> None:
    results = monitors_results(MONITORS)
    text = benchmark.pedantic(prometheus_text, (results,), rounds=10, warmup_rounds=1)
    samples = sum(len(f.samples) for f in text_string_to_metric_families(text))
    # http: 5 unlabelled common samples + 5 phases + 4 declared metrics;
    # tcp: 4 (no certificate) + 3 phases + 2 declared
    assert samples == 4_000 * 14 + 1_000 * 9
    mean_ms = benchmark.stats.stats.mean * 1e3
    benchmark.extra_info.update(
        monitors=MONITORS, samples=samples, body_bytes=len(text), ms_per_scrape=round(mean_ms, 1)
    )
    print(f"\nprometheus_text, {MONITORS} monitors: {mean_ms:.1f} ms per scrape, {len(text)} B")
