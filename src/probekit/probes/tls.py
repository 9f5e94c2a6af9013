"""TlsProbe: check the certificate of any TLS service, directly or after a STARTTLS dialogue.

The handshake is the dial path's (``attempt.connect(..., tls=...)``, or ``attempt.start_tls``
after the dialogue), so the egress policy, IP pinning, the ``tls`` phase and the recorded chain,
version and cipher (``Result.tls``) are those of every other kind. The STARTTLS dialogues are
the minimal ones, written here and bounded: a reply line at most :data:`LINE_LIMIT` bytes, a
multi-line reply at most :data:`MAX_LINES` lines.

Phases: ``resolve``, ``connect``, then for ``starttls``: ``banner`` (the greeting; not for
``postgres``, whose server speaks second), ``ehlo`` (``smtp`` only), ``starttls`` (the request
and the go-ahead), and ``tls`` (the handshake). Metrics: ``days_left`` (of the leaf),
``chain_length``, ``tls_version`` (1.2 for TLSv1.2) and, as for every TLS check,
``cert_days_left`` (the earliest-expiring certificate of the chain).

Revocation (``revocation``, default ``soft``): after the handshake, the OCSP responder the
leaf names (its AIA ``http://`` URL) is asked through the dial path, timed as phase ``ocsp``;
see :mod:`probekit.probes._ocsp`. A revoked leaf is DOWN/``tls``. A responder that cannot be
asked, or an answer that cannot be trusted, or ``unknown``, is DEGRADED (``soft``) or DOWN
(``hard``). CPython's :mod:`ssl` can neither ask for a stapled response (the ``status_request``
extension) nor return one, so with ``staple = true`` a second handshake, by pyOpenSSL over a
second dial-path connection (phase ``staple``), asks for it; a usable staple spares the
responder query.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, TypeAlias, get_args

import attrs

from .._assertions import Assertion, CertExpiry, Observation, assertion_tuple
from .._deadline import after
from .._dial import Connection
from .._errors import classify
from .._exceptions import DefinitionError, DefinitionErrors, ProbeFailure
from .._policy import parse_host_address
from .._resolver import Family
from .._result import CertInfo, ErrorKind, Result, Status, TlsInfo
from .._timeouts import Timeouts
from .._tls import TlsOptions, TlsVersion
from ._base import Attempt, ProbeBase
from ._fields import check_family, check_host, host, host_port, port
from ._kind import HostPort, Metric, Option, ProbeKind
from ._ocsp import REVOCATION_MODES, Revocation, Verdict
from ._options import FAMILY_OPTIONS, TLS_OPTIONS, family_definition, option_problem, tls_definition

if TYPE_CHECKING:
    from cryptography import x509

    from .._context import ProbeContext

__all__ = [
    "KIND",
    "LINE_LIMIT",
    "MAX_LINES",
    "OCSP_SHARE",
    "TLS_PORT",
    "Revocation",
    "StartTlsProtocol",
    "TlsProbe",
]

log = logging.getLogger("probekit.probe.tls")

TLS_PORT: Final = 443
#: The longest reply line of a STARTTLS dialogue read (SMTP allows 512 octets, FTP and IMAP
#: greetings run longer; none by this much).
LINE_LIMIT: Final = 4096
#: The most lines of one multi-line reply (an EHLO reply has about a dozen).
MAX_LINES: Final = 100
#: The name EHLO introduces the probe with: under the reserved ``.invalid`` top-level domain.
EHLO_NAME: Final = "probekit.invalid"

#: ``none``: TLS from the first byte; else the protocol whose STARTTLS dialogue comes first.
StartTlsProtocol: TypeAlias = Literal["none", "smtp", "imap", "pop3", "ftp", "postgres"]
STARTTLS_PROTOCOLS: Final[tuple[str, ...]] = get_args(StartTlsProtocol)
MIN_VERSIONS: Final[tuple[str, ...]] = get_args(TlsVersion)
_VERSION_NUMBERS: Final = {"TLSv1": 1.0, "TLSv1.1": 1.1, "TLSv1.2": 1.2, "TLSv1.3": 1.3}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SSL_REQUEST: Final = struct.pack("!ii", 8, 80877103)
_EXCERPT: Final = 80
#: The share of the check's remaining time the OCSP query may take, so that a stalled
#: responder is reported (DEGRADED under ``revocation = "soft"``) before the check's deadline.
OCSP_SHARE: Final = 0.9


def _shown(data: bytes) -> str:
    text = data.decode("utf-8", "replace").rstrip("\r\n")
    if not text:
        return "an empty line"
    if len(text) > _EXCERPT:
        return f"{text[:_EXCERPT]!r}… ({len(text)} characters)"
    return repr(text)


def _fingerprint(value: str | None) -> str | None:
    """Converter: a SHA-256 pin as 64 lower-case hex digits (colons and spaces dropped)."""
    raw: object = value
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise DefinitionError("fingerprint_sha256", f"expected hex text, got {type(raw).__name__}")
    text = re.sub(r"[\s:]", "", raw).lower()
    if not _HEX64.fullmatch(text):
        raise DefinitionError(
            "fingerprint_sha256", f"expected 64 hex digits (colons allowed), got {raw!r}"
        )
    return text


def _names(value: Any) -> tuple[str, ...]:
    """Converter: ``expect_san`` as a tuple of names."""
    if isinstance(value, str):
        raise DefinitionError("expect_san", "expected a list of names, got one string")
    try:
        items = tuple(value)
    except TypeError:
        raise DefinitionError("expect_san", f"expected a list of names, got {value!r}") from None
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise DefinitionError(f"expect_san[{i}]", f"expected a name, got {item!r}")
    return items


def _days(field: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e6:
        raise DefinitionError(field, f"expected a number of days from 0, got {value!r}")


# -- the STARTTLS dialogues ------------------------------------------------------------------------


class _Dialogue:
    """The bounded reads and writes of one STARTTLS dialogue."""

    def __init__(self, attempt: Attempt, conn: Connection) -> None:
        self.attempt = attempt
        self.conn = conn

    async def line(self, what: str) -> bytes:
        return await self.attempt.read_line(self.conn, max_bytes=LINE_LIMIT, what=what)

    async def send(self, command: bytes) -> None:
        await self.attempt.write(self.conn, command + b"\r\n")

    async def numeric(self, what: str) -> tuple[int, list[bytes]]:
        """An SMTP or FTP reply: its code and its lines (without the code and line ends).

        SMTP continues with ``NNN-``; FTP with ``NNN-`` on the first line and any text until
        ``NNN `` (RFC 959), so a line that does not start with the code is taken as text.
        """
        first = await self.line(what)
        if len(first) < 4 or not first[:3].isdigit() or first[3:4] not in (b" ", b"-", b"\r"):
            raise ProbeFailure(ErrorKind.PROTOCOL, f"not a {what}: {_shown(first)}")
        code = first[:3]
        lines = [first[4:].rstrip(b"\r\n")]
        if first[3:4] == b"-":
            while True:
                if len(lines) >= MAX_LINES:
                    raise ProbeFailure(
                        ErrorKind.PROTOCOL, f"the {what} has more than {MAX_LINES} lines"
                    )
                line = await self.line(what)
                coded = line[:3] == code
                if coded and line[3:4] in (b" ", b"\r", b"\n"):
                    lines.append(line[4:].rstrip(b"\r\n"))
                    break
                # "NNN-" continues (SMTP, FTP); FTP also allows plain text lines in between.
                text = line[4:] if coded and line[3:4] == b"-" else line
                lines.append(text.rstrip(b"\r\n"))
        return int(code), lines


async def _smtp(attempt: Attempt, conn: Connection) -> None:
    talk = _Dialogue(attempt, conn)
    with attempt.phase("banner"):
        code, lines = await talk.numeric("SMTP greeting")
        if code != 220:
            raise ProbeFailure(
                ErrorKind.PROTOCOL, f"the server refused the session: {code} {_shown(lines[0])}"
            )
    with attempt.phase("ehlo"):
        await talk.send(b"EHLO " + EHLO_NAME.encode())
        code, lines = await talk.numeric("EHLO reply")
        if code != 250:
            raise ProbeFailure(ErrorKind.PROTOCOL, f"EHLO refused: {code} {_shown(lines[0])}")
        offered = {line.split(b" ", 1)[0].upper() for line in lines[1:]}
        if b"STARTTLS" not in offered:
            raise ProbeFailure(ErrorKind.TLS, "STARTTLS is not offered (not in the EHLO reply)")
    with attempt.phase("starttls"):
        await talk.send(b"STARTTLS")
        code, lines = await talk.numeric("STARTTLS reply")
        if code != 220:
            raise ProbeFailure(ErrorKind.TLS, f"STARTTLS refused: {code} {_shown(lines[0])}")


async def _imap(attempt: Attempt, conn: Connection) -> None:
    talk = _Dialogue(attempt, conn)
    with attempt.phase("banner"):
        greeting = await talk.line("IMAP greeting")
        word = greeting.split(b" ", 2)[1:2]
        if not greeting.startswith(b"* ") or not word:
            raise ProbeFailure(ErrorKind.PROTOCOL, f"not an IMAP greeting: {_shown(greeting)}")
        status = word[0].rstrip(b"\r\n").upper()
        if status == b"PREAUTH":
            raise ProbeFailure(ErrorKind.TLS, "the server is pre-authenticated: no STARTTLS")
        if status != b"OK":
            raise ProbeFailure(
                ErrorKind.PROTOCOL, f"the server refused the session: {_shown(greeting)}"
            )
    with attempt.phase("starttls"):
        await talk.send(b"T1 STARTTLS")
        for _ in range(MAX_LINES):
            line = await talk.line("STARTTLS reply")
            if line.startswith(b"* "):
                continue  # an untagged reply before the tagged one
            if line.upper().startswith(b"T1 OK"):
                return
            if line.upper().startswith((b"T1 NO", b"T1 BAD")):
                raise ProbeFailure(ErrorKind.TLS, f"STARTTLS refused: {_shown(line)}")
            raise ProbeFailure(ErrorKind.PROTOCOL, f"not an IMAP reply: {_shown(line)}")
        raise ProbeFailure(ErrorKind.PROTOCOL, f"more than {MAX_LINES} untagged lines")


async def _pop3(attempt: Attempt, conn: Connection) -> None:
    talk = _Dialogue(attempt, conn)
    with attempt.phase("banner"):
        greeting = await talk.line("POP3 greeting")
        if greeting.startswith(b"-ERR"):
            raise ProbeFailure(
                ErrorKind.PROTOCOL, f"the server refused the session: {_shown(greeting)}"
            )
        if not greeting.startswith(b"+OK"):
            raise ProbeFailure(ErrorKind.PROTOCOL, f"not a POP3 greeting: {_shown(greeting)}")
    with attempt.phase("starttls"):
        await talk.send(b"STLS")
        reply = await talk.line("STLS reply")
        if reply.startswith(b"-ERR"):
            raise ProbeFailure(ErrorKind.TLS, f"STLS refused: {_shown(reply)}")
        if not reply.startswith(b"+OK"):
            raise ProbeFailure(ErrorKind.PROTOCOL, f"not a POP3 reply: {_shown(reply)}")


async def _ftp(attempt: Attempt, conn: Connection) -> None:
    talk = _Dialogue(attempt, conn)
    with attempt.phase("banner"):
        code, lines = await talk.numeric("FTP greeting")
        if code != 220:
            raise ProbeFailure(
                ErrorKind.PROTOCOL, f"the server refused the session: {code} {_shown(lines[0])}"
            )
    with attempt.phase("starttls"):
        await talk.send(b"AUTH TLS")
        code, lines = await talk.numeric("AUTH TLS reply")
        if code != 234:
            raise ProbeFailure(ErrorKind.TLS, f"AUTH TLS refused: {code} {_shown(lines[0])}")


async def _postgres(attempt: Attempt, conn: Connection) -> None:
    with attempt.phase("starttls"):
        await attempt.write(conn, _SSL_REQUEST)
        answer = await attempt.read(conn, 1)
        if answer == b"S":
            return
        if answer == b"N":
            raise ProbeFailure(ErrorKind.TLS, "the server does not accept TLS (answered N)")
        if not answer:
            raise ProbeFailure(ErrorKind.PROTOCOL, "connection closed before the SSLRequest reply")
        raise ProbeFailure(ErrorKind.PROTOCOL, f"not an SSLRequest reply: {_shown(answer)}")


_DIALOGUES: Final[dict[str, Callable[[Attempt, Connection], Awaitable[None]]]] = {
    "smtp": _smtp,
    "imap": _imap,
    "pop3": _pop3,
    "ftp": _ftp,
    "postgres": _postgres,
}


# -- the probe -------------------------------------------------------------------------------------


@attrs.frozen
class TlsProbe(ProbeBase):
    """Check the certificate a TLS service presents, with TLS from the first byte or after a
    ``starttls`` dialogue (``smtp``, ``imap``, ``pop3``, ``ftp``, ``postgres``).

    ``verify`` checks the chain and the name (``server_name``, default the host; it is also the
    SNI name) against ``tls.ca_file``/``tls.ca_data`` or the system's CAs; a failure is
    DOWN/``tls``. ``min_version``: a lower negotiated version is DOWN/``tls``.
    ``cert_warn_days``/``cert_crit_days``: the earliest-expiring certificate of the chain
    within them is DEGRADED/DOWN. ``expect_subject``/``expect_issuer`` (text the leaf's
    RFC 4514 subject/issuer contains), ``expect_san`` (names that must all be in the leaf's
    SAN) and ``fingerprint_sha256`` (the leaf's SHA-256, hex, colons allowed) are pins: a
    mismatch is DOWN/``assertion``.

    ``revocation`` (``"off"``, ``"soft"``, ``"hard"``; default ``"soft"``): ask the OCSP
    responder the leaf names (phase ``ocsp``). ``good`` is UP; ``revoked`` is DOWN/``tls``
    naming the revocation time and reason; ``unknown``, an unreachable, slow or denied
    responder, or an answer that is malformed, badly signed or stale is DEGRADED/``assertion``
    under ``soft`` and DOWN under ``hard``. A leaf that names no responder is not checked.
    """

    kind: ClassVar[str] = "tls"

    host: str = attrs.field(converter=host)
    port: int = attrs.field(default=TLS_PORT, validator=port)
    starttls: StartTlsProtocol = "none"
    server_name: str | None = None
    verify: bool = True
    tls: TlsOptions | None = None
    min_version: TlsVersion | None = None
    cert_warn_days: float | None = 30
    cert_crit_days: float | None = 7
    expect_subject: str | None = None
    expect_issuer: str | None = None
    expect_san: tuple[str, ...] = attrs.field(default=(), converter=_names)
    fingerprint_sha256: str | None = attrs.field(default=None, converter=_fingerprint)
    revocation: Revocation = "soft"
    staple: bool = False
    assertions: tuple[Assertion, ...] = attrs.field(default=(), converter=assertion_tuple)
    ip_family: Family | None = None
    timeouts: Timeouts = attrs.field(factory=Timeouts)

    def __attrs_post_init__(self) -> None:
        check_host(self.host)
        if self.starttls not in STARTTLS_PROTOCOLS:
            raise DefinitionError(
                "starttls", f"expected one of {list(STARTTLS_PROTOCOLS)}, got {self.starttls!r}"
            )
        if self.server_name is not None:
            check_host(self.server_name, "server_name")
        if not isinstance(self.verify, bool):
            raise DefinitionError("verify", f"expected true or false, got {self.verify!r}")
        if self.tls is not None:
            if not isinstance(self.tls, TlsOptions):
                raise DefinitionError("tls", f"expected TlsOptions, got {self.tls!r}")
            if self.server_name is not None and self.tls.server_name not in (
                None,
                self.server_name,
            ):
                raise DefinitionError("server_name", "differs from tls.server_name")
        if self.min_version is not None and self.min_version not in MIN_VERSIONS:
            raise DefinitionError(
                "min_version", f"expected one of {list(MIN_VERSIONS)}, got {self.min_version!r}"
            )
        _days("cert_warn_days", self.cert_warn_days)
        _days("cert_crit_days", self.cert_crit_days)
        if (
            self.cert_warn_days is not None
            and self.cert_crit_days is not None
            and self.cert_warn_days < self.cert_crit_days
        ):
            raise DefinitionError("cert_warn_days", "cert_warn_days is below cert_crit_days")
        for field in ("expect_subject", "expect_issuer"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise DefinitionError(field, f"expected text, got {value!r}")
        if not isinstance(self.staple, bool):
            raise DefinitionError("staple", f"expected true or false, got {self.staple!r}")
        if self.revocation not in REVOCATION_MODES:
            raise DefinitionError(
                "revocation", f"expected one of {list(REVOCATION_MODES)}, got {self.revocation!r}"
            )
        check_family(self.ip_family)
        if not isinstance(self.timeouts, Timeouts):
            raise DefinitionError("timeouts", f"expected Timeouts, got {self.timeouts!r}")

    @property
    def target(self) -> str:
        return host_port(self.host, self.port)

    @property
    def options(self) -> TlsOptions:
        """The TLS options of the handshake: ``tls`` with ``verify`` and ``server_name``."""
        base = self.tls if self.tls is not None else TlsOptions()
        return attrs.evolve(
            base,
            verify=base.verify and self.verify,
            server_name=self.server_name or base.server_name,
        )

    def prepare(self, ctx: ProbeContext) -> None:
        from .._tls import warm_up

        warm_up(self.options)
        if self.revocation != "off":
            from cryptography.x509 import ocsp  # noqa: F401 - imported outside the check's clock

    async def run(self, attempt: Attempt) -> None:
        options = self.options
        if self.starttls == "none":
            conn = await attempt.connect(self.host, self.port, tls=options, family=self.ip_family)
        else:
            conn = await attempt.connect(self.host, self.port, family=self.ip_family)
            await _DIALOGUES[self.starttls](attempt, conn)
            await attempt.start_tls(conn, self.host, options)
        info = attempt.tls
        if info is None or not info.chain:
            raise ProbeFailure(ErrorKind.TLS, "the server presented no certificate")
        leaf = info.chain[0]
        attempt.metric("days_left", round(leaf.days_left(attempt.ctx.clock.now()), 4))
        attempt.metric("chain_length", len(info.chain))
        number = _VERSION_NUMBERS.get(info.version)
        if number is not None:
            attempt.metric("tls_version", number)
        self._check_version(info)
        self._check_expiry(attempt, info)
        self._check_pins(attempt, leaf)
        if self.revocation != "off":
            await self._check_revocation(attempt, conn)

    async def _check_revocation(self, attempt: Attempt, conn: Connection) -> None:
        from . import _ocsp

        ssl_object = conn.transport.get_extra_info("ssl_object")
        try:
            cert, issuer = _ocsp.leaf_and_issuer(ssl_object, self.options.ca_data)
            if cert is None:
                return
            url, named = _ocsp.responder_url(cert)
        except ValueError as exc:  # an extension or certificate cryptography cannot decode
            self._unchecked(attempt, f"cannot read the certificates: {exc}")
            return
        if url is None and not self.staple:
            if named:
                self._unchecked(attempt, f"no http:// OCSP responder among {named}")
            # A leaf naming no responder is not checked: most private CAs run none.
            return
        if issuer is None:
            self._unchecked(attempt, "the issuer's certificate is neither sent nor trusted")
            return
        verdict: Verdict | None = None
        staple_note = ""
        if self.staple:
            verdict, staple_note = await self._from_staple(attempt, conn, cert, issuer)
        if verdict is None and url is None:
            why = "no http:// OCSP responder" + (f" among {named}" if named else " named")
            self._unchecked(attempt, f"{staple_note}; {why}" if staple_note else why)
            return
        if verdict is None:
            assert url is not None
            with attempt.phase("ocsp"):
                try:
                    with after(self._ocsp_budget(attempt)):
                        answer = await _ocsp.ask(attempt, url, _ocsp.build_request(cert, issuer))
                    verdict = _ocsp.judge(answer, cert, issuer, attempt.ctx.clock.now(), url)
                except Exception as exc:  # noqa: BLE001 - every failure of the query is classified
                    attempt.timeline.current = "ocsp"
                    error = classify(exc, "ocsp")
                    why = f"OCSP responder {url}: {error.message}"
                    self._unchecked(
                        attempt, f"{staple_note}; {why}" if staple_note else why, error.kind
                    )
            if verdict is None:
                return
        attempt.metric("revoked", int(verdict.status == "revoked"))
        if verdict.status == "revoked":
            raise ProbeFailure(ErrorKind.TLS, f"the certificate is {verdict.describe()}")
        if verdict.status == "unknown":
            self._unchecked(
                attempt,
                f"the responder does not know the certificate: {verdict.describe()}",
                ErrorKind.TLS,
            )
            return
        seen = verdict.describe() + (f" ({staple_note})" if staple_note else "")
        attempt.outcome("revocation", True, "a trusted OCSP answer", seen)

    async def _from_staple(
        self, attempt: Attempt, conn: Connection, cert: x509.Certificate, issuer: x509.Certificate
    ) -> tuple[Verdict | None, str]:
        """The verdict of the server's staple, from a second handshake asking for it (phase
        ``staple``); or None and why there is none (then the responder is asked)."""
        from cryptography.hazmat.primitives import serialization

        from . import _ocsp

        leaf_der = cert.public_bytes(serialization.Encoding.DER)
        checked = attempt.address
        # The first connection has told all it can; servers that take one client at a time
        # (openssl s_server) would not answer the second while it is open.
        conn.close()
        with attempt.phase("staple"):
            try:
                with after(self._ocsp_budget(attempt)):
                    second = await attempt.connect(str(conn.ip), conn.port)
                    if self.starttls != "none":
                        await _DIALOGUES[self.starttls](attempt, second)
                    name = self.options.server_name
                    if name is None and parse_host_address(self.host) is None:
                        name = self.host.rstrip(".")
                    stapled = await _ocsp.fetch_staple(attempt, second, name)
                second.close()
                if stapled.leaf_der != leaf_der:
                    return None, "staple ignored: the second handshake presented another leaf"
                if stapled.response is None:
                    return None, "no staple sent"
                now = attempt.ctx.clock.now()
                return _ocsp.judge(stapled.response, cert, issuer, now, "the staple"), ""
            except Exception as exc:  # a failed staple falls back to the responder
                if isinstance(exc, ProbeFailure) and exc.kind is ErrorKind.INTERNAL:
                    raise  # pyOpenSSL is missing: a set-up problem, not the server's
                attempt.timeline.current = "staple"
                log.debug("tls %s: no usable staple: %r", self.target, exc)
                return None, f"staple ignored: {classify(exc, 'staple').message}"
            finally:
                attempt.address = checked

    def _ocsp_budget(self, attempt: Attempt) -> float:
        """:data:`OCSP_SHARE` of the time left before the check's deadline."""
        now = attempt.ctx.clock.monotonic()
        deadline = attempt.timeline.start + self.timeouts.total
        if attempt.ctx.deadline is not None:
            deadline = min(deadline, attempt.ctx.deadline)
        return max(deadline - now, 0.0) * OCSP_SHARE

    def _unchecked(self, attempt: Attempt, why: str, kind: ErrorKind = ErrorKind.TLS) -> None:
        """Revocation could not be established: DEGRADED (soft) or DOWN of ``kind`` (hard)."""
        if self.revocation == "hard":
            raise ProbeFailure(kind, f"revocation not established: {why}")
        attempt.outcome("revocation", False, "a trusted OCSP answer", why, severity=Status.DEGRADED)

    def _check_version(self, info: TlsInfo) -> None:
        if self.min_version is None:
            return
        negotiated = _VERSION_NUMBERS.get(info.version, 0.0)
        if negotiated < _VERSION_NUMBERS[self.min_version]:
            raise ProbeFailure(
                ErrorKind.TLS,
                f"negotiated {info.version or 'an unknown version'}, "
                f"below min_version {self.min_version}",
            )

    def _check_expiry(self, attempt: Attempt, info: TlsInfo) -> None:
        if self.cert_warn_days is None and self.cert_crit_days is None:
            return
        rule = CertExpiry(warn_days=self.cert_warn_days, crit_days=self.cert_crit_days)
        seen = rule.evaluate(
            Observation(
                elapsed=attempt.elapsed(),
                tls=info,
                cert_days_left=attempt.metrics.get("cert_days_left"),
            )
        )
        attempt.outcome(
            seen.name, seen.passed, seen.expected, seen.observed, severity=seen.severity
        )

    def _check_pins(self, attempt: Attempt, leaf: CertInfo) -> None:
        if self.expect_subject is not None:
            passed = self.expect_subject in leaf.subject
            attempt.outcome(
                "subject", passed, f"contains {self.expect_subject!r}", repr(leaf.subject)
            )
        if self.expect_issuer is not None:
            passed = self.expect_issuer in leaf.issuer
            attempt.outcome("issuer", passed, f"contains {self.expect_issuer!r}", repr(leaf.issuer))
        if self.expect_san:
            present = {name.lower() for name in leaf.sans}
            missing = [name for name in self.expect_san if name.lower() not in present]
            attempt.outcome(
                "san",
                not missing,
                f"all of {list(self.expect_san)}",
                f"{list(leaf.sans)}" + (f" (missing {missing})" if missing else ""),
            )
        if self.fingerprint_sha256 is not None:
            attempt.outcome(
                "fingerprint",
                leaf.sha256 == self.fingerprint_sha256,
                self.fingerprint_sha256,
                leaf.sha256,
            )


# -- the command-line form -------------------------------------------------------------------------


def _cli_days(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1e6:
        raise ValueError(f"expected a number of days from 0, got {text!r}")
    return value


def _cli_version(text: str) -> str:
    name = text if text.startswith("TLSv") else f"TLSv{text}"
    if name not in MIN_VERSIONS:
        raise ValueError(f"expected one of 1.2, 1.3 (or TLSv1.2, TLSv1.3), got {text!r}")
    return name


def _to_definition(values: Mapping[str, Any], definition: MutableMapping[str, Any]) -> None:
    problems: list[DefinitionError] = []
    try:
        tls = tls_definition(values)
    except DefinitionError as exc:
        problems.append(exc)
        tls = None
    if tls is not None:
        if tls.pop("verify", True) is False:
            definition["verify"] = False
        if tls:
            definition["tls"] = tls
    try:
        _fingerprint(definition.get("fingerprint_sha256"))
    except DefinitionError as exc:
        problems.append(option_problem("--fingerprint", exc))
    if (problem := family_definition(values, definition)) is not None:
        problems.append(problem)
    if problems:
        raise DefinitionErrors(problems)


def describe(result: Result) -> str | None:
    """``TLSv1.3, 89 days left, CN=example.com`` (the leaf's days and subject)."""
    tls = result.tls
    if tls is None or not tls.chain:
        return None
    parts = [tls.version] if tls.version else []
    days = result.metrics.get("days_left")
    if days is not None:
        parts.append(f"{days:.0f} days left" if days >= 0 else f"expired {-days:.0f} days ago")
    parts.append(tls.chain[0].subject or "no subject")
    return ", ".join(parts)


KIND = ProbeKind(
    name="tls",
    cls=TlsProbe,
    summary="check a TLS certificate (directly or after STARTTLS): expiry, chain, name, pins",
    target=HostPort(default_port=TLS_PORT),
    options=(
        Option(
            ("--starttls",),
            field="starttls",
            choices=STARTTLS_PROTOCOLS,
            help="the STARTTLS dialogue before the handshake (default none: TLS at once)",
        ),
        Option(("--sni",), field="server_name", metavar="NAME", help="SNI and name to verify"),
        *TLS_OPTIONS,
        Option(
            ("--cert-warn-days",),
            field="cert_warn_days",
            metavar="DAYS",
            parse=_cli_days,
            help="DEGRADED (WARNING) when a certificate expires within DAYS (default 30)",
        ),
        Option(
            ("--cert-crit-days",),
            field="cert_crit_days",
            metavar="DAYS",
            parse=_cli_days,
            help="DOWN (CRITICAL) when a certificate expires within DAYS (default 7)",
        ),
        Option(
            ("--expect-subject",),
            field="expect_subject",
            metavar="TEXT",
            help="the leaf's subject contains TEXT (e.g. CN=example.com)",
        ),
        Option(
            ("--expect-issuer",),
            field="expect_issuer",
            metavar="TEXT",
            help="the leaf's issuer contains TEXT (e.g. O=Example CA)",
        ),
        Option(
            ("--expect-san",),
            field="expect_san",
            action="append",
            metavar="NAME",
            help="NAME is in the leaf's subject alternative names (repeatable)",
        ),
        Option(
            ("--fingerprint",),
            field="fingerprint_sha256",
            metavar="SHA256",
            help="the leaf's SHA-256 fingerprint is SHA256 (hex, colons allowed)",
        ),
        Option(
            ("--min-version",),
            field="min_version",
            metavar="VERSION",
            parse=_cli_version,
            help="DOWN when the negotiated version is below VERSION (1.2 or 1.3)",
        ),
        Option(
            ("--revocation",),
            field="revocation",
            choices=REVOCATION_MODES,
            help="OCSP check of the leaf: off, soft (default: an unanswered query is WARNING) "
            "or hard (CRITICAL)",
        ),
        Option(
            ("--staple",),
            field="staple",
            action="flag",
            help="use the server's stapled OCSP response when it sends one (a second "
            "handshake; needs probekit[ocsp])",
        ),
        *FAMILY_OPTIONS,
    ),
    to_definition=_to_definition,
    metrics=(
        Metric("days_left", "probekit_tls_days_left", "Days until the leaf certificate expires."),
        Metric("chain_length", "probekit_tls_chain_length", "Certificates the server presented."),
        Metric(
            "tls_version",
            "probekit_tls_version",
            "The negotiated TLS version as a number (1.2, 1.3).",
        ),
        Metric(
            "revoked",
            "probekit_tls_revoked",
            "1 when the OCSP responder says the leaf is revoked, 0 when it says good.",
        ),
    ),
    docs="probes/tls.md",
    tls_field="tls",
    describe=describe,
)
