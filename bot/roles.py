"""Who holds which role, from the config: Slack user ids and user groups.

User groups are resolved with ``usergroups.users.list`` and cached for
``refresh_seconds``; when Slack cannot answer, the last known members are used, and
with nothing known the lookup fails loudly rather than guessing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import RoleMembers

log = logging.getLogger(__name__)


class RoleLookupFailed(RuntimeError):
    """A user group could not be resolved and nothing is cached for it."""


class RoleDirectory:
    """Maps a Slack user id to the roles it holds."""

    def __init__(self, roles: Mapping[str, RoleMembers], client: AsyncWebClient | None, *,
                 refresh_seconds: float = 300.0) -> None:
        self.roles = dict(roles)
        self.client = client
        self.refresh_seconds = refresh_seconds
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = asyncio.Lock()

    async def group_members(self, group_id: str) -> frozenset[str]:
        """The members of a user group, cached."""
        cached = self._groups.get(group_id)
        if cached and time.monotonic() - cached[0] < self.refresh_seconds:
            return cached[1]
        async with self._lock:
            cached = self._groups.get(group_id)
            if cached and time.monotonic() - cached[0] < self.refresh_seconds:
                return cached[1]
            if self.client is None:
                raise RoleLookupFailed(f"user group {group_id}: no Slack client to resolve it")
            try:
                resp = await self.client.usergroups_users_list(usergroup=group_id)
                members = frozenset(str(u) for u in resp.get("users") or [])
            except (TimeoutError, SlackApiError, aiohttp.ClientError, OSError) as exc:
                if cached:
                    log.warning("user group %s not refreshed (%s); using the last known members", group_id, exc)
                    return cached[1]
                raise RoleLookupFailed(f"user group {group_id} could not be resolved: {exc}") from exc
            self._groups[group_id] = (time.monotonic(), members)
            return members

    async def warm(self) -> list[str]:
        """Resolve every configured user group now; returns the problems (the cache fills lazily later)."""
        problems = []
        for role, members in self.roles.items():
            for gid in members.groups:
                try:
                    await self.group_members(gid)
                except RoleLookupFailed as exc:
                    problems.append(f"roles.{role}.groups: {exc}")
        return problems

    async def roles_of(self, user_id: str) -> list[str]:
        """Every role the user holds, sorted."""
        held = set()
        for role, members in self.roles.items():
            if user_id in members.users:
                held.add(role)
                continue
            for gid in members.groups:
                if user_id in await self.group_members(gid):
                    held.add(role)
                    break
        return sorted(held)

    async def holders(self, role: str) -> list[str]:
        """Users holding a role (direct and through groups)."""
        members = self.roles.get(role)
        if members is None:
            return []
        out = set(members.users)
        for gid in members.groups:
            out |= await self.group_members(gid)
        return sorted(out)
