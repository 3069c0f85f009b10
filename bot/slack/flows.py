"""The Slack flows: one keyword-only function per user action, called by ``handlers``.

Each flow is safe under Slack's retries: a request id already seen is dropped, and the
state changes themselves refuse doubles (one active incident per target, one counted
click per person, first answer wins).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from slack_sdk.errors import SlackApiError

from bot.core.config import INCIDENT_COMMANDER
from bot.core.decision import Decision, decide
from bot.core.engine import AnswerRefused
from bot.core.lifecycle import FINAL, Event, StepStatus
from bot.core.roles import RoleLookupFailed
from bot.core.templating import slack_escape
from bot.plan.render import runbook_sha256
from bot.record.last_tested import last_tested
from bot.slack.forms import TRIGGERS, parse_reject, parse_start, reject_modal, start_modal
from bot.slack.services import Services
from bot.slack.view import parse_answer_value
from bot.state.store import Incident, TargetBusy

log = logging.getLogger(__name__)

Ack = Callable[..., Awaitable[Any]]

HELP = """*/rollback* — the OF-BEV rollback plan, run from Slack
• `/rollback start [target] [reason]` — open the form (trigger conditions, severity, impact, business risk)
• `/rollback status [id]` — one incident, or every active one
• `/rollback abort [id] reason` — stop after the running step (approvers and incident commanders)
• `/rollback help` — this text
Approvals: one of Tech Lead/CTO *and* one of Product Owner/VP Engineering, or one incident commander alone."""


class Refused(Exception):
    """A user action that is not allowed or not possible; the message says why, nothing changed."""


# ---------------------------------------------------------------- helpers


def _in_channel(services: Services, channel_id: str, channel_name: str) -> bool:
    allowed = {c.lstrip("#") for c in services.config.slack.channels}
    return channel_id in allowed or channel_name.lstrip("#") in allowed


async def ephemeral(services: Services, *, channel: str, user: str, text: str, thread_ts: str | None = None) -> None:
    """A message only ``user`` sees; Slack errors are logged, never raised."""
    kwargs: dict[str, Any] = {"thread_ts": thread_ts} if thread_ts else {}
    try:
        await services.client.chat_postEphemeral(channel=channel, user=user, text=text, **kwargs)
    except SlackApiError as exc:
        log.warning("ephemeral to %s in %s failed: %s", user, channel, exc.response.get("error"))


def _pointer(inc: Incident) -> str:
    where = f" (thread in <#{inc.channel}>)" if inc.channel else ""
    return f"*{inc.id}* is already active on `{inc.target}` — {inc.status.value}{where}. Follow it there."


async def _incident(services: Services, incident_id: str) -> Incident:
    try:
        return await services.store.incident(incident_id)
    except KeyError:
        raise Refused(f"There is no incident {slack_escape(incident_id[:40])}.") from None


# ---------------------------------------------------------------- running a flow


def background(*, services: Services, body: dict[str, Any], work: Coroutine[Any, Any, None]) -> None:
    """Run a flow as a tracked background task; its errors reach the user like the error hook's."""

    async def guarded() -> None:
        try:
            await work
        except Exception as exc:  # every failure is reported; unknown ones are logged with an id
            await report_error(services=services, error=exc, body=body)

    services.spawn(guarded(), name=f"flow-{getattr(work, '__name__', 'work')}")


# ---------------------------------------------------------------- /rollback


async def command(*, services: Services, user_id: str, channel_id: str, channel_name: str, text: str,
                  trigger_id: str) -> None:
    """``/rollback <start|status|abort|help> ...``."""
    if not await services.first_time(f"cmd:{trigger_id}"):
        return
    words = text.strip().split(maxsplit=1)
    sub = words[0].lower() if words else "help"
    rest = words[1] if len(words) > 1 else ""
    if sub == "help" or sub not in ("start", "status", "abort"):
        prefix = "" if sub == "help" else f"Unknown subcommand `{slack_escape(sub[:30])}`.\n"
        await ephemeral(services, channel=channel_id, user=user_id, text=prefix + HELP)
        return
    if not _in_channel(services, channel_id, channel_name):
        chans = ", ".join(c if c.startswith(("C", "G")) and c.isupper() else f"#{c.lstrip('#')}"
                          for c in services.config.slack.channels)
        raise Refused(f"Rollbacks are run in {chans} only; this channel is not configured.")
    if sub == "start":
        await _start(services, user_id=user_id, channel_id=channel_id, rest=rest, trigger_id=trigger_id)
    elif sub == "status":
        await _status(services, user_id=user_id, channel_id=channel_id, rest=rest)
    else:
        await _abort(services, user_id=user_id, channel_id=channel_id, rest=rest)


async def _start(services: Services, *, user_id: str, channel_id: str, rest: str, trigger_id: str) -> None:
    names = [t.name for t in services.config.targets]
    parts = rest.split(maxsplit=1)
    target: str | None = None
    reason = rest
    if parts and parts[0] in names:
        target, reason = parts[0], parts[1] if len(parts) > 1 else ""
    elif len(names) == 1:
        target = names[0]
    if target is not None:
        active = await services.store.active_incident(target)
        if active is not None:
            raise Refused(_pointer(active))
    view = start_modal(targets=names, target=target, reason=reason.strip(), channel=channel_id)
    await services.client.views_open(trigger_id=trigger_id, view=view.to_dict())


async def _status(services: Services, *, user_id: str, channel_id: str, rest: str) -> None:
    incident_id = rest.strip().split()[0] if rest.strip() else ""
    if incident_id:
        incs = [await _incident(services, incident_id)]
    else:
        incs = await services.store.incidents(active_only=True)
        if not incs:
            await ephemeral(services, channel=channel_id, user=user_id, text="No active rollback incidents.")
            return
    lines = []
    for inc in incs[:20]:
        line = f"*{inc.id}* `{inc.target}` {inc.severity or ''} {inc.decision or ''} — *{inc.status.value}*"
        w = await services.engine.waiting_for(inc.id)
        if w is not None:
            line += f", waiting for {w.kind}: {slack_escape(w.prompt)}"
        latest = await services.store.latest_runs(inc.id)
        running = [r.step_id for r in latest.values() if r.status is StepStatus.RUNNING]
        if running:
            line += f", running {', '.join(running)}"
        if inc.abort_reason:
            line += f" (abort requested: {slack_escape(inc.abort_reason)})"
        lines.append(line)
    await ephemeral(services, channel=channel_id, user=user_id, text="\n".join(lines))


async def _abort(services: Services, *, user_id: str, channel_id: str, rest: str) -> None:
    words = rest.strip().split(maxsplit=1)
    if words and words[0].startswith("RB-"):
        inc = await _incident(services, words[0])
        reason = words[1] if len(words) > 1 else ""
    else:
        active = await services.store.incidents(active_only=True)
        if len(active) != 1:
            raise Refused("Say which incident: `/rollback abort RB-YYYYMMDD-NNNN reason`.")
        inc, reason = active[0], rest.strip()
    if not reason.strip():
        raise Refused("An abort needs a reason: `/rollback abort [id] reason`.")
    roles = await services.may_act(user_id)
    if not roles:
        raise Refused("Only approvers and incident commanders may abort a rollback.")
    try:
        await services.engine.request_abort(inc.id, user=user_id, reason=reason.strip()[:500], roles=roles)
    except AnswerRefused as exc:
        raise Refused(str(exc)) from None
    services.run_incident(inc.id)
    text = f"Abort of {inc.id} requested: it stops after the running step."
    if services.runbook.compensation is not None:
        text += " Then the compensation undoes what ran; the thread says what state production is in."
    await ephemeral(services, channel=channel_id, user=user_id, text=text)


# ---------------------------------------------------------------- the start modal


async def submit_start(*, services: Services, ack: Ack, user_id: str, view: dict[str, Any]) -> None:
    """The start modal was submitted: validate, decide, open the incident, post the thread, run."""
    key = f"view:{view.get('id')}"
    if not await services.first_time(key):
        await ack()
        return
    names = [t.name for t in services.config.targets]
    req = parse_start(view, targets=names)
    matrix = None
    if "severity" not in req.errors and "impact" not in req.errors and "business_risk" not in req.errors:
        matrix = decide(severity=req.severity, impact=req.impact, business_risk=req.business_risk)
        if req.override and matrix.decision is not Decision.NO_ROLLBACK:
            req.errors["override"] = "An override is only for a P4 (no rollback) decision; leave it empty."
        elif req.override:
            try:
                roles = await services.roles.roles_of(user_id)
            except RoleLookupFailed as exc:
                roles = []
                log.warning("roles of %s unknown: %s", user_id, exc)
            if INCIDENT_COMMANDER not in roles:
                req.errors["override"] = "Only an incident commander may override a P4 decision."
    if req.errors or matrix is None:
        await services.forget(key)  # the corrected form comes back with the same view id
        await ack(response_action="errors", errors=req.errors)
        return
    await ack()
    inputs: dict[str, Any] = {
        "triggers": req.triggers,
        "trigger_labels": [TRIGGERS[t].split(":")[0] for t in req.triggers],
        "impact": req.impact,
        "business_risk": req.business_risk,
        "description": req.description,
        "decided_by": list(matrix.decided_by),
        "explanation": matrix.explain(),
    }
    if req.override:
        inputs["override"] = {"by": user_id, "reason": req.override}
    inputs["last_tested"] = await last_tested(services.store, runbook_sha256(services.runbook))
    try:
        inc = await services.store.create_incident(
            target=req.target, runbook=services.runbook.name, severity=req.severity,
            decision=matrix.decision.label, inputs=inputs, requester=user_id, reason=req.reason)
    except TargetBusy as exc:
        active = await services.store.incident(exc.incident_id)
        raise Refused(_pointer(active)) from None
    await services.store.update_incident(inc.id, channel=req.channel)
    if matrix.decision is Decision.NO_ROLLBACK and not req.override:
        await services.store.apply(inc.id, Event.CLOSE, actor=user_id,
                                   data={"reason": "P4: no rollback needed", "explanation": matrix.explain()})
        await services.engine.audit.flush()  # the close is on record at once, not at the next change
        services.publisher.request(inc.id)
        return
    await services.open_incident(inc.id)


# ---------------------------------------------------------------- approvals


async def approval_click(*, services: Services, user_id: str, channel_id: str, thread_ts: str | None,
                         incident_id: str, decision: str, trigger_id: str, action_ts: str) -> None:
    """Approve or Reject was clicked; a reject asks for the reason in a modal first."""
    if not await services.first_time(f"act:{user_id}:{action_ts}"):
        return
    inc = await _incident(services, incident_id)
    if inc.status in FINAL:
        raise Refused(f"{inc.id} is already {inc.status.value}.")
    roles = await services.roles.roles_of(user_id)
    if decision == "reject" and set(roles) & services.policy.roles:
        await services.client.views_open(trigger_id=trigger_id, view=reject_modal(incident_id=inc.id).to_dict())
        return
    await _record_click(services, user_id=user_id, roles=roles, inc=inc, decision=decision, note="",
                        channel_id=channel_id, thread_ts=thread_ts)


async def submit_reject(*, services: Services, ack: Ack, user_id: str, view: dict[str, Any]) -> None:
    """The reject modal was submitted: record the rejection with its reason."""
    incident_id, note = parse_reject(view)
    if not note:
        await ack(response_action="errors", errors={"note": "A rejection needs a reason."})
        return
    await ack()
    if not await services.first_time(f"view:{view.get('id')}:{view.get('hash')}"):
        return
    inc = await _incident(services, incident_id)
    roles = await services.roles.roles_of(user_id)
    await _record_click(services, user_id=user_id, roles=roles, inc=inc, decision="reject", note=note,
                        channel_id=inc.channel or "", thread_ts=inc.thread_ts)


async def _record_click(services: Services, *, user_id: str, roles: list[str], inc: Incident, decision: str,
                        note: str, channel_id: str, thread_ts: str | None) -> None:
    try:
        counted, why = await services.engine.approve(inc.id, user_id=user_id, roles=roles, decision=decision,
                                                     note=note)
    except AnswerRefused as exc:
        raise Refused(str(exc)) from None
    if not counted:
        await ephemeral(services, channel=channel_id, user=user_id, thread_ts=thread_ts,
                        text=f"Your {decision} on {inc.id} was recorded but not counted: {why}.")
        return
    services.run_incident(inc.id)


# ---------------------------------------------------------------- questions


async def answer_click(*, services: Services, user_id: str, channel_id: str, thread_ts: str | None,
                       value: str, action_ts: str) -> None:
    """A choice, manual Done, Retry/Skip/Abort or Re-run/Mark done was picked."""
    if not await services.first_time(f"act:{user_id}:{action_ts}"):
        return
    try:
        incident_id, run_id, index = parse_answer_value(value)
    except ValueError:
        raise Refused("That button is not one this bot posted.") from None
    inc = await _incident(services, incident_id)
    if inc.status in FINAL:
        raise Refused(f"{inc.id} is already {inc.status.value}; nothing is asked any more.")
    roles = await services.may_act(user_id)
    if not roles:
        raise Refused("Only approvers and incident commanders may answer the rollback's questions.")
    runs = await services.store.step_runs(incident_id)
    run = next((r for r in runs if r.id == run_id), None)
    if run is None or not run.waiting:
        raise Refused("That question does not exist.")
    latest = [r for r in runs if r.step_id == run.step_id][-1]
    if latest.id != run.id:
        raise Refused("That question was superseded by a later attempt; use the newest buttons.")
    if run.answer is not None:
        raise Refused(f"Already answered by <@{run.answer.get('user')}>.")
    options = run.waiting.get("options", [])
    if not 0 <= index < len(options):
        raise Refused("That option was not offered.")
    try:
        await services.engine.answer(incident_id, run.step_id, options[index]["value"], user=user_id, roles=roles)
    except AnswerRefused as exc:
        raise Refused(str(exc)) from None
    services.run_incident(incident_id)


# ---------------------------------------------------------------- errors


def _where(body: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(user, channel, thread_ts) of a slash command, block action or view submission payload."""
    user = body.get("user_id") or (body.get("user") or {}).get("id")
    channel = body.get("channel_id") or (body.get("channel") or {}).get("id")
    thread = (body.get("container") or {}).get("thread_ts") or (body.get("message") or {}).get("thread_ts")
    if channel is None and isinstance(body.get("view"), dict):
        meta = body["view"].get("private_metadata") or ""
        try:
            data = json.loads(meta) if meta.startswith("{") else {}
        except ValueError:
            data = {}
        channel = data.get("channel")
    return user, channel, thread


async def report_error(*, services: Services | None, error: BaseException, body: dict[str, Any]) -> str | None:
    """Known errors become a clear ephemeral message; unknown ones are logged with an id (returned)."""
    ref: str | None = None
    if isinstance(error, Refused):
        text = str(error)  # built here, typed parts escaped where they were put in
    elif isinstance(error, TargetBusy | AnswerRefused):
        text = slack_escape(str(error))  # may quote a value from the request
    elif isinstance(error, RoleLookupFailed):
        text = f"Your roles could not be checked right now ({error}); nothing was recorded. Try again shortly."
    else:
        ref = uuid.uuid4().hex[:8]
        log.error("unexpected error [error id %s]", ref, exc_info=error)
        text = f"Something went wrong (error id `{ref}`); nothing more was done. The bot's log has the details."
    user, channel, thread = _where(body)
    if ref is None:  # every refusal is on record, not only in the user's ephemeral
        log.info("refused a request of %s in %s: %s", user, channel, text)
    if services is not None and user and channel:
        await ephemeral(services, channel=channel, user=user, text=text, thread_ts=thread)
    return ref


__all__ = [
    "HELP",
    "Refused",
    "answer_click",
    "approval_click",
    "background",
    "command",
    "report_error",
    "submit_reject",
    "submit_start",
]
