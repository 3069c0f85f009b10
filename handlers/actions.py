"""Buttons and selects the bot posted: ack at once, then one flow of ``bot.slack.flows``."""

from __future__ import annotations

import re
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext

from bot.clock import slack as clock_slack
from bot.clock.view import CLOCK_ACTIONS
from bot.slack import flows as incidents
from bot.slack.view import ANSWER, APPROVE, REJECT


def _where(body: dict[str, Any]) -> dict[str, Any]:
    container = body.get("container") or {}
    return {
        "user_id": body["user"]["id"],
        "channel_id": (body.get("channel") or {}).get("id") or container.get("channel_id", ""),
        "thread_ts": container.get("thread_ts") or (body.get("message") or {}).get("thread_ts"),
    }


#: The decision each approval button stands for.
DECISIONS = {APPROVE: "approve", REJECT: "reject"}


async def approval(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], context: AsyncBoltContext) -> None:
    """Approve or Reject was clicked; for a reject the flow opens the reason modal (the trigger lives 3 s)."""
    await ack()
    services = context["services"]
    incidents.background(services=services, body=body, work=incidents.approval_click(
        services=services, incident_id=action.get("value", ""), decision=DECISIONS[action["action_id"]],
        trigger_id=body.get("trigger_id", ""), action_ts=action.get("action_ts", ""), **_where(body)))


async def answer(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], context: AsyncBoltContext) -> None:
    """A choice, Done, Retry/Skip/Abort or Re-run/Mark done button, or the options select."""
    await ack()
    services = context["services"]
    value = action.get("value") or (action.get("selected_option") or {}).get("value", "")
    incidents.background(services=services, body=body, work=incidents.answer_click(
        services=services, value=value, action_ts=action.get("action_ts", ""), **_where(body)))


async def clock(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], context: AsyncBoltContext) -> None:
    """Cancel a scheduled rollback, or mark a Phase 7 item done."""
    await ack()
    services = context["services"]
    incidents.background(services=services, body=body, work=clock_slack.clock_click(
        services=services, action_id=action.get("action_id", ""), value=action.get("value", ""),
        action_ts=action.get("action_ts", ""), **_where(body)))


def register(app: AsyncApp) -> None:
    """Attach the block action listeners."""
    for action_id in DECISIONS:
        app.action(action_id)(approval)
    app.action(re.compile(f"^{ANSWER}_"))(answer)
    app.action(re.compile(f"^{CLOCK_ACTIONS}"))(clock)
