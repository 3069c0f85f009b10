"""A bounded pool of persistent shells, and the transport base that runs each command on one.

``LocalTransport`` and ``SSHTransport`` differ only in how they open a shell (a local
process, an SSH channel); borrowing one, running the command and giving it back is here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from actions.shellsession import ShellSession
from actions.transport import OutputSink, ShellResult


class SessionPool:
    """At most ``size`` shell sessions at once; idle healthy ones are reused."""

    def __init__(self, open_session: Callable[[], Awaitable[ShellSession]], size: int) -> None:
        if size < 1:
            raise ValueError("a session pool needs at least one session")
        self._open_session = open_session
        self._slots = asyncio.Semaphore(size)
        self._idle: list[ShellSession] = []
        self._generation = 0
        self.size = size
        self.in_use = 0
        #: The most sessions ever busy at once (diagnostics and tests).
        self.peak_in_use = 0

    async def _borrow(self) -> ShellSession:
        while self._idle:
            session = self._idle.pop()
            if session.usable:
                return session
            await session.close()
        return await self._open_session()

    @contextlib.asynccontextmanager
    async def borrowed(self) -> AsyncIterator[ShellSession]:
        """A session for one command (waits for a free slot); given back afterwards if still healthy."""
        async with self._slots:
            generation = self._generation
            session = await self._borrow()
            self.in_use += 1
            self.peak_in_use = max(self.peak_in_use, self.in_use)
            try:
                yield session
            finally:
                self.in_use -= 1
                if session.usable and generation == self._generation:
                    self._idle.append(session)
                else:
                    await session.close()

    async def close(self) -> None:
        """Close idle sessions; busy ones are closed when their command ends."""
        self._generation += 1
        idle, self._idle = self._idle, []
        for session in idle:
            await session.close()


class PooledTransport:
    """Base of the transports that run each command on one of at most ``size`` persistent shells.

    A subclass opens (and starts) one shell in ``_open_session``.
    """

    name: str

    def __init__(self, size: int) -> None:
        self._pool = SessionPool(self._open_session, size)

    @property
    def pool(self) -> SessionPool:
        """The shell pool (its ``peak_in_use`` shows how many shells ran at once)."""
        return self._pool

    async def _open_session(self) -> ShellSession:
        raise NotImplementedError

    async def run(
        self,
        command: str,
        *,
        timeout: float,
        cwd: str | None = None,
        stdin: str | None = None,
        on_output: OutputSink | None = None,
    ) -> ShellResult:
        """Run ``command`` with bash on the target; killed there after ``timeout`` s (see ``Transport.run``)."""
        async with self._pool.borrowed() as session:
            return await session.run(command, timeout=timeout, cwd=cwd, stdin=stdin, on_output=on_output)
