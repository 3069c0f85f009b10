"""The clock's live side as the job functions see it: the runtime's fields and what every
clock flow asks of it (the time, the store, whether the incident is approved, who to mention).

``bot.clock.jobs`` runs the alarms against it; ``bot.clock.flows.ClockRuntime`` adds what
schedules them (reconcile, opening an incident, the maintenance window, Phase 7).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bot.clock.scheduler import JobScheduler
from bot.clock.settings import ClockSettings
from bot.clock.stability import StabilitySettings
from bot.core.approvals import ApprovalPolicy, Vote, describe_missing, evaluate
from bot.core.engine import Engine
from bot.core.lifecycle import StepStatus
from bot.core.roles import RoleLookupFailed
from bot.core.runbook import ApprovalStep
from bot.state.store import Incident, StepRun

log = logging.getLogger(__name__)

BOT_ACTOR = "rollback-bot"
P2_DECISION = "Within 2 hours"
P3_DECISION = "Next maintenance window"
P1_DECISION = "IMMEDIATE"

Kick = Callable[[str], Awaitable[None]]
Mention = Callable[[list[str]], str]


def _no_mentions(roles: list[str]) -> str:
    return ""


def iso(t: dt.datetime) -> str:
    """A time as ISO 8601 in UTC, as the journal and the incident's inputs keep it."""
    return t.astimezone(dt.UTC).isoformat()


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 time read back, UTC when it carries no zone."""
    t = dt.datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


@dataclass
class ClockBase:
    """The fields of a process's clock runtime and the questions every clock flow asks it."""

    engine: Engine
    jobs: JobScheduler
    settings: ClockSettings
    stability: StabilitySettings
    policy: ApprovalPolicy
    kick: Kick
    mention: Mention = _no_mentions
    http: httpx.AsyncClient | None = None
    #: The holders of a role (user groups resolved), to mention people one by one.
    holders: Callable[[str], Awaitable[list[str]]] | None = None
    phase7_opened: set[str] = field(default_factory=set)
    series_locks: dict[int, asyncio.Lock] = field(default_factory=dict)

    @property
    def store(self) -> Any:
        """The engine's store."""
        return self.engine.store

    def now(self) -> dt.datetime:
        """The clock's time."""
        return self.jobs.clock.now()

    def scaled(self, seconds: float) -> float:
        """Plan seconds as real seconds."""
        return self.jobs.scaled(seconds)

    async def changed(self, incident_id: str) -> None:
        """Tell the views (and ``reconcile``, through the engine's callback) that state moved."""
        await self.engine.changed(incident_id)

    async def approved(self, inc: Incident, latest: dict[str, StepRun] | None = None) -> bool:
        """True once the incident's approval gate is passed."""
        latest = latest if latest is not None else await self.store.latest_runs(inc.id)
        gates = [s.id for _, s in self.engine.runbook.steps() if isinstance(s, ApprovalStep)]
        return bool(gates) and all(g in latest and latest[g].status is StepStatus.DONE for g in gates)

    async def mention_except(self, roles: list[str], *, exclude: str | None) -> str:
        """Mentions of the holders of ``roles``, never of ``exclude`` (the requester, who does
        not approve their own rollback): people one by one when the groups resolve."""
        if self.holders is not None:
            try:
                people: list[str] = []
                for role in roles:
                    people += await self.holders(role)
                return " ".join(f"<@{u}>" for u in dict.fromkeys(people) if u != exclude)
            except RoleLookupFailed as exc:
                log.warning("escalation: %s; mentioning the groups", exc)
        text = self.mention(roles)
        return " ".join(w for w in text.split() if exclude is None or w != f"<@{exclude}>")

    async def missing(self, inc: Incident) -> str:
        """The approvals still needed, in words."""
        clicks = [a for a in await self.store.approvals(inc.id) if a.counted and a.decision == "approve"]
        state = evaluate(self.policy, [Vote(a.user_id, frozenset(a.roles)) for a in clicks], requester=inc.requester)
        return describe_missing(state)

    async def phase7_status(self, incident_id: str) -> tuple[list[dict[str, Any]], str | None]:
        """([{id, title, done_by, done_at}], due) of an incident's Phase 7 items."""
        events = await self.store.events(incident_id)
        opened = next((e for e in events if e.kind == "phase7_opened"), None)
        if opened is None:
            return [], None
        done = {e.data.get("item"): e for e in events if e.kind == "phase7_done"}
        items = []
        for item in opened.data.get("items", []):
            ev = done.get(item["id"])
            items.append({**item, "done_by": ev.actor if ev else None, "done_at": iso(ev.at) if ev else None})
        return items, opened.data.get("due")

