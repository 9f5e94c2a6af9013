"""The privacy switches of a checkpoint, applied to every result before it is spooled."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Final

import attrs

from .._result import Result
from ._settings import CheckpointSettings

__all__ = ["redact", "scrub_addresses"]

_IPV4: Final = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
_IPV6: Final = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:%\w+)?(?![\w:])")


def scrub_addresses(text: str) -> str:
    """``text`` with every IPv4 and IPv6 address in it replaced by ``<address>``."""

    def v4(match: re.Match[str]) -> str:
        try:
            ipaddress.IPv4Address(match.group())
        except ValueError:
            return match.group()
        return "<address>"

    def v6(match: re.Match[str]) -> str:
        try:
            ipaddress.IPv6Address(match.group().split("%", 1)[0])
        except ValueError:
            return match.group()
        return "<address>"

    return _IPV6.sub(v6, _IPV4.sub(v4, text))


def redact(result: Result, settings: CheckpointSettings) -> Result:
    """Apply the privacy switches of ``settings`` to ``result``."""
    changes: dict[str, Any] = {}
    error = result.error
    if settings.strip_addresses:
        if result.address is not None:
            changes["address"] = None
        if error is not None and error.message:
            scrubbed = scrub_addresses(error.message)
            if scrubbed != error.message:
                error = attrs.evolve(error, message=scrubbed)
    if settings.strip_messages:
        if error is not None and error.message:
            error = attrs.evolve(error, message="")
        if any(a.observed for a in result.assertions):
            changes["assertions"] = tuple(attrs.evolve(a, observed="") for a in result.assertions)
    if error is not result.error:
        changes["error"] = error
    if settings.strip_tls_chain and result.tls is not None and result.tls.chain:
        changes["tls"] = attrs.evolve(result.tls, chain=())
    return attrs.evolve(result, **changes) if changes else result
