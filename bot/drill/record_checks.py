"""The drill's checks of the incident's records: governance row on the target, a
verifiable audit chain holding every journal event, a complete evidence archive whose
manifest hashes hold, and the report with the measured data loss the verdict found."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from actions.sqlite import sqlite_op
from actions.transport import Transport
from bot.core.targets import TargetSettings
from bot.drill.verdict import Check
from bot.record.audit import verify_chain
from bot.record.evidence import MANIFEST, verify_archive
from bot.record.records import Records
from bot.state.store import Incident, Store

#: Files every archive of the default runbook holds.
REQUIRED_FILES = ("anchor_metadata.json", "governance_record.json", "audit_extract.jsonl", "health_snapshots.json",
                  "record_counts.json", "integrity_results.json", "report.md")


async def record_checks(*, store: Store, incident: Incident, transport: Transport, settings: TargetSettings,
                        records: Records, data_loss_records: int) -> list[Check]:
    """Check the governance row, the audit chain, the archive and the report of a drill incident."""
    checks: list[Check] = []
    anchor = records.anchor(incident.stamp)
    res = await sqlite_op(transport, "query", {
        "db": settings.db_path, "max_rows": 10, "params": [anchor],
        "sql": "SELECT id, details, runtime_context FROM governance_logs "
               "WHERE json_extract(runtime_context, '$.memoryplugin_anchor') = ?"}, timeout=60,
        python=settings.python, cwd=settings.workdir)
    rows = res.get("rows") or []
    ok = len(rows) == 1 and json.loads(rows[0][1]).get("rollback_reason") == incident.reason
    checks.append(Check("governance row written", ok,
                        f"{len(rows)} governance_logs row(s) with anchor {anchor}"
                        + (f", id {rows[0][0]}" if rows else "")))

    chain = await asyncio.to_thread(verify_chain, records.log.path)
    entries = await records.log.entries(incident.id)
    in_chain = {e.get("event_id") for e in entries if e.get("type") == "event"}
    journal = {e.id for e in await store.events(incident.id)}
    missing = sorted(journal - in_chain)
    gov = [e for e in entries if e.get("type") == "governance_record"]
    checks.append(Check(
        "audit chain verifies", chain.ok and not missing and len(gov) == 1 and bool(rows)
        and gov[0].get("row_id") == rows[0][0],
        f"{chain.lines} lines, {chain.reason}; {len(journal)} journal events"
        + (f", {len(missing)} missing" if missing else ", all in the chain") + f"; {len(gov)} governance record"))

    folder = records.archive_dir(incident.stamp)
    problems = await asyncio.to_thread(verify_archive, folder)
    names: set[str] = set()
    try:
        manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        names = {f["name"] for f in manifest.get("files", [])}
    except (OSError, ValueError) as exc:
        problems.append(f"manifest: {exc}")
    absent = [n for n in REQUIRED_FILES if n not in names]
    if records.config.backup_copy == "fetch" and not any(n.startswith("emergency_backup/") for n in names):
        absent.append("emergency_backup/")
    if not any(n.startswith("emergency_export_") for n in names):
        absent.append("emergency_export_*.json")
    checks.append(Check("evidence archive complete", not problems and not absent,
                        f"{folder.name}: {len(names)} files, manifest sha256s "
                        + ("hold" if not problems else f"broken: {problems[:3]}")
                        + (f"; missing {absent}" if absent else "")))

    report = folder / "report.md"
    text = report.read_text(encoding="utf-8") if report.is_file() else ""
    want = f"| Data Loss | None | {data_loss_records} records"
    checks.append(Check("report written with measured metrics", "## Success metrics" in text and want in text,
                        f"{report.name}: {len(text)} characters; data loss {data_loss_records} records "
                        + ("as measured" if want in text else "NOT as measured")))
    return checks
