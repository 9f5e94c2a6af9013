"""Every exception probekit raises on purpose, in one tree.

Failures of a *target* are never exceptions to the caller: a probe returns a
:class:`~probekit.Result` describing them. Exceptions are for the caller's mistakes, for refused
control-channel frames and for local storage that cannot be used::

    ProbekitError
    ├── DefinitionError        an invalid probe, assertion, policy or settings value; ``path``
    │   │                      names the field (``assertions[1].pattern``)
    │   └── DefinitionErrors   several at once (``errors`` lists each, with its path)
    ├── PolicyError            the egress policy refused an address (raised inside the dial path
    │                          and turned into a ``policy_denied`` result by every probe)
    ├── ProbeFailure           raised by probe code for a failure of the target it recognised
    │                          itself (a bad banner, a refused login); the probe base turns it
    │                          into a Result with its ``kind``; it never reaches a caller
    ├── ProtocolError          a control-channel frame was refused (``code``, ``message``, ``ref``)
    ├── ProtocolVersionError   a control-channel peer speaks a version we do not (a refused
    │                          ``bad_version`` frame is both this and a ProtocolError)
    ├── SpoolError             the result spool cannot be opened or used
    └── UsageError             invalid command-line options (the CLI exits 3, UNKNOWN)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, Literal, TypeAlias, get_args

if TYPE_CHECKING:
    from ._result import ErrorKind

__all__ = [
    "ERROR_CODES",
    "DefinitionError",
    "DefinitionErrors",
    "ErrorCode",
    "PolicyError",
    "ProbeFailure",
    "ProbekitError",
    "ProtocolError",
    "ProtocolVersionError",
    "SpoolError",
    "UsageError",
]


class ProbekitError(Exception):
    """Base class of every exception probekit raises on purpose."""


class DefinitionError(ProbekitError, ValueError):
    """A definition is invalid. ``path`` names the field, e.g. ``assertions[1].pattern``."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)

    def under(self, prefix: str) -> DefinitionError:
        """Return the same error with its path placed under ``prefix``."""
        if not prefix:
            return self
        return DefinitionError(_joined(prefix, self.path), self.message)


def _joined(prefix: str, path: str) -> str:
    if not path:
        return prefix
    return f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"


class DefinitionErrors(DefinitionError):
    """Several problems in one definition; ``errors`` lists them all, each with its path."""

    def __init__(self, errors: list[DefinitionError]) -> None:
        self.errors = errors
        super().__init__("", "; ".join(str(e) for e in errors))

    def under(self, prefix: str) -> DefinitionErrors:
        return DefinitionErrors([e.under(prefix) for e in self.errors])


class UsageError(ProbekitError):
    """Invalid command-line options or option values; the message says which (one per line)."""


class PolicyError(ProbekitError):
    """The egress policy denied a host or address before any socket was opened."""

    def __init__(self, host: str, address: str | None, reason: str) -> None:
        self.host = host
        self.address = address
        self.reason = reason
        where = f"{host} ({address})" if address and address != host else host
        super().__init__(f"egress policy denies {where}: {reason}")


class ProbeFailure(ProbekitError):
    """A failure of the target that probe code recognised and classified itself.

    Raise it from a probe's body (``raise ProbeFailure(ErrorKind.AUTH, "login refused")``); the
    probe base records it as the result's error, naming the phase that was running.
    """

    def __init__(self, kind: ErrorKind, message: str) -> None:
        self.kind = kind
        self.message = message
        super().__init__(message)


class ProtocolVersionError(ProbekitError):
    """A control-channel message carried a protocol version this side does not speak."""


ErrorCode: TypeAlias = Literal[
    "bad_json", "unknown_type", "bad_version", "too_large", "bad_field", "unauthorized", "internal"
]
#: Every ``error.code``; see ``docs/protocol.md`` for what the receiver of each one does.
ERROR_CODES: Final[frozenset[str]] = frozenset(get_args(ErrorCode))

# The WebSocket close codes (RFC 6455) a receiver uses after the error replies that end a
# connection.
_CLOSE_CODES: Final[Mapping[str, int]] = {"bad_version": 1002, "unauthorized": 1008}


class ProtocolError(ProbekitError):
    """A frame from the peer was refused.

    ``code`` is one of :data:`ERROR_CODES`, ``message`` says what was wrong (for ``bad_field``,
    starting with the field path, e.g. ``results[2].result.status: ...``), and ``ref`` is the
    request id the frame carried, when it had a readable one. ``decode`` raises the ``bad_version``
    case as an instance that is also a :class:`ProtocolVersionError`.
    """

    def __init__(self, code: ErrorCode, message: str, *, ref: str | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown protocol error code {code!r}")
        self.code: ErrorCode = code
        self.message = message
        self.ref = ref
        super().__init__(f"{code}: {message}")

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code to end the connection with after replying, or None to keep it.

        ``bad_version`` closes with 1002 (protocol error) and ``unauthorized`` with 1008 (policy
        violation); every other code is recoverable.
        """
        return _CLOSE_CODES.get(self.code)


class SpoolError(ProbekitError):
    """The spool cannot be opened or used: not a spool, a newer schema, closed, or an I/O error.

    ``path`` is the spool's database file (or ``:memory:``).
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"spool {path!r}: {message}")
