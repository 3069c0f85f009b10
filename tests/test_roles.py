"""Roles from user ids, user-group ids and user-group handles, against the Slack fake."""

from __future__ import annotations

import asyncio

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.core.config import ConfigError, RoleMembers, parse_config
from bot.core.roles import RoleDirectory, RoleLookupFailed
from tests.slack_fake import SlackFake

LEAD, PO, VP, NOBODY = "U0LEAD", "U0PRODOWNER", "U0VPENG", "U0RANDOM"


def _directory(fake: SlackFake, **kwargs: float) -> RoleDirectory:
    client = AsyncWebClient(token=fake.bot_token, base_url=fake.base_url)
    return RoleDirectory({
        "tech_lead": RoleMembers(users=[LEAD]),
        "product_owner": RoleMembers(groups=["@product-owners"]),
        "vp_engineering": RoleMembers(groups=["S0VPS"]),
    }, client, **kwargs)


async def test_handles_resolve_through_usergroups_list_and_are_cached() -> None:
    async with SlackFake(usergroups={"S0PO": {"handle": "product-owners", "users": [PO]},
                                     "S0VPS": {"handle": "vps", "users": [VP]}}) as fake:
        roles = _directory(fake)
        assert await roles.roles_of(PO) == ["product_owner"]
        assert await roles.roles_of(VP) == ["vp_engineering"]
        assert await roles.roles_of(LEAD) == ["tech_lead"]
        assert await roles.roles_of(NOBODY) == []
        assert await roles.holders("product_owner") == [PO]
        # Many lookups at once: one listing and one member list per group.
        await asyncio.gather(*(roles.roles_of(NOBODY) for _ in range(10)))
        assert len(fake.calls_to("usergroups.list")) == 1
        assert len(fake.calls_to("usergroups.users.list")) == 2
        assert fake.calls_to("usergroups.users.list")[0].params["usergroup"] == "S0PO"


async def test_handles_and_members_are_refreshed() -> None:
    async with SlackFake(usergroups={"S0PO": {"handle": "product-owners", "users": [PO]}, "S0VPS": [VP]}) as fake:
        roles = _directory(fake, refresh_seconds=0.2)
        assert await roles.roles_of(PO) == ["product_owner"]
        # The handle now names another group; the old group loses its member.
        fake.add_usergroup("S0PO", [], handle="former-owners")
        fake.add_usergroup("S0PO2", [NOBODY], handle="product-owners")
        assert await roles.roles_of(NOBODY) == []  # still cached
        await asyncio.sleep(0.25)
        assert await roles.roles_of(NOBODY) == ["product_owner"]
        assert await roles.roles_of(PO) == []
        assert len(fake.calls_to("usergroups.list")) == 2


async def test_unknown_handle_fails_loudly_and_slack_down_uses_the_last_answer() -> None:
    async with SlackFake(usergroups={"S0PO": {"handle": "product-owners", "users": [PO]}, "S0VPS": [VP]}) as fake:
        client = AsyncWebClient(token=fake.bot_token, base_url=fake.base_url)
        ghost = RoleDirectory({"cto": RoleMembers(groups=["@ghosts"])}, client)
        with pytest.raises(RoleLookupFailed, match="@ghosts does not exist"):
            await ghost.roles_of(PO)
        assert await ghost.warm() == ["roles.cto.groups: user group @ghosts does not exist in this workspace"]
        assert len(fake.calls_to("usergroups.list")) == 1  # an unknown handle is not looked up on every click

        roles = _directory(fake, refresh_seconds=0.1)
        assert await roles.roles_of(PO) == ["product_owner"]
        await asyncio.sleep(0.15)
        fake.set_down(True)
        assert await roles.roles_of(PO) == ["product_owner"]
        fake.set_down(False)


def test_config_accepts_handles_and_refuses_other_names() -> None:
    base = {"slack": {"channels": ["C0INCIDENT1"]},
            "targets": [{"name": "t1", "transport": "local", "workdir": "/tmp"}]}
    cfg = parse_config({**base, "roles": {"product_owner": {"groups": ["@product-owners", "S0VPS", "db.leads"]}}})
    assert cfg.roles["product_owner"].groups == ["@product-owners", "S0VPS", "db.leads"]
    with pytest.raises(ConfigError) as err:
        parse_config({**base, "roles": {"product_owner": {"groups": ["Product Owners"]}}})
    assert "roles.product_owner.groups" in str(err.value) and "neither a Slack user-group id" in str(err.value)
