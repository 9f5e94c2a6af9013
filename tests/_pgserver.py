"""A throwaway PostgreSQL for the control-plane tests: initdb into a temporary directory, a
server on a free loopback high port (TCP only on 127.0.0.1, SCRAM password for the test role),
stopped and removed at the end. Run as the ``postgres`` user when the tests run as root
(PostgreSQL refuses root). Finds the binaries in ``$PROBEKIT_PG_BIN`` or Debian's
``/usr/lib/postgresql/<version>/bin``."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PgServer", "find_bin"]


def find_bin() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    candidates = [os.environ.get("PROBEKIT_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One server; :meth:`start`, then :attr:`url` and :attr:`password` reach its database
    ``probekit`` as the role ``probekit``; :attr:`admin_dsn` reaches it as ``postgres``
    over the Unix socket."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="probekit-pgtest."))
        self.data = self.root / "db"
        self.sock = self.root / "sock"
        self.port = _free_port()
        self.password = secrets.token_hex(12)
        self.url = f"postgresql://probekit@127.0.0.1:{self.port}/probekit"
        self.admin_dsn = f"host={self.sock} port={self.port} user=postgres dbname=probekit"
        self._user: str | None = "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self._user is not None:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self.sock.mkdir()
        if self._user is not None:
            uid = pwd.getpwnam(self._user).pw_uid
            for path in (self.root, self.sock):
                os.chown(path, uid, -1)
        self.root.chmod(0o700)
        self._run(
            str(self.bin / "initdb"),
            *("-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8"),
            *("--no-sync", "--locale=C"),
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.sock}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 100\nshared_buffers = 16MB\n"
            )
        (self.data / "pg_hba.conf").write_text(
            "local all postgres trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            *("-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60"),
            "start",
        )
        import psycopg

        with psycopg.connect(
            f"host={self.sock} port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(
                "CREATE ROLE probekit LOGIN PASSWORD '" + self.password + "'"  # hex: no quote
            )
            conn.execute("CREATE DATABASE probekit OWNER probekit")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
            except subprocess.SubprocessError:
                pid = int((self.data / "postmaster.pid").read_text().split()[0])
                os.kill(pid, 2)
        shutil.rmtree(self.root, ignore_errors=True)
