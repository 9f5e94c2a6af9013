"""An asyncssh server on loopback, in-process, for the ssh and sftp probes' tests: a password
user and a key user, a few commands, SFTP confined to a directory; and raw TCP servers for what
asyncssh will not do (garbage, stalls in each phase)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh

USER = "monitor"
PASSWORD = "s3cret-canary-5f1a9#"  # a canary: it must show up nowhere but on the wire
KEY_USER = "keyed"
VERSION = "SSH-2.0-ProbekitTestServer_1.0"


class _Server(asyncssh.SSHServer):
    def __init__(self, owner: SshServer) -> None:
        self._owner = owner
        self._client_key = owner.client_key

    def begin_auth(self, username: str) -> bool:
        self._owner.users.append(username)
        if username == KEY_USER:
            conn = self._conn
            conn.set_authorized_keys(
                asyncssh.import_authorized_keys(self._client_key.export_public_key().decode())
            )
        return True

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn

    def password_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        self._owner.passwords.append(password)
        if self._owner.auth_delay:
            await asyncio.sleep(self._owner.auth_delay)
        return username == USER and password == PASSWORD

    def public_key_auth_supported(self) -> bool:
        return True


async def _process(process: asyncssh.SSHServerProcess[Any]) -> None:
    """``echo TEXT``, ``exit N``, ``yes`` (endless output), ``sleep`` (never ends), ``stderr``."""
    command = process.command or ""
    if command.startswith("echo "):
        process.stdout.write(command[5:] + "\n")
        process.exit(0)
    elif command.startswith("exit "):
        process.exit(int(command[5:]))
    elif command == "yes":
        try:
            while True:
                process.stdout.write("y\n" * 4096)
                await process.stdout.drain()
        except (asyncssh.Error, OSError, BrokenPipeError):
            return
    elif command == "sleep":
        await asyncio.sleep(3600)
    elif command == "stderr":
        process.stderr.write("oops\n")
        process.exit(1)
    else:
        process.stderr.write(f"unknown command {command}\n")
        process.exit(127)


class SshServer:
    """The server: ``port``, ``host_key`` (its public key) and ``client_key`` (the key user's
    private key); SFTP serves ``root``."""

    def __init__(self, root: Path, auth_delay: float = 0.0) -> None:
        self.root = root
        self.auth_delay = auth_delay
        self.passwords: list[str] = []  # every password a client tried
        self.users: list[str] = []  # every user name a client asked to log in as
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.port = 0
        self._server: Any = None

    @property
    def fingerprint(self) -> str:
        return str(self.host_key.get_fingerprint("sha256"))

    async def start(self) -> SshServer:
        root = str(self.root)
        self._server = await asyncssh.create_server(
            lambda: _Server(self),
            "127.0.0.1",
            0,
            server_host_keys=[self.host_key],
            server_version="ProbekitTestServer_1.0",
            process_factory=_process,
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=root),
            allow_scp=False,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def ssh_server(root: Path, auth_delay: float = 0.0) -> AsyncIterator[SshServer]:
    server = await SshServer(root, auth_delay).start()
    try:
        yield server
    finally:
        await server.stop()
