"""The reference control plane's config file: :func:`load_control_config` reads it into a
:class:`ControlConfig` (the plane's settings, its monitors and its webhooks).

TOML, or JSON of the same shape when the file name ends in ``.json``; ``docs/checkpoint.md``
describes it. Like :func:`probekit.load_config`, every problem is reported at once, each with
its path, by raising :class:`~probekit.DefinitionErrors`. Warnings (an inline token, plain
``ws://`` on a non-loopback address allowed by ``insecure``) are logged or handed to a callback.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

import attrs

from .._config import DEFAULT_INTERVAL, _kind, _Loader
from .._definitions import build_probe
from .._exceptions import DefinitionError, DefinitionErrors
from .._secret import Secret
from .._validate import (
    MAX_ID_LENGTH,
    id_problem,
    is_id,
    is_loopback,
    read_config_file,
    seconds_problem,
    token_problem,
)
from ._store import is_postgres

if TYPE_CHECKING:
    from ..alerting._maintenance import MaintenanceWindow
    from ..alerting._sinks import DurableSink
    from . import ControlSettings
    from ._logic import MonitorSpec, SitePolicy

__all__ = ["ControlConfig", "is_loopback", "load_control_config", "token_problem"]

log = logging.getLogger("probekit.control")

#: The sections of a control-plane config file, and the keys of its [control] table.
_CONTROL_SECTIONS: Final = (
    *("control", "checkpoints", "monitors", "webhooks", "channels", "maintenance"),
)
_CONTROL_NUMBERS: Final = (
    *("heartbeat_interval", "tick_interval", "hello_timeout", "stale_after"),
    *("grace", "startup_grace", "prune_interval", "standby_poll"),
)
_CONTROL_INTEGERS: Final = (
    *("missed_heartbeats", "max_frame_bytes", "unanswered_runs", "prune_batch"),
    *("confirmations", "flap_window"),
)
_CONTROL_PERCENTAGES: Final = ("flap_high", "flap_low")
_CONTROL_KEYS: Final = (
    *("host", "port", "db", "tls_cert", "tls_key", "retention", "metrics_host", "metrics_port"),
    "status_token",
    "assignment",
    "outbox",
    "db_password",
    "standby",
    *_CONTROL_PERCENTAGES,
    *_CONTROL_NUMBERS,
    *_CONTROL_INTEGERS,
)
_MONITOR_OWN_KEYS: Final = (
    *("id", "checkpoint", "interval", "labels", "checkpoints", "alert_when"),
)
_ONLY_LOCAL: Final = "secrets are only read from local configuration"


@attrs.frozen
class ControlConfig:
    """A loaded ``probekit control`` config file (see ``docs/checkpoint.md``)."""

    settings: ControlSettings
    monitors: tuple[MonitorSpec, ...]
    #: The ``[[webhooks]]``, each a webhook channel behind its outbox (named ``webhooks[N]``).
    webhooks: tuple[DurableSink, ...]
    #: The ``tls_cert`` and ``tls_key`` paths (None without TLS): a reload compares them.
    tls_files: tuple[str | None, str | None] = (None, None)
    #: The ``[[channels]]``, each behind its outbox (see ``docs/alerting.md``).
    channels: tuple[DurableSink, ...] = ()
    #: The ``[[maintenance]]`` windows.
    maintenance: tuple[MaintenanceWindow, ...] = ()
    #: The ``labels`` of the monitors that have some, by monitor id.
    labels: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict)
    #: The monitors run from several checkpoints (``checkpoints = [...]``): each location is in
    #: ``monitors`` as ``ID@CHECKPOINT``.
    sites: tuple[SitePolicy, ...] = ()


def load_control_config(
    path: str | Path,
    *,
    insecure: bool = False,
    warn: Callable[[str], None] | None = None,
) -> ControlConfig:
    """Load a ``probekit control`` config file: TOML, or JSON when its name ends in ``.json``.

    Raises :class:`~probekit.DefinitionErrors` listing every problem, each with its path
    (``monitors[2].url: ...``). ``insecure`` allows a non-loopback ``host`` without TLS.
    Warnings (an inline token, plain ws:// allowed by ``insecure``) go to ``warn``, even when
    there are errors too; by default they are logged.
    """
    data = read_config_file(path)
    loader = _ControlLoader(str(path), insecure)
    config = loader.load(data)
    for warning in loader.warnings:
        (warn or log.warning)(warning)
    if loader.errors:
        raise DefinitionErrors(loader.errors)
    assert config is not None
    return config


class _ControlLoader(_Loader):
    """Reads a control-plane config, collecting every error with its path."""

    def __init__(self, source: str, insecure: bool) -> None:
        super().__init__()
        self.source = source
        self.insecure = insecure
        self.warnings: list[str] = []
        self.sites: list[SitePolicy] = []

    def load(self, data: Any) -> ControlConfig | None:
        from . import ControlSettings

        if not isinstance(data, Mapping):
            self.fail("", f"a config file holds a table (object), got {_kind(data)}")
            return None
        for key in data:
            if key not in _CONTROL_SECTIONS:
                self.fail(str(key), f"unknown section; known: {', '.join(_CONTROL_SECTIONS)}")
        control = self.control(data.get("control"))
        tokens = self.checkpoints(data.get("checkpoints"))
        status_token = control.get("status_token")
        if status_token is not None and status_token in tokens.values():
            self.fail(
                "control.status_token",
                "the same token as a checkpoint; the status page needs its own",
            )
        monitors = self.control_monitors(data.get("monitors"), set(tokens))
        webhooks = self.webhooks(data.get("webhooks", []))
        from ..alerting._config import channels, labels, maintenance

        control_data = data.get("control")
        outbox = control_data.get("outbox") if isinstance(control_data, Mapping) else None
        db_path = control.get("db_path", ":memory:")
        # The channels' outbox is the control plane's database; ``outbox`` names the file an
        # older version kept it in, whose undelivered events move into the database at start.
        default_outbox = ":memory:" if db_path == ":memory:" else f"{db_path}-outbox"
        if is_postgres(db_path):
            default_outbox = ":memory:"
        if outbox is not None and (not isinstance(outbox, str) or not outbox):
            self.fail("control.outbox", f"expected a file path, got {outbox!r}")
        sinks = channels(self, data.get("channels", []), outbox or default_outbox)
        windows = maintenance(self, data.get("maintenance", []))
        monitor_labels = labels(self, data.get("monitors"))
        if self.errors:
            return None
        settings = ControlSettings(
            tokens={k: v for k, v in tokens.items() if v is not None}, **control
        )
        control_table = data.get("control")
        tls_files = (
            (control_table.get("tls_cert"), control_table.get("tls_key"))
            if isinstance(control_table, Mapping)
            else (None, None)
        )
        return ControlConfig(
            settings,
            tuple(monitors),
            tuple(webhooks),
            tls_files,
            tuple(sinks),
            tuple(windows),
            monitor_labels,
            tuple(self.sites),
        )

    # -- [control] -----------------------------------------------------------------------------

    def database(self, data: Mapping[str, Any], out: dict[str, Any]) -> None:
        """``db``: a SQLite file or a ``postgresql://`` URL (no password in it: that is
        ``db_password``, read from the environment or a file)."""
        db = data.get("db")
        if db is None:
            self.fail(
                "control.db",
                "required: the SQLite file (or postgresql:// URL) to keep monitors and results in",
            )
        elif not isinstance(db, str) or not db:
            self.fail("control.db", f"expected a file path or a postgresql:// URL, got {db!r}")
        elif is_postgres(db) and _url_password(db):
            # (the URL is not repeated: it holds the password)
            self.fail(
                "control.db",
                "the URL holds a password; leave it out and give it as "
                'db_password = {env = "VAR"} or {file = "PATH"}',
            )
        else:
            out["db_path"] = db
        standby = data.get("standby")
        if standby is not None:
            if not isinstance(standby, bool):
                self.fail("control.standby", f"expected true or false, got {standby!r}")
            elif standby and not (isinstance(db, str) and is_postgres(db)):
                self.fail(
                    "control.standby",
                    "needs a postgresql:// db, shared by the active and the standby control planes",
                )
            else:
                out["standby"] = standby
        source = data.get("db_password")
        if source is None:
            return
        if not (isinstance(db, str) and is_postgres(db)):
            self.fail("control.db_password", "only for a postgresql:// db")
            return
        password = self.read_secret(source, "control.db_password")
        if password is not None:
            out["db_password"] = password

    def control(self, data: Any) -> dict[str, Any]:
        if data is None:
            self.fail("control", "missing: add a [control] table with at least port and db")
            return {}
        if not isinstance(data, Mapping):
            self.fail("control", f"expected a table, got {_kind(data)}")
            return {}
        out: dict[str, Any] = {}
        for key in data:
            if key not in _CONTROL_KEYS:
                self.fail(f"control.{key}", f"unknown field; known: {', '.join(_CONTROL_KEYS)}")
        host = data.get("host", "127.0.0.1")
        if not isinstance(host, str) or not host:
            self.fail("control.host", f"expected an address or host name, got {host!r}")
        else:
            out["host"] = host
        port = data.get("port")
        if port is None:
            self.fail("control.port", "required: the port to listen on (0 picks a free one)")
        elif isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            self.fail("control.port", f"expected a port number (0-65535), got {port!r}")
        else:
            out["port"] = port
        self.database(data, out)
        retention = data.get("retention")
        if retention is False:
            out["retention"] = None
        elif retention is not None:
            if (problem := seconds_problem(retention)) is not None:
                self.fail("control.retention", f"{problem} (or false to keep everything)")
            else:
                out["retention"] = float(retention)
        metrics_host = data.get("metrics_host")
        if metrics_host is not None:
            if not isinstance(metrics_host, str) or not metrics_host:
                self.fail(
                    "control.metrics_host",
                    f"expected an address or host name, got {metrics_host!r}",
                )
            else:
                out["metrics_host"] = metrics_host
        metrics_port = data.get("metrics_port")
        if metrics_port is not None:
            if (
                isinstance(metrics_port, bool)
                or not isinstance(metrics_port, int)
                or not 0 <= metrics_port <= 65535
            ):
                self.fail(
                    "control.metrics_port",
                    f"expected a port number (0-65535), got {metrics_port!r}",
                )
            else:
                out["metrics_port"] = metrics_port
        for key in _CONTROL_NUMBERS:
            value = data.get(key)
            if value is None:
                continue
            if (problem := seconds_problem(value)) is not None:
                self.fail(f"control.{key}", problem)
            else:
                out[key] = float(value)
        for key in _CONTROL_INTEGERS:
            value = data.get(key)
            if value is None:
                continue
            least = {"max_frame_bytes": 1_048_576, "confirmations": 0, "flap_window": 3}.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                self.fail(f"control.{key}", f"expected an integer >= {least}, got {value!r}")
            else:
                out[key] = value
        self.status_token(data, out)
        from ._logic import ASSIGNMENTS

        assignment = data.get("assignment")
        if assignment is not None:
            if assignment not in ASSIGNMENTS:
                self.fail(
                    "control.assignment",
                    f"expected one of {', '.join(map(repr, ASSIGNMENTS))}, got {assignment!r}",
                )
            else:
                out["assignment"] = assignment
        for key in _CONTROL_PERCENTAGES:
            value = data.get(key)
            if value is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 <= value <= 100
            ):
                self.fail(f"control.{key}", f"expected a percentage (0-100), got {value!r}")
            else:
                out[key] = float(value)
        if out.get("flap_low", 25.0) > out.get("flap_high", 50.0):
            self.fail("control.flap_low", "must not be above flap_high")
        context = self.tls(data.get("tls_cert"), data.get("tls_key"))
        if context is not None:
            out["ssl_context"] = context
        has_tls = data.get("tls_cert") is not None or data.get("tls_key") is not None
        if isinstance(host, str) and host and not has_tls and not is_loopback(host):
            if self.insecure:
                self.warnings.append(
                    f"control.host: serving plain ws:// on {host}: tokens and results cross the "
                    "network in clear text"
                )
            else:
                self.fail(
                    "control.host",
                    f"{host} is not a loopback address, and without tls_cert and tls_key the "
                    "tokens and results would cross the network in clear text (ws://); set "
                    "tls_cert and tls_key, or pass --insecure",
                )
        return out

    def status_token(self, data: Mapping[str, Any], out: dict[str, Any]) -> None:
        """``status_token``: the token the status page asks for, on the metrics port."""
        source = data.get("status_token")
        if source is None:
            return
        token = self.token(source, "control.status_token")
        if token is None:
            return
        metrics_host = data.get("metrics_host", "127.0.0.1")
        if isinstance(metrics_host, str) and metrics_host and not is_loopback(metrics_host):
            # The metrics port speaks plain HTTP: the token would cross the network in clear.
            if self.insecure:
                self.warnings.append(
                    f"control.status_token: the status page on {metrics_host} is plain HTTP: "
                    "its token crosses the network in clear text"
                )
            else:
                self.fail(
                    "control.status_token",
                    f"metrics_host {metrics_host} is not a loopback address, and the status "
                    "page is plain HTTP: its token would cross the network in clear text; serve "
                    "it on loopback behind a TLS proxy, or pass --insecure",
                )
                return
        out["status_token"] = token

    def tls(self, cert: Any, key: Any) -> ssl.SSLContext | None:
        if cert is None and key is None:
            return None
        bad = False
        for name, value in (("tls_cert", cert), ("tls_key", key)):
            if value is None:
                other = "tls_key" if name == "tls_cert" else "tls_cert"
                self.fail(f"control.{name}", f"required with {other}: a PEM file")
                bad = True
            elif not isinstance(value, str) or not value:
                self.fail(f"control.{name}", f"expected a PEM file path, got {value!r}")
                bad = True
        if bad:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.fail("control.tls_cert", f"cannot load {cert} with the key {key}: {reason}")
            return None
        return context

    # -- [[checkpoints]] -----------------------------------------------------------------------

    def checkpoints(self, data: Any) -> dict[str, Secret | None]:
        """Checkpoint ids and their tokens (None where the token is broken: already reported)."""
        out: dict[str, Secret | None] = {}
        if data is None or data == []:
            self.fail(
                "checkpoints", "no checkpoints: add a [[checkpoints]] table with an id and a token"
            )
            return out
        tables = self.tables(data, "checkpoints", "checkpoint")
        if tables is None:
            return out
        seen_tokens: dict[str, int] = {}
        seen_ids: dict[str, int] = {}
        for i, path, item in tables:
            for key in item:
                if key not in ("id", "token"):
                    self.fail(f"{path}.{key}", "unknown field; known: id, token")
            checkpoint_id = item.get("id")
            if not is_id(checkpoint_id):
                self.fail(f"{path}.id", _id_problem(checkpoint_id))
                checkpoint_id = None
            elif checkpoint_id in seen_ids:
                self.fail(
                    f"{path}.id",
                    f"duplicate id {checkpoint_id!r}, also used by checkpoints"
                    f"[{seen_ids[checkpoint_id]}]",
                )
                checkpoint_id = None
            token = self.token(item.get("token"), f"{path}.token")
            if token is not None:
                first = seen_tokens.setdefault(token.reveal(), i)
                if first != i:
                    self.fail(
                        f"{path}.token",
                        f"the same token as checkpoints[{first}]; each checkpoint needs its own",
                    )
                    token = None
            if checkpoint_id is not None:
                seen_ids[checkpoint_id] = i
                out[checkpoint_id] = token
        return out

    def token(self, source: Any, where: str) -> Secret | None:
        if source is None:
            self.fail(where, 'required: {env = "VAR"} or {file = "PATH"}')
            return None
        if isinstance(source, str):
            self.warnings.append(
                f"{where}: the token is written in {self.source}, where anyone who can read the "
                'file can use it; prefer {env = "VAR"} or {file = "PATH"}'
            )
            token: Secret | None = Secret(source)
        else:
            token = self.read_secret(source, where)
        if token is None:
            return None
        problem = token_problem(token.reveal())
        if problem is not None:
            self.fail(where, problem)
            return None
        return token

    # -- [[monitors]] --------------------------------------------------------------------------

    def control_monitors(self, data: Any, checkpoint_ids: set[str]) -> list[MonitorSpec]:
        from ._logic import MonitorSpec

        if data is None or data == []:
            self.fail("monitors", "no monitors: add at least one [[monitors]] table")
            return []
        tables = self.tables(data, "monitors", "monitor")
        if tables is None:
            return []
        out: list[MonitorSpec] = []
        seen: dict[str, int] = {}
        for i, path, item in tables:
            before = len(self.errors)
            monitor_id = item.get("id")
            if not is_id(monitor_id):
                self.fail(f"{path}.id", _id_problem(monitor_id))
            elif monitor_id in seen:
                self.fail(
                    f"{path}.id",
                    f"duplicate id {monitor_id!r}, also used by monitors[{seen[monitor_id]}]",
                )
            else:
                seen[monitor_id] = i
            checkpoint = item.get("checkpoint")
            locations: dict[str, str] | None = None
            if "checkpoints" in item:
                locations = self.locations(item, path, monitor_id, checkpoint_ids)
                checkpoint = None if locations is None else ""
            elif "alert_when" in item:
                self.alert_when(item["alert_when"], 1, path)
            if checkpoint is None:
                if "checkpoints" not in item:
                    self.fail(
                        f"{path}.checkpoint", "required: the id of the checkpoint that runs it"
                    )
            elif checkpoint and checkpoint not in checkpoint_ids:
                known = ", ".join(sorted(checkpoint_ids)) or "none"
                self.fail(
                    f"{path}.checkpoint",
                    f"no [[checkpoints]] table has the id {checkpoint!r}; known: {known}",
                )
            interval = item.get("interval", DEFAULT_INTERVAL)
            if (problem := seconds_problem(interval)) is not None:
                self.fail(f"{path}.interval", problem)
            definition = {k: v for k, v in item.items() if k not in _MONITOR_OWN_KEYS}
            self.definition(definition, path)
            if len(self.errors) > before:
                continue
            assert isinstance(monitor_id, str)
            assert isinstance(checkpoint, str)
            if checkpoint:
                out.append(MonitorSpec(monitor_id, checkpoint, float(interval), definition))
                continue
            assert locations is not None
            for location, site in locations.items():
                if location in seen:
                    self.fail(
                        f"{path}.checkpoints",
                        f"its location {location!r} is also the id of monitors[{seen[location]}]",
                    )
                seen[location] = i
                out.append(MonitorSpec(location, site, float(interval), definition))
        return out

    def locations(
        self, item: Mapping[str, Any], path: str, monitor_id: object, checkpoint_ids: set[str]
    ) -> dict[str, str] | None:
        """A monitor on several checkpoints: its locations (``ID@CHECKPOINT`` -> checkpoint),
        its :class:`SitePolicy` added to ``self.sites``; None (and the errors) when invalid."""
        from ._logic import SitePolicy

        sites = item.get("checkpoints")
        before = len(self.errors)
        if "checkpoint" in item:
            self.fail(f"{path}.checkpoints", "give checkpoint or checkpoints, not both")
        if (
            not isinstance(sites, list)
            or not sites
            or not all(isinstance(c, str) for c in sites)
            or len(set(sites)) != len(sites)
        ):
            self.fail(
                f"{path}.checkpoints", f"expected a list of distinct checkpoint ids, got {sites!r}"
            )
            return None
        unknown = [c for c in sites if c not in checkpoint_ids]
        if unknown:
            known = ", ".join(sorted(checkpoint_ids)) or "none"
            self.fail(
                f"{path}.checkpoints",
                f"no [[checkpoints]] table has the id {unknown[0]!r}; known: {known}",
            )
        need = self.alert_when(item.get("alert_when", 1), len(sites), path)
        if not is_id(monitor_id) or need is None or len(self.errors) > before:
            return None
        locations = {f"{monitor_id}@{site}": site for site in sites}
        for location in locations:
            if (problem := id_problem(location)) is not None:
                self.fail(f"{path}.id", f"its location id {location!r} {problem}")
                return None
        self.sites.append(SitePolicy(monitor_id, tuple(locations), need))
        return locations

    def alert_when(self, value: object, locations: int, path: str) -> int | None:
        from ._logic import parse_alert_when

        try:
            return parse_alert_when(value, locations)
        except ValueError as exc:
            self.fail(f"{path}.alert_when", str(exc))
            return None

    def definition(self, definition: dict[str, Any], path: str) -> None:
        """Check a definition as a checkpoint will build it; secrets only by reference."""
        from .. import protocol

        references: list[Secret] = []
        if definition.get("kind") == "script":
            from ..probes.script import CONTROL_PLANE_REFUSAL

            self.errors.append(DefinitionError(f"{path}.kind", CONTROL_PLANE_REFUSAL))
            return

        def lookup(name: str) -> Secret:
            secret = Secret(f"<{name}>")  # resolved by the checkpoint (--secret NAME=ENVVAR)
            references.append(secret)
            return secret

        try:
            probe = build_probe(definition, secrets=lookup, local=False, path=path)
        except DefinitionErrors as exc:
            for error in exc.errors:
                if error.message.endswith(_ONLY_LOCAL):
                    error = DefinitionError(
                        error.path,
                        "a definition is sent to the checkpoint, which reads its secrets itself: "
                        'write {secret = "NAME"} and start the checkpoint with '
                        "--secret NAME=ENVVAR",
                    )
                self.errors.append(error)
            return
        known = {id(s) for s in references}
        for where in _inline_secrets(probe, path, known):
            self.fail(
                where,
                "an inline secret would be sent to the checkpoint as it is: write "
                '{secret = "NAME"} and start the checkpoint with --secret NAME=ENVVAR',
            )
        try:
            json.dumps(definition, allow_nan=False)
            protocol.MonitorDefinition(
                monitor_id="check", revision=1, interval=1.0, definition=definition
            )
        except (TypeError, ValueError) as exc:
            self.fail(path, f"cannot be sent to a checkpoint as JSON: {exc}")

    # -- [[webhooks]] --------------------------------------------------------------------------

    def webhooks(self, data: Any) -> list[DurableSink]:
        """The ``[[webhooks]]`` (the first alert channel the file had): each a webhook channel
        named ``webhooks[N]`` behind an outbox, as a ``[[channels]]`` webhook is, so a slow or
        failing receiver is retried with backoff and holds up nothing."""
        from ..alerting._sinks import DurableSink, WebhookSink

        tables = self.tables(data, "webhooks", "webhook")
        if tables is None:
            return []
        out: list[DurableSink] = []
        for _, path, item in tables:
            before = len(self.errors)
            for key in item:
                if key not in ("url", "headers", "timeout"):
                    self.fail(f"{path}.{key}", "unknown field; known: url, headers, timeout")
            url = item.get("url")
            if not isinstance(url, str) or not url:
                self.fail(f"{path}.url", f"required: an http:// or https:// URL, got {url!r}")
            headers = item.get("headers", {})
            if not isinstance(headers, Mapping) or not all(
                isinstance(v, str) for v in headers.values()
            ):
                self.fail(f"{path}.headers", "expected a table of header names and text values")
            timeout = item.get("timeout", 5.0)
            if (problem := seconds_problem(timeout)) is not None:
                self.fail(f"{path}.timeout", problem)
            if len(self.errors) > before:
                continue
            assert isinstance(url, str)
            try:
                hook = WebhookSink(url, headers=dict(headers), timeout=float(timeout), name=path)
                out.append(DurableSink(hook))
            except DefinitionErrors as exc:
                self.errors.extend(e.under(path) for e in exc.errors)
            except DefinitionError as exc:
                self.errors.append(exc.under(path))
        return out


def _inline_secrets(value: Any, path: str, references: set[int]) -> Iterator[str]:
    """The paths of the Secret values in a built probe that did not come from a reference."""
    if isinstance(value, Secret):
        if id(value) not in references:
            yield path
    elif attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            if field.init:
                name = field.alias or field.name.lstrip("_")
                yield from _inline_secrets(getattr(value, field.name), f"{path}.{name}", references)
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            yield from _inline_secrets(item, f"{path}[{i}]", references)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _inline_secrets(item, f"{path}.{key}", references)


def _id_problem(value: object) -> str:
    """What is wrong with ``value``, which is not an id."""
    if value is None:
        return f"required: an id of 1 to {MAX_ID_LENGTH} printable characters"
    return id_problem(value) or f"not an id: {value!r}"


def _url_password(url: str) -> bool:
    """Whether a PostgreSQL URL carries a password, in its user part or as a parameter. Read as
    libpq reads it (no fragments: a ``#`` is part of the password)."""
    rest = url.split("://", 1)[1]
    authority, _, _ = rest.partition("/")
    authority, _, _ = authority.partition("?")
    userinfo = authority.rpartition("@")[0]
    query = rest.partition("?")[2]
    return ":" in userinfo or "password" in parse_qs(query)
