"""A started process's identity on Linux: its pid and its kernel start time, so a reused pid
is never mistaken for the app. Stdlib only, beside ``procman.py`` on the sandbox target."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Running:
    """Identity of a started process: pid plus its kernel start time (guards pid reuse)."""

    pid: int
    starttime: int | None
    started_at_ms: int


def proc_starttime(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def proc_state(pid: int) -> str | None:
    """One-letter state of ``pid`` (Linux), None if /proc does not know it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def is_alive(running: Running) -> bool:
    """True while the recorded process exists, is not a zombie and is the same process."""
    try:
        os.kill(running.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    state = proc_state(running.pid)
    if state is None:
        # No /proc (not Linux): kill(0) succeeding is all we know.
        return not Path("/proc/self/stat").exists()
    if state in ("Z", "X"):
        return False
    return running.starttime is None or proc_starttime(running.pid) == running.starttime


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (0 when unknown)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
