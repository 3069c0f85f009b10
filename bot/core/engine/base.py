"""What the engine holds and what every part of it uses: the store, the runbook, the targets and
the services executors see (``StepHost``); the view and audit catch-ups; the end of a run,
through the runbook's compensation when it applies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bot.clock.host import ClockHost
from bot.core.approvals import DEFAULT_POLICY, ApprovalPolicy
from bot.core.compensation import left_by
from bot.core.executors.base import EngineError
from bot.core.lifecycle import Event, Status, StepStatus
from bot.core.redaction import Redactor, env_secrets
from bot.core.runbook import ApprovalStep, Runbook, StepBase, WindowStep
from bot.core.targets import Target
from bot.plan.binding import binding_plan
from bot.plan.render import Plan
from bot.record.audit import AuditSink
from bot.record.records import Records, RecordsConfig
from bot.slack.people import Names
from bot.state.store import ArtifactFile, Incident, StepRun, Store

log = logging.getLogger(__name__)

#: Between steps, the view and the audit log catch up at most this often (changes coalesced).
CATCH_UP_SECONDS = 0.1

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


class AnswerRefused(EngineError):
    """An answer that does not fit what the step waits for; nothing changed."""


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


class EngineBase:
    """The engine's state and services, shared by its parts (``Engine`` puts them together)."""

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
        clock_host: ClockHost | None = None,
        records: Records | None = None,
        redact: Callable[[str], str] | None = None,
        names: Names | None = None,
    ) -> None:
        self.store = store
        self.runbook = runbook
        self.policies = dict(policies or {"default": DEFAULT_POLICY})
        self.targets = targets
        self.artifacts_dir = artifacts_dir
        self.time_scale = time_scale
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

    @property
    def http(self) -> httpx.AsyncClient:
        """The shared HTTP client (made on first use when none was given)."""
        if self._http is None:
            self._http = httpx.AsyncClient()
        return self._http

    def lock(self, incident_id: str) -> asyncio.Lock:
        """The lock that serialises changes to one incident's steps (scheduled jobs take it too)."""
        return self._locks.setdefault(incident_id, asyncio.Lock())

    def target(self, inc: Incident, step: StepBase) -> Target:
        """The target a step runs on (its own, else the incident's)."""
        return self.targets[step.target or inc.target]

    def answers(self, step: StepBase) -> dict[str, tuple[str, ...]]:
        """The answers a question of this step offers (no Abort inside the compensation)."""
        return COMPENSATION_ANSWERS if self.runbook.is_compensation(step.id) else ANSWERS

    def binding_plan(self, inc: Incident) -> Plan:
        """The rendered plan of this incident that approvals are bound to."""
        return binding_plan(self.runbook, self.targets[inc.target].settings, incident_values(inc), inc.inputs,
                            policies=self.policies, redact=self.redact)

    async def context(self, incident_id: str) -> dict[str, Any]:
        """The values templates see: target, incident, inputs, captures, choices."""
        inc = await self.store.incident(incident_id)
        return self._context(inc, await self.store.latest_runs(incident_id))

    def _context(self, inc: Incident, latest: Mapping[str, StepRun]) -> dict[str, Any]:
        captures, choices = left_by(latest, unasked=True)  # a choice not asked is null, not missing
        return {
            "target": self.targets[inc.target].settings.template_values(),
            "incident": incident_values(inc),
            "inputs": inc.inputs,
            "captures": captures,
            "choices": choices,
        }

    # ------------------------------------------------------------ the view and the audit log

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

    async def changed(self, incident_id: str) -> None:
        """The view and the audit log catch up with the incident now."""
        await self._changed(incident_id)

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

    # ------------------------------------------------------------ the end of a run

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

    async def _resume(self, inc: Incident) -> Incident:
        if inc.status is Status.WAITING:
            return await self.store.apply(inc.id, Event.RESUME)
        return inc


def incident_values(inc: Incident) -> dict[str, Any]:
    """What templates see as ``incident.*``."""
    return {"id": inc.id, "stamp": inc.stamp, "reason": inc.reason, "requester": inc.requester or "",
            "severity": inc.severity or "", "decision": inc.decision or ""}
