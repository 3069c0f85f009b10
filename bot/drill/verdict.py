"""The drill's verdict: checked against the sandbox, not taken from the run's own word."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from actions.sqlite import sqlite_op
from actions.transport import Transport
from bot.lifecycle import Status
from bot.store import Incident, Store
from bot.targets import TargetSettings

#: Tables each strategy puts back to the chosen backup's content.
RESTORED_TABLES = {
    "A": ["projects", "phases", "step_progress", "user_permissions"],
    "B": ["projects", "phases", "step_progress", "user_permissions", "change_history"],
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


async def _governance_equal_but_ours(op: Any, settings: TargetSettings, sandbox: ChosenPoint,
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
    sandbox: ChosenPoint, strategy: str,
) -> Verdict:
    """Check the outcome of a drill or rehearsal incident on its target itself."""
    v = Verdict()
    runs = await store.latest_runs(incident.id)
    v.checks.append(Check("incident completed", incident.status is Status.COMPLETED,
                          incident.status.value))

    async def op(name: str, **params: Any) -> dict[str, Any]:
        return await sqlite_op(transport, name, params, timeout=600, cwd=settings.workdir,
                               python=settings.python)

    tables = RESTORED_TABLES[strategy]
    live = await op("content_hash", db=settings.db_path, tables=tables)
    want = sandbox.backup_content_hash["tables"]
    names = tables or sorted(want)
    differing = [t for t in names if live["tables"].get(t) != want.get(t)]
    if "governance_logs" in differing:
        # The rollback's own governance entry (Phase 5) is the one row the backup cannot have.
        if await _governance_equal_but_ours(op, settings, sandbox, incident):
            differing.remove("governance_logs")
    v.checks.append(Check(
        "database content equals the chosen backup's",
        not differing,
        f"{len(names)} tables compared by content hash" + (f"; differ: {differing}" if differing else ""),
    ))

    vb = runs.get("verify_backup")
    eb = runs.get("emergency_backup")
    ok = bool(vb and vb.captures.get("ok") and eb)
    detail = "not taken"
    if ok and eb is not None and vb is not None:
        again = await op("content_hash", db=eb.captures["path"], tables=None)
        ok = again["total"] == vb.captures["content_hash"]
        detail = f"{eb.captures['path']} sha256 {str(vb.captures.get('file_sha256'))[:12]}…, content hash re-checked"
    v.checks.append(Check("emergency backup verified", ok, detail))

    rows = await op("query", db=settings.db_path,
                    sql="SELECT user_id, access_level FROM user_permissions ORDER BY user_id", params=[],
                    max_rows=100000)
    levels = {str(r[0]): r[1] for r in rows["rows"]}
    wrong = {k: (levels.get(k), lvl) for k, lvl in sandbox.original_access_levels.items() if levels.get(k) != lvl}
    v.checks.append(Check("access levels equal the originals", not wrong,
                          f"{len(sandbox.original_access_levels)} users" + (f"; wrong: {wrong}" if wrong else "")))

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
    v.checks.append(Check("maintenance mode off", not maint_lines and not health.get("maintenance"),
                          f"{settings.env_file}: {len(maint_lines)} maintenance lines"))
    v.checks.append(Check("app healthy", status == 200 and health.get("status") == "ok",
                          f"GET {settings.health_url} -> {status} {health.get('status')}"))

    dl = runs.get("data_loss")
    if dl is not None and dl.captures.get("tables") is not None:
        v.data_loss_records, v.data_loss_detail = data_loss(dl.captures["tables"], sandbox.deployment_keys)
    else:
        v.data_loss_detail = "not assessed"
    return v
