"""How the engine performs the steps that keep the record and roll the app back:
``github_workflow``, ``governance``, ``evidence_archive``, ``report`` and ``notify``,
and how a choice lists GitHub releases.

Each ``perform_*`` returns (result, whole output) like the engine's own step kinds; the
result's keys named by the step's ``produces`` become its captures.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from actions.errors import ActionError, HttpCheckFailed
from actions.github import GitHubClient, WorkflowRun, previous_release
from actions.http import http_request
from actions.sqlite import sqlite_op
from actions.transport import Transport
from bot.core.executors.base import Call, StepExecutor, StepHost, register
from bot.core.lifecycle import StepStatus
from bot.core.runbook import (
    EvidenceStep,
    GithubWorkflowStep,
    GovernanceStep,
    NotifyStep,
    ReportStep,
    Runbook,
    StepBase,
)
from bot.core.targets import TargetSettings
from bot.core.templating import render_slack, render_text, render_value
from bot.record.audit import AuditSink, canonical
from bot.record.evidence import TRACK_STEP, EvidenceArchive
from bot.record.governance import Versions, build_record, db_row
from bot.record.metrics import gather, health_checks, success_metrics
from bot.record.records import Records
from bot.record.report import render_report
from bot.slack.people import Names
from bot.state.store import Incident, Store

RECORD_STEPS = (GithubWorkflowStep, GovernanceStep, EvidenceStep, ReportStep, NotifyStep)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class RecordError(ActionError):
    """A record step could not do its work; the message says what is missing."""


@dataclass
class RecordContext:
    """What a record step works with, handed over by the engine."""

    store: Store
    runbook: Runbook
    settings: TargetSettings
    transport: Transport
    records: Records
    audit: AuditSink
    time_scale: float
    http: httpx.AsyncClient | None
    changed: Callable[[str], Awaitable[None]]
    names: Names | None = None


def record_context(host: StepHost, inc: Incident, step: StepBase) -> RecordContext:
    """What a record step of this incident works with, from the engine that runs it."""
    target = host.target(inc, step)
    return RecordContext(host.store, host.runbook, target.settings, target.transport, host.records,
                         host.audit, host.time_scale, host.http, host.changed, host.names)


@register(*RECORD_STEPS)
class RecordExecutor(StepExecutor):
    """The record steps, each a machine step journaled by the engine."""

    async def perform(self, call: Call, attempt: int | None) -> tuple[dict[str, Any], str]:
        """Run one record step; ``ActionError`` on failure."""
        return await perform(record_context(call.host, call.inc, call.step), call.inc, call.step, call.ctx)


async def perform(rc: RecordContext, inc: Incident, step: StepBase, ctx: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Run one record step; ``ActionError`` on failure."""
    if isinstance(step, GithubWorkflowStep):
        return await perform_github(rc, inc, step, ctx)
    if isinstance(step, GovernanceStep):
        return await perform_governance(rc, inc, step)
    if isinstance(step, EvidenceStep):
        return await perform_archive(rc, inc)
    if isinstance(step, ReportStep):
        return await perform_report(rc, inc)
    if isinstance(step, NotifyStep):
        return await perform_notify(rc, step, ctx)
    raise RecordError(f"step {step.id!r}: not a record step")


# ---------------------------------------------------------------- GitHub


def _github(rc: RecordContext, repo: str) -> GitHubClient:
    token = os.environ.get(rc.settings.github_token_env, "")
    if not token:
        raise RecordError(f"no GitHub token: the environment variable {rc.settings.github_token_env} is not set")
    return GitHubClient(repo=repo, token=token, api_url=rc.settings.github_api_url, client=rc.http)


async def release_options(rc: RecordContext, params: dict[str, Any]) -> tuple[list[dict[str, str]], str | None]:
    """Recent releases as options, and the one to pre-select: the last release before the
    deployed (bad) one whose tag matches the target's pattern."""
    repo = str(params.get("repo") or rc.settings.github_repo)
    gh = _github(rc, repo)
    releases = await gh.releases(limit=int(params.get("limit") or 10))
    pattern = str(params.get("pattern") or rc.settings.release_tag_pattern)
    bad = str(params.get("bad") or rc.settings.deployed_version)
    pick = previous_release(releases, pattern=pattern, bad=bad)
    opts = []
    for r in releases:
        flags = [w for w, on in (("draft", r.draft), ("pre-release", r.prerelease), ("deployed now", r.tag == bad))
                 if on]
        desc = f"published {r.published_at}" + (f" · {', '.join(flags)}" if flags else "")
        opts.append({"value": r.tag, "label": r.tag if r.name == r.tag else f"{r.tag} — {r.name}",
                     "description": desc})
    return opts, pick.tag if pick else None


async def perform_github(rc: RecordContext, inc: Incident, step: GithubWorkflowStep,
                         ctx: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Dispatch the deploy workflow, find its run by correlation id and watch it to the end."""
    repo = render_text(step.repo, ctx)
    workflow = render_text(step.workflow, ctx)
    ref = render_text(step.ref, ctx)
    if not ref:
        raise RecordError("no ref (release tag) to deploy")
    gh = _github(rc, repo)
    run_row = (await rc.store.latest_runs(inc.id))[step.id]
    correlation = f"{inc.id}-{step.id}-{run_row.attempt}-{uuid.uuid4().hex[:8]}"
    inputs = {k: str(v) for k, v in render_value(dict(step.inputs), ctx).items()}
    inputs[step.correlation_input] = correlation
    since = run_row.started_at or inc.created_at
    await rc.store.log(inc.id, "github_dispatch", step_id=step.id,
                       data={"repo": repo, "workflow": workflow, "ref": ref, "inputs": inputs})
    await gh.dispatch(workflow=workflow, ref=ref, inputs=inputs)
    poll = max(0.05, step.poll_seconds * rc.time_scale)
    run = await gh.find_run(correlation_id=correlation, since=since, timeout=step.find_timeout, poll=poll)

    async def on_update(r: WorkflowRun) -> None:
        facts = {**r.as_dict(), "correlation_id": correlation, "ref": ref}
        await rc.store.log(inc.id, "github_run", step_id=step.id, data=facts)
        # Shown on the step's checklist line while it runs: status and link.
        await rc.store.end_step(run_row.id, StepStatus.RUNNING, captures={
            "status": r.status, "html_url": r.html_url, "run_id": r.id})
        await rc.changed(inc.id)

    final = await gh.watch(run, timeout=step.timeout, poll=poll, on_update=on_update)
    result = {**final.as_dict(), "correlation_id": correlation, "ref": ref}
    return result, json.dumps(result, indent=1)


# ---------------------------------------------------------------- governance


async def _artifact_json(store: Store, incident_id: str, step_id: str) -> dict[str, Any]:
    """The JSON body a step kept as an artifact (its latest), or {}."""
    arts = [a for a in await store.artifacts(incident_id) if a.step_id == step_id]
    if not arts:
        return {}
    try:
        data = json.loads(await asyncio.to_thread(Path(arts[-1].path).read_text, encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


async def versions(rc: RecordContext, inc: Incident, choice: str | None) -> Versions:
    """From / to versions: settings and choices first, else what /health said before and after."""
    before = await _artifact_json(rc.store, inc.id, "health_before")
    after = await _artifact_json(rc.store, inc.id, "health_after_app_rollback")
    from_v = rc.settings.deployed_version or str(before.get("version") or "unknown")
    to_v = choice or str(after.get("version") or "") or rc.settings.previous_version or "unknown"
    return Versions(from_v, to_v)


async def governance_entry(rc: RecordContext, incident_id: str) -> dict[str, Any] | None:
    """The incident's governance record as the local chain holds it, if written."""
    for entry in await rc.records.log.entries(incident_id):
        if entry.get("type") == "governance_record":
            return entry
    return None


async def perform_governance(rc: RecordContext, inc: Incident, step: GovernanceStep) -> tuple[dict[str, Any], str]:
    """Write the governance record to the target (bound values) and to the local chain; once."""
    if not _IDENT.match(step.table):
        raise RecordError(f"table {step.table!r} is not a plain table name")
    f = await gather(rc.store, rc.runbook, inc.id)
    anchor = rc.records.anchor(inc.stamp)
    cfg = rc.records.config
    record = build_record(f, cfg, anchor=anchor, versions=await versions(rc, inc, f.capture("release_tag", "choice")))
    local = await governance_entry(rc, inc.id)
    if local is not None:
        record = local["record"]  # a re-run writes the same record, not a second one
    db = render_text(step.db, {"target": rc.settings.template_values()})
    py, cwd = rc.settings.python, rc.settings.workdir
    found = await sqlite_op(rc.transport, "query", {
        "db": db, "max_rows": 1, "params": [cfg.event_type, anchor],
        "sql": f'SELECT id FROM "{step.table}" WHERE event_type = ? '
               "AND json_extract(runtime_context, '$.memoryplugin_anchor') = ? ORDER BY id LIMIT 1",
    }, timeout=step.timeout, python=py, cwd=cwd)
    if found.get("rows"):
        row_id, inserted = int(found["rows"][0][0]), False
    else:
        res = await sqlite_op(rc.transport, "governance_insert",
                              {"db": db, "record": db_row(record), "table": step.table},
                              timeout=step.timeout, python=py, cwd=cwd)
        row_id, inserted = int(res["id"]), True
    if local is None:
        local = await rc.records.log.append({"type": "governance_record", "incident": inc.id, "anchor": anchor,
                                             "target": inc.target, "row_id": row_id, "record": record})
    text = canonical(record)
    result = {"row_id": row_id, "inserted": inserted, "anchor": anchor, "chain_seq": local["seq"],
              "record_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    return result, json.dumps(record, indent=2, ensure_ascii=False)


# ---------------------------------------------------------------- evidence archive


def _on_target(settings: TargetSettings, path: str) -> str:
    p = PurePosixPath(path)
    return str(p if p.is_absolute() else PurePosixPath(settings.workdir) / p)


async def _archive(rc: RecordContext, inc: Incident, *, report: str | None = None) -> tuple[EvidenceArchive, str]:
    """Write (or complete) the incident's archive; returns it and the manifest's sha256."""
    anchor = rc.records.anchor(inc.stamp)
    arch = await EvidenceArchive(rc.store, inc.id, rc.records.archive_dir(inc.stamp), anchor=anchor).load()
    f = await gather(rc.store, rc.runbook, inc.id)
    # Every artifact the steps made, from the store's list (never a glob of a folder).
    for art in await rc.store.artifacts(inc.id):
        if art.step_id == TRACK_STEP:
            continue
        if art.step_id == "json_export":
            name = f"emergency_export_{inc.stamp}.{art.name.split('.')[1]}.json"
        elif art.step_id and "health" in art.step_id:
            name = f"health/{art.name}"
        else:
            name = f"steps/{art.name}"
        if name not in arch.files and await asyncio.to_thread(Path(art.path).is_file):
            await arch.add_copy(name, Path(art.path))
    # The emergency backup: copied here over SFTP, or left on the target with its hashes.
    backup = f.capture("emergency_backup", "path")
    sha = f.capture("verify_backup", "file_sha256") or f.capture("emergency_backup", "file_sha256")
    if backup:
        remote = _on_target(rc.settings, str(backup))
        name = f"emergency_backup/{PurePosixPath(remote).name}"
        if rc.records.config.backup_copy == "fetch":
            if name not in arch.files:
                dest = arch.folder / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                await rc.transport.get_file(remote, dest)
                await arch.adopt(name, expect_sha256=sha)
        else:
            arch.note_remote("emergency_backup", path=remote, file_sha256=sha,
                             content_hash=f.capture("verify_backup", "content_hash"), target=inc.target)
    chosen = f.capture("restore_backup", "choice")
    if chosen:
        arch.note_remote("restored_from_backup", path=_on_target(rc.settings, str(chosen)), target=inc.target)
    checks = [{"step": c.step_id, "at": c.at, "ok": c.ok, "status": c.status, "latency_ms": c.latency_ms}
              for c in health_checks(f)]
    series = []
    if hasattr(rc.store, "stability_checks"):
        series = [{k: v for k, v in c.__dict__.items()} for c in await rc.store.stability_checks(inc.id)]
    before = f.latest.get("health_before")
    await arch.add_json("health_snapshots.json", {
        "before_rollback": before.captures if before else None, "checks": checks, "stability_checks": series})
    await arch.add_json("record_counts.json", {
        "before": f.capture("record_counts_before", "counts"), "after": f.capture("record_counts_after", "counts"),
        "emergency_backup": f.capture("verify_backup", "counts"), "restored": f.capture("verify_restored", "counts")})
    integrity = {}
    for sid in ("integrity_check", "quick_check", "foreign_key_check", "verify_backup", "verify_restored",
                "foreign_key_check_after"):
        run = f.latest.get(sid)
        if run is not None:
            integrity[sid] = {"status": run.status.value, "captures": run.captures, "error": run.error}
    await arch.add_json("integrity_results.json", integrity)
    gov = await governance_entry(rc, inc.id)
    if gov is not None:
        await arch.add_json("governance_record.json", gov["record"])
    await arch.add_json("anchor_metadata.json", {
        "anchor_id": anchor,
        "timestamp": inc.created_at.isoformat(timespec="seconds"),
        "event_type": rc.records.config.event_type,
        "phase": "OF-BEV-Phase-3",
        "incident_id": inc.id,
        "rollback_reason": inc.reason,
        "artifacts": ["emergency_backup_database", "pre_rollback_export", "system_health_snapshots",
                      "governance_log_entries", "rollback_execution_logs"],
        "retrieval_instructions": "Use this anchor to analyze rollback events and restore state if needed; "
                                  "manifest.json lists every file with its sha256 (sha256sum -c SHA256SUMS).",
    })
    if report is not None:
        await arch.add_text("report.md", report)
    await rc.audit.flush()
    lines = [canonical(e) for e in await rc.records.log.entries(inc.id)]
    await arch.add_text("audit_extract.jsonl", "".join(line + "\n" for line in lines))
    seq, head = await rc.records.log.head()
    manifest_sha = await arch.write_manifest(
        audit_log={"path": str(rc.records.log.path), "lines": seq, "head_sha256": head,
                   "extract_lines": len(lines)},
        governance={"row_id": gov.get("row_id"), "chain_seq": gov.get("seq")} if gov else None)
    return arch, manifest_sha


async def perform_archive(rc: RecordContext, inc: Incident) -> tuple[dict[str, Any], str]:
    """Build the evidence archive folder with its manifest."""
    try:
        arch, sha = await _archive(rc, inc)
    except (OSError, ValueError) as exc:
        raise RecordError(f"evidence archive: {exc}") from exc
    result = {"path": str(arch.folder), "anchor": arch.anchor, "files": len(arch.files), "manifest_sha256": sha}
    return result, "\n".join(sorted(arch.files))


async def perform_report(rc: RecordContext, inc: Incident) -> tuple[dict[str, Any], str]:
    """Render the post-incident report, put it in the archive, refresh the manifest."""
    f = await gather(rc.store, rc.runbook, inc.id)
    metrics = success_metrics(f, rc.records.config.targets)
    gov = await governance_entry(rc, inc.id)
    folder = rc.records.archive_dir(inc.stamp)
    people = [inc.requester, *(a.user_id for a in f.approvals), *(e.actor for e in f.events)]
    names = await rc.names(p for p in people if p) if rc.names is not None else {}
    parts = render_report(f, rc.records.config, metrics=metrics, anchor=rc.records.anchor(inc.stamp),
                          archive=str(folder),
                          governance={"row_id": gov.get("row_id"), "chain_seq": gov.get("seq")} if gov else None,
                          audit_head=await rc.records.log.head(), names=names)
    try:
        arch, sha = await _archive(rc, inc, report=parts.markdown)
    except (OSError, ValueError) as exc:
        raise RecordError(f"report: {exc}") from exc
    result = {"report_path": str(arch.folder / "report.md"), "metrics": [m.as_dict() for m in metrics],
              "overall": parts.overall, "manifest_sha256": sha}
    return result, parts.markdown


# ---------------------------------------------------------------- notifications


async def perform_notify(rc: RecordContext, step: NotifyStep, ctx: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """POST ``{"text": …}`` to the stakeholder webhook, when one is configured."""
    url = os.environ.get(step.url_env, "")
    text = render_slack(step.text, ctx)  # a typed <!channel> or disguised link is shown, not acted on
    if not url:
        return {"sent": False, "skipped": f"no stakeholder webhook: {step.url_env} is not set"}, text
    resp = await http_request("POST", url, json_body={"text": text}, timeout=step.timeout, client=rc.http)
    if not 200 <= resp.status < 300:
        raise HttpCheckFailed(f"stakeholder webhook answered {resp.status}", status=resp.status,
                              body=resp.text[-300:])
    return {"sent": True, "status": resp.status}, text
