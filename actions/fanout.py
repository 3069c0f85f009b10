"""One command on every host of a host group, at once, with bounded concurrency.

Each host has its own transport (one connection, its own persistent shells). A host's
outcome is its exit status, or the error that stopped it (lost link, timeout, no
connection); ``run_on_hosts`` never raises for one host's failure, the caller judges.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

from actions.errors import ActionError, CommandTimeout
from actions.transport import Transport


@dataclass(frozen=True)
class HostResult:
    """What one host of a group did: an exit status, or the error that stopped it."""

    host: str
    exit_status: int | None
    stdout: str
    stderr: str
    duration: float
    error: str | None = None
    outcome_unknown: bool = False


async def run_on_hosts(
    hosts: Mapping[str, Transport],
    command: str,
    *,
    timeout: float,
    cwd: str | None = None,
    concurrency: int = 20,
) -> list[HostResult]:
    """Run ``command`` on every host (at most ``concurrency`` at once); results in host order."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(name: str, transport: Transport) -> HostResult:
        async with gate:
            started = time.monotonic()
            try:
                res = await transport.run(command, timeout=timeout, cwd=cwd)
            except ActionError as exc:
                out = exc.stdout if isinstance(exc, CommandTimeout) else ""
                err = exc.stderr if isinstance(exc, CommandTimeout) else ""
                return HostResult(name, None, out, err, time.monotonic() - started,
                                  error=f"{type(exc).__name__}: {exc}", outcome_unknown=exc.outcome_unknown)
            return HostResult(name, res.exit_status, res.stdout, res.stderr, res.duration)

    return list(await asyncio.gather(*(one(n, t) for n, t in hosts.items())))
