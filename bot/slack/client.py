"""The Slack Web API client the bot uses, and the token check at start."""

from __future__ import annotations

from collections.abc import Awaitable

from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot.core.config import SlackSecrets

#: The bot scopes manifest.yml asks for (tests/test_manifest.py holds the two equal).
MANIFEST_BOT_SCOPES = ("commands", "chat:write", "usergroups:read", "files:write", "channels:history", "users:read")


def make_client(secrets: SlackSecrets) -> AsyncWebClient:
    """The Web API client: ``SLACK_API_URL`` as base, retries on 429, 5xx and dropped connections."""
    token = secrets.slack_bot_token.get_secret_value() if secrets.slack_bot_token else None
    return AsyncWebClient(
        token=token,
        base_url=secrets.api_url,
        timeout=15,
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(max_retry_count=2),
            AsyncRateLimitErrorRetryHandler(max_retry_count=3),
            AsyncServerErrorRetryHandler(max_retry_count=2),
        ],
    )


async def _refusal(secret: str, method: str, call: Awaitable[AsyncSlackResponse]) -> str | None:
    """None when Slack's ``method`` accepts the token named ``secret``, else the problem in one line."""
    try:
        resp = await call
    except SlackApiError as exc:
        return f"{secret}: {method} refused it ({exc.response.get('error')})"
    except (TimeoutError, OSError) as exc:
        return f"SLACK_API_URL: Slack's Web API could not be reached ({type(exc).__name__}: {exc})"
    if not resp.get("ok"):
        return f"{secret}: {method} refused it ({resp.get('error')})"
    return None


async def verify_token(client: AsyncWebClient) -> str | None:
    """None when ``auth.test`` accepts the bot token, else the problem in one line."""
    return await _refusal("SLACK_BOT_TOKEN", "auth.test", client.auth_test())


async def verify_app_token(client: AsyncWebClient, app_token: str) -> str | None:
    """None when ``apps.connections.open`` accepts the app-level token, else the problem in one line.

    The URL it hands out is not used: Slack lets it expire unopened.
    """
    return await _refusal("SLACK_APP_TOKEN", "apps.connections.open", client.apps_connections_open(app_token=app_token))


async def scope_problems(client: AsyncWebClient) -> list[str]:
    """The manifest's bot scopes the installed app was not granted (from ``auth.test``'s X-OAuth-Scopes)."""
    try:
        resp = await client.auth_test()
    except (SlackApiError, TimeoutError, OSError):
        return []  # ``verify_token`` reports it
    header = next((v for k, v in resp.headers.items() if k.lower() == "x-oauth-scopes"), None)
    if header is None:
        return []  # Slack did not say; nothing to compare
    granted = {s.strip() for s in str(header).split(",") if s.strip()}
    missing = [s for s in MANIFEST_BOT_SCOPES if s not in granted]
    if not missing:
        return []
    return [f"SLACK_BOT_TOKEN: the app lacks the manifest's scope(s) {', '.join(missing)}; "
            "update the app from manifest.yml and reinstall it"]


async def channel_problems(client: AsyncWebClient, channels: list[str]) -> list[str]:
    """Channels the bot is not in (by id; a name like ``#incident-response`` cannot be checked this way)."""
    out = []
    for i, channel in enumerate(channels):
        if not (channel[:1] in ("C", "G") and channel.isalnum() and channel.isupper()):
            continue
        try:
            await client.conversations_history(channel=channel, limit=1)
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error == "not_in_channel":
                out.append(f"slack.channels[{i}]: the bot is not in {channel}; invite it: /invite @rollback-bot")
            elif error == "channel_not_found":
                out.append(f"slack.channels[{i}]: {channel} does not exist or the bot cannot see it")
            elif error != "missing_scope":  # reported by ``scope_problems``
                out.append(f"slack.channels[{i}]: {channel}: conversations.history refused ({error})")
        except (TimeoutError, OSError) as exc:
            out.append(f"slack.channels[{i}]: {channel}: Slack could not be reached ({type(exc).__name__})")
    return out


__all__ = ["MANIFEST_BOT_SCOPES", "channel_problems", "make_client", "scope_problems", "verify_app_token",
           "verify_token"]
