"""The context a check runs in: deadline, dialer (and so the policy), secrets and clock."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from ._clock import Clock, SystemClock
from ._dial import Dialer
from ._exceptions import DefinitionError
from ._secret import Secret

__all__ = ["ProbeContext", "default_context"]


@attrs.frozen
class ProbeContext:
    """What a probe needs from its surroundings.

    ``deadline`` is an absolute reading of ``clock.monotonic()`` after which the check must have
    returned (the earlier of it and the probe's own ``timeouts.total`` applies). ``secrets`` maps
    names to secrets for definitions that refer to them by name.
    """

    dialer: Dialer = attrs.field(factory=Dialer)
    clock: Clock = attrs.field(factory=SystemClock)
    deadline: float | None = None
    secrets: Mapping[str, Secret] = attrs.field(factory=dict)

    def secret(self, name: str) -> Secret:
        try:
            return self.secrets[name]
        except KeyError:
            raise DefinitionError("secrets", f"no secret named {name!r} in the context") from None

    def with_deadline(self, deadline: float | None) -> ProbeContext:
        if deadline is None or (self.deadline is not None and self.deadline <= deadline):
            return self
        # The constructor, not attrs.evolve: this runs for every check, and evolve is slow.
        return ProbeContext(self.dialer, self.clock, deadline, self.secrets)


_default: ProbeContext | None = None


def default_context() -> ProbeContext:
    """The context bare ``probe.check()`` calls get: default policy, aiodns, system clock."""
    global _default
    if _default is None:
        _default = ProbeContext()
    return _default
