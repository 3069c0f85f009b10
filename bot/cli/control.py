"""``rollback-bot incidents`` and ``rollback-bot incident show|answer|abort``: the incidents
in the state store, seen and steered from a terminal, with or without a serving bot.

Reading needs only the config and the store. Acting needs the local account in the
config's ``operators`` (the Slack id it acts as, checked by the rules of a click);
a serving bot carries the action out and updates the thread, else it is applied to the
store and the bot resumes from there at its next start.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
from typing import Any

from bot.core.approvals import ApprovalPolicy, Vote, describe_missing, evaluate
from bot.core.config import ConfigError, Settings, load_settings
from bot.core.lifecycle import FINAL, Status, StepStatus
from bot.core.runbook import ApprovalStep, Runbook, RunbookError, default_runbook, load_runbook
from bot.record.viewmodel import SYMBOLS, build, in_plan_order, short
from bot.state.store import Incident, StepRun, Store

EXIT_REFUSED = 1
EXIT_USAGE = 2


class CliError(Exception):
    """A one-line message for the operator; nothing changed."""


def register(sub: Any) -> None:
    """Add ``incidents`` and ``incident show|answer|abort`` to the top-level subparsers."""
    ls = sub.add_parser("incidents", help="list incidents from the state store (active ones unless --all)")
    ls.add_argument("--all", action="store_true", help="finished incidents too")
    ls.add_argument("--json", action="store_true", help="JSON instead of a table")
    ls.add_argument("--config", help="config file (default: $ROLLBACK_BOT_CONFIG)")
    ls.set_defaults(func=_main, control="list")

    inc = sub.add_parser("incident", help="show, answer or abort one incident (works while Slack is down)")
    isub = inc.add_subparsers(dest="incident_command", required=True)
    show = isub.add_parser("show", help="phases, steps and what the incident waits for")
    show.add_argument("id", help="incident id, e.g. RB-20261125-0001")
    show.add_argument("--json", action="store_true", help="JSON instead of text")
    show.set_defaults(control="show")
    ans = isub.add_parser("answer", help="answer what a step waits for (a choice, Retry/Skip/Abort, approve/reject)")
    ans.add_argument("id", help="incident id")
    ans.add_argument("step", help="the step id shown by 'incident show'")
    ans.add_argument("option", help="the option's value, label or number; approve|reject for an approval")
    ans.add_argument("--reason", help="why (required to reject)")
    ab = isub.add_parser("abort", help="abort an incident: it stops after the running step")
    ab.add_argument("id", help="incident id")
    ab.add_argument("--reason", required=True, help="why (recorded in the audit log)")
    for p in (ans, ab):
        p.add_argument("--as", dest="as_user", metavar="SLACK_ID",
                       help="the Slack user id to act as, when operators lists several for your account")
        p.add_argument("--wait", type=float, default=10.0,
                       help="seconds to wait for a serving bot to carry it out (default 10)")
        p.set_defaults(control=p.prog.split()[-1])
    for p in (show, ans, ab):
        p.add_argument("--config", help="config file (default: $ROLLBACK_BOT_CONFIG)")
        p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, require_secrets=False)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_run(args, settings))
    except CliError as exc:
        print(f"rollback-bot: {exc}", file=sys.stderr)
        return EXIT_REFUSED


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    config = settings.config
    try:
        runbook = load_runbook(config.runbook) if config.runbook else default_runbook()
    except RunbookError as exc:
        raise CliError(f"runbook: {exc.problems[0]}") from None
    try:
        store = await Store.open(config.state_db)
    except Exception as exc:  # any driver error: say which setting, not a traceback
        raise CliError(f"state_db: cannot open {config.state_db!r} ({type(exc).__name__})") from None
    try:
        policy = config.policy.policy()
        if args.control == "list":
            return await _list(store, runbook, policy, all_=args.all, as_json=args.json)
        if args.control == "show":
            detail = await incident_detail(store, runbook, policy, args.id)
            print(json.dumps(detail, indent=2, default=str) if args.json else render_detail(detail))
            return 0
        return await act(args, settings, store, runbook)
    finally:
        await store.close()


# ---------------------------------------------------------------- reading


def _iso(at: dt.datetime | None) -> str | None:
    return at.astimezone(dt.UTC).isoformat(timespec="seconds") if at else None


def waiting_of(runbook: Runbook, inc: Incident, latest: dict[str, StepRun]) -> StepRun | None:
    """The step run a person is asked to answer, if the incident waits for one."""
    if inc.status is not Status.WAITING:
        return None
    for _, step in runbook.steps():
        run = latest.get(step.id)
        if run and run.waiting and run.answer is None and run.status in (
                StepStatus.WAITING, StepStatus.FAILED, StepStatus.INTERRUPTED):
            return run
    return None


async def _waiting(store: Store, runbook: Runbook, policy: ApprovalPolicy, inc: Incident,
                   latest: dict[str, StepRun]) -> dict[str, Any] | None:
    run = waiting_of(runbook, inc, latest)
    if run is None or run.waiting is None:
        return None
    w = run.waiting
    out: dict[str, Any] = {"step": run.step_id, "kind": w.get("kind"), "prompt": w.get("prompt") or
                           runbook.step(run.step_id).title,
                           "options": [{"value": o["value"], "label": o.get("label", o["value"]),
                                        "description": o.get("description", "")} for o in w.get("options", [])]}
    if isinstance(runbook.step(run.step_id), ApprovalStep):
        clicks = [a for a in await store.approvals(inc.id) if a.counted and a.decision == "approve"]
        state = evaluate(policy, [Vote(a.user_id, frozenset(a.roles)) for a in clicks], requester=inc.requester)
        out["still_needed"] = describe_missing(state)
        out["options"] = [{"value": "approve", "label": "Approve", "description": ""},
                          {"value": "reject", "label": "Reject", "description": "needs --reason"}]
    if w.get("error") or run.error:
        out["error"] = w.get("error") or run.error
    if w.get("default"):
        out["suggested"] = w["default"]
    if w.get("kind") in ("stability", "window"):
        out["options"] = []  # the clock settles these
    return out


async def incident_detail(store: Store, runbook: Runbook, policy: ApprovalPolicy, incident_id: str) -> dict[str, Any]:
    """Everything ``incident show`` prints, as JSON-ready data."""
    from bot.state.control_queue import list_requests

    try:
        inc = await store.incident(incident_id)
    except KeyError:
        raise CliError(f"there is no incident {incident_id[:40]!r} in the state store") from None
    latest = await store.latest_runs(incident_id)
    view = build(runbook, inc, latest)
    phases = []
    for pv in in_plan_order(view.phases, runbook):
        steps = []
        for s in pv.steps:
            run = latest.get(s.id)
            item: dict[str, Any] = {"id": s.id, "title": s.title, "status": s.status, "attempt": s.attempt,
                                    "duration": round(s.duration, 3) if s.duration is not None else None,
                                    "facts": {k: short(v, 64) for k, v in s.facts.items()}}
            if s.status == "skipped":
                item["skipped"] = (run.captures.get("skip_reason") if run else None) or s.error or "skipped"
            elif s.error:
                item["error"] = s.error
            steps.append(item)
        phases.append({"id": pv.id, "title": pv.title, "status": pv.status, "note": pv.note, "steps": steps})
    reqs = [{"id": r.id, "action": r.action, "step": r.step_id, "value": r.value, "reason": r.reason,
             "actor": r.actor, "operator": r.operator, "status": r.status, "result": r.result,
             "claimed_by": r.claimed_by, "at": _iso(r.created_at),
             "finished_at": r.finished_at.isoformat() if r.finished_at else None,
             "latency_s": round((r.finished_at - r.created_at).total_seconds(), 3)
             if r.finished_at and r.created_at else None}
            for r in await list_requests(store, incident_id=incident_id)]
    return {
        "id": inc.id, "target": inc.target, "status": inc.status.value, "severity": inc.severity,
        "decision": inc.decision, "requester": inc.requester, "reason": inc.reason,
        "created_at": _iso(inc.created_at), "started_at": _iso(inc.started_at), "ended_at": _iso(inc.ended_at),
        "abort_reason": inc.abort_reason, "channel": inc.channel, "thread_ts": inc.thread_ts,
        "waiting": await _waiting(store, runbook, policy, inc, latest), "phases": phases, "requests": reqs,
    }


def _clean(text: Any) -> str:
    """Text from the store shown on a terminal: control characters replaced."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))


def render_detail(d: dict[str, Any]) -> str:
    """``incident show`` as text."""
    lines = [f"{d['id']}  {d['target']}  {d['severity'] or '—'} {d['decision'] or ''}  — {d['status']}",
             f"requested by {d['requester'] or '—'} at {d['created_at']}: {_clean(d['reason']) or '—'}"]
    if d["abort_reason"]:
        lines.append(f"abort requested: {_clean(d['abort_reason'])}")
    for ph in d["phases"]:
        note = f"   [{_clean(ph['note'])}]" if ph["note"] else ""
        lines.append(f"\n{SYMBOLS.get(ph['status'], '?')} {_clean(ph['title'])} — {ph['status']}{note}")
        for s in ph["steps"]:
            line = f"  {SYMBOLS.get(s['status'], '?')} {s['id']}: {_clean(s['title'])}"
            if s["duration"] is not None:
                line += f" ({s['duration']:.1f}s)"
            if s["attempt"] > 1:
                line += f" · attempt {s['attempt']}"
            if s.get("skipped"):
                line += f" — skipped: {_clean(s['skipped'])}"
            elif s.get("error"):
                line += f" — {_clean(short(s['error'], 160))}"
            elif s["facts"]:
                line += " — " + "; ".join(f"{k}: {_clean(v)}" for k, v in list(s["facts"].items())[:3])
            lines.append(line)
    w = d["waiting"]
    if w:
        lines.append(f"\nWaiting for ({w['kind']}) at step {w['step']}: {_clean(w['prompt'])}")
        if w.get("still_needed"):
            lines.append(f"  still needed: {_clean(w['still_needed'])}")
        if w.get("error"):
            lines.append(f"  error: {_clean(short(w['error'], 300))}")
        for i, o in enumerate(w["options"], start=1):
            desc = f" — {_clean(o['description'])}" if o["description"] else ""
            lines.append(f"  {i}. {_clean(o['value'])}  ({_clean(o['label'])}){desc}")
        if w["options"]:
            lines.append(f"  answer: rollback-bot incident answer {d['id']} {w['step']} OPTION")
    elif d["status"] not in [s.value for s in FINAL]:
        lines.append("\nWaiting for nothing: the bot is running it (or resumes it at its next start).")
    open_reqs = [r for r in d["requests"] if r["status"] in ("pending", "claimed", "applied")]
    for r in open_reqs:
        lines.append(f"control request {r['id']}: {r['action']} {r['step'] or ''} {_clean(r['value'] or '')} "
                     f"by {r['operator']} as {r['actor']} — {r['status']}")
    return "\n".join(lines)


async def _list(store: Store, runbook: Runbook, policy: ApprovalPolicy, *, all_: bool, as_json: bool) -> int:
    rows = []
    for inc in await store.incidents(active_only=not all_):
        latest = await store.latest_runs(inc.id)
        w = await _waiting(store, runbook, policy, inc, latest)
        running = [r.step_id for r in latest.values() if r.status is StepStatus.RUNNING]
        rows.append({"id": inc.id, "target": inc.target, "status": inc.status.value, "severity": inc.severity,
                     "decision": inc.decision, "requester": inc.requester, "created_at": _iso(inc.created_at),
                     "waiting": f"{w['kind']} at {w['step']}" if w else None, "running": running,
                     "abort_reason": inc.abort_reason})
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("No active incidents." if not all_ else "No incidents.")
        return 0
    for r in rows:
        now = (f"waiting for {r['waiting']}" if r["waiting"] else
               f"running {', '.join(r['running'])}" if r["running"] else "")
        print(f"{r['id']}  {r['target']:<16} {r['severity'] or '—':<3} {r['status']:<10} {now}")
    return 0


# ---------------------------------------------------------------- acting


async def act(args: argparse.Namespace, settings: Settings, store: Store, runbook: Runbook) -> int:
    """``incident answer`` / ``incident abort``: queue the request, let a bot (or this command) carry it out."""
    from bot.core.engine import Engine
    from bot.core.roles import RoleDirectory
    from bot.record.audit import AuditSink
    from bot.state.control import (
        ControlRefused,
        Executor,
        acting_as,
        local_identity,
        offline_roles,
        run_request,
    )
    from bot.state.control_queue import submit

    config = settings.config
    account, operator = local_identity()
    try:
        actor = acting_as(config, account, args.as_user)
    except ControlRefused as exc:
        raise CliError(str(exc)) from None
    try:
        inc = await store.incident(args.id)
    except KeyError:
        raise CliError(f"there is no incident {args.id[:40]!r} in the state store") from None
    step = getattr(args, "step", None)
    if step is not None and not any(s.id == step for _, s in runbook.steps()):
        raise CliError(f"the runbook has no step {step[:64]!r} (see: rollback-bot incident show {inc.id})")
    reason = (args.reason or "").strip()[:500] or None
    if args.control == "abort" and not reason:
        raise CliError("an abort needs a reason: --reason TEXT")

    class DeferredAudit(AuditSink):
        """The serving bot copies the journal into the audit log (one writer per file)."""

        async def flush(self, *, sync: bool = True) -> int:
            return 0

    policy = config.policy.policy()
    engine = Engine(store, runbook, {}, artifacts_dir=config.artifacts_dir, policies={"default": policy})
    engine.audit = DeferredAudit(store, engine.records.log)
    client = None
    if settings.secrets.slack_bot_token is not None:
        from slack_sdk.web.async_client import AsyncWebClient

        # User groups are looked up once, briefly: Slack may be the thing that is down.
        client = AsyncWebClient(token=settings.secrets.slack_bot_token.get_secret_value(),
                                base_url=settings.secrets.api_url, timeout=5)
    directory = RoleDirectory(config.roles, client) if client is not None else None
    executor = Executor(store, engine, policy, offline_roles(config.roles, directory), online=False)
    request_id = await submit(store, incident_id=inc.id, action=args.control, actor=actor, operator=operator,
                              step_id=step, value=getattr(args, "option", None), reason=reason)
    req = await run_request(store, executor, request_id, wait=max(0.0, args.wait),
                            by=f"cli:{operator}:{os.getpid()}")
    if req.status == "done":
        print(f"{inc.id}: {req.result} (carried out by {req.claimed_by}; the thread follows)")
        return 0
    if req.status == "applied":
        print(f"{inc.id}: {req.result} (no bot was serving: applied to the state store)")
        return 0
    if req.status == "refused":
        print(f"rollback-bot: refused: {req.result}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"{inc.id}: request {req.id} is {req.status} (claimed by {req.claimed_by or 'nobody yet'}); "
          f"see: rollback-bot incident show {inc.id}")
    return EXIT_REFUSED
