"""A real OpenSSH sshd on 127.0.0.1: own host key, own client key, pinned known_hosts.

Used by ``rollback-bot drill --ssh`` and by the tests. ``start_sshd`` is a context manager;
nothing here touches the machine's own sshd or ``~/.ssh``.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: The sshd binary (``$ROLLBACK_BOT_SSHD`` overrides it).
SSHD = os.environ.get("ROLLBACK_BOT_SSHD") or "/usr/sbin/sshd"


class SshdUnavailable(RuntimeError):
    """sshd is not installed or did not come up."""


@dataclass(frozen=True)
class SshdTarget:
    """Where the test sshd listens and what a client needs to reach it."""

    host: str
    port: int
    username: str
    client_key_path: Path
    known_hosts_path: Path
    workdir: Path
    pid: int
    host_key_line: str  # "ssh-ed25519 AAAA..." as pinned in known_hosts


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def keygen(path: Path, key_type: str = "ed25519") -> str:
    """Write a new key pair at ``path`` (+ ``.pub``); return its public ``"algo base64"``."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", "rollback-bot-sandbox", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    algo, blob, *_ = path.with_suffix(".pub").read_text().split()
    return f"{algo} {blob}"


def _config(base: Path, port: int) -> str:
    return "\n".join(
        [
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {base / 'ssh_host_ed25519_key'}",
            f"AuthorizedKeysFile {base / 'authorized_keys'}",
            f"PidFile {base / 'sshd.pid'}",
            "StrictModes no",
            # As root, PAM sets up the session as for a real login; as another user it cannot.
            f"UsePAM {'yes' if os.geteuid() == 0 else 'no'}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "Subsystem sftp internal-sftp",
            "MaxSessions 10",
            "MaxStartups 100",
            "LogLevel VERBOSE",
            "",
        ]
    )


def _wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SshdUnavailable(f"sshd exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SshdUnavailable(f"sshd did not listen on {host}:{port}: {log.read_text()[-2000:]}")


def sshd_missing() -> str | None:
    """Why sshd cannot be started here (a binary is missing), or None."""
    for binary in (os.environ.get("ROLLBACK_BOT_SSHD") or SSHD, "ssh-keygen"):
        if shutil.which(binary) is None:
            return f"{binary} not found: apt-get install openssh-server"
    return None


@contextmanager
def start_sshd(base: Path) -> Iterator[SshdTarget]:
    """Run ``sshd -D`` on a free loopback port with keys under ``base``; stop it on exit."""
    missing = sshd_missing()
    if missing:
        raise SshdUnavailable(missing)
    sshd = os.environ.get("ROLLBACK_BOT_SSHD") or SSHD
    base.mkdir(parents=True, exist_ok=True)
    host_key_line = keygen(base / "ssh_host_ed25519_key")
    client_line = keygen(base / "client_key")
    (base / "authorized_keys").write_text(client_line + "\n")
    port = _free_port()
    config = base / "sshd_config"
    config.write_text(_config(base, port))
    known_hosts = base / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key_line}\n")
    workdir = base / "work dir"
    workdir.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        # Privilege separation needs this directory when sshd starts as root.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    log = base / "sshd.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_for_port("127.0.0.1", port, proc, log)
        yield SshdTarget(
            host="127.0.0.1",
            port=port,
            username=getpass.getuser(),
            client_key_path=base / "client_key",
            known_hosts_path=known_hosts,
            workdir=workdir,
            pid=proc.pid,
            host_key_line=host_key_line,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
