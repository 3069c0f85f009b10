"""Who holds which role, from the config: Slack user ids and user groups.

User groups are given by id (``S…``) or by handle (``@db-leads``). A handle is turned
into its id with ``usergroups.list``; members come from ``usergroups.users.list``. Both
are cached for ``refresh_seconds``; when Slack cannot answer, the last known answer is
used, and with nothing known the lookup fails loudly rather than guessing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.config import RoleMembers, is_group_id

log = logging.getLogger(__name__)

#: Least time between two listings of the user groups caused by an unknown handle.
MISSING_HANDLE_SECONDS = 30.0


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
        self._handles: tuple[float, dict[str, str]] | None = None
        self._lock = asyncio.Lock()
        self._handle_lock = asyncio.Lock()

    async def group_id(self, group: str) -> str:
        """The id of a user group given by id or handle (``@db-leads``); handles cached."""
        if is_group_id(group):
            return group
        handle = group.lstrip("@")
        cached = self._handles
        stale = cached is None or time.monotonic() - cached[0] >= self.refresh_seconds
        if cached is not None and handle not in cached[1]:
            # An unknown handle may be a group made since the last listing: look again, but
            # not more than every MISSING_HANDLE_SECONDS (usergroups.list is Tier 2).
            stale = stale or time.monotonic() - cached[0] >= min(self.refresh_seconds, MISSING_HANDLE_SECONDS)
        if stale:
            async with self._handle_lock:
                if self._handles is cached:  # nobody refreshed it while we waited
                    await self._refresh_handles()
        known = self._handles[1] if self._handles else {}
        if handle not in known:
            raise RoleLookupFailed(f"user group @{handle} does not exist in this workspace")
        return known[handle]

    async def _refresh_handles(self) -> None:
        if self.client is None:
            raise RoleLookupFailed("user-group handles: no Slack client to resolve them")
        try:
            resp = await self.client.usergroups_list()
        except (TimeoutError, SlackApiError, aiohttp.ClientError, OSError) as exc:
            if self._handles is not None:
                log.warning("user-group handles not refreshed (%s); using the last known ones", exc)
                # Ask again in a while, not on every lookup while Slack is down.
                retry_at = time.monotonic() - self.refresh_seconds + min(self.refresh_seconds, MISSING_HANDLE_SECONDS)
                self._handles = (retry_at, self._handles[1])
                return
            raise RoleLookupFailed(f"user-group handles could not be resolved: {exc}") from exc
        groups = resp.get("usergroups") or []
        self._handles = (time.monotonic(), {str(g["handle"]): str(g["id"]) for g in groups
                                            if g.get("handle") and g.get("id")})

    async def group_members(self, group: str) -> frozenset[str]:
        """The members of a user group (by id or handle), cached."""
        group_id = await self.group_id(group)
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
