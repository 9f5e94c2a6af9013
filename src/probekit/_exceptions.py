"""The exceptions probekit raises.

Failures of a *target* are never exceptions: a probe returns a :class:`~probekit.Result`
describing them. Exceptions are for the caller's mistakes, and the tree is short::

    ProbekitError
    ├── DefinitionError       an invalid probe, assertion or policy definition (has the field path)
    ├── PolicyError           the egress policy refused an address (raised inside the dial path and
    │                         turned into a ``policy_denied`` result by every probe)
    └── ProtocolVersionError  a control-channel peer speaks a version we do not
"""

from __future__ import annotations

__all__ = ["DefinitionError", "PolicyError", "ProbekitError", "ProtocolVersionError"]


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
        joined = f"{prefix}{self.path}" if self.path.startswith("[") else f"{prefix}.{self.path}"
        return DefinitionError(joined if self.path else prefix, self.message)


class PolicyError(ProbekitError):
    """The egress policy denied a host or address before any socket was opened."""

    def __init__(self, host: str, address: str | None, reason: str) -> None:
        self.host = host
        self.address = address
        self.reason = reason
        where = f"{host} ({address})" if address and address != host else host
        super().__init__(f"egress policy denies {where}: {reason}")


class ProtocolVersionError(ProbekitError):
    """A control-channel message carried a protocol version this side does not speak."""
