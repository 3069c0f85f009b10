"""The drill's scheduler: the same jobs as the bot's, run in-process with compressed time.

The stability series and the extended watch run as persistent APScheduler jobs in a job
store beside the drill's state; when a series ends the job kicks the drill's loop, which
calls ``engine.run`` again, exactly as the Slack bot does. The simulated incident
commander answers a failed series: Extend monitoring (up to twice), then Continue anyway,
and the drill notes it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from bot.clock.flows import ClockRuntime, fan_out
from bot.clock.scheduler import JobScheduler, jobs_url
from bot.clock.settings import ClockSettings
from bot.clock.stability import StabilitySettings, check_line
from bot.clock.steps import CONTINUE, EXTEND
from bot.core.approvals import DEFAULT_POLICY
from bot.core.engine import Engine, Waiting

#: The drill's watch is shorter than the plan's two hours (it is still compressed by the time scale).
#: The sandbox shares its machine with whatever else runs there: a loopback answer slower than 100 ms
#: says the machine is busy, not that the rollback is unstable, so the baseline floor is a second.
DRILL_STABILITY = StabilitySettings.model_validate(
    {"watch_seconds": 300, "watch_interval_seconds": 60, "baseline_floor_ms": 1000}
)
EXTENDS_BEFORE_CONTINUE = 2
DRILL_IC = "U0DRILLIC"


@dataclass
class DrillClock:
    """The drill's scheduler and its way of waiting for scheduled work."""

    runtime: ClockRuntime
    #: Where each stability check is printed as it is recorded; None when a view shows them.
    out: TextIO | None
    kicked: asyncio.Event = field(default_factory=asyncio.Event)
    shown: set[int] = field(default_factory=set)
    extends: int = 0
    notes: list[str] = field(default_factory=list)

    @classmethod
    async def start(cls, engine: Engine, root: Path, *, time_scale: float, out: TextIO | None = None,
                    stability: StabilitySettings | None = None) -> DrillClock:
        """Start the scheduler (jobs in ``root/state.jobs.db``) and attach it to the engine."""
        jobs = JobScheduler(jobs_url(str(root / "state.db")), time_scale=time_scale)
        holder: list[DrillClock] = []

        async def kick(incident_id: str) -> None:
            holder[0].kicked.set()

        runtime = ClockRuntime(engine=engine, jobs=jobs, settings=ClockSettings.model_validate({}),
                               stability=stability or DRILL_STABILITY, policy=DEFAULT_POLICY, kick=kick)
        clock = cls(runtime, out)
        holder.append(clock)
        engine.clock_host = runtime
        if out is None:
            pass  # the caller's view shows the checks
        elif engine.on_change is not None:
            engine.on_change = fan_out(clock.show_checks, engine.on_change)
        else:
            engine.on_change = clock.show_checks
        await runtime.start()
        return clock

    def before_run(self) -> None:
        """Forget earlier kicks: only those after this ``engine.run`` count."""
        self.kicked.clear()

    async def show_checks(self, incident_id: str) -> None:
        """Print each stability check once, as it is recorded."""
        if self.out is None:
            return
        for c in await self.runtime.store.stability_checks(incident_id):
            if c.id not in self.shown:
                self.shown.add(c.id)
                self.out.write(f"    {c.step_id} {check_line(c, _planned(c.step_id, self))}\n")
                self.out.flush()

    async def handle(self, engine: Engine, incident_id: str, w: Waiting, *, timeout: float) -> bool:
        """Deal with a timed step's wait; False when ``w`` is not one."""
        if w.kind in ("stability", "window"):
            try:
                await asyncio.wait_for(self.kicked.wait(), timeout)
            except TimeoutError:
                raise TimeoutError(f"{w.step_id}: no scheduled job settled it within {timeout:.0f} s") from None
            return True
        if w.kind == "stability_failed":
            answer = EXTEND if self.extends < EXTENDS_BEFORE_CONTINUE else CONTINUE
            self.extends += answer == EXTEND
            self.notes.append(f"Stability: {w.prompt}: {w.error}; the drill's commander chose {answer}")
            await engine.answer(incident_id, w.step_id, answer, user=DRILL_IC)
            return True
        return False

    async def summary(self, incident_id: str) -> list[str]:
        """One line per stability series: its figures."""
        lines = []
        for run in await self.runtime.store.step_runs(incident_id):
            c = run.captures
            if "availability" in c and run.status.value == "done":
                lines.append(f"Stability {run.step_id}: {c.get('checks_ok')}/{c.get('checks_planned')} ok, "
                             f"{c.get('checks_missed')} missed, availability {c.get('availability')}%, "
                             f"error rate {c.get('error_rate')}%, p50 {c.get('p50_ms')} ms, "
                             f"p95 {c.get('p95_ms')} ms")
        return lines + self.notes

    async def close(self) -> None:
        """Stop the scheduler."""
        await self.runtime.close()


def _planned(step_id: str, clock: DrillClock) -> int:
    step = clock.runtime.engine.runbook.step(step_id)
    s = clock.runtime.stability
    checks = getattr(step, "checks", None)
    if checks:
        return int(checks)
    if getattr(step, "mode", "gate") == "watch":
        return max(1, round(s.watch_seconds / s.watch_interval_seconds))
    return s.checks
