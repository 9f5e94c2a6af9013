"""What the IMAP and POP3 probes share: their target syntax, field checks, the rendering of server
replies in messages, and the command-line options they both take.

Private to :mod:`probekit.probes.imap` and :mod:`probekit.probes.pop3`; the registry skips it
(its name starts with ``_``). It imports no protocol library: both kinds speak their protocol
themselves over the dial path.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any, ClassVar, Final, Literal, TypeAlias, get_args

import attrs

from .._exceptions import DefinitionError, DefinitionErrors
from .._resolver import Family
from .._result import Result
from .._secret import Secret
from .._timeouts import Timeouts
from .._tls import TlsOptions
from ._fields import check_secret, host, host_port
from ._kind import HostPort, Option
from ._options import (
    CERT_OPTIONS,
    FAMILY_OPTIONS,
    TLS_OPTIONS,
    body_assertions,
    cert_assertion,
    family_definition,
    secret_from_env,
    starttls_definition,
)

__all__ = [
    "CERT_OPTIONS",
    "FAMILIES",
    "STARTTLS_MODES",
    "ImplicitTlsPort",
    "MailTarget",
    "StartTls",
    "cert_assertion",
    "check_common",
    "common_options",
    "common_to_definition",
    "describe_mail",
    "mail_host",
    "mail_port",
    "shown",
]

#: ``required``: STARTTLS must be offered and succeed, else DOWN/``tls``; ``optional``: use it
#: when offered; ``off``: never.
StartTls: TypeAlias = Literal["required", "optional", "off"]
STARTTLS_MODES: Final[tuple[str, ...]] = get_args(StartTls)
FAMILIES: Final[tuple[str, ...]] = get_args(Family)

_EXCERPT: Final = 80
_MASK: Final = "<secret>"


@attrs.frozen
class MailTarget(HostPort):
    """``HOST[:PORT]`` where a left-out port is left out of the definition, so the probe picks
    its protocol's default: the plain port, or the implicit-TLS one (993, 995) with ``tls``.

    (:class:`HostPort` would fill in one fixed ``default_port``, which is wrong for ``--tls``.)
    """

    tls_port: int = 0

    @property
    def help(self) -> str:
        return (
            f"the host, optionally with a port (default {self.default_port}, "
            f"{self.tls_port} with --tls)"
        )

    def parse(self, text: str) -> dict[str, Any]:
        fields = HostPort.parse(self, text)
        given = "]:" in text if text.startswith("[") else text.count(":") == 1
        if not given:
            del fields[self.port_field]
        return fields


class ImplicitTlsPort:
    """Mixin of a kind whose default port depends on implicit TLS (IMAP 143, IMAPS 993): its
    ``port`` field may be None, which ``__attrs_post_init__`` turns into ``PLAIN_PORT``, or
    ``TLS_PORT`` when ``tls`` is set, by calling :meth:`_fill_default_port`."""

    PLAIN_PORT: ClassVar[int]
    TLS_PORT: ClassVar[int]
    host: str
    port: int | None
    tls: TlsOptions | None

    def _fill_default_port(self) -> None:
        if self.port is None:
            default = self.TLS_PORT if self.tls is not None else self.PLAIN_PORT
            object.__setattr__(self, "port", default)

    @property
    def target(self) -> str:
        return host_port(self.host, self._port)

    @property
    def _port(self) -> int:
        """The port: ``__attrs_post_init__`` fills the protocol's default in."""
        assert self.port is not None
        return self.port


def mail_host(value: str) -> str:
    """The ``host`` converter (the shared one): a string; ``[v6]`` brackets dropped."""
    return host(value)


def mail_port(_inst: object, _attribute: attrs.Attribute[int | None], value: int | None) -> None:
    """The ``port`` validator: None (the protocol's default) or 1-65535."""
    raw: object = value
    if raw is None:
        return
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 65535:
        raise DefinitionError("port", f"must be an integer from 1 to 65535, got {value!r}")


def check_common(
    *,
    host: str,
    tls: object,
    starttls: object,
    starttls_options: object,
    username: object,
    password: object,
    ip_family: object,
    timeouts: object,
    forbidden: str,
) -> None:
    """Raise :class:`DefinitionError` for the first problem with the fields both kinds have.

    ``forbidden`` are the characters the protocol cannot carry in a user name or password.
    """
    if not host.strip():
        raise DefinitionError("host", "a host is required")
    if any(c.isspace() or c in "\0/" for c in host):
        raise DefinitionError("host", f"not a host name or address: {host!r}")
    if tls is not None and not isinstance(tls, TlsOptions):
        raise DefinitionError("tls", f"expected TlsOptions, got {tls!r}")
    if starttls not in STARTTLS_MODES:
        raise DefinitionError(
            "starttls", f"expected one of {list(STARTTLS_MODES)}, got {starttls!r}"
        )
    if tls is not None and starttls == "required":
        raise DefinitionError(
            "starttls", "'required' on a connection that is TLS from the start (tls is set)"
        )
    if starttls_options is not None:
        if not isinstance(starttls_options, TlsOptions):
            raise DefinitionError(
                "starttls_options", f"expected TlsOptions, got {starttls_options!r}"
            )
        if tls is not None or starttls == "off":
            raise DefinitionError(
                "starttls_options", "TLS options for STARTTLS, which is not used (tls set or off)"
            )
    password = check_secret("password", password)
    if password is not None:
        if any(c in password.reveal() for c in forbidden):
            raise DefinitionError("password", _unsendable(forbidden))
        if username is None:
            raise DefinitionError("password", "a password needs a username")
    if username is not None:
        if not isinstance(username, str) or not username:
            raise DefinitionError("username", f"expected a user name, got {username!r}")
        if any(c in username for c in forbidden):
            raise DefinitionError("username", _unsendable(forbidden))
        if password is None:
            raise DefinitionError("username", "a username needs a password")
    if ip_family is not None and ip_family not in FAMILIES:
        raise DefinitionError("ip_family", f"expected one of {list(FAMILIES)}, got {ip_family!r}")
    if not isinstance(timeouts, Timeouts):
        raise DefinitionError("timeouts", f"expected Timeouts, got {timeouts!r}")


def _unsendable(forbidden: str) -> str:
    names = {"\0": "NUL", "\r": "CR", "\n": "LF"}
    listed = " or ".join(names.get(c, repr(c)) for c in forbidden)
    return f"contains {listed}, which the protocol cannot send"


def shown(data: bytes | str, secret: Secret | None = None) -> str:
    """A short rendering of a server reply for messages, the password masked should the server
    echo it back."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = text.rstrip("\r\n")
    if secret is not None and secret.reveal() and secret.reveal() in text:
        text = text.replace(secret.reveal(), _MASK)
    if not text:
        return "an empty line"
    if len(text) > _EXCERPT:
        return f"{text[:_EXCERPT]!r}… ({len(text)} characters)"
    return repr(text)


# -- the command-line form -------------------------------------------------------------------------


def common_options(kind: str, tls_port: int) -> tuple[Option, ...]:
    """The options of ``probekit check imap|pop3`` that are the same for both."""
    return (
        Option(
            ("--tls",),
            dest="tls",
            action="flag",
            sets=("tls",),
            help=f"TLS from the first byte ({kind}s, port {tls_port} by default)",
        ),
        Option(
            ("--starttls",),
            field="starttls",
            choices=STARTTLS_MODES,
            help="STARTTLS: required (DOWN when not offered), optional (the default), off",
        ),
        *TLS_OPTIONS,
        Option(
            ("--user",),
            field="username",
            metavar="NAME",
            help="log in as NAME (needs --password-env)",
        ),
        Option(
            ("--password-env",),
            dest="password_env",
            metavar="VAR",
            sets=("password",),
            help="log in with the password in environment variable VAR",
        ),
        *FAMILY_OPTIONS,
        *CERT_OPTIONS,
    )


def common_to_definition(
    values: Mapping[str, Any], definition: MutableMapping[str, Any], kind: str
) -> list[DefinitionError]:
    """Add what the shared options mean to ``definition``; return the problems found."""
    problems: list[DefinitionError] = []
    try:
        secret_from_env(values, definition)
    except DefinitionError as exc:
        problems.append(exc)
    need = f"need --tls or STARTTLS for {kind} checks"
    implicit = bool(values.get("tls"))
    if problem := starttls_definition(values, definition, implicit=implicit, off_problem=need):
        problems.append(problem)
    if (problem := family_definition(values, definition)) is not None:
        problems.append(problem)
    try:
        cert_assertion(values, definition)
    except DefinitionError as exc:
        problems.append(exc)
    try:
        body_assertions(values, definition)
    except DefinitionErrors as exc:
        problems.extend(exc.errors)
    return problems


def describe_mail(result: Result, noun: str) -> str | None:
    """How the session was protected, and the message count when one was read."""
    names = result.phase_names()
    if "banner" not in names:
        return None
    if "starttls" in names and result.tls is not None:
        how = "STARTTLS"
    elif result.tls is not None:
        how = "TLS"
    else:
        how = "plain text"
    parts = [f"{noun} over {how}"]
    messages = result.metrics.get("messages")
    if messages is not None:
        parts.append(f"{int(messages)} messages")
    return ", ".join(parts)
