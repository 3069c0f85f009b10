"""The one error hook: known errors become a clear ephemeral message, unknown ones get an id."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext

from bot.slack import flows as incidents


async def on_error(error: Exception, body: dict[str, Any], context: AsyncBoltContext) -> None:
    """Every listener's exception ends here."""
    await incidents.report_error(services=context.get("services"), error=error, body=body or {})


def register(app: AsyncApp) -> None:
    """Attach the global error handler."""
    app.error(on_error)
