"""The control plane outside Slack: answer and abort incidents from the command line.

``rollback-bot incident answer|abort`` writes a request into the store's
``control_requests`` table. A serving bot polls that table (``ControlPoller``), claims
each request with a conditional UPDATE (so exactly one process acts on it, however many
replicas share the store), checks it by the same rules as a click and carries it out
through the engine, which updates the thread. With no bot serving, the command claims
its own request and applies it to the store (an answer is recorded, an abort is marked
as requested); the bot resumes the incident from there at its next start.

Every request is journaled (``control_request``, with the operator's local identity
and the Slack id acted as) before its effect, so the audit chain holds it, refused or not.
"""


from __future__ import annotations

import asyncio
import logging
import os
import pwd
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bot.core.approvals import ApprovalPolicy
from bot.core.config import INCIDENT_COMMANDER, BotConfig, RoleMembers
from bot.core.engine import AnswerRefused, Engine
from bot.core.lifecycle import FINAL, StepStatus
from bot.core.roles import RoleDirectory, RoleLookupFailed
from bot.core.runbook import ApprovalStep
from bot.state.control_queue import (
    ControlRequest,
    alive,
    beat,
    claim,
    get,
    gone,
    list_requests,
    move,
    settled,
)
from bot.state.store import Store, utcnow

log = logging.getLogger(__name__)

#: How often a serving bot looks for requests (the thread follows within a second).
POLL_SECONDS = 0.2
#: How often it notes that it is alive (``bot.state.control_queue.ALIVE_SECONDS``: how old a note may be).
BEAT_SECONDS = 1.0

RolesOf = Callable[[str], Awaitable[list[str]]]
Kick = Callable[[str], Any]
#: A request another part of the bot carries out (a rehearsal in a channel): given the request
#: and the actor's roles, what happened in words; ``ControlRefused`` refuses it.
Action = Callable[[ControlRequest, list[str]], Awaitable[str]]


class ControlRefused(Exception):
    """A control request that is not allowed or does not fit; nothing changed."""



# ---------------------------------------------------------------- who acts


def local_identity() -> tuple[str, str]:
    """(the local account running this process, ``account@host``), from the real uid."""
    try:
        account = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        account = f"uid{os.getuid()}"
    return account, f"{account}@{socket.gethostname()}"


def acting_as(config: BotConfig, account: str, as_user: str | None) -> str:
    """The Slack user id a local account acts as (``operators`` in the config)."""
    ids = config.operators.get(account)
    if not ids:
        raise ControlRefused(f"the local account {account!r} is not in the config's operators; "
                             "it may list and show incidents but not act on them")
    if as_user is None:
        return ids[0]
    if as_user not in ids:
        raise ControlRefused(f"--as {as_user}: operators.{account} allows acting as {', '.join(ids)} only")
    return as_user


def offline_roles(roles: dict[str, RoleMembers], directory: RoleDirectory | None) -> RolesOf:
    """Roles of a user without a serving bot: direct user ids always; user groups when Slack
    answers (``directory``); a role whose group cannot be resolved is left out."""

    async def roles_of(user_id: str) -> list[str]:
        held = {role for role, members in roles.items() if user_id in members.users}
        for role, members in roles.items():
            if role in held or not members.groups or directory is None:
                continue
            for group in members.groups:
                try:
                    if user_id in await directory.group_members(group):
                        held.add(role)
                        break
                except RoleLookupFailed as exc:
                    log.warning("roles.%s: %s", role, exc)
        return sorted(held)

    return roles_of



# ---------------------------------------------------------------- carrying a request out


@dataclass
class Executor:
    """Checks a request by the rules of a click and carries it out through the engine.

    ``online``: a serving bot (the engine goes on at once, through ``kick``); otherwise the
    effect is only written to the store and the bot resumes the incident at its next start.
    """

    store: Store
    engine: Engine
    policy: ApprovalPolicy
    roles_of: RolesOf
    online: bool
    kick: Kick | None = None
    actions: dict[str, Action] = field(default_factory=dict)

    async def execute(self, req: ControlRequest) -> tuple[str, str]:
        """(status, message): ``done`` / ``applied`` or ``refused``, and what happened in words."""
        try:
            return await self._execute(req)
        except ControlRefused as exc:
            await self._journal(req, "control_refused", {"why": str(exc)})
            return "refused", str(exc)

    async def carry_out(self, req: ControlRequest) -> None:
        """Execute a request this process claimed, and finish it with the result."""
        status, message = await self.execute(req)
        await move(self.store, req.id, "claimed", status, result=message, finished_at=utcnow())

    async def _journal(self, req: ControlRequest, kind: str, extra: dict[str, Any]) -> None:
        data = {"request": req.id, "action": req.action, "operator": req.operator, "via": "cli",
                "mode": "online" if self.online else "offline", **extra}
        for key in ("step_id", "value", "reason"):
            if getattr(req, key):
                data[key.removesuffix("_id")] = getattr(req, key)
        await self.store.log(req.incident_id, kind, actor=req.actor, step_id=req.step_id, data=data)

    async def _execute(self, req: ControlRequest) -> tuple[str, str]:
        try:
            inc = await self.store.incident(req.incident_id)
        except KeyError:
            return "refused", f"there is no incident {req.incident_id}"
        try:
            roles = await self.roles_of(req.actor)
        except RoleLookupFailed as exc:
            raise ControlRefused(f"the roles of {req.actor} could not be checked ({exc})") from None
        await self._journal(req, "control_request", {"roles": roles})
        if inc.status in FINAL:
            raise ControlRefused(f"{inc.id} is already {inc.status.value}")
        ok = "done" if self.online else "applied"
        if req.action in self.actions:
            return ok, await self.actions[req.action](req, roles)
        step = self.engine.runbook.step(req.step_id) if req.step_id and self._has_step(req.step_id) else None
        if req.action == "answer" and isinstance(step, ApprovalStep):
            return await self._approve(req, roles, ok)
        if not set(roles) & (self.policy.roles | {INCIDENT_COMMANDER}):
            raise ControlRefused(f"{req.actor} (roles: {', '.join(roles) or 'none'}) is not an approver or "
                                 "incident commander; only they may answer or abort")
        if req.action == "abort":
            return await self._abort(req, roles, ok)
        if step is None:
            raise ControlRefused(f"the runbook has no step {req.step_id!r}")
        value = await self._option(req)
        try:
            await self.engine.answer(inc.id, step.id, value, user=req.actor, roles=roles)
        except AnswerRefused as exc:
            raise ControlRefused(str(exc)) from None
        self._go_on(inc.id)
        return ok, f"answered {value!r} to {step.id}" + ("" if self.online else
                                                           "; the bot goes on from there at its next start")

    def _has_step(self, step_id: str) -> bool:
        return any(s.id == step_id for _, s in self.engine.runbook.steps())

    async def _option(self, req: ControlRequest) -> str:
        """The option value a request names: by value, by label (any case) or by its number."""
        run = (await self.store.latest_runs(req.incident_id)).get(req.step_id or "")
        if run is None or not run.waiting or run.status not in (
                StepStatus.WAITING, StepStatus.FAILED, StepStatus.INTERRUPTED):
            raise ControlRefused(f"step {req.step_id!r} is not waiting for an answer")
        if run.answer is not None:
            raise ControlRefused(f"step {req.step_id!r} was already answered by {run.answer.get('user')}")
        options = list(run.waiting.get("options", []))
        given = (req.value or "").strip()
        for o in options:
            if o["value"] == given:
                return str(o["value"])
        for o in options:
            if str(o.get("label", "")).casefold() == given.casefold():
                return str(o["value"])
        if given.isdigit() and 1 <= int(given) <= len(options):
            return str(options[int(given) - 1]["value"])
        offered = ", ".join(f"{o['value']!r}" for o in options) or "none"
        raise ControlRefused(f"{given[:80]!r} was not offered for step {req.step_id!r} (offered: {offered})")

    async def _approve(self, req: ControlRequest, roles: list[str], ok: str) -> tuple[str, str]:
        decision = (req.value or "").strip().lower()
        if decision not in ("approve", "reject"):
            raise ControlRefused(f"step {req.step_id!r} is an approval: answer approve or reject")
        if decision == "reject" and not (req.reason or "").strip():
            raise ControlRefused("a rejection needs a reason (--reason TEXT)")
        run = (await self.store.latest_runs(req.incident_id)).get(req.step_id or "")
        if run is None or run.status is not StepStatus.WAITING:
            raise ControlRefused(f"step {req.step_id!r} is not waiting for approval")
        try:
            counted, why = await self.engine.approve(req.incident_id, user_id=req.actor, roles=roles,
                                                     decision=decision, note=(req.reason or "").strip())
        except AnswerRefused as exc:
            raise ControlRefused(str(exc)) from None
        if not counted:
            return "refused", f"the {decision} was recorded but not counted: {why}"
        self._go_on(req.incident_id)
        return ok, f"{decision} counted"

    async def _abort(self, req: ControlRequest, roles: list[str], ok: str) -> tuple[str, str]:
        reason = (req.reason or "").strip()
        if not reason:
            raise ControlRefused("an abort needs a reason (--reason TEXT)")
        if self.online:
            try:
                inc = await self.engine.request_abort(req.incident_id, user=req.actor, reason=reason, roles=roles)
            except AnswerRefused as exc:
                raise ControlRefused(str(exc)) from None
            self._go_on(req.incident_id)
            if inc.status in FINAL:
                return ok, f"{inc.id} is {inc.status.value}"
            return ok, f"abort requested: {inc.id} stops after the running step"
        # No bot runs: the abort is marked on the incident; the bot carries it out (through the
        # engine's abort) at its next start.
        await self.store.update_incident(req.incident_id, abort_reason=reason)
        return ok, "abort recorded; the bot carries it out at its next start"

    def _go_on(self, incident_id: str) -> None:
        if self.kick is not None:
            self.kick(incident_id)


# ---------------------------------------------------------------- the serving side


class ControlPoller:
    """Polls the store for control requests in a serving bot; claims and carries them out."""

    def __init__(self, executor: Executor, *, name: str, interval: float = POLL_SECONDS) -> None:
        self.executor = executor
        self.store = executor.store
        self.name = name
        self.interval = interval
        self._last_beat = 0.0

    async def run(self) -> None:
        """Poll until cancelled; a failed pass is logged and retried."""
        try:
            while True:
                try:
                    await self.once()
                except Exception:  # the store may be briefly unreachable; the next pass retries
                    log.exception("control requests: a polling pass failed")
                await asyncio.sleep(self.interval)
        finally:
            try:
                await asyncio.shield(gone(self.store, self.name))
            except Exception:  # a stale note only makes a command wait a little longer
                log.debug("liveness note of %s not removed", self.name)

    async def once(self) -> int:
        """One pass: carry out pending requests, resume the ones applied while no bot ran."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_beat >= BEAT_SECONDS:
            await beat(self.store, self.name)
            self._last_beat = loop.time()
        handled = 0
        for req in await list_requests(self.store, statuses=("pending", "applied")):
            if req.status == "pending" and await claim(self.store, req.id, by=self.name):
                await self.executor.carry_out(req)
                handled += 1
            elif req.status == "applied" and await move(self.store, req.id, "applied", "resumed",
                                                         claimed_by=self.name):
                await self._resume(req)
                handled += 1
        return handled

    async def _resume(self, req: ControlRequest) -> None:
        inc = await self.store.incident(req.incident_id)
        if inc.status in FINAL:
            return
        if req.action == "abort":
            try:
                await self.executor.engine.request_abort(inc.id, user=req.actor, reason=inc.abort_reason
                                                         or req.reason or "aborted from the command line")
            except AnswerRefused as exc:  # already being aborted (its compensation runs): go on with it
                log.info("control request %s: %s", req.id, exc)
        if self.executor.kick is not None:
            self.executor.kick(inc.id)


async def run_request(store: Store, executor: Executor, request_id: int, *, wait: float, by: str) -> ControlRequest:
    """The command's side: let a serving bot take the request (up to ``wait`` seconds when one
    is alive); if none took it, claim it and apply it to the store."""
    if await alive(store) and (req := await settled(store, request_id, wait)) is not None:
        return req
    if await claim(store, request_id, by=by):
        await executor.carry_out(await get(store, request_id))
        return await get(store, request_id)
    # A bot claimed it meanwhile: wait for its result.
    return await settled(store, request_id, max(wait, 5.0)) or await get(store, request_id)
