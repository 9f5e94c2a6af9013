"""A checkpoint instance's own observability: ``/metrics`` (Prometheus text) and ``/ready``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Final

__all__ = ["HTTP_LIMIT", "metrics_text", "serve_http"]

#: The metrics endpoint reads at most this much of a request, for at most this long.
HTTP_LIMIT: Final = 8192
_HTTP_TIMEOUT: Final = 5.0

_ROWS: Final = (
    ("in_flight", "gauge", "Checks executing now.", "in_flight"),
    ("queue_depth", "gauge", "Runs and results waiting.", "queue_depth"),
    ("spool_depth", "gauge", "Results in the spool, not yet acked.", "spool_depth"),
    ("spool_dropped_total", "counter", "Results evicted from the full spool.", "spool_dropped"),
    ("reconnects_total", "counter", "Reconnections to the control plane.", "reconnects"),
    ("connected", "gauge", "1 while connected to the control plane.", "connected"),
    ("autonomous", "gauge", "1 while the local schedule runs.", "autonomous"),
    ("definitions", "gauge", "Monitor definitions held.", "definitions"),
    ("results_total", "counter", "Results produced.", "results_produced"),
    ("acked_total", "counter", "Results acked by the control plane.", "results_acked"),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(stats: Mapping[str, int | bool], checkpoint_id: str, instance_id: str) -> str:
    """The Prometheus text exposition of a checkpoint's ``stats``."""
    labels = f'checkpoint_id="{_label(checkpoint_id)}",instance_id="{_label(instance_id)}"'
    lines = []
    for name, kind, help_text, key in _ROWS:
        metric = f"probekit_checkpoint_{name}"
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} {kind}")
        lines.append(f"{metric}{{{labels}}} {int(stats[key])}")
    return "\n".join(lines) + "\n"


async def serve_http(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    metrics: Callable[[], str],
    ready: Callable[[], bool],
) -> None:
    """Answer one request for ``/metrics`` or ``/ready`` (GET or HEAD), then close."""
    try:
        async with asyncio.timeout(_HTTP_TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(_response(head, metrics, ready))
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
        pass
    finally:
        writer.close()


def _response(head: bytes, metrics: Callable[[], str], ready: Callable[[], bool]) -> bytes:
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _http(400, "bad request\n")
    method, target = parts[0], parts[1]
    path = target.split("?", 1)[0]
    if method not in ("GET", "HEAD") or path not in ("/metrics", "/ready"):
        return _http(404, "not found\n")
    if path == "/metrics":
        response = _http(200, metrics(), "text/plain; version=0.0.4; charset=utf-8")
    elif ready():
        response = _http(200, "ready\n")
    else:
        response = _http(503, "not ready\n")
    if method == "HEAD":
        response = response.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    return response


_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}


def _http(status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> bytes:
    data = body.encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + data
