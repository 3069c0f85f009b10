"""Plays the people of an incident in Slack: types ``/rollback start``, fills the form, and
presses only buttons the bot actually posted until the incident ends.

Used by the end-to-end tests of the whole default runbook and by ``bench/ack.py``::

    cast = Cast(requester=REQ, approvers=[LEAD, PO], answerer=IC)
    played = await play_incident(fake=fake, driver=driver, services=services, channel=CH, target="sandbox",
                                 cast=cast, answers=default_answers(strategy="C", backup="production_backup_….db"))
    played.incident, played.pressed (every Control pressed, in order)
    played = await press_until_over(..., incident=inc, ...)   # an incident opened some other way

``answers`` maps a button's text (or a select option's text) to True when it is the one to
press; "Done" of manual items is always pressed; anything else the bot asks (Retry / Skip /
Abort after a failure, Re-run / Mark done after a restart) stops the play with the thread
in the message. While nothing is to be pressed, scheduled work (the stability checks) is
waited for, up to ``scheduled_timeout`` seconds. ``play_through_bolt`` builds the Bolt app on the
services first and plays through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bot.core.config import SlackSecrets
from bot.core.lifecycle import FINAL
from bot.slack.services import Services
from bot.state.store import Incident
from handlers.app import create_app
from tests.slack_driver import SlackDriver, bolt_sender
from tests.slack_fake import Control, SlackFake

APPROVE = "rb_approve"


@dataclass(frozen=True)
class Cast:
    """Who does what: the requester, the approvers (in click order), who answers questions."""

    requester: str
    approvers: Sequence[str]
    answerer: str


@dataclass
class Played:
    """The incident at its end and every control pressed."""

    incident: Incident
    pressed: list[Control] = field(default_factory=list)


def default_answers(*, strategy: str, backup: str | None, release: str | None = None) -> Callable[[Control], bool]:
    """Press the strategy whose label starts with ``strategy:``, the backup named ``backup``, the
    deployment point the target's settings give, the release named ``release`` (the app's rollback
    through GitHub), and keep conflicts as they are."""

    def wanted(control: Control) -> bool:
        return (control.text.startswith((f"{strategy}:", "configured boundary"))
                or control.text == "Keep them as they are"
                or (backup is not None and control.text == backup)
                or (release is not None and control.text == release))

    return wanted


def _thread_text(fake: SlackFake, channel: str, thread_ts: str | None) -> str:
    msgs = fake.thread(channel, thread_ts) if thread_ts else fake.messages(channel)
    return "\n".join(f"- {m.text[:200]}" for m in msgs)


async def start_incident(*, fake: SlackFake, driver: SlackDriver, services: Services, channel: str, target: str,
                         requester: str, severity: str = "P1", reason: str = "phase 3 broke the database",
                         idle_timeout: float = 120.0) -> Incident:
    """``/rollback start`` and the form, as the requester; returns the new incident."""
    r = await driver.slash_command(text=f"start {target} {reason}", user_id=requester, channel_id=channel)
    assert r.status == 200, r.body
    await services.idle(timeout=idle_timeout)
    r = await driver.view_submission("rb_start", user_id=requester, values={
        "target": target, "triggers": ["data_corruption"], "severity": severity, "impact": "High",
        "business_risk": "Critical", "reason": reason, "description": "bad Phase 3 deployment"})
    assert r.status == 200 and not r.body, r.body
    await services.idle(timeout=idle_timeout)
    active = await services.store.active_incident(target)
    assert active is not None, "no incident was opened"
    return active


async def play_incident(*, fake: SlackFake, driver: SlackDriver, services: Services, channel: str, target: str,
                        cast: Cast, answers: Callable[[Control], bool], max_presses: int = 60,
                        idle_timeout: float = 120.0, scheduled_timeout: float = 120.0) -> Played:
    """Start an incident and press the posted buttons until it is over."""
    inc = await start_incident(fake=fake, driver=driver, services=services, channel=channel, target=target,
                               requester=cast.requester, idle_timeout=idle_timeout)
    return await press_until_over(fake=fake, driver=driver, services=services, channel=channel, incident=inc,
                                  cast=cast, answers=answers, max_presses=max_presses, idle_timeout=idle_timeout,
                                  scheduled_timeout=scheduled_timeout)


async def press_until_over(*, fake: SlackFake, driver: SlackDriver, services: Services, channel: str,
                           incident: Incident, cast: Cast, answers: Callable[[Control], bool], max_presses: int = 60,
                           idle_timeout: float = 120.0, scheduled_timeout: float = 120.0) -> Played:
    """Press the posted buttons of an open incident until it is over."""
    inc = incident
    played = Played(inc)
    approvers = list(cast.approvers)
    for _ in range(max_presses):
        inc = await services.store.incident(inc.id)
        played.incident = inc
        if inc.status in FINAL:
            return played
        controls = [*fake.buttons(channel, inc.thread_ts), *fake.choices(channel, inc.thread_ts)]
        control, user = _next_press(controls, approvers, cast, answers)
        waited = 0.0
        while control is None and inc.status not in FINAL and waited < scheduled_timeout:
            # Scheduled work (the stability checks) goes on by itself: wait for it.
            await asyncio.sleep(0.1)
            waited += 0.1
            inc = await services.store.incident(inc.id)
            controls = [*fake.buttons(channel, inc.thread_ts), *fake.choices(channel, inc.thread_ts)]
            control, user = _next_press(controls, approvers, cast, answers)
        if inc.status in FINAL:
            await services.idle(timeout=idle_timeout)
            played.incident = await services.store.incident(inc.id)
            return played
        if control is None:
            raise AssertionError(f"{inc.id} is {inc.status.value} and nothing to press fits:\n"
                                 + "\n".join(c.describe() for c in controls)
                                 + "\n" + _thread_text(fake, channel, inc.thread_ts))
        r = await driver.press(control, user)
        assert r.status == 200, r.body
        played.pressed.append(control)
        await services.idle(timeout=idle_timeout)
    raise AssertionError(f"{inc.id} did not end after {max_presses} presses")


async def play_through_bolt(*, fake: SlackFake, services: Services, secrets: SlackSecrets, channel: str,
                            target: str, cast: Cast, answers: Callable[[Control], bool]) -> Incident:
    """The Bolt app on ``services`` (resumed), and an incident played through it to its end within five
    minutes (``play_incident``); returns the incident once the bot has nothing left to do."""
    app = create_app(secrets, services)
    await services.resume()
    driver = SlackDriver(fake, bolt_sender(app), default_user_id=cast.requester)
    played = await asyncio.wait_for(play_incident(fake=fake, driver=driver, services=services, channel=channel,
                                                  target=target, cast=cast, answers=answers), timeout=300)
    await services.idle(timeout=60)
    return played.incident


def _next_press(controls: list[Control], approvers: list[str], cast: Cast,
                answers: Callable[[Control], bool]) -> tuple[Control | None, str]:
    approve = [c for c in controls if c.action_id == APPROVE]
    if approve:
        if not approvers:
            return None, ""
        return approve[0], approvers.pop(0)
    for c in controls:
        if c.text == "Done" or answers(c):
            return c, cast.answerer
    return None, ""

