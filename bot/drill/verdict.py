"""The drill's verdict: checked against the sandbox, not taken from the run's own word.

C must leave the chosen backup; A and B the intended database (the backup plus people's
writes since), except the conflict kept as it was and, for A, the annotated row the backup
had; access levels the chosen point's; the data-loss figures exactly those the sandbox
constructed (``bot/drill/sandbox/story.py``), not zero.
"""

from __future__ import annotations

import asyncio
import shlex
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from actions.sqlite import sqlite_op
from actions.sqlite_agent import LEDGER
from actions.transport import Transport
from bot.core.lifecycle import Status
from bot.core.runbook import Runbook, default_runbook
from bot.core.targets import TargetSettings
from bot.drill.sandbox import Sandbox
from bot.drill.sandbox.story import DATA_TABLES, expected_rows
from bot.record.metrics import DataLoss, data_loss_detail, gather
from bot.state.store import Incident, StepRun, Store

#: The tables a rehearsal compares with the chosen backup, by strategy (A and B keep the log and record rows).
RESTORED_TABLES: dict[str, list[str] | None] = {
    "A": ["projects", "phases", "step_progress", "user_permissions"],
    "B": ["projects", "phases", "step_progress", "user_permissions"],
    "C": None,  # every table
}


class ChosenPoint(Protocol):
    """The point a rollback goes back to, as the verdict checks it: the drill sandbox's
    pre-deployment backup, or the backup a rehearsal chose on a staging target."""

    backup_path: Path
    backup_content_hash: dict[str, Any]
    original_access_levels: dict[str, str]
    deployment_keys: dict[str, set[str]]


@dataclass
class Check:
    """One verdict line."""

    name: str
    ok: bool
    detail: str


@dataclass
class Verdict:
    """All checks, and the measured data loss."""

    checks: list[Check] = field(default_factory=list)
    data_loss_records: int = 0
    data_loss_detail: str = ""

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return bool(self.checks) and all(c.ok for c in self.checks)


def loss_lines(measured: DataLoss | None, expected: dict[str, tuple[int, int, int]]) -> tuple[bool, str]:
    """Whether the measured (undone, lost, kept) per table are exactly the constructed ones."""
    if measured is None or not measured.known:
        return False, "not assessed" if measured is None else "unknown (no boundary)"
    got = {t: (v.undone, v.lost, v.kept) for t, v in measured.tables.items() if v.undone or v.lost or v.kept}
    wrong = {t: (got.get(t), expected.get(t)) for t in set(got) | set(expected) if got.get(t) != expected.get(t)}
    shown = ", ".join(f"{t} {u}/{lo}/{k}" for t, (u, lo, k) in sorted(expected.items()))
    return not wrong, f"undone/lost/kept: {shown}" + (f"; measured otherwise: {wrong}" if wrong else "")


def data_loss(diff: dict[str, Any], deployment_keys: dict[str, set[str]]) -> tuple[int, str]:
    """Rows the emergency backup (taken just before the restore) has that the restored
    database lost or holds otherwise, minus the rows the bad deployment itself wrote:
    undoing those is the point of the rollback, anything else is data lost."""
    total = 0
    parts = []
    for table, d in sorted(diff.items()):
        keys = [*d.get("removed_keys", []), *d.get("changed_keys", [])]
        ours = deployment_keys.get(table, set())
        lost = [k for k in keys if _key(k) not in ours]
        if lost:
            parts.append(f"{table} {len(lost)}")
        total += len(lost)
    return total, ", ".join(parts) or "none"


def _key(k: Any) -> str:
    """A diff key ([55] or [\"a\", 1]) as the text the sandbox records (\"55\")."""
    if isinstance(k, list) and len(k) == 1:
        k = k[0]
    return str(k)


async def begin_verdict(store: Store, incident: Incident) -> tuple[Verdict, dict[str, StepRun]]:
    """A verdict whose first check is that the incident completed, and the incident's latest step runs."""
    v = Verdict([Check("incident completed", incident.status is Status.COMPLETED, incident.status.value)])
    return v, await store.latest_runs(incident.id)


#: A SQLite agent operation on the target: ``await op(name, **params)``.
Op = Callable[..., Awaitable[dict[str, Any]]]


def target_op(transport: Transport, settings: TargetSettings) -> Op:
    """The SQLite agent's operations on the target, as the verdicts run them."""

    async def op(name: str, **params: Any) -> dict[str, Any]:
        return await sqlite_op(transport, name, params, timeout=600, cwd=settings.workdir, python=settings.python)

    return op


async def emergency_backup_check(op: Op, runs: dict[str, StepRun]) -> Check:
    """The emergency backup was taken and verified, and its content hash still matches."""
    vb = runs.get("verify_backup")
    eb = runs.get("emergency_backup")
    ok = bool(vb and vb.captures.get("ok") and eb)
    detail = "not taken"
    if ok and eb is not None and vb is not None:
        again = await op("content_hash", db=eb.captures["path"], tables=None)
        ok = again["total"] == vb.captures["content_hash"]
        detail = f"{eb.captures['path']} sha256 {str(vb.captures.get('file_sha256'))[:12]}…, content hash re-checked"
    return Check("emergency backup verified", ok, detail)


async def access_levels(op: Op, settings: TargetSettings) -> dict[str, Any]:
    """user_id -> access level in the target's live database."""
    rows = await op("query", db=settings.db_path,
                    sql="SELECT user_id, access_level FROM user_permissions ORDER BY user_id", params=[],
                    max_rows=100000)
    return {str(r[0]): r[1] for r in rows["rows"]}


async def app_checks(transport: Transport, settings: TargetSettings) -> list[Check]:
    """Maintenance mode off (env file and health answer) and the app healthy."""
    env = await transport.run(f"cat -- {shlex.quote(settings.env_file)}", timeout=10, cwd=settings.workdir)
    maint_lines = [ln for ln in env.stdout.splitlines() if ln.startswith("MAINTENANCE_")]
    health: dict[str, Any] = {}
    status = 0
    try:
        async with httpx.AsyncClient() as client:
            resp = await client.get(settings.health_url, timeout=10)
        status = resp.status_code
        health = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        health = {"error": str(exc)}
    return [Check("maintenance mode off", not maint_lines and not health.get("maintenance"),
                  f"{settings.env_file}: {len(maint_lines)} maintenance lines"),
            Check("app healthy", status == 200 and health.get("status") == "ok",
                  f"GET {settings.health_url} -> {status} {health.get('status')}")]


async def governance_equal_but_ours(op: Op, settings: TargetSettings, sandbox: ChosenPoint,
                                     incident: Incident) -> bool:
    """governance_logs equals the backup's once this incident's own rollback entry is left out."""
    sql = "SELECT * FROM governance_logs ORDER BY id"
    ours = ("SELECT * FROM governance_logs WHERE NOT (event_type = 'emergency_rollback' AND "
            "json_extract(runtime_context, '$.incident_id') IS ?) ORDER BY id")
    live = await op("query", db=settings.db_path, sql=ours, params=[incident.id], max_rows=1_000_000)
    backup = await op("query", db=str(sandbox.backup_path), sql=sql, params=[], max_rows=1_000_000)
    return bool(live["rows"] == backup["rows"] and len(live["rows"]) < 1_000_000)


async def check_verdict(
    *, store: Store, incident: Incident, transport: Transport, settings: TargetSettings,
    sandbox: Sandbox, strategy: str, runbook: Runbook | None = None,
) -> Verdict:
    """Check the outcome of a drill or rehearsal incident on its target itself."""
    v, runs = await begin_verdict(store, incident)
    op = target_op(transport, settings)

    wrong = await asyncio.to_thread(differing_rows, strategy, sandbox, Path(settings.workdir) / settings.db_path,
                                    incident.id)
    if strategy == "C":
        name = "database content equals the chosen backup's"
        detail = "every table compared row by row, but for the rollback's own rows (trigger history, ledger, record)"
    else:
        name = "database equals the chosen point plus the legitimate writes"
        detail = (f"{', '.join(DATA_TABLES)} compared row by row; conflict {sandbox.story.conflict[1]} kept"
                  + (f", {sandbox.story.overlap[1]} from the backup" if strategy == "A" else ""))
    v.checks.append(Check(name, not wrong, detail + (f"; differ: {wrong}" if wrong else "")))

    v.checks.append(await emergency_backup_check(op, runs))
    levels = await access_levels(op, settings)
    expected = await asyncio.to_thread(expected_levels, strategy, sandbox)
    wrong_levels = {k: (levels.get(k), lvl) for k, lvl in expected.items() if levels.get(k) != lvl}
    v.checks.append(Check("access levels are the chosen point's", not wrong_levels,
                          f"{len(expected)} users; the deployment's escalation undone"
                          + ("" if strategy == "C" else ", people's changes kept")
                          + (f"; wrong: {wrong_levels}" if wrong_levels else "")))

    v.checks += await app_checks(transport, settings)

    facts = await gather(store, runbook or default_runbook(), incident.id)
    measured = data_loss_detail(facts)
    ok, detail = loss_lines(measured, sandbox.story.expected_loss(strategy))
    v.checks.append(Check("data loss exactly as constructed", ok, detail))
    v.data_loss_records = (measured.total("lost") or 0) if measured is not None else 0
    v.data_loss_detail = detail
    return v


def _expected(strategy: str, sandbox: Sandbox, table: str) -> dict[Any, tuple[Any, ...]]:
    assert sandbox.intended_path is not None and sandbox.incident_path is not None
    return expected_rows(strategy, sandbox.story, intended=sandbox.intended_path, backup=sandbox.backup_path,
                         incident=sandbox.incident_path, table=table)


def differing_rows(strategy: str, sandbox: Sandbox, db: Path, incident_id: str | None = None) -> dict[str, list[Any]]:
    """Rows that are not what the strategy must leave, per table (ids, at most 10 each).

    C: every table equals the backup's, leaving out the rollback's own rows (change_history
    rows its writes made triggers log, the ledger, this incident's governance record). A and
    B: the data tables equal the intended ones (``bot.drill.sandbox.story.expected_rows``).
    """
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = DATA_TABLES
        own: set[str] = set()
        if strategy == "C":
            tables = tuple(r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' ORDER BY name"))
            if LEDGER in tables:
                own = {str(r[0]) for r in conn.execute(f'SELECT item FROM "{LEDGER}" WHERE kind = \'own\'')}
        out = {}
        for table in tables:
            if table == LEDGER:
                continue
            got = {r[0]: tuple(r) for r in conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid')}
            if table == "change_history":
                got = {k: r for k, r in got.items() if f"change_history:{k}" not in own}
            if table == "governance_logs" and incident_id is not None:
                got = {k: r for k, r in got.items()
                       if not (r[2] == "emergency_rollback" and incident_id in str(r[-1]))}
            want = _expected(strategy, sandbox, table)
            bad = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            if bad:
                out[table] = bad[:10]
        return out
    finally:
        conn.close()


def expected_levels(strategy: str, sandbox: Sandbox) -> dict[str, Any]:
    """user_id -> access level the strategy must leave (the chosen point's, people's changes kept)."""
    rows = _expected(strategy, sandbox, "user_permissions")
    return {str(r[1]): r[3] for r in rows.values()}
