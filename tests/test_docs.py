"""Every ```python block in README.md and docs/ runs as written.

The blocks run in-process with the event loop's connect guarded: any attempt to connect to a
non-loopback address fails the test instead of sending a packet.
"""

from __future__ import annotations

import asyncio.selector_events
import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks() -> list[Any]:
    out = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]:
        for i, match in enumerate(BLOCK.finditer(path.read_text())):
            out.append(pytest.param(match.group(1), id=f"{path.relative_to(ROOT)}#{i}"))
    return out


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    attempts: list[Any] = []
    original = asyncio.selector_events.BaseSelectorEventLoop.sock_connect

    async def guarded(self: Any, sock: Any, address: Any) -> None:
        attempts.append(address)
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise AssertionError(f"a documented example tried to connect to {address}")
        await original(self, sock, address)

    monkeypatch.setattr(asyncio.selector_events.BaseSelectorEventLoop, "sock_connect", guarded)
    return attempts


def test_there_are_examples() -> None:
    assert len(_blocks()) >= 5


@pytest.mark.parametrize("code", _blocks())
def test_example_runs(code: str, loopback_only: list[Any]) -> None:
    namespace: dict[str, Any] = {"__name__": "__doc_example__"}
    exec(compile(code, "<doc example>", "exec"), namespace)  # noqa: S102 - our own docs
