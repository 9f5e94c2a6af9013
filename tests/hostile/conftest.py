"""The hostile suites: hostile servers, SSRF spellings for every kind, the secret canary, fuzzing.

Everything runs on loopback; addresses that must never be dialled go through the guarded
connector of ``tests/servers.py``, which refuses them before a socket exists.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings

# `nox -s fuzz` runs tests/hostile/test_fuzz.py with this profile: four fuzz tests of 25,000
# examples each, 100,000 generated cases in all.
settings.register_profile(
    "fuzz",
    max_examples=25_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from hostile_measure import MEASURED

    if not MEASURED:
        return
    worst_over = max(MEASURED, key=lambda m: m[1])
    worst_rss = max(MEASURED, key=lambda m: m[2])
    worst_cpu = max(MEASURED, key=lambda m: m[3])
    terminalreporter.write_sep("-", f"hostile servers: {len(MEASURED)} cases")
    terminalreporter.write_line(
        f"worst deadline overshoot {worst_over[1] * 1000:+.1f} ms ({worst_over[0]}); "
        f"worst RSS growth {worst_rss[2] / 2**20:.1f} MiB ({worst_rss[0]}); "
        f"worst CPU {worst_cpu[3] * 1000:.0f} ms ({worst_cpu[0]})"
    )
