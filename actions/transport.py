"""The transport seam: one interface for running commands on a target.

``LocalTransport`` (``actions.local``) runs on this machine for drills without sshd;
``SSHTransport`` (``actions.ssh``) runs over one pinned-host-key asyncssh connection.
Everything above this module (commands, SQLite operations, the engine) is the same
for both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

#: Called with ("stdout" | "stderr", chunk) as output arrives.
OutputSink = Callable[[str, str], Awaitable[None] | None]


@dataclass(frozen=True)
class ShellResult:
    """What a finished command left behind."""

    exit_status: int
    stdout: str
    stderr: str
    duration: float


class Transport(Protocol):
    """Runs shell commands and moves files on one target."""

    name: str

    async def run(
        self,
        command: str,
        *,
        timeout: float,
        cwd: str | None = None,
        stdin: str | None = None,
        on_output: OutputSink | None = None,
    ) -> ShellResult:
        """Run ``command`` with bash on the target; killed on the target after ``timeout`` s.

        Returns the result whatever the exit status. Raises ``ConnectionLost`` when the
        link drops before the command's end is seen, ``CommandTimeout`` after a timeout.
        """
        ...

    async def get_file(self, remote: str, local: Path) -> None:
        """Copy a file from the target to this machine."""
        ...

    async def close(self) -> None:
        """Close every channel and the connection."""
        ...


@contextmanager
def partial_file(local: Path) -> Iterator[Path]:
    """A ``.part`` file beside ``local`` to copy into: renamed over ``local`` when the block
    ends, removed when it raises (a half-copied file never takes the name)."""
    partial = local.with_name(local.name + ".part")
    try:
        yield partial
        partial.replace(local)
    finally:
        partial.unlink(missing_ok=True)
