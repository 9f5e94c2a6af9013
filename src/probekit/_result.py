"""The result model shared by every probe."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping

import attrs

__all__ = [
    "SCHEMA_VERSION",
    "AssertionOutcome",
    "CertInfo",
    "ErrorKind",
    "Phase",
    "ProbeError",
    "Result",
    "Status",
    "TlsInfo",
]

#: Version of the JSON shape of :class:`Result`; bumped on any incompatible change.
SCHEMA_VERSION = 1


class Status(enum.Enum):
    """The outcome of a check, ordered from best to worst.

    These are the Nagios states; :attr:`exit_code` is the plugin exit code
    (OK 0, WARNING 1, CRITICAL 2, UNKNOWN 3).
    """

    UP = "up"
    DEGRADED = "degraded"
    DOWN = "down"
    UNKNOWN = "unknown"

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES[self]

    @property
    def nagios(self) -> str:
        """The Nagios word for this status: OK, WARNING, CRITICAL or UNKNOWN."""
        return _NAGIOS[self]

    def worst(self, other: Status) -> Status:
        """Return the worse of two statuses (DOWN is worse than DEGRADED, UNKNOWN worst)."""
        return self if _SEVERITY[self] >= _SEVERITY[other] else other


_EXIT_CODES = {Status.UP: 0, Status.DEGRADED: 1, Status.DOWN: 2, Status.UNKNOWN: 3}
_NAGIOS = {
    Status.UP: "OK",
    Status.DEGRADED: "WARNING",
    Status.DOWN: "CRITICAL",
    Status.UNKNOWN: "UNKNOWN",
}
_SEVERITY = {Status.UP: 0, Status.DEGRADED: 1, Status.DOWN: 2, Status.UNKNOWN: 3}


class ErrorKind(enum.Enum):
    """What went wrong, from a closed set."""

    DNS = "dns"
    CONNECT = "connect"
    TIMEOUT = "timeout"
    TLS = "tls"
    PROTOCOL = "protocol"
    AUTH = "auth"
    ASSERTION = "assertion"
    POLICY_DENIED = "policy_denied"
    INTERNAL = "internal"


@attrs.frozen
class ProbeError:
    """Why a check was not UP: the kind, a human message, and the phase it happened in."""

    kind: ErrorKind
    message: str
    phase: str | None = None


@attrs.frozen
class Phase:
    """One named step of a check.

    ``start`` is the offset in seconds from the start of the check, ``duration`` its length in
    seconds; both come from the monotonic clock.
    """

    name: str
    start: float
    duration: float


@attrs.frozen
class AssertionOutcome:
    """What one assertion expected, what it saw, and whether that passed.

    ``severity`` is the status this outcome imposes when it fails (DOWN, or DEGRADED for
    warning thresholds).
    """

    name: str
    passed: bool
    expected: str
    observed: str
    severity: Status = Status.DOWN

    def describe(self) -> str:
        verdict = "ok" if self.passed else "failed"
        return f"{self.name} {verdict}: expected {self.expected}, got {self.observed}"


@attrs.frozen
class CertInfo:
    """One certificate of the chain the peer presented."""

    subject: str
    issuer: str
    sans: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    sha256: str
    serial: str = ""

    def days_left(self, now: dt.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400.0


@attrs.frozen
class TlsInfo:
    """The TLS session a check negotiated."""

    version: str
    cipher: str
    alpn: str | None = None
    server_name: str | None = None
    verified: bool = True
    chain: tuple[CertInfo, ...] = ()


@attrs.frozen
class Result:
    """Everything one check found out.

    ``phases`` is the check's timeline, in order. ``metrics`` holds typed numbers such as
    ``status_code``, ``body_bytes`` or ``cert_days_left`` (treat the mapping as read-only).
    ``address`` is the ``ip:port`` actually connected to. ``started_at`` is UTC;
    ``duration`` is in seconds from the monotonic clock.
    """

    kind: str
    target: str
    status: Status
    started_at: dt.datetime
    duration: float
    error: ProbeError | None = None
    phases: tuple[Phase, ...] = ()
    metrics: Mapping[str, float] = attrs.field(factory=dict)
    assertions: tuple[AssertionOutcome, ...] = ()
    tls: TlsInfo | None = None
    address: str | None = None
    attempts: int = 1
    schema_version: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        """True when the status is UP."""
        return self.status is Status.UP

    def phase(self, name: str) -> float | None:
        """Total seconds spent in phase ``name`` (summed over redirect hops), or None."""
        found = [p.duration for p in self.phases if p.name == name]
        return sum(found) if found else None

    def phase_names(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for p in self.phases:
            seen.setdefault(p.name, None)
        return tuple(seen)

    def summary(self) -> str:
        """A one-line human description, e.g. for logs."""
        head = f"{self.kind} {self.target} {self.status.name} in {self.duration * 1000:.1f} ms"
        if self.error is not None:
            where = f" during {self.error.phase}" if self.error.phase else ""
            head += f" [{self.error.kind.value}{where}: {self.error.message}]"
        return head
