"""Write transactions, and the kill hook that makes the points inside them killable.

``write_transaction`` is the one way the agent writes to a database: BEGIN IMMEDIATE (so
nobody writes between what the operation reads and what it writes), every ~20 SQLite steps
a write point of the kill hook, COMMIT at the end, ROLLBACK when anything raises.
``read_transaction`` holds one read snapshot over several statements.

The kill hook is fault injection for the proofs, inert unless ``ROLLBACK_AGENT_KILL`` is
set: "N:LOG" makes the agent SIGKILL itself at the N-th write point it reaches (0: never;
"N:LOG:hold" waits there to be killed instead), appending what happened to LOG. Write
points: inside every write transaction (a progress handler) and between the file steps of
a backup or a restore (``kill_point``).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

KILL_HOOK_ENV = "ROLLBACK_AGENT_KILL"


class _KillHook:
    """Counts write points; kills (or holds) the process at the chosen one."""

    def __init__(self, spec: str) -> None:
        at, _, rest = spec.partition(":")
        self.log, _, mode = rest.partition(":")
        self.at = int(at)
        self.hold = mode == "hold"
        self.count = 0

    def note(self, line: str) -> None:
        """Append ``line`` to the hook's log, with this process's id."""
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {line}\n")

    def point(self, name: str) -> int:
        """Count one write point; at the chosen one, kill this process (or hold it)."""
        self.count += 1
        if self.count == self.at:
            self.note(f"{'held' if self.hold else 'killed'} {self.count} {name}")
            while self.hold:
                time.sleep(1)  # until the test kills this process
            os.kill(os.getpid(), signal.SIGKILL)
        return 0


_HOOK = _KillHook(os.environ[KILL_HOOK_ENV]) if os.environ.get(KILL_HOOK_ENV) else None


def kill_point(name: str) -> None:
    """A write point of the kill hook (nothing without it)."""
    if _HOOK is not None:
        _HOOK.point(name)


def note_finished(op: str) -> None:
    """With the kill hook: log that ``op`` ran to its end, and how many write points it passed."""
    if _HOOK is not None:
        _HOOK.note(f"passed {_HOOK.count} {op}")


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE; COMMIT when the block ends, ROLLBACK when it raises (anything)."""
    conn.execute("BEGIN IMMEDIATE")
    if _HOOK is not None:  # every ~20 SQLite VM steps from here on are a write point
        hook = _HOOK
        conn.set_progress_handler(lambda: hook.point("sql"), 20)
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@contextmanager
def read_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN; COMMIT when the block ends: its statements read one snapshot."""
    conn.execute("BEGIN")
    yield conn
    conn.execute("COMMIT")
