"""The engine's side of the steps the clock drives: ``stability`` and ``window``.

Such a step does not block the engine: it records a waiting step run (kind
``stability`` with the series plan, or ``window`` with the start time), asks the
clock host to schedule its job and returns "wait". The scheduled job records the
checks and, when the series ends or fails (or the window opens), settles the run and
lets the engine go on. So the engine's model stays "run until waiting, state in the
store", and a restart finds everything in the store and the job store.

A failed series waits for a person (kind ``stability_failed``): Extend monitoring
(a new series), Re-enable maintenance (runs the runbook's maintenance step again and
keeps the hold) or Continue anyway.
"""

from __future__ import annotations

from typing import Any

from actions.errors import ActionError
from bot.clock.host import ClockHost
from bot.clock.stability import SeriesPlan, summary
from bot.core.executors.base import Call, StepExecutor, StepHost, register
from bot.core.lifecycle import StepStatus
from bot.core.runbook import Phase, StabilityStep, StepBase, WindowStep
from bot.core.templating import TemplateError, render_text
from bot.state.store import Incident, StepRun

#: Waiting kinds of the timed steps.
KINDS = ("stability", "stability_failed", "window")

EXTEND, MAINTENANCE, CONTINUE = "extend", "maintenance", "continue"
FAILED_OPTIONS = [
    {"value": EXTEND, "label": "Extend monitoring", "description": "run the checks again before going on"},
    {"value": MAINTENANCE, "label": "Re-enable maintenance", "description": "put maintenance mode back on; hold"},
    {"value": CONTINUE, "label": "Continue anyway", "description": "go on to the next phase despite the failure"},
]
HELD_OPTIONS = [FAILED_OPTIONS[0], FAILED_OPTIONS[2],
                {"value": "abort", "label": "Abort", "description": "stop the rollback here"}]


class NoScheduler(Exception):
    """A timed step was reached by an engine without a scheduler."""


def _baseline(step: StabilityStep, ctx: dict[str, Any]) -> float | None:
    if not step.baseline:
        return None
    try:
        value = float(render_text(step.baseline, ctx))
    except (TemplateError, ValueError):
        return None  # the snapshot before the rollback failed: no baseline to compare with
    return value if value > 0 else None


def series_plan(host: ClockHost, step: StabilityStep, ctx: dict[str, Any]) -> SeriesPlan:
    """The plan of a new series from the step, the settings and the captures so far."""
    s = host.stability
    gate = step.mode == "gate"
    interval = step.interval or (s.interval_seconds if gate else s.watch_interval_seconds)
    checks = step.checks or (s.checks if gate else max(1, round(s.watch_seconds / s.watch_interval_seconds)))
    return SeriesPlan(
        url=render_text(step.url, ctx),
        headers={k: render_text(v, ctx) for k, v in step.headers.items()},
        mode=step.mode, checks=checks, interval=host.scaled(interval),
        started_at=host.now().isoformat(), timeout=min(step.timeout, s.check_timeout_seconds),
        max_latency_ms=step.max_latency_ms or s.max_latency_ms, baseline_ms=_baseline(step, ctx),
        baseline_multiple=step.baseline_multiple or s.baseline_multiple, baseline_floor_ms=s.baseline_floor_ms,
        failures_allowed=s.failures_allowed if step.failures_allowed is None else step.failures_allowed,
        expect_status=list(step.expect_status), status_field=step.status_field,
        expect_value=list(step.expect_value), maintenance_step=step.maintenance_step,
    )


async def begin(engine: StepHost, inc: Incident, phase: Phase, step: StepBase, ctx: dict[str, Any]) -> str:
    """Start a timed step: record the waiting run, schedule its job; 'wait' (or 'next')."""
    host = engine.clock_host
    store = engine.store
    if host is None:
        run = await store.begin_step(inc.id, step.id, phase.id)
        return await engine.failed(inc, step, run, NoScheduler(
            f"step {step.id!r} needs the scheduler, and this engine has none"))
    if isinstance(step, WindowStep):
        at = await host.window_start(inc)
        if at is None or at <= host.now():
            run = await store.begin_step(inc.id, step.id, phase.id)
            await store.end_step(run.id, StepStatus.DONE, captures={"window_start": host.now().isoformat()})
            return "next"
        run = await store.begin_step(inc.id, step.id, phase.id, status=StepStatus.WAITING, waiting={
            "kind": "window", "prompt": step.title, "at": at.isoformat(), "options": []})
        await host.window_waiting(inc.id, run.id, at)
        return "wait"
    assert isinstance(step, StabilityStep)
    try:
        plan = series_plan(host, step, ctx)
    except TemplateError as exc:
        run = await store.begin_step(inc.id, step.id, phase.id)
        return await engine.failed(inc, step, run, exc)
    run = await store.begin_step(inc.id, step.id, phase.id, status=StepStatus.WAITING, waiting={
        "kind": "stability", "prompt": step.title, "plan": plan.to_dict(), "options": []})
    await host.series_started(inc.id, run.id, plan.start)
    return "wait"


async def answer(engine: StepHost, inc: Incident, phase: Phase, step: StepBase, run: StepRun) -> str:
    """Act on the answer to a failed series: extend, re-enable maintenance, or continue."""
    assert run.answer is not None and run.waiting is not None and isinstance(step, StabilityStep)
    value, user = run.answer["value"], run.answer.get("user")
    store = engine.store
    if value == EXTEND:
        await store.log(inc.id, "stability_extended", actor=user, step_id=step.id)
        return await begin(engine, inc, phase, step, await engine.context(inc.id))
    figures = dict(run.waiting.get("figures") or {})
    if value == CONTINUE:
        await store.end_step(run.id, StepStatus.DONE, actor=user, captures={
            **figures, "passed": False, "continued_by": user})
        return "next"
    if value == MAINTENANCE:
        prompt = f"Maintenance mode is on again (by {user}); the next phase stays held"
        error = run.waiting.get("error")
        maint_id = run.waiting.get("plan", {}).get("maintenance_step") or step.maintenance_step
        try:
            if not maint_id:
                raise NoScheduler("this stability step names no maintenance_step to run")
            maint = engine.runbook.step(maint_id)
            ctx = await engine.context(inc.id)
            result, _output = await engine.perform(Call(engine, inc, engine.runbook.phase_of(maint_id), maint, ctx))
            await store.log(inc.id, "maintenance_reenabled", actor=user, step_id=maint_id,
                            data={"exit_status": result.get("exit_status")})
        except (ActionError, TemplateError, NoScheduler, KeyError) as exc:
            prompt = f"Re-enabling maintenance mode failed: {type(exc).__name__}: {exc}"[:400]
        again = await store.begin_step(inc.id, step.id, phase.id)
        await store.end_step(again.id, StepStatus.FAILED, error=error, waiting={
            "kind": "stability_failed", "prompt": prompt, "error": error, "options": HELD_OPTIONS,
            "plan": run.waiting.get("plan"), "figures": figures})
        return "wait"
    raise ValueError(f"unknown answer {value!r} to a failed stability series")


def failed_waiting(plan: SeriesPlan, checks: list[Any], *, index: int, reason: str, mention: str) -> dict[str, Any]:
    """What a failed series asks: the three buttons, the figures so far, the mention."""
    figures = {**summary(checks, plan), "passed": False}
    return {
        "kind": "stability_failed",
        "prompt": f"Stability check {index + 1}/{plan.checks} failed — the next phase is held",
        "error": reason, "options": FAILED_OPTIONS, "plan": plan.to_dict(), "figures": figures,
        "mention": mention,
    }


@register(StabilityStep, WindowStep)
class TimedExecutor(StepExecutor):
    """Stability and window steps: a waiting run the clock settles (see the module's docstring)."""

    async def start(self, call: Call) -> str:
        """Record the waiting run and schedule its job."""
        return await begin(call.host, call.inc, call.phase, call.step, call.ctx)

    async def answer(self, host: StepHost, inc: Incident, phase: Phase, step: StepBase, run: StepRun) -> str | None:
        """The answer to a failed series; None for the engine's own questions (a failure, a resume)."""
        assert run.waiting is not None
        if run.waiting["kind"] != "stability_failed":
            return None
        return await answer(host, inc, phase, step, run)
