"""``LocalTransport``: the transport seam on this machine, for drills and tests without sshd.

Same protocol as over SSH: a pool of persistent ``bash --norc --noprofile -s`` shells, each
command in its own subshell under a ``timeout -k``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

from actions.shellpool import PooledTransport
from actions.shellsession import SHELL_ARGV, SHELL_START_TIMEOUT, ShellSession
from actions.transport import partial_file

#: How long (in 10 ms polls) a killed shell may take to be reaped.
_REAP_POLLS = 500


class LocalTransport(PooledTransport):
    """Runs commands with bash on this machine; ``root`` is the shells' working directory."""

    def __init__(self, name: str = "local", root: str | None = None, max_sessions: int = 8) -> None:
        self.name = name
        self.root = Path(root) if root is not None else None
        super().__init__(max_sessions)

    async def _open_session(self) -> ShellSession:
        proc = await asyncio.create_subprocess_exec(
            *SHELL_ARGV,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.root,
            start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stdin, stdout = proc.stdin, proc.stdout

        async def close() -> None:
            # Like closing an SSH channel: the shell goes; a running command is left to
            # its own `timeout`, which always bounds it.
            stdin.close()
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            # ``proc.wait()`` also waits for the pipes, which a command still running under
            # its `timeout` holds open: wait for the shell itself, then let go of the pipes.
            for _ in range(_REAP_POLLS):
                if proc.returncode is not None:
                    break
                await asyncio.sleep(0.01)
            pipes = getattr(proc, "_transport", None)
            if pipes is not None:
                pipes.close()

        session = ShellSession(
            name=self.name,
            stdin=stdin,
            stdout=stdout,
            stderr=proc.stderr,
            close=close,
            is_alive=lambda: proc.returncode is None and not stdout.at_eof(),
        )
        await session.start(SHELL_START_TIMEOUT)
        return session

    async def get_file(self, remote: str, local: Path) -> None:
        """Copy ``remote`` (relative paths are under ``root``) to ``local``."""
        source = Path(remote)
        if self.root is not None and not source.is_absolute():
            source = self.root / source
        with partial_file(local) as partial:
            await asyncio.to_thread(shutil.copyfile, source, partial)

    async def close(self) -> None:
        """Close every idle shell; busy ones close when their command ends."""
        await self._pool.close()
