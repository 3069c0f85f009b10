"""A bot without Slack for clock tests: store, engine, job scheduler on files, a manual clock.

``ClockEnv.open`` can be called again on the same folder to play a restart: the state
and the job store are files, the clock is handed over.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actions.local import LocalTransport
from bot.clock.flows import ClockRuntime
from bot.clock.scheduler import JobScheduler, ManualClock, jobs_url
from bot.clock.settings import ClockSettings
from bot.clock.stability import StabilitySettings
from bot.core.approvals import DEFAULT_POLICY
from bot.core.engine import Engine, Target
from bot.core.runbook import parse_runbook
from bot.core.targets import TargetSettings
from bot.record.records import Records, RecordsConfig
from bot.state.store import Incident, Store

T0 = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)  # a Wednesday


@dataclass
class ClockEnv:
    """One bot process's worth of clock machinery."""

    root: Path
    store: Store
    engine: Engine
    runtime: ClockRuntime
    clock: ManualClock
    transport: LocalTransport
    kicks: list[str] = field(default_factory=list)

    @classmethod
    async def open(cls, root: Path, runbook: str, *, clock: ManualClock | None = None, health_url: str = "",
                   stability: dict[str, Any] | None = None, settings: dict[str, Any] | None = None,
                   mention: Any = None) -> ClockEnv:
        """Open (or reopen) the bot on ``root``; the scheduler starts and reconciles."""
        workdir = root / "app"
        workdir.mkdir(parents=True, exist_ok=True)
        store = await Store.open(str(root / "state.db"))
        target = TargetSettings(name="t1", transport="local", workdir=str(workdir),
                                health_url=health_url or "http://127.0.0.1:9/health")
        transport = LocalTransport(name="t1")
        records = Records.open(RecordsConfig.model_validate(
            {"audit_log": root / "logs" / "governance.jsonl", "evidence_root": root / "evidence"}))
        engine = Engine(store, parse_runbook(runbook), {"t1": Target(target, transport)},
                        artifacts_dir=root / "artifacts", records=records)
        clock = clock or ManualClock(T0)
        jobs = JobScheduler(jobs_url(str(root / "state.db")), clock=clock)
        kicks: list[str] = []

        async def kick(incident_id: str) -> None:
            kicks.append(incident_id)
            await engine.run(incident_id)

        runtime = ClockRuntime(
            engine=engine, jobs=jobs, settings=ClockSettings.model_validate(settings or {}),
            # A busy machine's health answer can take hundreds of ms: a test that judges latency sets its own floor.
            stability=StabilitySettings.model_validate({"baseline_floor_ms": 1000, **(stability or {})}),
            policy=DEFAULT_POLICY, kick=kick,
            **({"mention": mention} if mention else {}))
        engine.clock_host = runtime
        engine.on_change = runtime.on_change
        await runtime.start()
        return cls(root, store, engine, runtime, clock, transport, kicks)

    async def close(self) -> None:
        """Stop as a crash would leave it: nothing settled, jobs in their store."""
        await self.runtime.close()
        await self.transport.close()
        await self.store.close()

    @property
    def workdir(self) -> Path:
        """The target's working directory."""
        return self.root / "app"

    async def incident(self, *, decision: str = "IMMEDIATE", severity: str = "P1") -> Incident:
        """A new incident on t1."""
        return await self.store.create_incident(target="t1", runbook="t", severity=severity, decision=decision,
                                                requester="U0REQ", reason="test", now=self.clock.now())

    async def approve(self, incident_id: str) -> None:
        """The plan's two approvals."""
        await self.engine.approve(incident_id, user_id="U0LEAD", roles=["tech_lead"], decision="approve")
        await self.engine.approve(incident_id, user_id="U0PO", roles=["product_owner"], decision="approve")

    async def tick(self, seconds: float = 0) -> list[str]:
        """Move the clock and fire the jobs that are due."""
        self.clock.advance(seconds)
        return await self.runtime.jobs.run_due()
