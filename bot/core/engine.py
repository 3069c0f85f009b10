"""The engine: runs a runbook's steps for an incident, journaled and resumable.

``Engine.run`` runs steps in order until the incident ends or a step waits for a
person; the state lives in the store, so ``run`` is the same call after a restart.
A person's answer goes in through ``answer`` (choices, manual items, retry / skip /
abort after a failure, re-run / mark done after a crash) or ``approve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from actions.errors import (
    ActionError,
    CommandFailed,
    CommandTimeout,
    HostsFailed,
    HttpCheckFailed,
    SqliteOpFailed,
)
from actions.fanout import HostResult, run_on_hosts
from actions.http import http_request
from actions.sqlite import sqlite_op
from actions.transport import Transport
from bot.clock import steps as timed_steps
from bot.core import compensation
from bot.core.approvals import DEFAULT_POLICY, ApprovalPolicy, Vote, counts, evaluate
from bot.core.lifecycle import FINAL, Event, Status, StepStatus
from bot.core.preflight import PreflightFailed, failure_message, findings_result, report, run_preflight
from bot.core.redaction import Redactor, env_secrets
from bot.core.runbook import (
    ApprovalStep,
    CaptureFrom,
    ChoiceStep,
    CommandStep,
    HttpStep,
    ManualStep,
    Phase,
    PreflightStep,
    Runbook,
    SqliteStep,
    StabilityStep,
    StepBase,
    WaitStep,
    WindowStep,
)
from bot.core.step_render import command_text, sqlite_params
from bot.core.step_render import http_request as http_request_of
from bot.core.targets import TargetSettings, open_transport, open_transports
from bot.core.templating import TemplateError, lookup, render_text, render_value
from bot.plan.binding import binding_fields, binding_plan, confirm_previews, describe_change
from bot.plan.render import Plan
from bot.plan.text import markdown as plan_markdown
from bot.record.audit import AuditSink
from bot.record.records import Records, RecordsConfig
from bot.record.steps import RECORD_STEPS, RecordContext, release_options
from bot.record.steps import perform as perform_record
from bot.slack.people import Names
from bot.state.store import AlreadyAnswered, ArtifactFile, Incident, StepRun, Store, utcnow

log = logging.getLogger(__name__)

TAIL_CHARS = 2000
#: Between steps, the view and the audit log catch up at most this often (changes coalesced).
CATCH_UP_SECONDS = 0.1
#: Output kept per host of a host group (20 hosts fit in a step's captures).
HOST_TAIL_CHARS = 300
#: SQLite operations that report problems as ``ok: false`` rather than as an error.
CHECK_OPS = frozenset({"verify", "integrity_check", "quick_check", "foreign_key_check"})

#: Answers a person may give, by what the step waits for.
ANSWERS = {
    "failure": ("retry", "skip", "abort"),
    "resume": ("rerun", "mark_done", "abort"),
    "manual": ("done",),
}
#: The same questions asked by a compensation step: there is nothing left to abort.
COMPENSATION_ANSWERS = {
    "failure": ("retry", "skip"),
    "resume": ("rerun", "mark_done"),
    "manual": ("done",),
}
#: Waiting kinds whose Abort gives up on a failure (compensation trigger ``failure``).
FAILURE_KINDS = ("failure", "resume", "stability_failed")


class EngineError(Exception):
    """Base of the engine's own errors."""


class AnswerRefused(EngineError):
    """An answer that does not fit what the step waits for; nothing changed."""


@dataclass
class Target:
    """A target's settings and its open transport; a host group also has one transport per host."""

    settings: TargetSettings
    transport: Transport
    #: A host group's transports by host name (``transport`` is the first, the primary).
    hosts: dict[str, Transport] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: TargetSettings) -> Target:
        """The target with its transports (connections open lazily on first use)."""
        if settings.is_group:
            hosts = open_transports(settings)
            return cls(settings, next(iter(hosts.values())), hosts)
        return cls(settings, open_transport(settings))

    async def close(self) -> None:
        """Close every transport of the target."""
        for transport in {id(t): t for t in (self.transport, *self.hosts.values())}.values():
            await transport.close()


@dataclass
class Waiting:
    """What an incident waits for."""

    step_id: str
    phase_id: str
    kind: str  # choice | manual | approval | failure | resume
    prompt: str
    options: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None


OnChange = Callable[[str], Awaitable[None]]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


class Engine:
    """Runs incidents of one runbook against a set of targets."""

    def __init__(
        self,
        store: Store,
        runbook: Runbook,
        targets: Mapping[str, Target],
        *,
        artifacts_dir: Path,
        time_scale: float = 1.0,
        policies: Mapping[str, ApprovalPolicy] | None = None,
        on_change: OnChange | None = None,
        http: httpx.AsyncClient | None = None,
        clock_host: timed_steps.ClockHost | None = None,
        records: Records | None = None,
        redact: Callable[[str], str] | None = None,
        names: Names | None = None,
    ) -> None:
        self.store = store
        self.runbook = runbook
        self.targets = targets
        self.artifacts_dir = artifacts_dir
        self.time_scale = time_scale
        self.policies = dict(policies or {"default": DEFAULT_POLICY})
        self.on_change = on_change
        #: One HTTP client for every http, notify and GitHub call (connections are reused);
        #: the engine closes it in ``aclose`` only when it made it.
        self._http = http
        self._owns_http = http is None
        self._locks: dict[str, asyncio.Lock] = {}
        #: Background catch-ups of the view and the audit log, one per incident (see ``_changed_soon``).
        self._catch_ups: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._hurry: dict[str, asyncio.Event] = {}
        #: Files made by the running attempt of an incident's step, tracked with the attempt's end.
        self._made: dict[str, list[ArtifactFile]] = {}
        #: Audit log, governance, evidence and report settings; by default beside the artifacts.
        self.records = records or Records.open(RecordsConfig.model_validate(
            {"audit_log": artifacts_dir / "governance.jsonl", "evidence_root": artifacts_dir / "evidence"}))
        #: Copies the journal into the hash-chained audit log at every change.
        self.audit = AuditSink(store, self.records.log)
        #: The scheduler side of ``stability`` and ``window`` steps (see ``bot.clock.steps``).
        self.clock_host = clock_host
        #: Hides secrets in what the target prints before it is stored, posted or uploaded.
        self.redact = redact or Redactor(values=env_secrets())
        #: Resolves Slack user ids to names for the record (the report shows people by name).
        self.names = names
        #: Set by ``stop``: no new step starts.
        self.stopping = False
        #: Machine steps running now, by run id: (incident id, step).
        self._in_flight: dict[int, tuple[str, StepBase]] = {}

    # ------------------------------------------------------------ public API

    @property
    def http(self) -> httpx.AsyncClient:
        """The shared HTTP client (made on first use when none was given)."""
        if self._http is None:
            self._http = httpx.AsyncClient()
        return self._http

    async def settle(self) -> None:
        """Wait for the background catch-ups of the view and the audit log (hurried)."""
        for incident_id, task in list(self._catch_ups.items()):
            self._hurry[incident_id].set()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def aclose(self) -> None:
        """Finish pending view and audit catch-ups, close what the engine owns (its HTTP client).

        The store and transports are the caller's.
        """
        await self.settle()
        if self._owns_http and self._http is not None:
            client, self._http = self._http, None
            await client.aclose()

    async def run(self, incident_id: str) -> Incident:
        """Run steps until the incident ends or waits for a person; returns its state."""
        lock = self._locks.setdefault(incident_id, asyncio.Lock())
        async with lock:
            inc = await self._run(incident_id)
        await self._changed(incident_id)
        return inc

    def lock(self, incident_id: str) -> asyncio.Lock:
        """The lock that serialises changes to one incident's steps (scheduled jobs take it too)."""
        return self._locks.setdefault(incident_id, asyncio.Lock())

    async def waiting_for(self, incident_id: str) -> Waiting | None:
        """What the incident waits for, if anything (during a compensation: its questions only)."""
        inc = await self.store.incident(incident_id)
        steps: list[tuple[Phase, StepBase]]
        if inc.status is Status.COMPENSATING and self.runbook.compensation is not None:
            steps = [(self.runbook.compensation, s) for s in self.runbook.compensation.steps]
        elif inc.status is Status.WAITING:
            steps = list(self.runbook.steps())
        else:
            return None
        latest = await self.store.latest_runs(incident_id)
        for phase, step in steps:
            run = latest.get(step.id)
            if run and run.waiting and run.answer is None and run.status in (
                StepStatus.WAITING, StepStatus.FAILED, StepStatus.INTERRUPTED
            ):
                w = run.waiting
                return Waiting(step.id, phase.id, w["kind"], w.get("prompt", step.title),
                               list(w.get("options", [])), w.get("error"))
        return None

    async def answer(self, incident_id: str, step_id: str, value: str, *, user: str,
                     roles: list[str] | None = None) -> None:
        """Give a person's answer to what a step waits for; ``AnswerRefused`` if it does not fit.

        The first answer wins: a second click on an answered question is refused. ``roles``
        (the roles the person acted in) is kept with the answer for the record.
        """
        async with self._locks.setdefault(incident_id, asyncio.Lock()):
            inc = await self.store.incident(incident_id)
            if inc.status is Status.COMPENSATING and not self.runbook.is_compensation(step_id):
                raise AnswerRefused(f"{incident_id} is being compensated after an abort or a failure: "
                                    f"step {step_id!r} is no longer asked")
            latest = await self.store.latest_runs(incident_id)
            run = latest.get(step_id)
            if run is None or not run.waiting:
                raise AnswerRefused(f"step {step_id!r} is not waiting for an answer")
            if run.answer is not None:
                raise AnswerRefused(f"step {step_id!r} was already answered by {run.answer.get('user')}")
            offered = run.waiting.get("options", [])
            allowed = [o["value"] for o in offered]
            disabled = next((o["disabled"] for o in offered if o["value"] == value and o.get("disabled")), None)
            if disabled:
                await self.store.log(incident_id, "answer_refused", actor=user, step_id=step_id,
                                     data={"value": value[:200], "why": disabled[:300]})
                raise AnswerRefused(f"{value[:80]!r} cannot be chosen here: {disabled}")
            if value not in allowed:
                await self.store.log(incident_id, "answer_refused", actor=user, step_id=step_id,
                                     data={"value": value[:200]})
                raise AnswerRefused(f"{value[:80]!r} was not offered for step {step_id!r}")
            answer: dict[str, Any] = {"value": value, "user": user}
            if roles is not None:
                answer["roles"] = list(roles)
            try:
                await self.store.end_step(run.id, run.status, actor=user, answer=answer)
            except AlreadyAnswered as exc:
                raise AnswerRefused(str(exc)) from None
        await self._changed(incident_id)

    async def approve(
        self, incident_id: str, *, user_id: str, roles: list[str], decision: str, note: str = ""
    ) -> tuple[bool, str]:
        """Record an approve/reject click; returns (counted, explanation)."""
        if decision not in ("approve", "reject"):
            raise AnswerRefused(f"decision must be approve or reject, not {decision!r}")
        async with self._locks.setdefault(incident_id, asyncio.Lock()):
            inc = await self.store.incident(incident_id)
            if inc.status in FINAL:
                raise AnswerRefused(f"incident {incident_id} is {inc.status.value}")
            policy = self._policy_for(incident_id)
            earlier = [a for a in await self.store.approvals(incident_id) if a.counted]
            ok, why = counts(policy, Vote(user_id, frozenset(roles)), requester=inc.requester)
            if ok and any(a.user_id == user_id for a in earlier):
                ok, why = False, "you already answered; one person counts once"
            asked = [r.waiting.get("plan_hash") for r in (await self.store.latest_runs(incident_id)).values()
                     if r.waiting and r.waiting.get("kind") == "approval" and r.status is StepStatus.WAITING]
            await self.store.add_approval(incident_id, user_id=user_id, roles=roles, decision=decision,
                                          counted=ok, note=note if ok else why,
                                          plan_hash=asked[0] if asked else None)
        await self._changed(incident_id)
        return ok, why

    async def request_abort(self, incident_id: str, *, user: str, reason: str,
                            roles: list[str] | None = None) -> Incident:
        """Stop after the running step; an incident waiting for a person stops now.

        When the run got past its gates and the runbook declares a compensation, the
        incident becomes ``compensating``: the next ``run`` undoes what ran and ends it aborted.
        """
        inc = await self.store.incident(incident_id)
        if inc.status in FINAL:
            raise AnswerRefused(f"incident {incident_id} is already {inc.status.value}")
        if inc.status is Status.COMPENSATING:
            raise AnswerRefused(f"incident {incident_id} is already being aborted: its compensation is running")
        await self.store.update_incident(incident_id, abort_reason=reason)
        data: dict[str, Any] = {"reason": reason}
        if roles is not None:
            data["roles"] = list(roles)
        await self.store.log(incident_id, "abort_requested", actor=user, data=data)
        lock = self._locks.setdefault(incident_id, asyncio.Lock())
        if not lock.locked():
            async with lock:
                inc = await self.store.incident(incident_id)
                if inc.status in (Status.OPEN, Status.SCHEDULED, Status.WAITING):
                    await self._stop(inc, "abort", Event.ABORT, actor=user, data={"reason": reason})
        await self._changed(incident_id)
        return await self.store.incident(incident_id)

    async def context(self, incident_id: str) -> dict[str, Any]:
        """The values templates see: target, incident, inputs, captures, choices."""
        inc = await self.store.incident(incident_id)
        return self._context(inc, await self.store.latest_runs(incident_id))

    def _context(self, inc: Incident, latest: Mapping[str, StepRun]) -> dict[str, Any]:
        captures: dict[str, Any] = {}
        choices: dict[str, Any] = {}
        for step_id, run in latest.items():
            if run.status is StepStatus.DONE:
                captures[step_id] = run.captures
                if "choice" in run.captures:
                    choices[step_id] = run.captures["choice"]
            elif run.status is StepStatus.SKIPPED:
                choices.setdefault(step_id, None)  # a choice not asked is null, not missing
        return {
            "target": self.targets[inc.target].settings.template_values(),
            "incident": _incident_values(inc),
            "inputs": inc.inputs,
            "captures": captures,
            "choices": choices,
        }

    # ------------------------------------------------------------ the loop

    def _policy_for(self, incident_id: str) -> ApprovalPolicy:
        for _, step in self.runbook.steps():
            if isinstance(step, ApprovalStep):
                return self.policies.get(step.policy, DEFAULT_POLICY)
        return self.policies.get("default", DEFAULT_POLICY)

    async def _changed(self, incident_id: str, *, audit: bool = True, sync: bool = True) -> None:
        """The view and the audit log catch up with the incident, now (after any pending catch-up)."""
        pending = self._catch_ups.get(incident_id)
        if pending is not None and pending is not asyncio.current_task():
            self._hurry.setdefault(incident_id, asyncio.Event()).set()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
        if audit:
            try:
                await self.audit.flush(sync=sync)
            except Exception:  # the journal keeps every event; the next flush catches up
                log.exception("audit log flush for %s failed", incident_id)
        await self._show(incident_id)

    async def _show(self, incident_id: str) -> None:
        """Tell the views (thread, terminal, scheduled jobs) that the incident changed."""
        if self.on_change is not None:
            try:
                await self.on_change(incident_id)
            except Exception:  # a broken view must never stop a rollback
                log.exception("view update for %s failed", incident_id)

    def _changed_soon(self, incident_id: str) -> None:
        """Between steps: let the view and the audit log catch up in the background.

        The changes of ``CATCH_UP_SECONDS`` are coalesced into one catch-up; the end of
        ``run`` (and every answer) hurries it and waits for it, so a caller always sees the
        settled state. The copy to the audit log takes only events the store has already
        synced (each step's start), so it costs no fsync of its own on the step's path.
        """
        self._dirty.add(incident_id)
        task = self._catch_ups.get(incident_id)
        if task is None or task.done():
            self._hurry[incident_id] = asyncio.Event()
            self._catch_ups[incident_id] = asyncio.create_task(self._catch_up(incident_id),
                                                               name=f"catch-up-{incident_id}")

    async def _catch_up(self, incident_id: str) -> None:
        hurry = self._hurry[incident_id]
        try:
            while incident_id in self._dirty:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(hurry.wait(), CATCH_UP_SECONDS)
                self._dirty.discard(incident_id)
                await self._changed(incident_id, sync=False)
        finally:
            if self._catch_ups.get(incident_id) is asyncio.current_task():
                del self._catch_ups[incident_id]

    async def _run(self, incident_id: str) -> Incident:
        inc = await self.store.incident(incident_id)
        if inc.status in FINAL:
            return inc
        if inc.status in (Status.RUNNING, Status.WAITING) and inc.abort_reason:
            # An abort asked for while a step ran (or while the bot was down) is applied now.
            inc = await self._stop(inc, "abort", Event.ABORT, actor=None, data={"reason": inc.abort_reason})
        if inc.status is Status.COMPENSATING:
            return await self._compensate(incident_id)
        if inc.status in FINAL:
            return inc
        if inc.status in (Status.OPEN, Status.SCHEDULED):
            inc = await self.store.apply(incident_id, Event.START)
        latest: dict[str, StepRun] | None = None
        for phase, step in self.runbook.steps():
            if latest is None:
                latest = await self.store.latest_runs(incident_id)
            if _settled(latest.get(step.id)):
                continue  # done, skipped or failed-and-continued: nothing to read or show again
            if self.stopping:
                return await self.store.incident(incident_id)
            inc = await self.store.incident(incident_id)
            if inc.status in FINAL:
                return inc
            outcome = await self._advance(inc, phase, step, latest)
            latest = None  # the step wrote its runs
            self._changed_soon(incident_id)
            if outcome == "wait":
                inc = await self.store.incident(incident_id)
                if inc.status is Status.RUNNING:
                    inc = await self.store.apply(incident_id, Event.WAIT, data={"step": step.id})
                return inc
            if outcome == "end":
                inc = await self.store.incident(incident_id)
                if inc.status is Status.COMPENSATING:
                    return await self._compensate(incident_id)
                return inc
        inc = await self.store.incident(incident_id)
        if inc.status in FINAL:
            return inc
        if inc.status is Status.WAITING:
            inc = await self.store.apply(incident_id, Event.RESUME)
        return await self.store.apply(incident_id, Event.COMPLETE)

    # ------------------------------------------------------------ compensation

    async def _stop(self, inc: Incident, trigger: str, end: Event, *, actor: str | None,
                    data: dict[str, Any]) -> Incident:
        """End the run: through the runbook's compensation when it applies, else at once.

        The compensation applies when the runbook declares one for ``trigger`` and the run
        reached a step other than an approval or a window (in ``from_phase`` or later).
        """
        comp = self.runbook.compensation
        latest = await self.store.latest_runs(inc.id)
        phases = [p.id for p in self.runbook.phases]
        first = phases.index(comp.from_phase) if comp is not None and comp.from_phase in phases else 0
        counted = {s.id for p, s in self.runbook.steps() if phases.index(p.id) >= first
                   and not isinstance(s, ApprovalStep | WindowStep)}
        reached = any(r.status is not StepStatus.SKIPPED and sid in counted for sid, r in latest.items())
        if comp is None or trigger not in comp.triggers or not reached or inc.status not in (
                Status.RUNNING, Status.WAITING):
            return await self.store.apply(inc.id, end, actor=actor, data=data)
        for run in latest.values():
            # Questions of the phases are no longer asked (a stability series stops with them).
            if run.status is StepStatus.WAITING and run.answer is None:
                await self.store.end_step(run.id, StepStatus.SKIPPED, actor=actor,
                                          error="not finished: the incident is being compensated")
            elif run.status is StepStatus.RUNNING:  # left by a bot that died in it (the lock is ours)
                await self.store.end_step(run.id, StepStatus.INTERRUPTED, actor=actor,
                                          error="the bot stopped while it ran; aborted before it was resumed")
        return await self.store.apply(inc.id, Event.COMPENSATE, actor=actor, data={
            **data, "trigger": trigger, "end": Status.FAILED.value if end is Event.FAIL else Status.ABORTED.value})

    async def _compensate(self, incident_id: str) -> Incident:
        """Run the compensation's steps until they are through (then end the incident) or one waits."""
        comp = self.runbook.compensation
        assert comp is not None
        latest: dict[str, StepRun] | None = None
        for step in comp.steps:
            if latest is None:
                latest = await self.store.latest_runs(incident_id)
            if _settled(latest.get(step.id)):
                continue
            inc = await self.store.incident(incident_id)
            if inc.status is not Status.COMPENSATING:
                return inc
            outcome = await self._advance(inc, comp, step, latest)
            latest = None
            await self._changed(incident_id)
            if outcome == "wait":
                return await self.store.incident(incident_id)
            if outcome == "end":
                return await self.store.incident(incident_id)
        inc = await self.store.incident(incident_id)
        if inc.status is not Status.COMPENSATING:
            return inc
        trig = compensation.trigger_of(await self.store.events(incident_id))
        end = Event.FAIL if trig is not None and trig.end == Status.FAILED.value else Event.ABORT
        return await self.store.apply(incident_id, end, data={"compensated": True})

    async def _resume(self, inc: Incident) -> Incident:
        if inc.status is Status.WAITING:
            return await self.store.apply(inc.id, Event.RESUME)
        return inc

    async def _abort_if_asked(self, inc: Incident) -> bool:
        if inc.status is Status.COMPENSATING:
            return False  # the compensation runs to its end
        if inc.abort_reason:
            if inc.status is not Status.ABORTED:
                await self._stop(inc, "abort", Event.ABORT, actor=None, data={"reason": inc.abort_reason})
            return True
        return False

    async def _advance(self, inc: Incident, phase: Phase, step: StepBase, runs: dict[str, StepRun]) -> str:
        """Bring one step to done/skipped; 'next', 'wait' or 'end'. ``runs``: the latest run of each step."""
        latest = runs.get(step.id)
        if latest is not None:
            st = latest.status
            if _settled(latest):
                return "next"
            if st is StepStatus.RUNNING:
                # The bot died while this step ran: its outcome is unknown.
                if await self._interrupted(latest, step, "bot restarted while the step ran") == "wait":
                    return "wait"
            elif latest.waiting is not None:
                if isinstance(step, ApprovalStep):
                    return await self._approval(inc, phase, step, latest)
                if latest.answer is None:
                    return "wait"
                return await self._apply_answer(inc, phase, step, latest)
        if await self._abort_if_asked(inc):
            return "end"
        await self._resume(inc)
        nothing = compensation.nothing_to_undo(step, runs)
        if nothing:
            run = await self.store.begin_step(inc.id, step.id, phase.id)
            await self.store.end_step(run.id, StepStatus.SKIPPED, error=nothing)
            return "next"
        # Nothing changed the step runs since ``runs`` was read (the incident's lock is held).
        ctx = self._context(inc, runs)
        cond = step.condition
        if cond is not None:
            try:
                value = lookup(ctx, cond.ref)
            except TemplateError:
                value = None
            if not cond.holds(value):
                run = await self.store.begin_step(inc.id, step.id, phase.id)
                await self.store.end_step(run.id, StepStatus.SKIPPED, captures={"skip_reason": cond.words(value),
                                                                                "condition": step.when})
                return "next"
        if step.has_side_effect and await self._plan_changed_since_approval(inc, runs):
            return "wait"
        return await self._execute(inc, phase, step, ctx)

    async def _interrupted(self, run: StepRun, step: StepBase, why: str) -> str:
        """Journal a step cut off while it ran: re-run next if idempotent ('next'), else ask ('wait')."""
        if step.is_idempotent and not step.needs_person:
            await self.store.end_step(run.id, StepStatus.INTERRUPTED, error=f"{why}; re-running")
            return "next"
        await self.store.end_step(
            run.id, StepStatus.INTERRUPTED, error=f"{why}; it may have run",
            waiting={"kind": "resume", "prompt": f"{step.title}: may have run before the bot stopped",
                     "options": _opts(self._answers(step)["resume"])},
        )
        return "wait"

    async def stop(self, why: str) -> list[str]:
        """Start no new step; journal each step cut off by the stop as interrupted (it resumes as
        after a crash). Call after the incidents' tasks were cancelled; returns the step ids."""
        self.stopping = True
        stopped = []
        for run_id, (incident_id, step) in list(self._in_flight.items()):
            latest = (await self.store.latest_runs(incident_id)).get(step.id)
            if latest is None or latest.id != run_id or latest.status is not StepStatus.RUNNING:
                continue
            if await self._interrupted(latest, step, why) == "wait":
                inc = await self.store.incident(incident_id)
                if inc.status is Status.RUNNING:
                    await self.store.apply(incident_id, Event.WAIT, data={"step": step.id})
            stopped.append(step.id)
        self._in_flight.clear()
        return stopped

    async def _apply_answer(self, inc: Incident, phase: Phase, step: StepBase, run: StepRun) -> str:
        assert run.answer is not None and run.waiting is not None
        value, user = run.answer["value"], run.answer.get("user")
        kind = run.waiting["kind"]
        await self._resume(inc)
        if value == "abort":
            # Abort after a failure is giving up on it: the compensation's "failure" trigger.
            trigger = "failure" if kind in FAILURE_KINDS else "abort"
            reason = f"{user} gave up after {step.title!r} failed" if trigger == "failure" else f"aborted by {user}"
            await self.store.update_incident(inc.id, abort_reason=reason)
            inc = await self.store.incident(inc.id)
            await self._stop(inc, trigger, Event.ABORT, actor=user, data={"step": step.id, "reason": reason})
            return "end"
        if kind == "stability_failed":
            return await timed_steps.answer(self, inc, phase, step, run)
        if kind in ("choice", "manual"):
            captures = {"choice": value, "by": user}
            label = next((o["label"] for o in run.waiting.get("options", []) if o["value"] == value), value)
            captures["label"] = label
            await self.store.end_step(run.id, StepStatus.DONE, actor=user, captures=captures)
            return "next"
        if value == "skip":
            await self.store.end_step(run.id, StepStatus.SKIPPED, actor=user, error=None, captures={
                **run.captures, "skip_reason": f"skipped by {user} after it failed ({run.error or 'no error'})"})
            return "next"
        if value == "mark_done":
            await self.store.end_step(run.id, StepStatus.DONE, actor=user, error=None, captures={
                **run.captures, "note": f"marked done by {user} after the bot restarted while it ran"})
            return "next"
        # retry / rerun: a new attempt (a retry on a host group re-runs only its failed hosts)
        return await self._execute(inc, phase, step, await self.context(inc.id),
                                   prior=run if value == "retry" else None)

    async def _approval(self, inc: Incident, phase: Phase, step: ApprovalStep, run: StepRun) -> str:
        plan = self.binding_plan(inc)
        if (run.waiting or {}).get("plan_hash") != plan.hash:
            return await self._ask_approval(inc, phase, step, plan, previous=run)
        policy = self.policies.get(step.policy, DEFAULT_POLICY)
        clicks = [a for a in await self.store.approvals(inc.id) if a.counted]
        rejected = next((a for a in clicks if a.decision == "reject"), None)
        if rejected is not None:
            await self.store.end_step(run.id, StepStatus.FAILED, actor=rejected.user_id,
                                      error=f"rejected by {rejected.user_id}: {rejected.note}")
            await self._resume(inc)
            await self.store.apply(inc.id, Event.REJECT, actor=rejected.user_id,
                                   data={"note": rejected.note})
            return "end"
        votes = [Vote(a.user_id, frozenset(a.roles)) for a in clicks if a.decision == "approve"]
        state = evaluate(policy, votes, requester=inc.requester)
        if not state.met:
            return "wait"
        await self._resume(inc)
        await self.store.end_step(run.id, StepStatus.DONE, captures={
            "path": state.path, "approvers": [v.user_id for v in votes], "plan_hash": plan.hash})
        return "next"

    # ------------------------------------------------------------ the plan approvers approve

    def binding_plan(self, inc: Incident) -> Plan:
        """The rendered plan of this incident that approvals are bound to."""
        return binding_plan(self.runbook, self.targets[inc.target].settings, _incident_values(inc), inc.inputs,
                            policies=self.policies, redact=self.redact)

    async def _ask_approval(self, inc: Incident, phase: Phase, step: ApprovalStep, plan: Plan, *,
                            previous: StepRun | None = None) -> str:
        """Ask for approval of ``plan`` (its file in the thread); a previous ask of another plan is
        closed and the approvals it collected are void."""
        folder = self.artifacts_dir / inc.id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"plan_{plan.hash[:16]}.md"
        data = plan_markdown(plan).encode("utf-8")
        if not path.exists():
            await asyncio.to_thread(path.write_bytes, data)
            await self.store.add_artifact(inc.id, step_id=step.id, name=path.name, path=str(path),
                                          sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        waiting: dict[str, Any] = {"kind": "approval", "prompt": step.title, "policy": step.policy,
                                   **binding_fields(plan, str(path))}
        if previous is not None:
            old = previous.waiting or {}
            changed = describe_change(old, plan)
            reason = "void: the plan changed before the run started (" + "; ".join(changed) + ")"
            voided = await self.store.void_approvals(inc.id, reason=reason[:1000], keep_hash=plan.hash)
            waiting.update(changed=changed, voided=voided, previous_hash=old.get("plan_hash"))
            if previous.status is StepStatus.WAITING:
                await self.store.end_step(previous.id, StepStatus.SKIPPED, error=reason[:1000])
            await self.store.log(inc.id, "plan_changed", step_id=step.id,
                                 data={"changed": changed, "voided": voided, "plan_hash": plan.hash,
                                       "previous_hash": old.get("plan_hash")})
        run = await self.store.begin_step(inc.id, step.id, phase.id, status=StepStatus.WAITING, waiting=waiting)
        return await self._approval(inc, phase, step, run)

    async def _plan_changed_since_approval(self, inc: Incident, runs: Mapping[str, StepRun]) -> bool:
        """Before the first side effect: if the plan changed since it was approved, ask again."""
        for sid, r in runs.items():
            if r.status is not StepStatus.SKIPPED and sid in self._side_effect_ids:
                return False  # the run has started; approvals bind until then
        for phase, step in self.runbook.steps():
            done = runs.get(step.id)
            if isinstance(step, ApprovalStep) and done is not None and done.status is StepStatus.DONE:
                plan = self.binding_plan(inc)
                if done.captures.get("plan_hash") not in (None, plan.hash):
                    previous = replace(done, waiting={**(done.waiting or {}),
                                                      "plan_hash": done.captures["plan_hash"]})
                    await self._ask_approval(inc, phase, step, plan, previous=previous)
                    return True
        return False

    @property
    def _side_effect_ids(self) -> set[str]:
        return {s.id for _, s in self.runbook.steps() if s.has_side_effect}

    # ------------------------------------------------------------ executing

    async def _execute(self, inc: Incident, phase: Phase, step: StepBase, ctx: dict[str, Any], *,
                       prior: StepRun | None = None) -> str:
        if isinstance(step, ApprovalStep):
            return await self._ask_approval(inc, phase, step, self.binding_plan(inc))
        if isinstance(step, ManualStep) and not step.blocking:
            run = await self.store.begin_step(inc.id, step.id, phase.id)
            await self.store.end_step(run.id, StepStatus.DONE, captures={"noted": True})
            return "next"
        if isinstance(step, ChoiceStep | ManualStep):
            try:
                options = await self._options(inc, step, ctx)
            except ActionError as exc:
                run = await self.store.begin_step(inc.id, step.id, phase.id)
                return await self._failed(inc, step, run, exc)
            kind = "choice" if isinstance(step, ChoiceStep) else "manual"
            prompt = step.prompt if isinstance(step, ChoiceStep) else step.title
            waiting: dict[str, Any] = {"kind": kind, "prompt": prompt, "options": options}
            if isinstance(step, ChoiceStep):
                # The confirm dialog of each option shows the destructive steps it leads to, rendered.
                settings = self._target(inc, step).settings
                *each, generic = confirm_previews(self.runbook, settings, ctx, step.id,
                                                  [*(o["value"] for o in options), None], redact=self.redact)
                for option, preview in zip(options, each, strict=True):
                    if preview:
                        option["confirm"] = preview
                if generic:
                    waiting["confirm"] = generic
            if isinstance(step, ChoiceStep) and step.default is not None:
                waiting["default"] = render_text(step.default, ctx)
            suggested = next((o["value"] for o in options if o.get("suggested")), None)
            if suggested is not None and "default" not in waiting:
                waiting["default"] = suggested
            await self.store.begin_step(inc.id, step.id, phase.id, status=StepStatus.WAITING,
                                        waiting=waiting)
            return "wait"
        if isinstance(step, StabilityStep | WindowStep):
            return await timed_steps.begin(self, inc, phase, step, ctx)
        # A machine step: the attempt is committed before its side effect begins.
        run = await self.store.begin_step(inc.id, step.id, phase.id)
        # Until it ends, a stop of the bot journals this step as interrupted (see ``stop``).
        self._in_flight[run.id] = (inc.id, step)
        # The view shows the step running before its side effect begins; its journal event
        # reaches the audit log with the next catch-up.
        await self._show(inc.id)
        started = time.monotonic()
        made = self._made[inc.id] = []
        try:
            result, output = await self._perform(inc, step, ctx, attempt=run.attempt, prior=prior)
            captures = self._captures(step, result, output)
            if "failed_hosts" in result:  # a host group: every host's result stays with the step
                captures.update(hosts=result["hosts"], failed_hosts=result["failed_hosts"])
        except (ActionError, TemplateError) as exc:
            self._in_flight.pop(run.id, None)
            return await self._failed(inc, step, run, exc, artifacts=made)
        finally:
            self._made.pop(inc.id, None)
        self._in_flight.pop(run.id, None)
        tail = output[-TAIL_CHARS:]
        if result.get("skipped"):  # the step found nothing to do (a notify without its webhook)
            await self.store.end_step(run.id, StepStatus.SKIPPED, captures={"skip_reason": str(result["skipped"])},
                                      output_tail=tail, duration=time.monotonic() - started)
            return "next"
        await self.store.end_step(
            run.id, StepStatus.DONE, captures=captures, output_tail=tail,
            output_digest=_digest(output), output_bytes=len(output.encode()),
            exit_status=result.get("exit_status"), duration=time.monotonic() - started, artifacts=made,
        )
        return "next"

    async def _failed(self, inc: Incident, step: StepBase, run: StepRun, exc: Exception, *,
                      artifacts: list[ArtifactFile] | None = None) -> str:
        out = ""
        if isinstance(exc, CommandFailed | CommandTimeout | HostsFailed | PreflightFailed):
            out = self.redact(exc.stdout + exc.stderr)[-TAIL_CHARS:]
        error = self.redact(f"{type(exc).__name__}: {exc}")
        exit_status = exc.exit_status if isinstance(exc, CommandFailed) else None
        # A host group's failure keeps every host's result: the view lists them, Retry reads them.
        extra: dict[str, Any] = {"artifacts": artifacts}
        if isinstance(exc, HostsFailed):
            extra["captures"] = {"hosts": exc.hosts, "failed_hosts": exc.failed}
        if step.on_failure == "continue":
            await self.store.end_step(run.id, StepStatus.FAILED, error=error, output_tail=out,
                                      exit_status=exit_status, **extra)
            return "next"
        if step.on_failure == "stop":
            await self.store.end_step(run.id, StepStatus.FAILED, error=error, output_tail=out,
                                      exit_status=exit_status, **extra)
            inc = await self.store.incident(inc.id)
            await self._stop(inc, "failure", Event.FAIL, actor=None,
                             data={"step": step.id, "error": error, "reason": f"{step.title} failed: {error}"})
            return "end"
        waiting: dict[str, Any] = {"kind": "failure", "prompt": f"{step.title} failed", "error": error,
                                   # A failed preflight is fixed on the target and retried, never skipped.
                                   "options": _opts(("retry", "abort") if isinstance(step, PreflightStep)
                                                    else self._answers(step)["failure"])}
        if step.destructive:  # Retry's confirm dialog shows what runs again, rendered
            settings = self._target(inc, step).settings
            [preview] = confirm_previews(self.runbook, settings, await self.context(inc.id), step.id, [None],
                                         redact=self.redact, including=True)
            if preview:
                waiting["confirm"] = preview
        await self.store.end_step(run.id, StepStatus.FAILED, error=error, output_tail=out,
                                  exit_status=exit_status, **extra, waiting=waiting)
        return "wait"

    def _answers(self, step: StepBase) -> dict[str, tuple[str, ...]]:
        """The answers a question of this step offers (no Abort inside the compensation)."""
        return COMPENSATION_ANSWERS if self.runbook.is_compensation(step.id) else ANSWERS

    def _target(self, inc: Incident, step: StepBase) -> Target:
        return self.targets[step.target or inc.target]

    async def _options(self, inc: Incident, step: ChoiceStep | ManualStep, ctx: dict[str, Any]) -> list[dict[str, str]]:
        if isinstance(step, ManualStep):
            return _opts(self._answers(step)["manual"])
        opts = [o.model_dump() for o in step.options]
        if step.options_from is not None and step.options_from.op == "github_releases":
            listed, pick = await release_options(self._record_context(inc, step),
                                                 render_value(step.options_from.params, ctx))
            return opts + [{**o, "suggested": "yes"} if o["value"] == pick else o for o in listed]
        if step.options_from is not None:
            target = self._target(inc, step)
            params = render_value(step.options_from.params, ctx)
            res = await sqlite_op(target.transport, step.options_from.op, params,
                                  timeout=step.timeout, python=target.settings.python,
                                  cwd=target.settings.workdir)
            rows = _rows(res)
            for row in rows:
                if isinstance(row, dict):
                    value = str(row.get(step.options_from.value, ""))
                    label = str(row.get(step.options_from.label, value))
                    desc = str(row.get("description") or " · ".join(
                        f"{k} {row[k]}" for k in ("bytes", "mtime_iso", "count") if k in row))
                    if row.get("note"):
                        desc += f" ({row['note']})"
                    opt = {"value": value, "label": label, "description": desc}
                    # An option the target cannot support is shown with its reason, never picked.
                    opt.update({k: str(row[k]) for k in ("disabled", "suggested") if row.get(k)})
                    same = next((o for o in opts if o["value"] == value), None)
                    if same is not None:  # the target's word on a static option refines it
                        same.update(opt)
                    else:
                        opts.append(opt)
        return opts

    async def _perform(self, inc: Incident, step: StepBase, ctx: dict[str, Any], *,
                       attempt: int | None = None, prior: StepRun | None = None) -> tuple[dict[str, Any], str]:
        """Do what the step says; returns (result, whole output). ``attempt`` names its artifacts;
        ``prior`` is the failed attempt a retry follows."""
        # The side-effect boundary: a replica that lost the incident's lease stops here.
        await self.store.check_lease(inc.id)
        if isinstance(step, WaitStep):
            await asyncio.sleep(step.seconds * self.time_scale)
            return {"waited": step.seconds * self.time_scale}, ""
        target = self._target(inc, step)
        if isinstance(step, CommandStep) and target.hosts:
            return await self._perform_group(inc, step, target, command_text(step, ctx), attempt, prior)
        if isinstance(step, CommandStep):
            command = command_text(step, ctx)
            res = await target.transport.run(command, timeout=step.timeout, cwd=target.settings.workdir)
            res = replace(res, stdout=self.redact(res.stdout), stderr=self.redact(res.stderr))
            output = res.stdout + (("\n[stderr]\n" + res.stderr) if res.stderr else "")
            await self._artifact(inc, step, "log", output, attempt)
            result: dict[str, Any] = {"exit_status": res.exit_status, "stdout": res.stdout,
                                      "stderr": res.stderr}
            try:
                result["json"] = json.loads(res.stdout)
            except ValueError:
                pass
            if res.exit_status not in step.expect_exit:
                raise CommandFailed(f"exit status {res.exit_status}", exit_status=res.exit_status,
                                    stdout=res.stdout, stderr=res.stderr)
            return result, output
        if isinstance(step, HttpStep):
            req = http_request_of(step, ctx)
            url = req.url
            resp = await http_request(step.method, url, headers=req.headers, json_body=req.json_body,
                                      timeout=step.timeout, client=self.http)
            path = await self._artifact(inc, step, "body", resp.text, attempt)
            result = resp.as_dict()
            result["artifact"] = str(path)
            if resp.status not in step.expect_status:
                raise HttpCheckFailed(f"{step.method} {url} answered {resp.status}, expected "
                                      f"{step.expect_status}", status=resp.status, body=resp.text[-500:])
            return result, self.redact(resp.text[:TAIL_CHARS])
        if isinstance(step, SqliteStep):
            params = sqlite_params(step, ctx)
            out = await sqlite_op(target.transport, step.op, params, timeout=step.timeout,
                                  python=target.settings.python, cwd=target.settings.workdir)
            text = self.redact(json.dumps(out, indent=1, sort_keys=True, default=str))
            await self._artifact(inc, step, "json", text, attempt)
            if step.op in CHECK_OPS and out.get("ok") is False and step.on_failure != "continue":
                # A check that finds a problem fails its step (the backup's verification stops the
                # incident before any restore); "continue" steps record the result and go on.
                raise SqliteOpFailed(f"sqlite {step.op} of {params['db']} found problems (ok: false)",
                                     op=step.op, detail=text[-TAIL_CHARS:])
            return out, text
        if isinstance(step, PreflightStep):
            findings = await run_preflight(target.settings, target.transport, http=self.http, timeout=step.timeout,
                                           hosts=target.hosts or None)
            text = report(findings)
            await self._artifact(inc, step, "log", text, attempt)
            result = findings_result(findings)
            if result["failed"]:
                raise PreflightFailed(self.redact(failure_message(findings)), findings=findings)
            return result, text
        if isinstance(step, RECORD_STEPS):
            return await perform_record(self._record_context(inc, step), inc, step, ctx)
        raise EngineError(f"step {step.id!r}: kind {type(step).__name__} cannot run here")

    async def _perform_group(self, inc: Incident, step: CommandStep, target: Target, command: str,
                             attempt: int | None, prior: StepRun | None) -> tuple[dict[str, Any], str]:
        """A command on every host of a group at once; ``HostsFailed`` names the hosts that failed.

        A retry runs again only on the hosts that failed before: a command is not assumed
        idempotent, and the hosts where it succeeded keep that result (marked with its attempt).
        """
        kept: dict[str, dict[str, Any]] = {}
        if prior is not None and isinstance(prior.captures.get("hosts"), list):
            kept = {h["host"]: {**h, "attempt": h.get("attempt", prior.attempt)}
                    for h in prior.captures["hosts"] if isinstance(h, dict) and h.get("ok")}
        todo = {name: t for name, t in target.hosts.items() if name not in kept}
        results = await run_on_hosts(todo, command, timeout=step.timeout, cwd=target.settings.workdir,
                                     concurrency=target.settings.group_concurrency)
        fresh = {r.host: self._host_record(step, r, attempt) for r in results}
        records = [kept.get(name) or fresh[name] for name in target.hosts]
        failed = [r["host"] for r in records if not r["ok"]]
        sections = [f"== {r.host}: {_host_state(fresh[r.host])} ==\n" + self.redact(
            r.stdout + (("\n[stderr]\n" + r.stderr) if r.stderr else "")) for r in results]
        summary = (f"{len(records) - len(failed)}/{len(records)} hosts ok"
                   + (f" ({len(kept)} kept from an earlier attempt)" if kept else "")
                   + (f"; failed: {', '.join(f'{h} ({_host_state(fresh[h])})' for h in failed)}" if failed else ""))
        output = "\n".join([*sections, summary])
        await self._artifact(inc, step, "log", output, attempt)
        if failed:
            raise HostsFailed(f"failed on {len(failed)} of {len(records)} hosts: "
                              + ", ".join(f"{h} ({_host_state(fresh[h])})" for h in failed),
                              hosts=records, failed=failed, output=output,
                              outcome_unknown=any(fresh[h].get("outcome_unknown") for h in failed))
        return {"exit_status": 0, "stdout": output, "stderr": "", "hosts": records, "failed_hosts": []}, output

    def _host_record(self, step: CommandStep, r: HostResult, attempt: int | None) -> dict[str, Any]:
        ok = r.error is None and r.exit_status in step.expect_exit
        tail = self.redact(r.stdout + (("\n[stderr]\n" + r.stderr) if r.stderr else ""))[-HOST_TAIL_CHARS:]
        record: dict[str, Any] = {"host": r.host, "ok": ok, "exit_status": r.exit_status,
                                  "duration": round(r.duration, 3), "tail": tail, "attempt": attempt}
        if r.error is not None:
            record["error"] = self.redact(r.error)
            record["outcome_unknown"] = r.outcome_unknown
        return record

    def _record_context(self, inc: Incident, step: StepBase) -> RecordContext:
        target = self._target(inc, step)
        return RecordContext(self.store, self.runbook, target.settings, target.transport, self.records,
                             self.audit, self.time_scale, self.http, self._changed, self.names)

    def _captures(self, step: StepBase, result: dict[str, Any], output: str) -> dict[str, Any]:
        captures: dict[str, Any] = {k: result[k] for k in getattr(step, "produces", ()) if k in result}
        for name, spec in step.captures.items():
            if isinstance(spec, CaptureFrom):
                text = result.get(spec.source, "") if isinstance(result.get(spec.source), str) else output
                m = re.search(spec.regex, text, re.MULTILINE)
                if not m:
                    raise TemplateError(f"capture {name!r}: /{spec.regex}/ found nothing in {spec.source}")
                captures[name] = m.group(1) if m.groups() else m.group(0)
            else:
                captures[name] = result if spec == "result" else lookup(result, spec)
        return captures

    async def _artifact(self, inc: Incident, step: StepBase, ext: str, text: str, attempt: int | None) -> Path:
        folder = self.artifacts_dir / inc.id
        folder.mkdir(parents=True, exist_ok=True)
        made = self._made.get(inc.id) if attempt is not None else None
        if attempt is None:  # a step performed outside a run of its own (maintenance of a timed step)
            runs = await self.store.latest_runs(inc.id)
            attempt = runs[step.id].attempt if step.id in runs else 1
        path = folder / f"{step.id}.{attempt}.{ext}"
        data = self.redact(text).encode("utf-8", "replace")
        await asyncio.to_thread(path.write_bytes, data)
        digest = hashlib.sha256(data).hexdigest()
        if made is not None:  # tracked with the attempt's end, in the same transaction
            made.append(ArtifactFile(step.id, path.name, str(path), digest, len(data), utcnow()))
        else:
            await self.store.add_artifact(inc.id, step_id=step.id, name=path.name, path=str(path),
                                          sha256=digest, size=len(data))
        return path


def _incident_values(inc: Incident) -> dict[str, Any]:
    """What templates see as ``incident.*``."""
    return {"id": inc.id, "stamp": inc.stamp, "reason": inc.reason, "requester": inc.requester or "",
            "severity": inc.severity or "", "decision": inc.decision or ""}


def _host_state(record: dict[str, Any]) -> str:
    """``exit 0``, ``exit 3`` or the error that stopped the host."""
    return str(record.get("error") or f"exit {record.get('exit_status')}")


def _settled(run: StepRun | None) -> bool:
    """A step run that needs nothing more: done, skipped, or failed with ``on_failure: continue``."""
    if run is None:
        return False
    return run.status in (StepStatus.DONE, StepStatus.SKIPPED) or (
        run.status is StepStatus.FAILED and run.waiting is None)


def _rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of a listing result as dicts: backups, or a query's columns zipped with rows."""
    for key in ("backups", "items"):
        if isinstance(res.get(key), list):
            return [r for r in res[key] if isinstance(r, dict)]
    cols = res.get("columns") or []
    return [dict(zip(cols, r, strict=False)) if isinstance(r, list) else r for r in res.get("rows") or []]


def _opts(values: tuple[str, ...]) -> list[dict[str, str]]:
    labels = {"retry": "Retry", "skip": "Skip", "abort": "Abort", "rerun": "Re-run",
              "mark_done": "Mark done", "done": "Done"}
    return [{"value": v, "label": labels.get(v, v), "description": ""} for v in values]
