"""The Slack flows of the clock's buttons: cancel a scheduled P3 rollback, mark a Phase 7 item done."""

from __future__ import annotations

from bot.clock.view import CLOCK_CANCEL, CLOCK_DONE
from bot.core.engine import AnswerRefused
from bot.core.templating import slack_escape
from bot.slack.flows import Refused, ephemeral
from bot.slack.services import Services


async def clock_click(*, services: Services, user_id: str, channel_id: str, thread_ts: str | None,
                      action_id: str, value: str, action_ts: str) -> None:
    """A clock button was clicked: only approvers cancel, approvers and commanders mark done."""
    if not await services.first_time(f"act:{user_id}:{action_ts}"):
        return
    clock = services.clock
    if clock is None:
        raise Refused("The scheduler is not running in this bot; nothing was changed.")
    if action_id == CLOCK_CANCEL:
        roles = await services.roles.roles_of(user_id)
        if not set(roles) & services.policy.roles:
            raise Refused("Only an approver may cancel a scheduled rollback.")
        try:
            inc = await clock.cancel_scheduled(value, user=user_id)
        except (ValueError, KeyError, AnswerRefused) as exc:
            raise Refused(f"Not cancelled: {slack_escape(str(exc))}") from None
        await ephemeral(services, channel=channel_id, user=user_id, thread_ts=thread_ts,
                        text=f"{inc.id} is cancelled: it will not run in the maintenance window.")
        return
    if action_id.startswith(CLOCK_DONE):
        incident_id, _, item = value.partition("|")
        if not await services.may_act(user_id):
            raise Refused("Only approvers and incident commanders may mark Phase 7 items done.")
        try:
            first = await clock.mark_done(incident_id, item, user=user_id)
        except KeyError:
            raise Refused("That Phase 7 item does not exist.") from None
        if not first:
            raise Refused("That item was already marked done.")
        return
    raise Refused("That button is not one this bot posted.")
