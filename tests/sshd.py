"""The test sshd (see ``bot.drill.sshd``) and a transport pinned to it."""

from __future__ import annotations

from actions.ssh import SSHTransport
from bot.drill.sshd import SshdTarget, SshdUnavailable, keygen, start_sshd

__all__ = ["SshdTarget", "SshdUnavailable", "keygen", "make_ssh_transport", "start_sshd"]


def make_ssh_transport(target: SshdTarget, **kwargs: object) -> SSHTransport:
    """An ``SSHTransport`` to the test sshd, pinned to its host key; ``kwargs`` override."""
    options: dict[str, object] = {
        "name": "test-sshd",
        "host": target.host,
        "port": target.port,
        "username": target.username,
        "client_keys": [str(target.client_key_path)],
        "known_hosts": str(target.known_hosts_path),
    }
    options.update(kwargs)
    return SSHTransport(**options)  # type: ignore[arg-type]
