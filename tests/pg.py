"""A throwaway PostgreSQL cluster for tests and benchmarks: initdb into a temp dir, pg_ctl on a free port.

The superuser has a password (scram-sha-256 over TCP) so the bot's "password from the
environment" path is the one exercised. As root the server runs as the ``postgres`` OS
user (PostgreSQL refuses to run as root), through ``runuser``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

USER = "rollback"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine (or no user to run them as)."""


def pg_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/*/bin`` with initdb, or the one of ``pg_ctl`` on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresUnavailable("no initdb found (apt-get install postgresql)")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgCluster:
    """A running cluster: where it listens, its superuser password, how to restart it."""

    bindir: Path
    datadir: Path
    port: int
    password: str
    run_as: str | None
    log: Path

    def url(self, database: str = "postgres", driver: str = "asyncpg") -> str:
        """A URL without the password (the bot reads it from the environment)."""
        return f"postgresql+{driver}://{USER}@127.0.0.1:{self.port}/{database}"

    def env(self) -> dict[str, str]:
        """The environment a bot process needs for this cluster's password."""
        return {"ROLLBACK_BOT_DB_PASSWORD": self.password}

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *args] if self.run_as else list(args)

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run pg_ctl on this cluster."""
        return subprocess.run(self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args),
                              capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self.pg_ctl("-w", "-t", "60", "-l", str(self.log), "-o",
                    f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.datadir} -c fsync=off "
                    "-c max_connections=200", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect clients; ``immediate``: like a crash)."""
        self.pg_ctl("-w", "-t", "60", "-m", mode, "stop", check=False)

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def create_database(self, name: str) -> str:
        """Create an empty database; returns its asyncpg URL."""
        subprocess.run(self._cmd(str(self.bindir / "psql"), "-h", str(self.datadir), "-p", str(self.port),
                                 "-U", USER, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q",
                                 "-c", f'CREATE DATABASE "{name}"'),
                       check=True, capture_output=True, text=True, timeout=60)
        return self.url(name)


@contextlib.contextmanager
def start_cluster(base: Path | None = None) -> Iterator[PgCluster]:
    """initdb + start a cluster in a fresh folder; stopped and removed afterwards."""
    bindir = pg_bindir()
    run_as: str | None = None
    if os.geteuid() == 0:
        run_as = "postgres"
        try:
            import pwd

            pwd.getpwnam(run_as)
        except KeyError:
            raise PostgresUnavailable("running as root and there is no 'postgres' OS user") from None
    root = Path(tempfile.mkdtemp(prefix="rb-pg-", dir=base))
    datadir = root / "data"
    password = secrets.token_urlsafe(16)
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    if run_as:
        shutil.chown(root, run_as)
        shutil.chown(pwfile, run_as)
    os.chmod(root, 0o700)
    cluster = PgCluster(bindir, datadir, free_port(), password, run_as, root / "server.log")
    try:
        subprocess.run(cluster._cmd(str(bindir / "initdb"), "-D", str(datadir), "-U", USER, "--pwfile", str(pwfile),
                                    "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8",
                                    "--no-sync"),
                       check=True, capture_output=True, text=True, timeout=120)
        cluster.start()
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def wait_ready(cluster: PgCluster, timeout: float = 30.0) -> None:
    """Wait until the server answers (after a restart)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run([str(cluster.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(cluster.port)],
                           capture_output=True, text=True)
        if r.returncode == 0:
            return
        time.sleep(0.1)
    raise TimeoutError("PostgreSQL did not come back")
