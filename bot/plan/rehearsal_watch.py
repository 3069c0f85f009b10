"""A rehearsal in a Slack channel, the command's side: open it, hand it to the serving bot,
watch it to its end, then judge it as a simulated rehearsal is judged and store the result.

The people in the channel approve and choose; the serving bot runs the incident. The
command prints the steps as they change; Ctrl-C asks the bot to abort the rehearsal (a
second Ctrl-C stops waiting and leaves the incident to the bot).
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Mapping, Sequence
from typing import TextIO

from actions.errors import ActionError
from bot.cli.terminal import TerminalView
from bot.core.config import BotConfig
from bot.core.decision import decide
from bot.core.engine import Target
from bot.core.lifecycle import FINAL
from bot.core.runbook import ChoiceStep, Runbook
from bot.core.targets import TargetSettings
from bot.drill.verdict import Check, Verdict
from bot.plan.rehearsal import RehearsalRefused, RehearsalResult, judge, newest_backup, store_result
from bot.plan.rehearsal_channel import END, REHEARSE, check_channel, check_target, drop, request_value
from bot.plan.render import runbook_sha256
from bot.record.last_tested import last_tested
from bot.record.records import Records
from bot.record.viewmodel import IncidentView, load
from bot.state.control import ControlRefused, acting_as, local_identity
from bot.state.control_queue import ControlRequest, alive, get, move, submit
from bot.state.store import Incident, StabilityCheck, StepRun, Store, TargetBusy, utcnow

#: How long a serving bot has to take the rehearsal before the command gives up.
CLAIM_SECONDS = 15.0
#: How often the command looks at the incident.
POLL_SECONDS = 0.5


def _start_bot(config_path: str | None) -> str:
    serve = "rollback-bot serve" + (f" --config {shlex.quote(config_path)}" if config_path else "")
    return f"start `{serve}` with this config (it answers the clicks) and run this again"


async def rehearse_in_channel(*, config: BotConfig, config_path: str | None, target: str, runbook: Runbook,
                              channel: str, state: Store, out: TextIO | None,
                              claim_seconds: float = CLAIM_SECONDS) -> RehearsalResult:
    """Open the rehearsal, let the serving bot post and run it in ``channel``, judge it at its end."""
    check_target(config, target)
    check_channel(config, channel)
    account, operator = local_identity()
    try:
        actor = acting_as(config, account, None)
    except ControlRefused as exc:
        raise RehearsalRefused(f"{exc} (a rehearsal in a channel is requested as a Slack user)") from None
    if not await alive(state):
        raise RehearsalRefused(f"no serving bot uses the state store {config.state_db}: {_start_bot(config_path)}")
    rb_sha = runbook_sha256(runbook)
    started_at = utcnow()
    matrix = decide(severity="P1", impact="High", business_risk="Critical")
    try:
        inc = await state.create_incident(
            target=target, runbook=runbook.name, severity="P1", decision=matrix.decision.label,
            inputs={"triggers": ["data_corruption"], "impact": "High", "business_risk": "Critical", "rehearsal": True,
                    "decided_by": list(matrix.decided_by), "explanation": matrix.explain(),
                    "description": f"Rehearsal of the rollback plan on the staging target {target}, requested "
                                   f"by {operator} from the command line",
                    "last_tested": await last_tested(state, rb_sha)},
            requester=actor, reason=f"Rehearsal of the rollback plan on {target}")
    except TargetBusy as exc:
        raise RehearsalRefused(f"target {target!r} is busy with {exc.incident_id}; rehearse when it has ended"
                               ) from None
    progress = Progress(out)
    try:
        taken = await _hand_over(state, inc, actor=actor, operator=operator, channel=channel, runbook_sha=rb_sha,
                                 claim_seconds=claim_seconds, config_path=config_path)
        progress.say(f"{inc.id} posted in {channel} by {taken.claimed_by}: the approvals and choices are asked "
                     "there; Ctrl-C aborts it")
        inc = await _watch(state, runbook, inc.id, progress, actor=actor, operator=operator)
    finally:
        progress.close()
    settings = config.target(target)
    assert settings is not None  # checked above
    records = Records.open(config.records.resolved(config.artifacts_dir.parent))
    result = await _judge(state, inc, runbook, settings=settings, records=records, runbook_sha=rb_sha)
    await store_result(state, result, started_at=started_at, channel=channel)
    return result


async def _withdraw(state: Store, request_id: int) -> bool:
    """Take the request back unless a bot claimed it first."""
    return await move(state, request_id, "pending", "withdrawn", finished_at=utcnow())


async def _hand_over(state: Store, inc: Incident, *, actor: str, operator: str, channel: str, runbook_sha: str,
                     claim_seconds: float, config_path: str | None) -> ControlRequest:
    """The serving bot's answer to the ``rehearse`` request; a refusal or no answer refuses the rehearsal."""
    request_id = await submit(state, incident_id=inc.id, action=REHEARSE, actor=actor, operator=operator,
                              value=request_value(channel, runbook_sha), reason=inc.reason)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + claim_seconds
    try:
        while True:
            req = await get(state, request_id)
            if req.status not in ("pending", "claimed"):
                break
            if req.status == "pending" and loop.time() > deadline and await _withdraw(state, request_id):
                why = f"no serving bot took the rehearsal within {claim_seconds:g} s"
                await drop(state, inc.id, actor=actor, why=why)
                raise RehearsalRefused(f"{why}: {_start_bot(config_path)}")
            if req.status == "claimed" and loop.time() > deadline + claim_seconds:
                raise RehearsalRefused(f"{req.claimed_by} took the rehearsal but did not post it within "
                                       f"{claim_seconds:g} s; `rollback-bot incident show {inc.id}` says where it is")
            await asyncio.sleep(0.1)
    except asyncio.CancelledError:
        if await _withdraw(state, request_id):
            await drop(state, inc.id, actor=actor, why="interrupted before a bot took it")
        raise
    if req.status != "done":
        await drop(state, inc.id, actor=actor, why=f"refused by the serving bot: {req.result}")
        raise RehearsalRefused(f"the serving bot refused the rehearsal: {req.result}")
    return req


class Progress:
    """The terminal view of the incident, and lines said beside it (a live view is ended first)."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out
        self.view: TerminalView | None = None

    def show(self, view: IncidentView, checks: Sequence[StabilityCheck]) -> None:
        """Draw the incident as it stands."""
        if self.out is not None:
            self.view = self.view or TerminalView(self.out)
            self.view.show(view, checks)

    def say(self, text: str) -> None:
        """One line under the view."""
        if self.out is None:
            return
        if self.view is not None and self.view.live:
            self.view.close()
            self.view = None
        self.out.write(f"· {text}\n")
        self.out.flush()

    def close(self) -> None:
        """Leave the last frame on screen."""
        if self.view is not None:
            self.view.close()


async def _watch(state: Store, runbook: Runbook, incident_id: str, progress: Progress, *,
                 actor: str, operator: str) -> Incident:
    """Follow the incident to its end; a cancellation (Ctrl-C) asks the bot to abort it, once."""
    task = asyncio.current_task()
    abort: int | None = None
    interrupted = False
    polls = 0
    while True:
        try:
            inc = await state.incident(incident_id)
            progress.show(await load(state, runbook, incident_id), await state.stability_checks(incident_id))
            if abort is not None and (req := await get(state, abort)).status not in ("pending", "claimed"):
                progress.say(f"abort: {req.result}")
                abort = None
            if inc.status in FINAL:
                return inc
            polls += 1
            if polls % 20 == 0 and not await alive(state):
                progress.say("no serving bot is alive: the rehearsal goes on when `rollback-bot serve` runs again")
            await asyncio.sleep(POLL_SECONDS)
        except asyncio.CancelledError:
            if interrupted or task is None:
                raise  # a second Ctrl-C stops waiting
            task.uncancel()
            interrupted = True
            abort = await submit(state, incident_id=incident_id, action=END, actor=actor, operator=operator,
                                 reason=f"rehearsal interrupted from the command line by {operator}")
            progress.say(f"abort of {incident_id} requested; waiting for it to end (Ctrl-C again stops waiting and "
                         "leaves it to the serving bot)")


def people_chose(runbook: Runbook, runs: Mapping[str, StepRun]) -> tuple[str | None, str | None]:
    """(strategy, backup) the people chose: the choice offering A, B and C, and the one listing backups."""
    listing = {s.id for _, s in runbook.steps() if isinstance(s, ChoiceStep)
               and s.options_from is not None and s.options_from.op == "list_backups"}
    strategy = backup = None
    for step_id, run in runs.items():
        value = (run.captures or {}).get("choice")
        offered = {str(o.get("value")) for o in (run.waiting or {}).get("options", [])}
        if value is None:
            continue
        if step_id == "strategy" or {"A", "B", "C"} <= offered:
            strategy = str(value)
        elif step_id in listing or step_id == "restore_backup":
            backup = str(value)
    return strategy, backup


async def _judge(state: Store, inc: Incident, runbook: Runbook, *, settings: TargetSettings, records: Records,
                 runbook_sha: str) -> RehearsalResult:
    strategy, backup = people_chose(runbook, await state.latest_runs(inc.id))
    recovery = (inc.ended_at - inc.started_at).total_seconds() if inc.ended_at and inc.started_at else 0.0
    root = records.archive_dir(inc.stamp)
    if strategy is None:
        verdict = Verdict([Check("rehearsal ran to its end", False,
                                 f"{inc.status.value} before a strategy was chosen: {inc.abort_reason or '—'}")])
        return RehearsalResult(settings.name, inc.id, inc.status, "", verdict, recovery, runbook_sha, "", root)
    target = Target.open(settings)
    try:
        backup = backup or await newest_backup(target.transport, settings)
        verdict = await judge(store=state, incident=inc, transport=target.transport, settings=settings,
                              records=records, strategy=strategy, backup=backup)
    except (ActionError, RehearsalRefused) as exc:
        verdict = Verdict([Check("target reachable for the verdict", False, f"{type(exc).__name__}: {exc}")])
    finally:
        await target.close()
    return RehearsalResult(settings.name, inc.id, inc.status, strategy, verdict, recovery, runbook_sha,
                           backup or "", root)
