"""Logging helpers: keep credentials out of log records, whoever writes them."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

__all__ = ["MaskingLogger"]

_MASK = "<secret>"
_SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


class MaskingLogger(logging.LoggerAdapter[logging.Logger]):
    """The logger handed to ``websockets``, which dumps handshake headers at DEBUG.

    Masks the value of ``Authorization`` and similar headers in its ``"%s: %s"`` records, and
    every occurrence of the given secret values in any message or argument.
    """

    def __init__(self, logger: logging.Logger, secrets: Iterable[str] = ()) -> None:
        super().__init__(logger, {})
        self._secrets = tuple(s for s in secrets if s)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        if args:
            args = tuple(self._mask(arg) for arg in args)
            if (
                len(args) == 2
                and isinstance(args[0], str)
                and args[0].strip().lower() in _SENSITIVE_HEADERS
            ):
                args = (args[0], _MASK)
        # Report the caller inside websockets, not this method, as the origin of the record.
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
        super().log(level, self._mask(msg), *args, **kwargs)

    def _mask(self, value: object) -> object:
        if isinstance(value, str):
            for secret in self._secrets:
                value = value.replace(secret, _MASK)
        return value
