"""The exporter: ``/probe?module=NAME&target=T`` as blackbox_exporter answers it, on probekit's
dial path and egress policy."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from .._context import ProbeContext
from .._exceptions import DefinitionError, DefinitionErrors
from .._exporters import PROMETHEUS_CONTENT_TYPE, Exposition
from .._metrics_server import MetricsServer, serve_metrics
from .._result import Result
from .._runner import Runner
from ._metrics import blackbox_text
from ._modules import Module, load_modules

__all__ = ["DEFAULT_SCRAPE_TIMEOUT", "Exporter"]

log = logging.getLogger("probekit.exporter")

#: Seconds a probe may take when neither the module nor the scrape says (blackbox_exporter's).
DEFAULT_SCRAPE_TIMEOUT: Final = 120.0
_TEXT: Final = "text/plain; charset=utf-8"
_Answer = tuple[int, str, bytes]


class Exporter:
    """A drop-in for blackbox_exporter: ``/probe?module=NAME&target=T`` runs one check and
    answers with blackbox_exporter's metrics (see docs/exporter.md).

    ``modules`` are the modules to serve, or ``config`` a file to read them from
    (``blackbox.yml`` or probekit's TOML; :meth:`reload` reads it again). Every check runs on
    ``context`` (its dialer, so its egress policy: the default one denies cloud metadata and
    link-local addresses, for targets and for every redirect hop) with at most
    ``max_concurrency`` at once. A check gets the module's ``timeout``, bounded by the scrape's
    ``X-Prometheus-Scrape-Timeout-Seconds`` minus ``timeout_offset`` (as blackbox_exporter).

    Use it as an async context manager, then :meth:`serve` (or :meth:`probe` in-process)::

        async with Exporter(config="blackbox.yml") as exporter:
            server = await exporter.serve("127.0.0.1", 9115)
    """

    def __init__(
        self,
        modules: Mapping[str, Module] | None = None,
        *,
        config: str | Path | None = None,
        context: ProbeContext | None = None,
        max_concurrency: int = 256,
        timeout_offset: float = 0.5,
    ) -> None:
        if (modules is None) == (config is None):
            raise ValueError("give modules or config, not both and not neither")
        self._config = Path(config) if config is not None else None
        self._modules: dict[str, Module] = (
            dict(modules) if modules is not None else load_modules(self._config)  # type: ignore[arg-type]
        )
        self._runner = Runner(max_concurrency, context=context)
        self._timeout_offset = timeout_offset
        self._started = time.time()
        self._probes: dict[tuple[str, bool], int] = {}
        self._unknown_module = 0
        self._reloads = {"success": 0, "failure": 0}
        self._last_reload_ok = True
        self._last_reload_at = time.time()
        self._server: MetricsServer | None = None

    @property
    def modules(self) -> Mapping[str, Module]:
        return dict(self._modules)

    async def __aenter__(self) -> Self:
        await self._runner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None
        await self._runner.__aexit__(exc_type, exc, tb)

    # -- configuration --------------------------------------------------------------------

    def reload(self) -> None:
        """Read the config file again. On errors the running modules stay, the errors are
        logged and raised (:class:`~probekit.DefinitionErrors`, ``OSError``)."""
        if self._config is None:
            raise ValueError("this exporter was given modules, not a config file")
        try:
            modules = load_modules(self._config)
        except (DefinitionErrors, OSError) as exc:
            self._reloads["failure"] += 1
            self._last_reload_ok = False
            log.error("reloading %s failed; the running modules stay: %s", self._config, exc)
            raise
        self._modules = modules
        self._reloads["success"] += 1
        self._last_reload_ok = True
        self._last_reload_at = time.time()
        log.info("reloaded %s: %d module(s)", self._config, len(modules))

    # -- checking -------------------------------------------------------------------------

    def timeout_for(self, module: Module, scrape_timeout: float | None) -> float:
        """The seconds a check of ``module`` gets (blackbox_exporter's rule)."""
        limit = (scrape_timeout or DEFAULT_SCRAPE_TIMEOUT) - self._timeout_offset
        if module.timeout is not None and (module.timeout < limit or limit <= 0):
            return module.timeout
        return limit if limit > 0 else DEFAULT_SCRAPE_TIMEOUT

    async def check(
        self, module_name: str, target: str, *, scrape_timeout: float | None = None
    ) -> tuple[Module, Result]:
        """Run ``module_name`` against ``target``; raises ``KeyError`` for an unknown module and
        :class:`~probekit.DefinitionErrors` for a target the module cannot take."""
        module = self._modules[module_name]
        timeout = self.timeout_for(module, scrape_timeout)
        probe = module.probe_for(target, timeout)
        result = await self._runner.check(probe)
        self._probes[(module_name, result.status.exit_code <= 1)] = (
            self._probes.get((module_name, result.status.exit_code <= 1), 0) + 1
        )
        return module, result

    async def probe(
        self,
        module_name: str | None,
        target: str | None,
        *,
        scrape_timeout: float | None = None,
        debug: bool = False,
    ) -> _Answer:
        """``/probe``'s answer: (status, content type, body)."""
        if not target:
            return 400, _TEXT, b"Target parameter is missing\n"
        name = module_name or "http_2xx"
        if name not in self._modules:
            self._unknown_module += 1
            return 400, _TEXT, f"Unknown module {name!r}\n".encode()
        try:
            module, result = await self.check(name, target, scrape_timeout=scrape_timeout)
        except DefinitionErrors as exc:
            text = "; ".join(str(e) for e in exc.errors)
            return 400, _TEXT, f"Invalid target {target!r} for module {name!r}: {text}\n".encode()
        except DefinitionError as exc:
            return 400, _TEXT, f"Invalid target {target!r} for module {name!r}: {exc}\n".encode()
        body = blackbox_text(result, module)
        if debug:
            return 200, _TEXT, _debug_text(module, target, result, body).encode()
        return 200, PROMETHEUS_CONTENT_TYPE, body.encode()

    # -- serving --------------------------------------------------------------------------

    async def serve(self, host: str | None, port: int) -> MetricsServer:
        """Serve ``/probe``, ``/metrics`` (this process's own), ``/-/healthy`` and
        ``/-/reload`` (POST) on ``host:port`` until the exporter is closed."""

        async def probe_route(
            method: str, query: Mapping[str, list[str]], header: Callable[[str], str]
        ) -> _Answer:
            if method not in ("GET", "HEAD", "POST"):
                return 405, _TEXT, b"GET only\n"
            scrape = header("x-prometheus-scrape-timeout-seconds")
            try:
                scrape_timeout = float(scrape) if scrape else None
            except ValueError:
                return 400, _TEXT, f"bad X-Prometheus-Scrape-Timeout-Seconds {scrape!r}\n".encode()
            debug = (query.get("debug") or [""])[0].lower() == "true"
            return await self.probe(
                (query.get("module") or [""])[0],
                (query.get("target") or [""])[0],
                scrape_timeout=scrape_timeout,
                debug=debug,
            )

        async def healthy(
            method: str, query: Mapping[str, list[str]], header: Callable[[str], str]
        ) -> _Answer:
            return 200, _TEXT, b"Healthy\n"

        async def reload(
            method: str, query: Mapping[str, list[str]], header: Callable[[str], str]
        ) -> _Answer:
            if method not in ("POST", "PUT"):
                return 405, _TEXT, b"This endpoint requires a POST request.\n"
            if self._config is None:
                return 500, _TEXT, b"no config file to reload\n"
            try:
                await asyncio.to_thread(self.reload)
            except (DefinitionErrors, OSError) as exc:
                return 500, _TEXT, f"failed to reload config: {exc}\n".encode()
            return 200, _TEXT, b"OK\n"

        self._server = await serve_metrics(
            host,
            port,
            self.render_metrics,
            max_connections=1024,
            routes={"/probe": probe_route, "/-/healthy": healthy, "/-/reload": reload},
        )
        return self._server

    def render_metrics(self) -> str:
        """This process's own ``/metrics``."""
        out = Exposition()
        out.family(
            "blackbox_exporter_config_last_reload_successful",
            "Blackbox exporter config loaded successfully.",
            "gauge",
            [({}, float(self._last_reload_ok))],
        )
        out.family(
            "blackbox_exporter_config_last_reload_success_timestamp_seconds",
            "Timestamp of the last successful configuration reload.",
            "gauge",
            [({}, self._last_reload_at)],
        )
        out.family(
            "blackbox_module_unknown_total",
            "Count of unknown modules requested by probes",
            "counter",
            [({}, float(self._unknown_module))],
        )
        out.family(
            "probekit_exporter_probes_total",
            "Checks run by /probe, by module and by whether they succeeded.",
            "counter",
            [
                ({"module": module, "success": "true" if ok else "false"}, float(count))
                for (module, ok), count in sorted(self._probes.items())
            ],
        )
        out.family(
            "probekit_exporter_reloads_total",
            "Config reloads, by result.",
            "counter",
            [({"result": key}, float(value)) for key, value in sorted(self._reloads.items())],
        )
        out.family(
            "probekit_exporter_modules",
            "Modules in the running configuration.",
            "gauge",
            [({}, float(len(self._modules)))],
        )
        return out.text()


def _debug_text(module: Module, target: str, result: Result, body: str) -> str:
    lines = [
        "Logs for the probe:",
        f"module={module.name} target={target} kind={module.kind} result: {result.summary()}",
    ]
    if result.address:
        lines.append(f"address {result.address}")
    lines.extend(
        f"phase {phase.name}: start {phase.start * 1000:.3f} ms, "
        f"duration {phase.duration * 1000:.3f} ms"
        for phase in result.phases
    )
    lines.extend(f"assertion {outcome.describe()}" for outcome in result.assertions)
    if result.error is not None:
        lines.append(f"error {result.error.kind.value}: {result.error.message}")
    lines += ["", "", "", "Metrics that would have been returned:", body.rstrip("\n"), "", ""]
    lines += [
        "",
        "Module configuration:",
        json.dumps(dict(module.definition), indent=2, default=str),
    ]
    return "\n".join(lines) + "\n"
