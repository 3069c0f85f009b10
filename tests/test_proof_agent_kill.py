"""Proof, agent killed on the target: every write point of every destructive operation.

The SQLite agent has a kill hook (``ROLLBACK_AGENT_KILL``, inert unless set) that counts its
write points (every ~20 SQLite steps inside a write transaction, and each file step of a
full restore, including the window between releasing the live file and the rename) and
SIGKILLs the agent at the N-th. For each of ``restore``, ``selective_restore``,
``transaction_rollback``, ``restrict_access`` and ``restore_access`` on a copy of the drill's
database, a counting run gives the write points and the reference result; then the agent is
killed at seeded points among them and, on the target as it was left:

- it is readable: the agent's integrity_check and content_hash answer (a killed writer
  leaves a hot journal; they run in this process, the agent's own code, to keep CI lean);
- it is never half done: the content is exactly the state before or the reference result;
- the bot's retry (the same operation with the same params, as a Retry runs it) succeeds and
  ends at the reference result (for ``restrict_access`` also the same saved original levels).

Counted: kills that landed inside a write, per operation (at least 10 each).
"""

from __future__ import annotations

import json
import random
import shlex
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actions import sqlite_agent
from actions.local import LocalTransport
from actions.sqlite import SqliteAgentError, sqlite_op
from actions.sqlite_agent import KILL_HOOK_ENV
from bot.drill.sandbox import Sandbox, build_sandbox

SEED = 20261201
KILLS_PER_OP = 12
MIN_LANDED = 10
A_TABLES = ["projects", "phases", "step_progress"]
ACCESS = ["user_permissions"]
#: What a strategy's result is judged on: the data, not the change log (triggers stamp the rows
#: an undo writes with the time) nor the ledger.
DATA = [*A_TABLES, "user_permissions", "governance_logs"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    """The drill's database after the bad deployment, and its pre-deployment backup."""
    box = build_sandbox(tmp_path_factory.mktemp("agentkill") / "target", process_manager="procman")
    box.stop()
    return box


@dataclass
class Case:
    """One operation on a fresh copy: its params and the tables its result is judged on."""

    op: str
    work: Path
    db: Path
    params: dict[str, Any]
    tables: list[str] | None
    snapshot: Path | None = None


def _since(backup: Path) -> int:
    with sqlite3.connect(f"file:{backup}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT coalesce(max(id), 0) FROM change_history").fetchone()[0])


def _prepare(op: str, box: Sandbox, work: Path, wal: bool) -> Case:
    """A fresh copy of the live database (WAL mode or not) and the params of ``op`` on it."""
    work.mkdir(parents=True)
    db = work / "production.db"
    shutil.copy(box.db_path, db)
    with sqlite3.connect(db, isolation_level=None) as conn:
        conn.execute(f"PRAGMA journal_mode = {'wal' if wal else 'delete'}")
    conn.close()
    snapshot = work / "access.json"
    if op == "restore":
        return Case(op, work, db, {"db": str(db), "backup": str(box.backup_path), "corrupted_dir": str(work),
                                   "journal_mode": "wal"}, None)
    if op == "selective_restore":
        return Case(op, work, db, {"db": str(db), "backup": str(box.backup_path), "tables": A_TABLES}, DATA)
    if op == "transaction_rollback":
        return Case(op, work, db, {"db": str(db), "since_id": _since(box.backup_path)}, DATA)
    restrict = {"db": str(db), "snapshot": str(snapshot), "tag": "RB-20261201-0001"}
    if op == "restrict_access":
        return Case(op, work, db, restrict, ACCESS, snapshot)
    sqlite_agent.run("restrict_access", restrict)  # restore_access puts back what it saved
    return Case(op, work, db, {"db": str(db), "snapshot": str(snapshot)}, ACCESS, snapshot)


def _hooked_python(case: Case, at: int, log: Path) -> str:
    """A python3 for the target that runs the agent with the kill hook set."""
    wrapper = case.work / f"python-kill-{at}"
    spec = shlex.quote(f"{at}:{log}")
    wrapper.write_text(f"#!/bin/sh\n{KILL_HOOK_ENV}={spec} exec {shlex.quote(shutil.which('python3') or 'python3')}"
                       ' "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def _hash(case: Case) -> str:
    return str(sqlite_agent.run("content_hash", {"db": str(case.db), "tables": case.tables})["total"])


def _saved_levels(case: Case) -> Any:
    return json.loads(case.snapshot.read_text())["rows"] if case.snapshot and case.snapshot.exists() else None


@dataclass
class Reference:
    """What the operation does when nothing kills it."""

    before: str
    after: str
    points: int
    saved: Any


async def _reference(op: str, box: Sandbox, work: Path, wal: bool, transport: LocalTransport) -> Reference:
    case = _prepare(op, box, work, wal)
    log = work / "kill.log"
    before = _hash(case)
    await sqlite_op(transport, op, case.params, timeout=120, python=_hooked_python(case, 0, log))
    after = _hash(case)
    passed = [line.split() for line in log.read_text().splitlines() if line.split()[1] == "passed"]
    assert len(passed) == 1 and passed[0][3] == op, log.read_text()
    assert before != after, f"{op} changed nothing: no proof"
    return Reference(before, after, int(passed[0][2]), _saved_levels(case))


async def _kill_then_retry(op: str, box: Sandbox, work: Path, wal: bool, at: int, ref: Reference,
                           transport: LocalTransport) -> str | None:
    """Kill ``op`` at write point ``at``; check the target; retry. The point's name if the kill landed."""
    case = _prepare(op, box, work, wal)
    log = work / "kill.log"
    try:
        await sqlite_op(transport, op, case.params, timeout=120, python=_hooked_python(case, at, log))
        return None  # ran to its end: the point was not reached
    except SqliteAgentError as exc:
        assert exc.kind == "no_result" and exc.exit_status != 0, exc
    killed = [line.split() for line in log.read_text().splitlines() if line.split()[1] == "killed"]
    assert len(killed) == 1 and int(killed[0][2]) == at, log.read_text()
    where = killed[0][3]
    # readable, as it was left
    check = sqlite_agent.run("integrity_check", {"db": str(case.db)})
    assert check["ok"], f"{op} killed at {where}: {check}"
    assert _hash(case) in (ref.before, ref.after), f"{op} killed at {where} (point {at}) left it half done"
    # the bot's retry: the same operation, the same params
    await sqlite_op(transport, op, case.params, timeout=120)
    assert _hash(case) == ref.after, f"{op} killed at {where}, then retried: wrong result"
    if op == "restrict_access":
        assert _saved_levels(case) == ref.saved, f"killed at {where}: the saved original levels differ"
    if op == "restore":
        mode = sqlite_agent.run("query", {"db": str(case.db), "sql": "PRAGMA journal_mode"})
        assert mode["rows"] == [["wal"]]
    return where


OPS = ["restore", "selective_restore", "transaction_rollback", "restrict_access", "restore_access"]
figures: dict[str, str] = {}


@pytest.mark.parametrize("op", OPS)
async def test_agent_killed_inside_a_write_then_retried(op: str, pristine: Sandbox, tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}-{op}")
    landed: list[str] = []
    tried = 0
    transport = LocalTransport(root=str(tmp_path))
    try:
        for wal in (True, False):  # the live database in WAL mode, and in rollback-journal mode
            ref = await _reference(op, pristine, tmp_path / f"ref-{wal}", wal, transport)
            # every point when there are few (a restore's file steps), else a seeded spread
            wanted = KILLS_PER_OP // 2
            points = list(range(1, ref.points + 1))
            if len(points) > wanted:
                points = sorted(rng.sample(points, wanted))
            for at in points:
                tried += 1
                where = await _kill_then_retry(op, pristine, tmp_path / f"k-{wal}-{at}", wal, at, ref, transport)
                if where is not None:
                    landed.append(where)
    finally:
        await transport.close()
    names = sorted(set(landed))
    figures[op] = f"{len(landed)}/{tried} kills landed inside a write ({', '.join(names)})"
    assert len(landed) >= MIN_LANDED, figures[op]
    if op == "restore":  # the window between releasing the live file and the rename
        assert "restore:released" in names and "restore:replaced" in names, names


def test_agent_kill_figures(proof_report: Callable[[str], None]) -> None:
    """Runs last in this module: one line per operation."""
    if not figures:
        pytest.skip("the agent kill tests did not run")
    for op in OPS:
        if op in figures:
            proof_report(f"agent killed on the target, {op}: {figures[op]}; readable, never half done, "
                         "retry ends at the reference result")
