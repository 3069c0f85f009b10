"""The services' side of running as one replica of several (see ``bot.state.replicas``).

``ReplicaRuntime`` answers the coordinator's hooks with this process's engine, thread
publisher and clock: a lease taken or a nudge seen runs the incident under its fence
and syncs its thread; a lease lost cancels what this process was doing for it; the
scheduler lease wakes or pauses the job scheduler. Work for an incident held elsewhere
becomes a nudge to its holder.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from bot.clock.flows import ClockRuntime
from bot.clock.scheduler import install_claimer
from bot.core.engine import Engine
from bot.core.lifecycle import FINAL, Status
from bot.slack.publisher import ThreadPublisher
from bot.state.replicas import INCIDENT, Coordinator, Hooks
from bot.state.schema import Fence, LeaseLost, fenced
from bot.state.store import incidents

log = logging.getLogger(__name__)

Spawn = Callable[..., asyncio.Task[Any]]


@dataclass
class ReplicaRuntime:
    """Runs, under leases, the incidents this replica holds; nudges the holder of the others."""

    coordinator: Coordinator
    engine: Engine
    publisher: ThreadPublisher
    clock: ClockRuntime | None
    spawn: Spawn
    _runs: dict[str, set[asyncio.Task[Any]]] = field(default_factory=dict)
    _looked: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.coordinator.hooks = Hooks(acquired=self._acquired, nudged=self._acquired, lost=self._lost,
                                       scheduler=self._scheduler, releasable=self._releasable,
                                       poll=self._poll)
        self.publisher.fence_of = self.coordinator.fence
        self.publisher.elsewhere = self._elsewhere

    @property
    def name(self) -> str:
        """This replica's name in the lease table."""
        return self.coordinator.name

    async def start(self) -> None:
        """Claim job runs through the scheduler lease and start taking leases."""
        install_claimer(self.coordinator.claim)
        await self.coordinator.start()

    async def close(self) -> None:
        """Stop the runs, then give every lease up so a standby takes over at once."""
        running = [task for tasks in self._runs.values() for task in tasks]
        for task in running:
            task.cancel()
        if running:  # stopped before the leases go: a standby never overlaps with this process
            await asyncio.wait(running, timeout=5)
        await self.coordinator.close()
        install_claimer(None)

    # ------------------------------------------------------------ asked by the flows

    def kick(self, incident_id: str) -> asyncio.Task[Any]:
        """Let an incident go on: here if this replica holds (or can take) its lease, else by its holder."""
        return self.spawn(self._kick(incident_id), name=f"kick-{incident_id}")

    async def _kick(self, incident_id: str) -> None:
        fence = await self.coordinator.take(incident_id)
        if fence is None:
            await self.coordinator.nudge(INCIDENT + incident_id)
            return
        self._run(incident_id, fence)

    def _elsewhere(self, incident_id: str) -> None:
        self.spawn(self.coordinator.nudge(INCIDENT + incident_id), name=f"nudge-{incident_id}")

    # ------------------------------------------------------------ the coordinator's hooks

    def _run(self, incident_id: str, fence: Fence) -> None:
        async def run() -> None:
            with fenced(fence):
                try:
                    await self.engine.run(incident_id)
                except LeaseLost as exc:
                    log.warning("%s: stopped %s before its next step: %s", self.name, incident_id, exc)
                except sa.exc.DBAPIError as exc:  # the database went away mid-run: go on once it is back
                    log.warning("%s: run of %s interrupted by the database (%s); retrying", self.name,
                                incident_id, type(exc).__name__)
                    await asyncio.sleep(1.0)
                    if self.coordinator.holds(incident_id):
                        await self.coordinator.nudge(INCIDENT + incident_id)

        task = self.spawn(run(), name=f"run-{incident_id}")
        tasks = self._runs.setdefault(incident_id, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _acquired(self, incident_id: str, fence: Fence) -> None:
        self._run(incident_id, fence)  # the run ends by asking for a thread sync

    async def _lost(self, incident_id: str) -> None:
        for task in list(self._runs.pop(incident_id, set())):
            task.cancel()
        self.publisher.drop(incident_id)

    async def _scheduler(self, held: bool) -> None:
        if self.clock is not None:
            await self.clock.scheduler_held(held)

    def _poll(self) -> None:
        if self.clock is not None:
            self.clock.jobs.poll()

    async def _releasable(self, incident_id: str) -> bool:
        """An incident that ended, whose thread shows its end and that nothing here works on."""
        if self._runs.get(incident_id) or self.publisher.busy(incident_id):
            return False
        now = asyncio.get_running_loop().time()
        if now - self._looked.get(incident_id, 0.0) < 1.0:
            return False  # looked a moment ago: an incident waiting for a person stays held
        self._looked[incident_id] = now
        async with self.engine.store.engine.connect() as conn:
            row = (await conn.execute(sa.select(incidents.c.status, incidents.c.view, incidents.c.channel)
                                      .where(incidents.c.id == incident_id))).first()
        if row is None:
            return True
        if Status(row.status) not in FINAL:
            return False
        return not row.channel or bool((row.view or {}).get("final_synced"))
