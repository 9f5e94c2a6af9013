"""What the ``ssh`` and ``sftp`` kinds share: the field rules, the SSH session up to a logged-in
connection (``banner``, ``kex``, ``auth``), the mapping of asyncssh's exceptions to error kinds,
and the command-line options both take.

Private to :mod:`probekit.probes.ssh` and :mod:`probekit.probes.sftp`; the registry skips it
(its name starts with ``_``). asyncssh (the ``ssh`` extra: ``pip install probekit[ssh]``) is
imported inside a check only, so importing this module loads no protocol library.

How the session is run. The dial path connects the socket (``resolve``, the egress policy,
``connect`` to the checked address); asyncssh gets it through its ``tunnel`` option (below) and
never dials. asyncssh does the version exchange, the key exchange and the login in one call, so the
phases between them are taken from what it reports while that call runs:

- ``banner`` ends when asyncssh has parsed the server's identification line (``SSH-2.0-...``).
  asyncssh is handed the connected socket through its ``tunnel`` option, an object whose
  ``create_connection(session_factory, host, port)`` asyncssh calls to get its transport (its
  ``_TunnelConnectorProtocol``); the probe's connector creates asyncssh's connection object,
  wraps its ``data_received`` (which the event loop calls for every segment received; uvloop
  binds it when the transport is made, so it must be wrapped before) and makes the transport
  on the socket with ``loop.create_connection(sock=...)``. After each segment the wrapper asks
  the connection for its public ``server_version`` extra info, which asyncssh sets the moment
  it has parsed that line.
- ``kex`` ends when asyncssh calls the client's ``begin_auth`` callback: the key exchange is
  complete, the host key verified, and the server accepted the user-auth service.
- ``auth`` ends when ``connect`` returns (the login succeeded) or fails.

The host key. Without ``host_key_fingerprint`` no host key is checked (asyncssh's
``known_hosts=None``): no ``~/.ssh/known_hosts``, no ``~/.ssh/config``, no agent and no default
key files are read, whoever runs the check; the key seen is recorded in the ``host_key``
outcome. With a pin asyncssh is given an empty list of trusted keys, so it asks the client's
``validate_host_public_key`` callback, which accepts only a key whose SHA-256 fingerprint is the
pin (asyncssh then verifies that the server holds that key's private half). A mismatch ends the
check before any password or key signature is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import socket
from collections.abc import AsyncIterator, Callable, Mapping, MutableMapping
from typing import Any, Final

from .._exceptions import DefinitionError, DefinitionErrors, ProbeFailure
from .._result import ErrorKind, Result
from .._secret import Secret
from .._timeouts import Timeouts
from ._base import Attempt
from ._fields import FAMILIES, check_secret
from ._kind import Option
from ._options import body_assertions, family_definition, secret_from_env

__all__ = [
    "HOST_KEY_ALGORITHMS",
    "LOGIN_OPTIONS",
    "PRE_BANNER_LIMIT",
    "Session",
    "check_login",
    "describe_ssh",
    "fingerprint",
    "login_to_definition",
    "masked",
    "open_session",
]

log = logging.getLogger("probekit.probes.ssh")

#: How many bytes the server may send before its identification line (RFC 4253 allows other
#: lines first) before the check gives up: DOWN/``protocol`` in ``banner``.
PRE_BANNER_LIMIT: Final = 16 * 1024
#: The host key algorithms ``host_key_algorithm`` may name (asyncssh's names).
HOST_KEY_ALGORITHMS: Final = (
    "ssh-ed25519",
    "ssh-ed448",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
)

_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_VERSION_TEXT = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
_MASK: Final = "<secret>"
_EXCERPT: Final = 120
_CLIENT_VERSION: Final = "probekit"


# -- definitions -------------------------------------------------------------------------------


def fingerprint(value: str | None) -> str | None:
    """Converter of ``host_key_fingerprint``: ``SHA256:`` and 43 base64 characters, as
    ``ssh-keygen -lf`` and OpenSSH print it (base64 ``=`` padding is dropped)."""
    raw: object = value
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise DefinitionError(
            "host_key_fingerprint", f"expected 'SHA256:<base64>', got {type(raw).__name__}"
        )
    text = raw.strip().rstrip("=")
    if not _FINGERPRINT.fullmatch(text):
        raise DefinitionError(
            "host_key_fingerprint",
            f"expected 'SHA256:' and 43 base64 characters, as ssh-keygen -lf prints it, "
            f"got {raw[:80]!r}",
        )
    return text


def check_login(
    *,
    username: object,
    password: object,
    private_key: object,
    passphrase: object,
    host_key_algorithm: object,
    expect_version: object,
    expect_protocol: object,
    ip_family: object,
    timeouts: object,
) -> None:
    """Raise :class:`DefinitionError` for the first problem with the fields both kinds have."""
    check_secret("password", password)
    check_secret("private_key", private_key)
    check_secret("passphrase", passphrase)
    if username is not None and (
        not isinstance(username, str)
        or not username
        or any(c in username for c in "\0\r\n")
        or len(username) > 256
    ):
        raise DefinitionError("username", f"expected a user name, got {username!r}")
    if (password is not None or private_key is not None) and username is None:
        which = "password" if password is not None else "private_key"
        raise DefinitionError(which, "a login needs a username")
    if username is not None and password is None and private_key is None:
        raise DefinitionError("username", "a login needs a password or a private_key")
    if passphrase is not None and private_key is None:
        raise DefinitionError("passphrase", "a passphrase unlocks a private_key, which is not set")
    if host_key_algorithm is not None and host_key_algorithm not in HOST_KEY_ALGORITHMS:
        raise DefinitionError(
            "host_key_algorithm",
            f"expected one of {list(HOST_KEY_ALGORITHMS)}, got {host_key_algorithm!r}",
        )
    for name, value in (("expect_version", expect_version), ("expect_protocol", expect_protocol)):
        if value is not None and (not isinstance(value, str) or not _VERSION_TEXT.fullmatch(value)):
            raise DefinitionError(name, f"expected printable ASCII text, got {value!r}")
    if ip_family is not None and ip_family not in FAMILIES:
        raise DefinitionError("ip_family", f"expected one of {list(FAMILIES)}, got {ip_family!r}")
    if not isinstance(timeouts, Timeouts):
        raise DefinitionError("timeouts", f"expected Timeouts, got {timeouts!r}")


def masked(text: str, *secrets: Secret | None) -> str:
    """``text`` cut short for a message, with every secret in it replaced by ``<secret>``."""
    for secret in secrets:
        if secret is not None:
            value = secret.reveal()
            if value and value in text:
                text = text.replace(value, _MASK)
    if len(text) > _EXCERPT:
        text = f"{text[:_EXCERPT]}… ({len(text)} characters)"
    return text


# -- the session -------------------------------------------------------------------------------


def asyncssh_module() -> Any:
    """asyncssh, or a failure telling how to install it (UNKNOWN/``internal``)."""
    try:
        import asyncssh
    except ImportError:
        raise ProbeFailure(
            ErrorKind.INTERNAL, "the ssh and sftp probes need asyncssh: install probekit[ssh]"
        ) from None
    return asyncssh


class _Watch:
    """What the client side of one session saw, set from asyncssh's callbacks."""

    __slots__ = (
        "banner",
        "conn",
        "failure",
        "kex",
        "key",
        "login",
        "pin",
        "received",
        "rejected",
    )

    def __init__(self, pin: str | None, login: bool) -> None:
        self.login = login
        self.banner = asyncio.Event()
        self.kex = asyncio.Event()
        self.conn: Any = None
        self.pin = pin
        self.key: tuple[str, str] | None = None  # (algorithm, fingerprint) of the host key
        self.rejected = False
        self.received = 0
        self.failure: ProbeFailure | None = None

    def wrap(self, conn: Any) -> None:
        """Watch the bytes ``conn`` (asyncssh's connection, before it has a transport) gets."""
        self.conn = conn
        deliver = conn.data_received

        def data_received(data: bytes, datatype: Any = None) -> None:
            if self.banner.is_set():
                deliver(data, datatype)
                return
            self.received += len(data)
            deliver(data, datatype)
            if conn.get_extra_info("server_version") is not None:
                self.banner.set()
            elif self.received > PRE_BANNER_LIMIT and self.failure is None:
                self.failure = ProbeFailure(
                    ErrorKind.PROTOCOL,
                    f"no SSH identification line in the first {self.received} bytes "
                    "(not an SSH server)",
                )
                conn.abort()

        # The event loop calls the protocol's data_received for every segment; the wrapper only
        # looks. Set before the transport exists (uvloop binds the method when it makes it).
        conn.data_received = data_received

    def validate(self, key: Any) -> bool:
        seen = key.get_fingerprint("sha256")
        self.key = (key.get_algorithm(), seen)
        if seen == self.pin:
            return True
        self.rejected = True
        return False


@functools.cache
def _client_class(asyncssh: Any) -> type[Any]:
    class _Client(asyncssh.SSHClient):  # type: ignore[misc]
        def __init__(self, watch: _Watch) -> None:
            self._watch = watch

        def validate_host_public_key(self, host: str, addr: str, port: int, key: Any) -> bool:
            return self._watch.validate(key)

        def begin_auth(self, username: str) -> None:
            self._watch.kex.set()
            if not self._watch.login and self._watch.conn is not None:
                # asyncssh starts the first authentication request in a task after this
                # returns; closing now means a check without a login never sends one (no
                # "Invalid user" line in the server's log for fail2ban to count).
                self._watch.conn.abort()

    return _Client


class _Connector:
    """What asyncssh's ``tunnel`` option takes: it opens asyncssh's connection on the socket the
    dial path connected, with :class:`_Watch` looking at what it receives."""

    def __init__(self, sock: socket.socket, watch: _Watch) -> None:
        self._sock = sock
        self._watch = watch

    async def create_connection(
        self, session_factory: Callable[[], Any], remote_host: str, remote_port: int
    ) -> tuple[Any, Any]:
        def factory() -> Any:
            conn = session_factory()
            self._watch.wrap(conn)
            return conn

        loop = asyncio.get_running_loop()
        return await loop.create_connection(factory, sock=self._sock)

    def close(self) -> None:
        """Nothing to close: the socket is the connection's."""

    async def wait_closed(self) -> None:
        """Nothing to wait for."""


@functools.lru_cache(maxsize=32)
def _private_key(asyncssh: Any, text: str, passphrase: str | None) -> Any:
    """The key ``text`` holds, decrypted once per process: unlocking an OpenSSH key runs bcrypt's
    key derivation (tens of milliseconds), which a monitor checked every minute should not pay
    each time. A key that cannot be read raises and is not kept."""
    return asyncssh.import_private_key(text, passphrase)


def _key_problem(text: str) -> str:
    """What asyncssh's refusal of a private key means, in words that hold no part of it."""
    lowered = text.lower()
    if "bcrypt" in lowered:
        return "an encrypted key in OpenSSH's format needs the bcrypt package (pip install bcrypt)"
    if "passphrase" in lowered:
        return "the passphrase is wrong, or missing for an encrypted key"
    return "not an OpenSSH or PEM private key, or encrypted without a passphrase"


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class Session:
    """What :func:`open_session` yields: the logged-in asyncssh connection (None when the check
    stops after the key exchange) and what was seen of the server."""

    __slots__ = ("conn", "key", "version")

    def __init__(self, conn: Any, version: str, key: tuple[str, str] | None) -> None:
        self.conn = conn
        self.version = version
        self.key = key


def _software(version: str) -> tuple[str, str]:
    """``(protocol, software)`` of an identification line: ``SSH-2.0-OpenSSH_9.2p1 Debian-2``
    is ``("2.0", "OpenSSH_9.2p1 Debian-2")``, the software version with its comments, which is
    what ``check_ssh -r`` compares."""
    _, _, rest = version.partition("-")
    protocol, _, software = rest.partition("-")
    return protocol, software


def _failure(
    exc: BaseException, asyncssh: Any, username: str | None, *secrets: Secret | None
) -> BaseException:
    """asyncssh's exception as the failure it means (others are left to the base)."""
    if isinstance(exc, asyncssh.PermissionDenied):
        return ProbeFailure(
            ErrorKind.AUTH,
            f"the server refused the login as {username!r}: {masked(str(exc.reason), *secrets)}",
        )
    if isinstance(exc, asyncssh.ConnectionLost):
        return ProbeFailure(ErrorKind.PROTOCOL, "the server closed the connection")
    if isinstance(exc, asyncssh.ProtocolNotSupported):
        return ProbeFailure(
            ErrorKind.PROTOCOL, f"not an SSH-2 server: {masked(str(exc.reason), *secrets)}"
        )
    if isinstance(exc, asyncssh.KeyImportError):
        return ProbeFailure(
            ErrorKind.AUTH,
            f"the private_key cannot be used: {masked(str(exc), *secrets)} "
            "(an OpenSSH or PEM private key, with its passphrase if it is encrypted)",
        )
    if isinstance(exc, asyncssh.DisconnectError):
        return ProbeFailure(
            ErrorKind.PROTOCOL,
            f"{type(exc).__name__}: {masked(str(exc.reason), *secrets)}",
        )
    if isinstance(exc, asyncssh.Error):
        return ProbeFailure(
            ErrorKind.PROTOCOL, f"{type(exc).__name__}: {masked(str(exc), *secrets)}"
        )
    return exc


async def _until(attempt: Attempt, event: asyncio.Event, task: asyncio.Future[Any]) -> None:
    """Wait (at most ``timeouts.read``) until ``event`` is set or ``task`` ends."""
    if event.is_set() or task.done():
        return
    waiter = asyncio.ensure_future(event.wait())
    try:
        await attempt.wait(asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED))
    finally:
        waiter.cancel()


@contextlib.asynccontextmanager
async def open_session(
    attempt: Attempt,
    probe: Any,
    *,
    login: bool,
) -> AsyncIterator[Session | None]:
    """Dial, read the banner, exchange keys, and log in when ``login`` and credentials are set.

    Yields the :class:`Session` (its ``conn`` None when there was no login), or None when the
    check has already failed an outcome (host key, version) and must go no further. The
    connection is aborted when the block ends, however it ends.
    """
    asyncssh = asyncssh_module()
    secrets = (probe.password, probe.private_key, probe.passphrase)
    sock = await attempt.open_socket(probe.host, probe.port, family=probe.ip_family)
    # The key is read once the address is known to be allowed and reachable, before anything
    # is sent: a key that cannot be used is DOWN/auth with no byte on the wire.
    keys: Any = None
    if probe.private_key is not None:
        try:
            keys = [
                _private_key(
                    asyncssh,
                    probe.private_key.reveal(),
                    probe.passphrase.reveal() if probe.passphrase is not None else None,
                )
            ]
        except (asyncssh.KeyImportError, ValueError, TypeError) as exc:
            reason = _key_problem(str(exc))
            raise ProbeFailure(
                ErrorKind.AUTH, f"the private_key cannot be used: {reason}"
            ) from None
    credentials = login and probe.username is not None
    watch = _Watch(probe.host_key_fingerprint, credentials)
    options: dict[str, Any] = {
        "client_factory": lambda: _client_class(asyncssh)(watch),
        "config": None,
        "known_hosts": ([], [], []) if probe.host_key_fingerprint is not None else None,
        "x509_trusted_certs": None,
        "x509_trusted_cert_paths": [],
        "agent_path": None,
        "agent_identities": None,
        "client_keys": keys,
        "password": probe.password.reveal() if probe.password is not None else None,
        "passphrase": None,
        "ignore_encrypted": True,
        "gss_host": None,
        "gss_kex": False,
        "gss_auth": False,
        "host_based_auth": False,
        "public_key_auth": keys is not None,
        "password_auth": probe.password is not None,
        "kbdint_auth": probe.password is not None,
        "pkcs11_provider": None,
        "username": probe.username or "probekit",
        "client_version": _CLIENT_VERSION,
        "connect_timeout": None,
        "login_timeout": probe.timeouts.total + 60,
        "keepalive_interval": 0,
    }
    if probe.host_key_algorithm is not None:
        options["server_host_key_algs"] = [probe.host_key_algorithm]
    # asyncssh gets its own descriptor of the connected socket: its transport closes it on the
    # loop's next turn after an abort, while the attempt closes the one it tracks as soon as
    # the check ends; a shared descriptor could be reused by the next socket in between.
    own = sock.dup()
    own.setblocking(False)
    task: asyncio.Future[Any] = asyncio.ensure_future(
        asyncssh.connect(probe.host, probe.port, tunnel=_Connector(own, watch), **options)
    )

    def fail(exc: BaseException) -> BaseException:
        if watch.failure is not None:
            return watch.failure
        return _failure(exc, asyncssh, probe.username, *secrets)

    async def phase_end(event: asyncio.Event) -> None:
        await _until(attempt, event, task)
        if event.is_set():
            return
        if task.cancelled():
            raise ProbeFailure(ErrorKind.PROTOCOL, "the SSH session ended early")
        exc = task.exception()
        if exc is None:
            return
        if watch.failure is not None:
            raise watch.failure from None
        raise fail(exc) from None

    try:
        with attempt.phase("banner"):
            await phase_end(watch.banner)
        conn = watch.conn
        version = str(conn.get_extra_info("server_version") or "")
        if not _version_expected(attempt, probe, version):
            yield None
            return
        with attempt.phase("kex"):
            try:
                await phase_end(watch.kex)
            except ProbeFailure:
                if not watch.rejected:
                    raise
        if watch.rejected:
            expected = probe.host_key_fingerprint
            algorithm, seen = watch.key or ("", "")
            attempt.outcome("host_key", False, expected, f"{algorithm} {seen}")
            log.debug("ssh %s: host key %s, expected %s", probe.target, seen, expected)
            yield None
            return
        key = watch.key
        if key is None:
            server_key = conn.get_server_host_key()
            if server_key is not None:
                key = (server_key.get_algorithm(), server_key.get_fingerprint("sha256"))
        shown = f"{key[0]} {key[1]}" if key is not None else "unknown"
        attempt.outcome("host_key", True, probe.host_key_fingerprint or "any (not pinned)", shown)
        attempt.metric("auth", 0)
        if not credentials:
            yield Session(None, version, key)
            return
        with attempt.phase("auth"):
            try:
                connection = await attempt.wait(asyncio.shield(task))
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                raise
            except Exception as exc:  # noqa: BLE001 - mapped at the boundary
                raise fail(exc) from None
        attempt.metric("auth", 1)
        yield Session(connection, version, key)
    finally:
        if not task.done():
            task.cancel()
        task.add_done_callback(_retrieve)
        if watch.conn is not None:
            watch.conn.abort()
        else:
            own.close()


def _version_expected(attempt: Attempt, probe: Any, version: str) -> bool:
    """Record the ``server_version`` outcome; False when it is not the one expected."""
    protocol, software = _software(version)
    wanted: list[str] = []
    passed = True
    if probe.expect_protocol is not None:
        wanted.append(f"protocol {probe.expect_protocol}")
        passed = passed and protocol == probe.expect_protocol
    if probe.expect_version is not None:
        wanted.append(f"software {probe.expect_version}")
        passed = passed and software == probe.expect_version
    attempt.outcome("server_version", passed, ", ".join(wanted) or "SSH-2.0", masked(version))
    return passed


# -- the command-line form -------------------------------------------------------------------------


def _key_file(values: Mapping[str, Any], definition: MutableMapping[str, Any]) -> None:
    path = values.get("key_file")
    if not path:
        return
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(1024 * 1024)
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not a text file"
        raise DefinitionError("--key-file", f"cannot read {path}: {reason}") from None
    definition["private_key"] = Secret(text)


LOGIN_OPTIONS: Final[tuple[Option, ...]] = (
    Option(
        ("--user", "-l"),
        field="username",
        metavar="NAME",
        help="log in as NAME (needs --password-env or --key-file)",
    ),
    Option(
        ("--password-env",),
        dest="password_env",
        metavar="VAR",
        sets=("password",),
        help="log in with the password in environment variable VAR",
    ),
    Option(
        ("--key-file", "-i"),
        dest="key_file",
        metavar="FILE",
        sets=("private_key",),
        help="log in with the private key in FILE (OpenSSH or PEM)",
    ),
    Option(
        ("--passphrase-env",),
        dest="passphrase_env",
        metavar="VAR",
        sets=("passphrase",),
        help="the passphrase of --key-file, from environment variable VAR",
    ),
    Option(
        ("--host-key",),
        field="host_key_fingerprint",
        metavar="SHA256:...",
        help="the server's host key must have this fingerprint (as ssh-keygen -lf prints it)",
    ),
    Option(
        ("--host-key-algorithm",),
        field="host_key_algorithm",
        choices=HOST_KEY_ALGORITHMS,
        metavar="ALG",
        help="ask the server for this host key type only (e.g. ssh-ed25519)",
    ),
    Option(
        ("--remote-version", "-r"),
        field="expect_version",
        metavar="STRING",
        help="CRITICAL unless the server's version (after SSH-2.0-) is STRING "
        "(ex: 'OpenSSH_9.2p1 Debian-2+deb12u3')",
    ),
    Option(
        ("--remote-protocol", "-P"),
        field="expect_protocol",
        metavar="STRING",
        help="CRITICAL unless the server's protocol version is STRING (ex: 2.0)",
    ),
    Option(("--ipv4", "-4"), dest="ipv4", action="flag", sets=("ip_family",), help="IPv4 only"),
    Option(("--ipv6", "-6"), dest="ipv6", action="flag", sets=("ip_family",), help="IPv6 only"),
)


def login_to_definition(
    values: Mapping[str, Any], definition: MutableMapping[str, Any]
) -> list[DefinitionError]:
    """Add what :data:`LOGIN_OPTIONS` mean to ``definition``; return the problems found."""
    problems: list[DefinitionError] = []
    try:
        secret_from_env(values, definition)
    except DefinitionError as exc:
        problems.append(exc)
    try:
        secret_from_env(
            values,
            definition,
            dest="passphrase_env",
            field="passphrase",
            label="--passphrase-env",
        )
    except DefinitionError as exc:
        problems.append(exc)
    try:
        _key_file(values, definition)
    except DefinitionError as exc:
        problems.append(exc)
    if (problem := family_definition(values, definition)) is not None:
        problems.append(problem)
    try:
        body_assertions(values, definition)
    except DefinitionErrors as exc:
        problems.extend(exc.errors)
    return problems


def describe_ssh(result: Result) -> str | None:
    """The server's version and host key, as the check saw them."""
    seen = {a.name: a.observed for a in result.assertions}
    version = seen.get("server_version")
    if version is None:
        return None
    parts = [version]
    key = seen.get("host_key")
    if key is not None:
        parts.append(f"host key {key}")
    if result.metrics.get("auth"):
        parts.append("logged in")
    return ", ".join(parts)
