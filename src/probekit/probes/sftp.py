"""SftpProbe: log in over SSH, open the SFTP subsystem, and stat, list or read a path.

asyncssh (``pip install probekit[ssh]``, imported inside the check) speaks SSH and SFTP over the
socket the dial path connected; the session up to the login is the ``ssh`` kind's (see
:mod:`probekit.probes._sshcommon`).

Phases: ``resolve``, ``connect``, ``banner``, ``kex``, ``auth``, ``sftp`` (the subsystem and the
operation). Metrics: ``entries`` (a listing), ``size_bytes``, ``read_bytes``,
``newest_age_seconds``. A read is streamed in chunks and stops at ``max_bytes``; a listing stops
at ``max_entries``: neither holds more than that, and hitting either is said in an outcome.
"""

from __future__ import annotations

import contextlib
import logging
import stat as stat_module
from collections.abc import Mapping, MutableMapping
from typing import Any, ClassVar, Final, Literal, get_args

import attrs

from .._assertions import Assertion, BodyContains, BodyMatches, assertion_tuple
from .._exceptions import DefinitionError, DefinitionErrors, ProbeFailure
from .._resolver import Family
from .._result import ErrorKind
from .._secret import Secret
from .._timeouts import Timeouts
from ._base import Attempt, ProbeBase
from ._fields import check_host, host_port
from ._fields import host as _host
from ._fields import port as _port
from ._kind import HostPort, Metric, Option, ProbeKind
from ._options import BODY_OPTIONS
from ._sshcommon import (
    LOGIN_OPTIONS,
    asyncssh_module,
    check_login,
    describe_ssh,
    fingerprint,
    login_to_definition,
    masked,
    open_session,
)

__all__ = ["CHUNK", "KIND", "MAX_BYTES", "MAX_ENTRIES", "Operation", "SftpProbe"]

log = logging.getLogger("probekit.probes.sftp")

Operation = Literal["stat", "list", "read"]
_OPERATIONS: Final = get_args(Operation)
#: The default of ``max_bytes``: how much of a file a ``read`` reads at most.
MAX_BYTES: Final = 1024 * 1024
#: The default of ``max_entries``: how many entries of a directory a ``list`` reads at most.
MAX_ENTRIES: Final = 10_000
#: The size of each read request.
CHUNK: Final = 32 * 1024


@attrs.frozen
class SftpProbe(ProbeBase):
    """Check an SFTP server: log in (as the ``ssh`` kind does, host key pin included), open the
    SFTP subsystem, and ``stat``, ``list`` or ``read`` ``path``.

    A ``path`` that does not exist, or that the user may not read, is DOWN/``assertion`` with the
    server's answer (the server did what SFTP says; the path is not as expected). ``list`` needs
    a directory and counts its entries (``.`` and ``..`` left out), at most ``max_entries``;
    ``read`` needs a file and reads it in chunks, at most ``max_bytes``, keeping them only for
    ``assertions`` (which see what was read as the body). With ``max_age`` (seconds) the path's
    modification time (for ``list``: the newest entry's) must be younger than that, measured
    against this machine's clock: the classic "is the nightly drop arriving" check.

    The kind needs a login: without ``username`` the check is DOWN/``auth`` before anything is
    sent.
    """

    kind: ClassVar[str] = "sftp"

    host: str = attrs.field(converter=_host)
    port: int = attrs.field(default=22, validator=_port)
    username: str | None = None
    password: Secret | None = None
    private_key: Secret | None = None
    passphrase: Secret | None = None
    host_key_fingerprint: str | None = attrs.field(default=None, converter=fingerprint)
    host_key_algorithm: str | None = None
    expect_version: str | None = None
    expect_protocol: str | None = None
    path: str = "."
    operation: Operation = "stat"
    max_age: float | None = None
    max_bytes: int = MAX_BYTES
    max_entries: int = MAX_ENTRIES
    assertions: tuple[Assertion, ...] = attrs.field(default=(), converter=assertion_tuple)
    ip_family: Family | None = None
    timeouts: Timeouts = attrs.field(factory=Timeouts)

    def __attrs_post_init__(self) -> None:
        check_host(self.host)
        check_login(
            username=self.username,
            password=self.password,
            private_key=self.private_key,
            passphrase=self.passphrase,
            host_key_algorithm=self.host_key_algorithm,
            expect_version=self.expect_version,
            expect_protocol=self.expect_protocol,
            ip_family=self.ip_family,
            timeouts=self.timeouts,
        )
        path: object = self.path
        if not isinstance(path, str) or not path or "\0" in path or len(path) > 4096:
            raise DefinitionError("path", f"expected a path, got {path!r}")
        if self.operation not in _OPERATIONS:
            raise DefinitionError(
                "operation", f"expected one of {list(_OPERATIONS)}, got {self.operation!r}"
            )
        age: object = self.max_age
        if age is not None and (
            isinstance(age, bool) or not isinstance(age, int | float) or not 0 < age < float("inf")
        ):
            raise DefinitionError("max_age", f"expected a positive number of seconds, got {age!r}")
        for name, top in (("max_bytes", 2**30), ("max_entries", 10**7)):
            value: object = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise DefinitionError(name, f"expected 1 to {top}, got {value!r}")
        if self.operation != "read":
            for i, assertion in enumerate(self.assertions):
                if isinstance(assertion, BodyContains | BodyMatches):
                    raise DefinitionError(
                        f"assertions[{i}]", 'reads the file\'s content: set operation = "read"'
                    )

    @property
    def target(self) -> str:
        return host_port(self.host, self.port)

    def prepare(self, ctx: Any) -> None:
        asyncssh_module()

    async def run(self, attempt: Attempt) -> None:
        if self.username is None:
            raise ProbeFailure(
                ErrorKind.AUTH,
                "an SFTP check needs a login: set username and a password or private_key",
            )
        async with open_session(attempt, self, login=True) as session:
            if session is None or session.conn is None:
                return
            with attempt.phase("sftp"):
                await self._sftp(attempt, session.conn)

    async def _sftp(self, attempt: Attempt, conn: Any) -> None:
        asyncssh = asyncssh_module()
        try:
            client = await attempt.wait(conn.start_sftp_client())
        except asyncssh.Error as exc:
            raise ProbeFailure(
                ErrorKind.PROTOCOL,
                f"the server did not start SFTP: {masked(str(exc), *self._secrets())}",
            ) from None
        try:
            if self.operation == "list":
                await self._list(attempt, client)
            elif self.operation == "read":
                await self._read(attempt, client)
            else:
                await self._stat(attempt, client)
        except asyncssh.SFTPError as exc:
            if not self._path_failure(attempt, asyncssh, exc):
                raise ProbeFailure(
                    ErrorKind.PROTOCOL,
                    f"SFTP {self.operation} failed: {masked(str(exc.reason), *self._secrets())}",
                ) from None
        finally:
            client.exit()

    def _secrets(self) -> tuple[Secret | None, ...]:
        return (self.password, self.private_key, self.passphrase)

    def _path_failure(self, attempt: Attempt, asyncssh: Any, exc: Any) -> bool:
        """A missing or forbidden path as a failed ``path`` outcome; False for other errors."""
        # FAILURE is SFTPv3's generic answer to a path that is not what the operation needs
        # ("Is a directory", "Not a directory"); malformed or unsupported requests stay protocol.
        known = (asyncssh.SFTPNoSuchFile, asyncssh.SFTPPermissionDenied, asyncssh.SFTPFailure)
        extra = tuple(
            getattr(asyncssh, name)
            for name in ("SFTPNoSuchPath", "SFTPNotADirectory", "SFTPFileIsADirectory")
            if hasattr(asyncssh, name)
        )
        if not isinstance(exc, known + extra):
            return False
        wanted = {"stat": "exists", "list": "a readable directory", "read": "a readable file"}
        attempt.outcome(
            "path",
            False,
            f"{self.path}: {wanted[self.operation]}",
            masked(str(exc.reason) or type(exc).__name__, *self._secrets()),
        )
        return True

    async def _stat(self, attempt: Attempt, client: Any) -> None:
        attrs_ = await attempt.wait(client.stat(self.path))
        kind = _type_name(attrs_)
        attempt.outcome("path", True, f"{self.path}: exists", kind)
        if attrs_.size is not None:
            attempt.metric("size_bytes", attrs_.size)
        self._freshness(attempt, attrs_.mtime, self.path)

    async def _list(self, attempt: Attempt, client: Any) -> None:
        entries = 0
        size = 0
        newest: tuple[float, str] | None = None
        truncated = False
        listing = client.scandir(self.path)
        async with contextlib.aclosing(listing):
            while True:
                try:
                    entry = await attempt.wait(anext(listing))
                except StopAsyncIteration:
                    break
                name = entry.filename
                name = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
                if name in (".", ".."):
                    continue
                if entries >= self.max_entries:
                    truncated = True
                    break
                entries += 1
                entry_attrs = entry.attrs
                if entry_attrs.size is not None and _is_file(entry_attrs):
                    size += entry_attrs.size
                if entry_attrs.mtime is not None and (
                    newest is None or entry_attrs.mtime > newest[0]
                ):
                    newest = (float(entry_attrs.mtime), name)
        attempt.metric("entries", entries)
        attempt.metric("size_bytes", size)
        shown = f"{entries} entries" + (
            f" (stopped at max_entries {self.max_entries})" if truncated else ""
        )
        attempt.outcome("path", True, f"{self.path}: a readable directory", shown)
        if newest is None:
            if self.max_age is not None:
                attempt.outcome(
                    "freshness",
                    False,
                    f"newest entry younger than {self.max_age:g} s",
                    "no entries with a modification time",
                )
            return
        self._freshness(attempt, newest[0], newest[1])

    async def _read(self, attempt: Attempt, client: Any) -> None:
        keep = bool(self.assertions)
        kept = bytearray()
        done = 0
        async with contextlib.AsyncExitStack() as stack:
            handle = await attempt.wait(client.open(self.path, "rb", block_size=CHUNK))
            stack.push_async_callback(_close_quietly, handle)
            file_attrs = await attempt.wait(handle.stat())
            while done < self.max_bytes:
                data = await attempt.wait(handle.read(min(CHUNK, self.max_bytes - done)))
                if not data:
                    break
                done += len(data)
                if keep:
                    kept += data
        size = file_attrs.size
        attempt.metric("read_bytes", done)
        if size is not None:
            attempt.metric("size_bytes", size)
        whole = size is not None and done >= size
        shown = f"read {done} bytes" + ("" if whole or size is None else f" of {size} (max_bytes)")
        attempt.outcome("path", True, f"{self.path}: a readable file", shown)
        self._freshness(attempt, file_attrs.mtime, self.path)
        attempt.observe(body=bytes(kept))

    def _freshness(self, attempt: Attempt, mtime: float | None, name: str) -> None:
        if mtime is None:
            if self.max_age is not None:
                attempt.outcome(
                    "freshness",
                    False,
                    f"modified less than {self.max_age:g} s ago",
                    "the server sent no modification time",
                )
            return
        age = attempt.ctx.clock.now().timestamp() - float(mtime)
        attempt.metric("newest_age_seconds", round(age, 3))
        if self.max_age is not None:
            attempt.outcome(
                "freshness",
                age < self.max_age,
                f"modified less than {self.max_age:g} s ago",
                f"{masked(name)} modified {age:.0f} s ago",
            )


async def _close_quietly(handle: Any) -> None:
    with contextlib.suppress(Exception):
        await handle.close()


def _type_name(attrs_: Any) -> str:
    permissions = attrs_.permissions
    if permissions is not None:
        if stat_module.S_ISDIR(permissions):
            return "a directory"
        if stat_module.S_ISREG(permissions):
            return f"a file of {attrs_.size} bytes" if attrs_.size is not None else "a file"
        if stat_module.S_ISLNK(permissions):
            return "a symbolic link"
    return "an entry"


def _is_file(attrs_: Any) -> bool:
    permissions = attrs_.permissions
    return permissions is None or stat_module.S_ISREG(permissions)


# -- the command-line form -------------------------------------------------------------------------


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise ValueError(f"expected a positive number of seconds, got {text!r}")
    return value


def _to_definition(values: Mapping[str, Any], definition: MutableMapping[str, Any]) -> None:
    problems = login_to_definition(values, definition)
    if problems:
        raise DefinitionErrors(problems)


KIND = ProbeKind(
    name="sftp",
    cls=SftpProbe,
    summary="log in to an SFTP server and stat, list or read a path (size, count, freshness)",
    target=HostPort(default_port=22),
    options=(
        *LOGIN_OPTIONS,
        Option(("--path",), field="path", metavar="PATH", help="the path to check (default .)"),
        Option(
            ("--operation",),
            field="operation",
            choices=_OPERATIONS,
            metavar="{stat,list,read}",
            help="stat the path (default), list a directory, or read a file",
        ),
        Option(
            ("--max-age",),
            field="max_age",
            metavar="SECONDS",
            parse=_positive,
            help="CRITICAL unless the path (a listing: its newest entry) is younger than SECONDS",
        ),
        Option(
            ("--max-bytes",),
            field="max_bytes",
            metavar="BYTES",
            parse=int,
            help=f"read at most BYTES of the file (default {MAX_BYTES})",
        ),
        Option(
            ("--max-entries",),
            field="max_entries",
            metavar="N",
            parse=int,
            help=f"list at most N entries (default {MAX_ENTRIES})",
        ),
        *BODY_OPTIONS,
    ),
    to_definition=_to_definition,
    metrics=(
        Metric("auth", "probekit_sftp_auth", "1 when the probe logged in, else 0."),
        Metric("entries", "probekit_sftp_entries", "Entries of the listed directory."),
        Metric(
            "size_bytes",
            "probekit_sftp_size_bytes",
            "Size of the path (a listing: the files in it, summed).",
        ),
        Metric("read_bytes", "probekit_sftp_read_bytes", "Bytes read (at most max_bytes)."),
        Metric(
            "newest_age_seconds",
            "probekit_sftp_newest_age_seconds",
            "Seconds since the path (a listing: its newest entry) was modified.",
        ),
    ),
    docs="probes/sftp.md",
    describe=describe_ssh,
)
