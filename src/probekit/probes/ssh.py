"""SshProbe: an SSH server's version and host key, optionally a login and a command.

asyncssh (``pip install probekit[ssh]``, imported inside the check) speaks the protocol over the
socket the dial path connected; see :mod:`probekit.probes._sshcommon` for how the ``banner``,
``kex`` and ``auth`` phases are taken from it and how the host key is pinned.

Phases: ``resolve``, ``connect``, ``banner`` (until the server's identification line is parsed),
``kex`` (the key exchange, until the server accepts the user-auth service), ``auth`` (with a
login), ``command`` (with ``command``). Metrics: ``auth`` (0 or 1), ``exit_status``,
``output_bytes``. Outcomes: ``server_version`` (the identification line), ``host_key`` (the
algorithm and SHA-256 fingerprint), ``exit_status``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping, MutableMapping
from typing import Any, ClassVar, Final

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

__all__ = ["KIND", "OUTPUT_LIMIT", "SshProbe"]

log = logging.getLogger("probekit.probes.ssh")

#: The default of ``max_output_bytes``: how much of a command's standard output is kept.
OUTPUT_LIMIT: Final = 64 * 1024
_STDERR_KEPT: Final = 4096


@attrs.frozen
class SshProbe(ProbeBase):
    """Check an SSH server: its identification line, its host key, and optionally a login and a
    command.

    Without a login the check ends after the key exchange: the server is UP when it speaks
    SSH-2 and proves it holds its host key. ``host_key_fingerprint`` (``SHA256:...``, as
    ``ssh-keygen -lf`` prints it) pins that key: another key is DOWN/``assertion`` naming both
    fingerprints, and nothing is sent after it. Without a pin no key is checked and none is
    trusted from ``~/.ssh/known_hosts``: the key seen is recorded in the ``host_key`` outcome.
    ``host_key_algorithm`` asks the server for one key type (the pin is of the key the server
    uses, which otherwise is the first of ed25519, ECDSA, RSA that it has).

    ``expect_version`` (what follows ``SSH-2.0-``: the software version and its comments, e.g.
    ``OpenSSH_9.2p1 Debian-2+deb12u3``) and ``expect_protocol`` (``2.0``) compare the
    identification line exactly as ``check_ssh -r``/``-P`` do; a mismatch is DOWN/``assertion``
    and the check stops before the key exchange.

    With ``username`` and ``password`` or ``private_key`` (an OpenSSH or PEM key, ``passphrase``
    when it is encrypted) the probe logs in; a refusal is DOWN/``auth``. With ``command`` it
    runs the command (no terminal, standard input closed): its exit status must be
    ``expect_exit_status`` (None: any), and ``assertions`` see its standard output, of which at
    most ``max_output_bytes`` are read; a command that writes more is stopped there, its exit
    status unknown (a failed ``exit_status`` outcome when one is expected).
    """

    kind: ClassVar[str] = "ssh"

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
    command: str | None = None
    expect_exit_status: int | None = 0
    max_output_bytes: int = OUTPUT_LIMIT
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
        command: object = self.command
        if command is not None:
            if not isinstance(command, str) or not command.strip() or "\0" in command:
                raise DefinitionError("command", f"expected a command line, got {command!r}")
            if self.username is None:
                raise DefinitionError("command", "running a command needs a login (username)")
        status: object = self.expect_exit_status
        if status is not None and (
            isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 255
        ):
            raise DefinitionError(
                "expect_exit_status", f"expected an exit status from 0 to 255, got {status!r}"
            )
        limit: object = self.max_output_bytes
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 2**26:
            raise DefinitionError("max_output_bytes", f"expected 1 to {2**26} bytes, got {limit!r}")
        if command is None:
            for i, assertion in enumerate(self.assertions):
                if isinstance(assertion, BodyContains | BodyMatches):
                    raise DefinitionError(
                        f"assertions[{i}]", "reads the command's output: set command"
                    )

    @property
    def target(self) -> str:
        return host_port(self.host, self.port)

    def prepare(self, ctx: Any) -> None:
        asyncssh_module()

    async def run(self, attempt: Attempt) -> None:
        async with open_session(attempt, self, login=True) as session:
            if session is None or session.conn is None or self.command is None:
                return
            with attempt.phase("command"):
                output, status, observed = await self._command(attempt, session.conn, self.command)
        attempt.metric("output_bytes", len(output))
        if status is not None:
            attempt.metric("exit_status", status)
        if self.expect_exit_status is not None:
            attempt.outcome(
                "exit_status",
                status == self.expect_exit_status,
                str(self.expect_exit_status),
                observed,
            )
        attempt.observe(body=output)

    async def _command(
        self, attempt: Attempt, conn: Any, command: str
    ) -> tuple[bytes, int | None, str]:
        """The command's output (bounded), its exit status, and that status as shown."""
        asyncssh = asyncssh_module()
        collector = _collector_class(asyncssh)(self.max_output_bytes)
        try:
            channel, _ = await attempt.wait(
                conn.create_session(lambda: collector, command, encoding=None)
            )
        except asyncssh.ChannelOpenError as exc:
            raise ProbeFailure(
                ErrorKind.PROTOCOL, f"the server refused a session: {masked(str(exc.reason))}"
            ) from None
        except asyncssh.Error as exc:
            raise ProbeFailure(
                ErrorKind.PROTOCOL,
                f"the server refused the command: {masked(str(exc), self.password)}",
            ) from None
        channel.write_eof()
        await attempt.wait(collector.done)
        if collector.truncated:
            channel.close()
            log.debug("ssh %s: the command wrote over %d bytes", self.target, self.max_output_bytes)
            return bytes(collector.output), None, "unknown (output over max_output_bytes)"
        output = bytes(collector.output)
        status = channel.get_exit_status()
        if status is None or status < 0:
            signal = channel.get_exit_signal()
            if signal is not None:
                return output, None, f"killed by signal {masked(str(signal[0]))}"
            return output, None, "none (the channel closed without one)"
        return output, int(status), str(status)


@functools.cache
def _collector_class(asyncssh: Any) -> type[Any]:
    class _Collector(asyncssh.SSHClientSession):  # type: ignore[misc]
        """Keeps at most ``limit`` bytes of standard output; ends at the channel's close."""

        def __init__(self, limit: int) -> None:
            self.limit = limit
            self.output = bytearray()
            self.errors = bytearray()
            self.truncated = False
            self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._channel: Any = None

        def connection_made(self, chan: Any) -> None:
            self._channel = chan

        def data_received(self, data: bytes, datatype: Any) -> None:
            if datatype is not None:
                room = _STDERR_KEPT - len(self.errors)
                if room > 0:
                    self.errors += data[:room]
                return
            room = self.limit - len(self.output)
            self.output += data[: max(room, 0)]
            if len(data) > room:
                self.truncated = True
                if not self.done.done():
                    self.done.set_result(None)

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.done.done():
                self.done.set_result(None)

    return _Collector


# -- the command-line form -------------------------------------------------------------------------


def _exit_status(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 255:
        raise ValueError(f"expected an exit status from 0 to 255, got {text!r}")
    return value


def _to_definition(values: Mapping[str, Any], definition: MutableMapping[str, Any]) -> None:
    problems = login_to_definition(values, definition)
    if values.get("any_exit_status"):
        definition["expect_exit_status"] = None
    if problems:
        raise DefinitionErrors(problems)


KIND = ProbeKind(
    name="ssh",
    cls=SshProbe,
    summary="check an SSH server: version, host key (pinned), optional login and command",
    target=HostPort(default_port=22),
    options=(
        *LOGIN_OPTIONS,
        Option(
            ("--command", "-C"),
            field="command",
            metavar="CMD",
            help="run CMD after logging in (no terminal, stdin closed)",
        ),
        Option(
            ("--expect-exit-status",),
            field="expect_exit_status",
            metavar="N",
            parse=_exit_status,
            help="the exit status --command must end with (default 0)",
        ),
        Option(
            ("--any-exit-status",),
            dest="any_exit_status",
            action="flag",
            sets=("expect_exit_status",),
            help="accept any exit status of --command",
        ),
        Option(
            ("--max-output",),
            field="max_output_bytes",
            metavar="BYTES",
            parse=int,
            help=f"read at most BYTES of the command's output (default {OUTPUT_LIMIT})",
        ),
        *BODY_OPTIONS,
    ),
    to_definition=_to_definition,
    metrics=(
        Metric("auth", "probekit_ssh_auth", "1 when the probe logged in, else 0."),
        Metric("exit_status", "probekit_ssh_exit_status", "The exit status of the command."),
        Metric(
            "output_bytes",
            "probekit_ssh_output_bytes",
            "Bytes of the command's standard output read (at most max_output_bytes).",
        ),
    ),
    docs="probes/ssh.md",
    describe=describe_ssh,
)
