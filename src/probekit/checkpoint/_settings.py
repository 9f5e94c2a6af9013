"""A checkpoint instance's settings: everything it is configured with, all of it local."""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from .._exceptions import DefinitionError
from .._policy import EgressPolicy
from .._secret import Secret
from .._validate import check_id, seconds

__all__ = ["CheckpointSettings"]


def _ident(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_id(attribute.name, value)


def _text(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise DefinitionError(attribute.name, f"must be a non-empty string, got {value!r}")


def _optional_text(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _text(_inst, attribute, value)


def _flag(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise DefinitionError(attribute.name, f"must be true or false, got {value!r}")


def _positive_int(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DefinitionError(attribute.name, f"must be a positive integer, got {value!r}")


def _port(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise DefinitionError(attribute.name, f"must be a port number (0-65535), got {value!r}")


def _token(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, Secret):
        raise DefinitionError(attribute.name, "must be a Secret")
    if not value:
        raise DefinitionError(attribute.name, "must not be empty")
    text = value.reveal()
    if not text.isprintable() or any(c.isspace() for c in text):
        raise DefinitionError(attribute.name, "must not contain spaces or control characters")


def _policy(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, EgressPolicy):
        raise DefinitionError(attribute.name, f"must be an EgressPolicy, got {value!r}")


def _secrets(value: Mapping[str, Secret]) -> Mapping[str, Secret]:
    if not isinstance(value, Mapping):
        raise DefinitionError("secrets", "must be a mapping of names to Secret values")
    for name, secret in value.items():
        if not isinstance(name, str) or not isinstance(secret, Secret):
            raise DefinitionError(f"secrets[{name!r}]", "must map a name to a Secret")
    return types.MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class CheckpointSettings:
    """Everything one checkpoint instance is configured with; all of it is local configuration.

    ``url`` is the control plane's WebSocket URL: ``wss://`` (verified against the system's
    trust store, or ``ca_file`` when given), or ``ws://`` only with ``insecure=True``.
    ``standby_urls`` are more control planes of the same deployment (a standby on the same
    PostgreSQL), of the same scheme: a connection that fails moves to the next URL, in turn.
    ``token`` is sent as ``Authorization: Bearer …`` in the handshake and nowhere else.
    ``spool_path`` is the SQLite spool (``":memory:"`` keeps it in memory, for tests),
    holding at most ``spool_max_entries`` results.

    ``policy`` is the egress policy every check runs under, and the connection to the control
    plane too; ``secrets`` resolves
    ``{"secret": NAME}`` references in definitions. ``max_concurrency`` bounds the checks that
    execute at once and ``max_queued_runs`` the run commands accepted and not yet finished
    (beyond it a run is refused with an ``error``). ``processes`` above 1 runs the checks in
    that many worker processes (a :class:`~probekit.ProcessRunner`, ``max_concurrency`` being
    the total), to use more than one core; the context given to the checkpoint must then be
    one that can cross a process boundary (no custom connector, resolver class or clock).

    Timing, in seconds: ``heartbeat_interval``; ``reconnect_initial`` and ``reconnect_max`` (the
    backoff range); ``ping_interval`` and ``ping_timeout`` (dead-peer detection);
    ``open_timeout`` (resolution, TCP, TLS and WebSocket handshakes together);
    ``drain_timeout`` (how long a drain waits for acks of what it sent). ``batch_size`` is the
    most results in one ``results`` frame (which also stays under 1 MiB).

    ``autonomous_when_disconnected`` runs the held definitions locally while the channel is
    down. ``strip_addresses``, ``strip_tls_chain`` and ``strip_messages`` remove details from
    results before they are spooled (see the module documentation). ``metrics_port`` (``0``
    picks a free one) enables the ``/metrics`` and ``/ready`` endpoint on ``metrics_host``.
    """

    url: str = attrs.field(validator=_text)
    standby_urls: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    token: Secret = attrs.field(validator=_token, repr=False)
    checkpoint_id: str = attrs.field(validator=_ident)
    instance_id: str = attrs.field(validator=_ident)
    spool_path: str = attrs.field(validator=_text)
    spool_max_entries: int = attrs.field(default=100_000, validator=_positive_int)
    policy: EgressPolicy = attrs.field(factory=EgressPolicy, validator=_policy)
    ca_file: str | None = attrs.field(default=None, validator=_optional_text)
    insecure: bool = attrs.field(default=False, validator=_flag)
    max_concurrency: int = attrs.field(default=100, validator=_positive_int)
    processes: int = attrs.field(default=1, validator=_positive_int)
    max_queued_runs: int = attrs.field(default=10_000, validator=_positive_int)
    heartbeat_interval: float = attrs.field(default=5.0, validator=seconds)
    batch_size: int = attrs.field(default=500, validator=_positive_int)
    reconnect_initial: float = attrs.field(default=0.5, validator=seconds)
    reconnect_max: float = attrs.field(default=30.0, validator=seconds)
    ping_interval: float = attrs.field(default=5.0, validator=seconds)
    ping_timeout: float = attrs.field(default=5.0, validator=seconds)
    open_timeout: float = attrs.field(default=10.0, validator=seconds)
    drain_timeout: float = attrs.field(default=10.0, validator=seconds)
    autonomous_when_disconnected: bool = attrs.field(default=True, validator=_flag)
    strip_addresses: bool = attrs.field(default=False, validator=_flag)
    strip_tls_chain: bool = attrs.field(default=False, validator=_flag)
    strip_messages: bool = attrs.field(default=False, validator=_flag)
    secrets: Mapping[str, Secret] = attrs.field(factory=dict, converter=_secrets, hash=False)
    metrics_host: str = attrs.field(default="127.0.0.1", validator=_text)
    metrics_port: int | None = attrs.field(default=None, validator=_port)

    @property
    def urls(self) -> tuple[str, ...]:
        """``url`` and then the ``standby_urls``: the control planes tried in turn."""
        return (self.url, *self.standby_urls)

    def __attrs_post_init__(self) -> None:
        for i, url in enumerate(self.urls):
            where = "url" if i == 0 else f"standby_urls[{i - 1}]"
            if not isinstance(url, str) or not url:
                raise DefinitionError(where, f"expected a ws:// or wss:// URL, got {url!r}")
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018 - reading it validates the port
            except ValueError as exc:
                raise DefinitionError(where, f"invalid URL {url!r}: {exc}") from None
            if parts.scheme not in ("ws", "wss") or not parts.hostname:
                raise DefinitionError(where, f"expected ws:// or wss://host..., got {url!r}")
            if parts.username is not None or parts.password is not None:
                raise DefinitionError(where, "credentials belong in token, not in the URL")
            if i and parts.scheme != urlsplit(self.url).scheme:
                raise DefinitionError(where, f"expected the scheme of url, got {url!r}")
        parts = urlsplit(self.url)
        if parts.scheme == "ws" and not self.insecure:
            raise DefinitionError(
                "url",
                "ws:// would send the token and every result in clear text; "
                "use wss://, or set insecure=True to allow it",
            )
        if parts.scheme == "ws" and self.ca_file is not None:
            raise DefinitionError("ca_file", "only applies to wss:// URLs")
        if self.reconnect_max < self.reconnect_initial:
            raise DefinitionError(
                "reconnect_max",
                f"must not be below reconnect_initial ({self.reconnect_initial!r}), "
                f"got {self.reconnect_max!r}",
            )
