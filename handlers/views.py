"""Modal submissions: validated before the ack (errors shown in the modal), then one flow."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext

from bot.slack import flows as incidents
from bot.slack.forms import REJECT_CALLBACK, START_CALLBACK


async def start_submitted(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any],
                          context: AsyncBoltContext) -> None:
    """The start modal: the flow acks (with errors, if any) before it does anything slow."""
    incidents.background(services=context["services"], body=body, work=incidents.submit_start(
        services=context["services"], ack=ack, user_id=body["user"]["id"], view=view))


async def reject_submitted(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any],
                           context: AsyncBoltContext) -> None:
    """The reject modal: the reason is required."""
    incidents.background(services=context["services"], body=body, work=incidents.submit_reject(
        services=context["services"], ack=ack, user_id=body["user"]["id"], view=view))


def register(app: AsyncApp) -> None:
    """Attach the view submission listeners."""
    app.view(START_CALLBACK)(start_submitted)
    app.view(REJECT_CALLBACK)(reject_submitted)
