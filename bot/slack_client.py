"""The Slack Web API client the bot uses, and the token check at start."""

from __future__ import annotations

from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import SlackSecrets


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


async def verify_token(client: AsyncWebClient) -> str | None:
    """None when ``auth.test`` accepts the bot token, else the problem in one line."""
    try:
        resp = await client.auth_test()
    except SlackApiError as exc:
        return f"SLACK_BOT_TOKEN: auth.test refused it ({exc.response.get('error')})"
    except (TimeoutError, OSError) as exc:
        return f"SLACK_API_URL: Slack's Web API could not be reached ({type(exc).__name__}: {exc})"
    if not resp.get("ok"):
        return f"SLACK_BOT_TOKEN: auth.test refused it ({resp.get('error')})"
    return None


__all__ = ["make_client", "verify_token"]
