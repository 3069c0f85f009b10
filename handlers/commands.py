"""The slash command: ack at once, then one flow of ``bot.slack.flows``."""

from __future__ import annotations

import re
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext

from bot.slack import flows as incidents


async def rollback_command(ack: AsyncAck, body: dict[str, Any], command: dict[str, Any],
                          context: AsyncBoltContext) -> None:
    """``/rollback ...``."""
    await ack()
    services = context["services"]
    incidents.background(services=services, body=body, work=incidents.command(
        services=services, user_id=command["user_id"], channel_id=command.get("channel_id", ""),
        channel_name=command.get("channel_name", ""), text=command.get("text", ""),
        trigger_id=command.get("trigger_id", "")))


def register(app: AsyncApp) -> None:
    """Attach the command listener (the app's only command is the manifest's ``/rollback``)."""
    app.command(re.compile(r"^/"))(rollback_command)
