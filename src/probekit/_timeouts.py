"""Timeouts as one frozen value."""

from __future__ import annotations

import math
from typing import Any

import attrs

from ._exceptions import DefinitionError

__all__ = ["Timeouts"]


def _check_positive(_inst: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is None and attribute.name != "total":
        return
    if value is None or not isinstance(value, int | float) or isinstance(value, bool):
        raise DefinitionError(attribute.name, f"must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise DefinitionError(
            attribute.name, f"must be a positive number of seconds, got {value!r}"
        )


@attrs.frozen
class Timeouts:
    """How long a probe may take, in seconds.

    ``total`` is the deadline for the whole check, enforced from outside by the runner and
    inside by the probe; a phase limit of ``None`` means "no limit of its own" (only the total
    applies). ``read`` bounds each wait for bytes from the peer (HTTP ``processing`` and
    ``transfer``, TCP ``exchange``).
    """

    total: float = attrs.field(default=10.0, validator=_check_positive)
    resolve: float | None = attrs.field(default=None, validator=_check_positive)
    connect: float | None = attrs.field(default=None, validator=_check_positive)
    tls: float | None = attrs.field(default=None, validator=_check_positive)
    read: float | None = attrs.field(default=None, validator=_check_positive)
