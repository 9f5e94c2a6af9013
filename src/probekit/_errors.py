"""Internal failure signalling and the one place exceptions become error kinds.

Probe code raises :class:`ProbeFailure` for failures it recognises itself (a bad status line, a
login refused); everything a backend raises is mapped once, in :func:`classify`.
"""

from __future__ import annotations

import errno
import logging
import ssl

from ._exceptions import PolicyError, ProbeFailure
from ._result import ErrorKind, ProbeError

__all__ = ["ProbeFailure", "classify"]

log = logging.getLogger("probekit.probe")


def _oserror_text(exc: OSError) -> str:
    if exc.errno is not None and exc.strerror:
        return f"{exc.strerror} ({errno.errorcode.get(exc.errno, exc.errno)})"
    return str(exc) or type(exc).__name__


def classify(exc: BaseException, phase: str | None) -> ProbeError:
    """Turn an exception raised while ``phase`` was running into a :class:`ProbeError`."""
    if isinstance(exc, ProbeFailure):
        return ProbeError(exc.kind, exc.message, phase)
    if isinstance(exc, PolicyError):
        return ProbeError(ErrorKind.POLICY_DENIED, str(exc), phase)
    if isinstance(exc, TimeoutError):
        return ProbeError(ErrorKind.TIMEOUT, f"timed out during {phase or 'the check'}", phase)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ProbeError(ErrorKind.TLS, f"certificate verify failed: {exc.verify_message}", phase)
    if isinstance(exc, ssl.CertificateError | ssl.SSLError):
        reason = getattr(exc, "reason", None) or str(exc)
        return ProbeError(ErrorKind.TLS, f"TLS error: {reason}", phase)
    if isinstance(exc, ConnectionRefusedError):
        return ProbeError(ErrorKind.CONNECT, "connection refused", phase)
    if isinstance(exc, OSError):
        kind = ErrorKind.CONNECT if phase in (None, "connect") else ErrorKind.PROTOCOL
        if phase == "tls":
            kind = ErrorKind.TLS
        return ProbeError(kind, _oserror_text(exc), phase)
    if isinstance(exc, EOFError | ConnectionError):
        return ProbeError(ErrorKind.PROTOCOL, "connection closed by peer", phase)
    log.warning("probe raised %s during %s", type(exc).__name__, phase, exc_info=exc)
    return ProbeError(ErrorKind.INTERNAL, f"{type(exc).__name__}: {exc}", phase)
