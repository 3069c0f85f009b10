"""A rehearsal in a Slack channel, the serving bot's side.

``rollback-bot rehearse --channel`` opens the incident in the state store (marked as a
rehearsal, no channel yet) and asks the serving bot, by a control request, to take it:
the bot checks the request against its own config and runbook, then posts the thread in
the channel and runs the incident like one opened with ``/rollback start``, so the real
role holders approve by button and answer the choices in the thread. A request the bot
refuses leaves nothing in Slack; the incident it was for is aborted.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bot.core.config import BotConfig
from bot.core.engine import AnswerRefused, Engine
from bot.core.lifecycle import Event, Status
from bot.plan.rehearsal import RehearsalRefused, allowed
from bot.plan.render import runbook_sha256
from bot.state.control import Action, ControlRefused
from bot.state.control_queue import ControlRequest
from bot.state.store import Incident, Store, utcnow

#: The control request that hands a rehearsal to the serving bot, and the one that aborts it.
REHEARSE = "rehearse"
END = "end_rehearsal"
#: A request older than this is from a command that gave up waiting: it is refused.
STALE_SECONDS = 60.0


def check_channel(config: BotConfig, channel: str) -> None:
    """Refuse a channel that is not one of the bot's configured channels."""
    configured = [c.lstrip("#") for c in config.slack.channels]
    if channel.lstrip("#") not in configured:
        raise RehearsalRefused(f"--channel {channel[:40]!r} is not one of the bot's channels "
                               f"(slack.channels: {', '.join(configured)})")


def check_target(config: BotConfig, target: str) -> None:
    """Refuse a target the config does not have or does not mark ``rehearsal: allowed``."""
    settings = config.target(target)
    if settings is None:
        raise RehearsalRefused(f"no target {target[:64]!r} in the config "
                               f"(targets: {', '.join(t.name for t in config.targets)})")
    allowed(settings)


def request_value(channel: str, runbook_sha: str) -> str:
    """What a ``rehearse`` request carries: the channel and the runbook the command means."""
    return json.dumps({"channel": channel, "runbook_sha256": runbook_sha})


async def drop(store: Store, incident_id: str, *, actor: str | None, why: str) -> None:
    """Abort a rehearsal incident no bot took (still open, never posted); anything else is left."""
    inc = await store.incident(incident_id)
    if inc.status is Status.OPEN:
        await store.apply(incident_id, Event.ABORT, actor=actor, data={"reason": why})
        await store.update_incident(incident_id, abort_reason=why)


@dataclass
class ChannelRehearsals:
    """Carries out ``rehearse`` and ``end_rehearsal`` requests in a serving bot."""

    config: BotConfig
    store: Store
    engine: Engine
    #: Post the incident's thread and let the engine run it (what ``/rollback start`` does).
    open_incident: Callable[[str], Awaitable[None]]
    kick: Callable[[str], Any]

    def actions(self) -> dict[str, Action]:
        """The control requests this part carries out, by action."""
        return {REHEARSE: self.take, END: self.end}

    async def _rehearsal(self, req: ControlRequest) -> Incident:
        inc = await self.store.incident(req.incident_id)
        if not (inc.inputs or {}).get("rehearsal"):
            raise ControlRefused(f"{inc.id} is not a rehearsal")
        return inc

    async def take(self, req: ControlRequest, roles: list[str]) -> str:
        """Check the rehearsal by this bot's config and runbook, then post it and run it."""
        inc = await self._rehearsal(req)
        try:
            channel = self._check(req, inc)
        except (ControlRefused, RehearsalRefused) as exc:
            await drop(self.store, inc.id, actor=req.actor, why=f"refused by the serving bot: {exc}")
            raise ControlRefused(str(exc)) from None
        await self.store.update_incident(inc.id, channel=channel)
        await self.open_incident(inc.id)
        return f"{inc.id} posted in {channel}"

    def _check(self, req: ControlRequest, inc: Incident) -> str:
        if inc.status is not Status.OPEN or inc.channel or req.actor != inc.requester:
            raise ControlRefused(f"{inc.id} is {inc.status.value}, not a rehearsal waiting to be posted")
        if utcnow() - req.created_at > dt.timedelta(seconds=STALE_SECONDS):
            raise ControlRefused(f"the request is older than {STALE_SECONDS:g} s: the command gave up on it")
        try:
            asked = json.loads(req.value or "{}")
        except ValueError:
            asked = {}
        channel, sha = str(asked.get("channel", "")), str(asked.get("runbook_sha256", ""))
        check_target(self.config, inc.target)
        check_channel(self.config, channel)
        ours = runbook_sha256(self.engine.runbook)
        if sha != ours:
            raise ControlRefused(
                f"the serving bot runs runbook {self.engine.runbook.name!r} (sha256 {ours[:12]}), not the one "
                f"given (sha256 {sha[:12]}): a channel rehearsal runs the bot's runbook; rehearse that file "
                "without --channel, or restart the bot with it")
        return channel

    async def end(self, req: ControlRequest, roles: list[str]) -> str:
        """Abort a rehearsal for the command that requested it (its Ctrl-C); others abort as for any incident."""
        inc = await self._rehearsal(req)
        if req.actor != inc.requester:
            raise ControlRefused(f"{req.actor} did not request {inc.id}: abort it as any incident")
        try:
            inc = await self.engine.request_abort(inc.id, user=req.actor, reason=req.reason or "rehearsal ended",
                                                  roles=roles)
        except AnswerRefused as exc:
            raise ControlRefused(str(exc)) from None
        self.kick(inc.id)
        return f"abort requested: {inc.id} is {inc.status.value}"
