"""People by name: Slack user ids resolved with ``users.info`` for the record, ids kept.

The report shows ``Ada Lovelace (U0ADA)``; an id Slack cannot resolve (Slack down, user
gone, no ``users:read``) is shown as the id alone, never guessed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

log = logging.getLogger(__name__)

#: Resolves user ids to names (the ids it cannot resolve are left out).
Names = Callable[[Iterable[str]], Awaitable[dict[str, str]]]


class PeopleDirectory:
    """Names of Slack users, cached for the life of the process."""

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client
        self._names: dict[str, str] = {}

    async def names(self, user_ids: Iterable[str]) -> dict[str, str]:
        """{user id: real name (or display name)} for the ids Slack resolves."""
        out: dict[str, str] = {}
        for uid in dict.fromkeys(u for u in user_ids if u):
            if uid not in self._names:
                try:
                    resp = await self.client.users_info(user=uid)
                except (SlackApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                    log.info("users.info %s: %s; shown by id", uid, exc)
                    continue
                user = resp.get("user") or {}
                profile = user.get("profile") or {}
                name = profile.get("real_name") or user.get("real_name") or profile.get("display_name") \
                    or user.get("name")
                if not name:
                    continue
                self._names[uid] = str(name)
            out[uid] = self._names[uid]
        return out


def fixed_names(table: Mapping[str, str]) -> Names:
    """A resolver from a fixed table (the drill's simulated people)."""

    async def names(user_ids: Iterable[str]) -> dict[str, str]:
        return {u: table[u] for u in user_ids if u in table}

    return names


def who(user_id: str | None, names: Mapping[str, str]) -> str:
    """``Name (U…)`` when the name is known, else the id; ``—`` for nobody."""
    if not user_id:
        return "—"
    name = names.get(user_id)
    return f"{name} ({user_id})" if name and name != user_id else user_id
