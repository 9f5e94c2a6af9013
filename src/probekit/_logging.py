"""Logging helpers: keep credentials out of log records, whoever writes them."""

from __future__ import annotations

import logging

__all__ = ["RedactCredentials", "redacted_logger"]

_SENSITIVE = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


class RedactCredentials(logging.Filter):
    """Masks the values of ``Authorization`` and similar headers in records such as
    websockets' ``"> %s: %s"`` header dumps."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            isinstance(args, tuple)
            and len(args) >= 2
            and isinstance(args[0], str)
            and args[0].strip().lower() in _SENSITIVE
        ):
            record.args = (args[0], "<secret>", *args[2:])
        return True


def redacted_logger(name: str) -> logging.Logger:
    """The logger ``name`` with :class:`RedactCredentials` attached (once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactCredentials) for f in logger.filters):
        logger.addFilter(RedactCredentials())
    return logger
