"""The Slack fake and driver, checked with the real slack_sdk clients and the real Bolt stack."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler, AsyncServerErrorRetryHandler
from slack_sdk.models.blocks import ActionsBlock, ButtonElement, ConfirmObject, SectionBlock
from slack_sdk.web.async_client import AsyncWebClient

from tests.slack_driver import SlackDriver, StaleControl, bolt_sender, http_sender, socket_sender
from tests.slack_fake import SlackFake, bot_scopes_from_manifest

CHANNEL = "C0INCIDENT1"
ALICE, BOB, REQUESTER = "U0ALICE", "U0BOB", "U0REQUESTER"


@pytest.fixture
async def fake() -> AsyncIterator[SlackFake]:
    """A fresh fake with one channel, three users and one user group."""
    async with SlackFake(
        channels={CHANNEL: "incident-response", "C0PRIVATE1": {"name": "secret", "is_private": True}},
        users={ALICE: "alice", BOB: {"name": "bob", "real_name": "Bob B"}, REQUESTER: "requester"},
        usergroups={"S0LEADS": {"handle": "tech-leads", "users": [ALICE]}},
    ) as f:
        yield f


@pytest.fixture
def client(fake: SlackFake) -> AsyncWebClient:
    """The real SDK client pointed at the fake."""
    return AsyncWebClient(token=fake.bot_token, base_url=fake.base_url)


def make_app(fake: SlackFake, **kwargs: Any) -> AsyncApp:
    """A real AsyncApp whose Web API calls go to the fake."""
    return AsyncApp(
        client=AsyncWebClient(token=fake.bot_token, base_url=fake.base_url),
        signing_secret=fake.signing_secret,
        **kwargs,
    )


def _retry_numbers(app: AsyncApp) -> list[str | None]:
    """Acks ``/rollback`` on ``app`` and notes each request's ``X-Slack-Retry-Num`` (None on a first
    delivery), in order, in the list it returns."""
    retries: list[str | None] = []

    @app.command("/rollback")
    async def rollback(ack: Any, request: Any) -> None:
        await ack()
        retries.append(request.headers.get("x-slack-retry-num", [None])[0])

    return retries


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    """Poll until ``predicate()`` is true (listeners run as background tasks after the ack)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- Web API


async def test_base_url_joins_like_slack_sdk(fake: SlackFake) -> None:
    assert fake.base_url.endswith("/api/")
    assert fake.base_url.startswith("http://127.0.0.1:")
    assert fake.port > 0


async def test_auth_test(fake: SlackFake, client: AsyncWebClient) -> None:
    resp = await client.auth_test()
    assert resp["user_id"] == fake.bot_user_id
    assert resp["bot_id"] == fake.bot_id
    assert resp["team_id"] == fake.team_id
    # the fake's default token holds every scope it knows, the manifest's among them
    assert set(bot_scopes_from_manifest()) <= set(resp.headers["x-oauth-scopes"].split(","))


async def test_post_update_thread_and_ephemeral(fake: SlackFake, client: AsyncWebClient) -> None:
    root = await client.chat_postMessage(channel=CHANNEL, text="RB-1 opened")
    assert root["channel"] == CHANNEL
    assert root["message"]["text"] == "RB-1 opened"
    blocks = [SectionBlock(text="*phase 1* pending")]
    reply = await client.chat_postMessage(channel=CHANNEL, thread_ts=root["ts"], text="phase 1", blocks=blocks)
    broadcast = await client.chat_postMessage(
        channel=CHANNEL, thread_ts=reply["ts"], text="approved", reply_broadcast=True
    )
    assert float(root["ts"]) < float(reply["ts"]) < float(broadcast["ts"])
    assert len(root["ts"].split(".")[1]) == 6

    await client.chat_update(channel=CHANNEL, ts=reply["ts"], text="phase 1", blocks=[SectionBlock(text="done")])
    await client.chat_update(channel=CHANNEL, ts=root["ts"], text="RB-1 running")

    thread = fake.thread(CHANNEL, root["ts"])
    assert [m.ts for m in thread] == [root["ts"], reply["ts"], broadcast["ts"]]
    assert thread[0].text == "RB-1 running" and thread[0].reply_count == 2
    assert thread[1].blocks[0]["text"]["text"] == "done"
    assert len(thread[1].edits) == 1 and thread[1].edits[0]["blocks"][0]["text"]["text"] == "*phase 1* pending"
    assert thread[2].thread_ts == root["ts"] and thread[2].reply_broadcast  # a reply to a reply joins the thread
    assert [m.ts for m in fake.messages(CHANNEL)] == [root["ts"], reply["ts"], broadcast["ts"]]

    eph = await client.chat_postEphemeral(channel=CHANNEL, user=ALICE, text="only you")
    assert fake.ephemerals[0].message_ts == eph["message_ts"]
    assert fake.ephemerals[0].user == ALICE
    with pytest.raises(SlackApiError) as err:
        await client.chat_update(channel=CHANNEL, ts=eph["message_ts"], text="x")
    assert err.value.response["error"] == "message_not_found"  # ephemerals cannot be updated
    assert len(fake.messages(CHANNEL)) == 3


async def test_json_bodies_and_block_ids(fake: SlackFake, client: AsyncWebClient) -> None:
    body = {"channel": CHANNEL, "text": "t", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x"}}]}
    resp = await client.api_call("chat.postMessage", json=body)
    (msg,) = fake.messages(CHANNEL)
    assert msg.ts == resp["ts"]
    assert msg.blocks[0]["block_id"], "Slack gives every block an id"
    assert isinstance(fake.calls_to("chat.postMessage")[0].params["blocks"], list)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"channel": "C0NOWHERE"}, "channel_not_found"),
        ({"channel": CHANNEL, "text": ""}, "no_text"),
        ({"channel": CHANNEL, "text": "x", "thread_ts": "1.000001"}, "thread_not_found"),
        ({"channel": CHANNEL, "text": "x", "blocks": [SectionBlock(text="s")] * 51}, "invalid_blocks"),
        (
            {
                "channel": CHANNEL,
                "text": "x",
                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "a" * 3001}}],
            },
            "invalid_blocks",
        ),
    ],
)
@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
async def test_post_errors(fake: SlackFake, client: AsyncWebClient, kwargs: dict[str, Any], error: str) -> None:
    kwargs.setdefault("text", "x")
    with pytest.raises(SlackApiError) as err:
        await client.chat_postMessage(**kwargs)
    assert err.value.response["error"] == error
    assert err.value.response.status_code == 200
    assert fake.messages(CHANNEL) == []
    assert fake.calls[-1].error == error


async def test_update_unknown_message(client: AsyncWebClient) -> None:
    with pytest.raises(SlackApiError) as err:
        await client.chat_update(channel=CHANNEL, ts="1700000000.000100", text="x")
    assert err.value.response["error"] == "message_not_found"


async def test_tokens_and_unknown_method(fake: SlackFake) -> None:
    for token, error in (("xoxb-wrong", "invalid_auth"), (fake.app_token, "not_allowed_token_type")):
        with pytest.raises(SlackApiError) as err:
            await AsyncWebClient(token=token, base_url=fake.base_url).chat_postMessage(channel=CHANNEL, text="x")
        assert err.value.response["error"] == error
    with pytest.raises(SlackApiError) as err:
        await AsyncWebClient(base_url=fake.base_url).auth_test()
    assert err.value.response["error"] == "not_authed"
    with pytest.raises(SlackApiError) as err:
        await AsyncWebClient(token=fake.bot_token, base_url=fake.base_url).api_call("chat.teleport")
    assert err.value.response["error"] == "unknown_method"
    assert fake.messages(CHANNEL) == []
    method, params, at = fake.calls[0]
    assert method == "chat.postMessage" and params["channel"] == CHANNEL and at > 0
    assert fake.calls[0][0] == "chat.postMessage" and fake.calls[0].error == "invalid_auth"


async def test_users_groups_and_channels(fake: SlackFake, client: AsyncWebClient) -> None:
    user = (await client.users_info(user=BOB))["user"]
    assert (user["id"], user["name"], user["real_name"]) == (BOB, "bob", "Bob B")
    assert (await client.usergroups_users_list(usergroup="S0LEADS"))["users"] == [ALICE]
    groups = (await client.usergroups_list(include_users=True))["usergroups"]
    assert groups[0]["handle"] == "tech-leads" and groups[0]["users"] == [ALICE]
    fake.add_usergroup("S0LEADS", [ALICE, BOB])
    assert (await client.usergroups_users_list(usergroup="S0LEADS"))["users"] == [ALICE, BOB]
    channel = (await client.conversations_info(channel=CHANNEL))["channel"]
    assert channel["name"] == "incident-response" and channel["is_member"]
    for call, error in (
        (client.users_info(user="U0GHOST"), "user_not_found"),
        (client.usergroups_users_list(usergroup="S0GHOST"), "no_such_subteam"),
        (client.conversations_info(channel="C0GHOST"), "channel_not_found"),
    ):
        with pytest.raises(SlackApiError) as err:
            await call
        assert err.value.response["error"] == error


async def test_scopes_from_manifest_are_enforced() -> None:
    async with SlackFake(scopes=bot_scopes_from_manifest(), channels={"C0PRIVATE1": {"is_private": True}}) as fake:
        client = AsyncWebClient(token=fake.bot_token, base_url=fake.base_url)
        # the manifest asks for no read access to channel info: the bot never calls it
        with pytest.raises(SlackApiError) as err:
            await client.conversations_info(channel="C0PRIVATE1")
        assert err.value.response["error"] == "missing_scope"
    async with SlackFake(scopes=["chat:write"]) as fake:
        client = AsyncWebClient(token=fake.bot_token, base_url=fake.base_url)
        await client.chat_postMessage(channel=CHANNEL, text="ok")
        with pytest.raises(SlackApiError) as err:
            await client.users_info(user=fake.bot_user_id)
        assert (err.value.response["error"], err.value.response["needed"]) == ("missing_scope", "users:read")


async def test_files_upload_v2_into_a_thread(fake: SlackFake, client: AsyncWebClient) -> None:
    root = await client.chat_postMessage(channel=CHANNEL, text="RB-1")
    content = "line\n" * 5000
    resp = await client.files_upload_v2(
        channel=CHANNEL,
        thread_ts=root["ts"],
        content=content,
        filename="phase3.log",
        title="Phase 3 output",
        initial_comment="full output",
    )
    (upload,) = fake.files
    assert resp["file"]["id"] == upload.id
    assert upload.text == content and upload.length == len(content)
    assert (upload.channel, upload.thread_ts, upload.title) == (CHANNEL, root["ts"], "Phase 3 output")
    assert upload.initial_comment == "full output"
    thread = fake.thread(CHANNEL, root["ts"])
    assert [m.files for m in thread] == [[], [upload.id]]
    assert [c.method for c in fake.calls] == [
        "chat.postMessage",
        "files.getUploadURLExternal",
        "files.completeUploadExternal",
    ]


async def test_views_open_and_trigger_ids(fake: SlackFake, client: AsyncWebClient) -> None:
    view = {"type": "modal", "callback_id": "start", "title": {"type": "plain_text", "text": "Start"}, "blocks": []}
    trigger = fake.issue_trigger_id(ALICE)
    opened = await client.views_open(trigger_id=trigger, view=view)
    assert opened["view"]["id"] == fake.views_opened[0].id
    assert fake.views_opened[0].user_id == ALICE
    for trigger_id, error in ((trigger, "expired_trigger_id"), ("123.456.abc", "invalid_trigger_id")):
        with pytest.raises(SlackApiError) as err:
            await client.views_open(trigger_id=trigger_id, view=view)
        assert err.value.response["error"] == error
    bad = dict(view, title={"type": "plain_text", "text": "A title longer than 24 chars"})
    with pytest.raises(SlackApiError) as err:
        await client.views_open(trigger_id=fake.issue_trigger_id(), view=bad)
    assert err.value.response["error"] == "invalid_arguments"
    updated = await client.views_update(view_id=opened["view"]["id"], view=dict(view, private_metadata="m"))
    assert fake.views_opened[0].private_metadata == "m" and updated["view"]["hash"] == fake.views_opened[0].hash


async def test_trigger_id_expires() -> None:
    async with SlackFake(trigger_ttl=0.05) as fake:
        client = AsyncWebClient(token=fake.bot_token, base_url=fake.base_url)
        trigger = fake.issue_trigger_id()
        await asyncio.sleep(0.2)
        view = {"type": "modal", "title": {"type": "plain_text", "text": "T"}, "blocks": []}
        with pytest.raises(SlackApiError) as err:
            await client.views_open(trigger_id=trigger, view=view)
        assert err.value.response["error"] == "expired_trigger_id"


# --------------------------------------------------------------------------- faults


async def test_rate_limit_retried_by_sdk(fake: SlackFake) -> None:
    client = AsyncWebClient(
        token=fake.bot_token,
        base_url=fake.base_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=3)],
    )
    fake.rate_limit("chat.postMessage", times=2, retry_after=0)
    resp = await client.chat_postMessage(channel=CHANNEL, text="after the storm")
    statuses = [c.status for c in fake.calls_to("chat.postMessage")]
    assert statuses == [429, 429, 200]
    assert [m.ts for m in fake.messages(CHANNEL)] == [resp["ts"]], "nothing lost, nothing doubled"


async def test_rate_limit_answer_shape(fake: SlackFake, client: AsyncWebClient) -> None:
    fake.rate_limit(None, times=1, retry_after=7)
    with pytest.raises(SlackApiError) as err:
        await client.users_info(user=ALICE)
    assert err.value.response.status_code == 429
    assert err.value.response.headers["Retry-After"] == "7"
    assert err.value.response["error"] == "ratelimited"
    await client.users_info(user=ALICE)  # only the next call was limited
    fake.rate_limit("users.info", seconds=60, retry_after=1)
    await client.auth_test()  # other methods pass
    with pytest.raises(SlackApiError):
        await client.users_info(user=ALICE)
    fake.clear_rate_limits()
    await client.users_info(user=ALICE)


async def test_rate_limit_with_retry_after_one_second(fake: SlackFake) -> None:
    client = AsyncWebClient(
        token=fake.bot_token, base_url=fake.base_url, retry_handlers=[AsyncRateLimitErrorRetryHandler()]
    )
    fake.rate_limit("chat.update", times=1, retry_after=1)
    posted = await client.chat_postMessage(channel=CHANNEL, text="v1")
    started = time.monotonic()
    await client.chat_update(channel=CHANNEL, ts=posted["ts"], text="v2")
    assert time.monotonic() - started >= 1.0, "the SDK honoured Retry-After"
    assert fake.message(CHANNEL, posted["ts"]).text == "v2"  # type: ignore[union-attr]


async def test_down_503_then_up(fake: SlackFake, client: AsyncWebClient) -> None:
    fake.set_down(True)
    with pytest.raises(SlackApiError) as err:
        await client.chat_postMessage(channel=CHANNEL, text="x")
    assert err.value.response.status_code == 503
    fake.set_down(False)
    await client.chat_postMessage(channel=CHANNEL, text="x")
    fake.down(0.3)
    retrying = AsyncWebClient(
        token=fake.bot_token, base_url=fake.base_url, retry_handlers=[AsyncServerErrorRetryHandler(max_retry_count=5)]
    )
    await retrying.chat_postMessage(channel=CHANNEL, text="y")
    assert [m.text for m in fake.messages(CHANNEL)] == ["x", "y"]
    assert 503 in [c.status for c in fake.calls]


async def test_down_refusing_connections(fake: SlackFake) -> None:
    # no retry handler: the SDK's default one would retry after ~1 s, when the outage may be over
    client = AsyncWebClient(token=fake.bot_token, base_url=fake.base_url, retry_handlers=[])
    await client.auth_test()
    port = fake.port
    fake.down(1.0, mode="refuse")
    await asyncio.sleep(0.05)
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.auth_test()
    await fake.wait_up()
    assert fake.port == port and not fake.is_down
    await client.auth_test()
    async with fake.outage("refuse"):
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.auth_test()
    await client.auth_test()
    fake.set_down(True, mode="refuse")
    await asyncio.sleep(0.1)
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.auth_test()
    fake.set_down(True, mode="503")  # from refusing to answering 503: listening again
    await fake.wait_up()
    with pytest.raises(SlackApiError) as err:
        await client.auth_test()
    assert err.value.response.status_code == 503
    fake.set_down(False)
    await client.auth_test()


async def test_refuse_drops_kept_alive_connections(fake: SlackFake) -> None:
    async with aiohttp.ClientSession() as session:
        client = AsyncWebClient(token=fake.bot_token, base_url=fake.base_url, session=session, retry_handlers=[])
        await client.auth_test()  # the session now holds an open connection
        async with fake.outage("refuse"):
            with pytest.raises(aiohttp.ClientConnectionError):
                await client.auth_test()
            assert fake.calls[-1].error == "connection_refused"
        assert (await client.auth_test())["ok"]


# --------------------------------------------------------------------------- driver + Bolt


async def test_signed_slash_command_is_acked(fake: SlackFake) -> None:
    app = make_app(fake)
    seen: list[dict[str, Any]] = []

    @app.command("/rollback")
    async def rollback(ack: Any, body: dict[str, Any], respond: Any) -> None:
        await ack()
        seen.append(body)
        await respond("working on it")

    driver = SlackDriver(fake, bolt_sender(app))
    resp = await driver.slash_command("start db1 bad deploy", user_id=ALICE)
    assert resp.status == 200
    assert resp.elapsed < 3
    await wait_for(lambda: bool(fake.responses))
    assert seen[0]["text"] == "start db1 bad deploy" and seen[0]["user_id"] == ALICE
    assert seen[0]["channel_id"] == CHANNEL and seen[0]["trigger_id"] == resp.trigger_id
    assert fake.responses[0].body["text"] == "working on it"
    assert fake.ephemerals[0].source == "response_url" and fake.ephemerals[0].user == ALICE
    assert fake.calls_to("auth.test"), "Bolt checked the token with the fake"


async def test_forged_and_stale_requests_are_rejected(fake: SlackFake) -> None:
    app = make_app(fake)
    ran: list[str] = []

    @app.command("/rollback")
    async def rollback(ack: Any, body: dict[str, Any]) -> None:
        await ack()
        ran.append(body["text"])

    driver = SlackDriver(fake, bolt_sender(app))
    assert (await driver.slash_command("forged", forged=True)).status == 401
    assert (await driver.slash_command("stale", stale=True)).status == 401
    await asyncio.sleep(0.1)
    assert ran == []


async def test_retries_and_replays_reach_the_app(fake: SlackFake) -> None:
    app = make_app(fake)
    retries = _retry_numbers(app)
    driver = SlackDriver(fake, bolt_sender(app))
    first = await driver.slash_command("start db1 x")
    assert (await driver.slash_command("start db1 x", retry_num=1)).status == 200
    assert (await driver.replay(first.request, retry_num=2)).status == 200
    assert (await driver.replay()).status == 200  # Bolt does not deduplicate: the bot must
    await wait_for(lambda: len(retries) == 4)
    assert retries == [None, "1", "2", "2"]


def approval_blocks() -> list[Any]:
    """A message with Approve / Reject (confirm) buttons, built with slack_sdk.models."""
    return [
        SectionBlock(text="Approval needed: one primary, one secondary"),
        ActionsBlock(
            block_id="approval",
            elements=[
                ButtonElement(text="Approve", action_id="approve", value="RB-1", style="primary"),
                ButtonElement(
                    text="Reject",
                    action_id="reject",
                    value="RB-1",
                    style="danger",
                    confirm=ConfirmObject(
                        title="Reject?", text="This ends the incident", confirm="Reject", deny="Back"
                    ),
                ),
            ],
        ),
    ]


async def test_press_only_posted_buttons(fake: SlackFake) -> None:
    app = make_app(fake)
    clicks: list[dict[str, Any]] = []

    @app.command("/rollback")
    async def rollback(ack: Any, client: AsyncWebClient, body: dict[str, Any]) -> None:
        await ack()
        root = await client.chat_postMessage(channel=body["channel_id"], text="RB-1")
        await client.chat_postMessage(
            channel=body["channel_id"], thread_ts=root["ts"], text="approval", blocks=approval_blocks()
        )

    @app.action("approve")
    async def approve(ack: Any, body: dict[str, Any], respond: Any) -> None:
        await ack()
        clicks.append(body)
        await respond(replace_original=True, text="approved by alice")

    driver = SlackDriver(fake, bolt_sender(app))
    await driver.slash_command("start db1 x", user_id=REQUESTER)
    await wait_for(lambda: len(fake.messages(CHANNEL)) == 2)
    root = fake.messages(CHANNEL)[0]
    buttons = fake.buttons(CHANNEL, thread_ts=root.ts)
    assert [(b.text, b.action_id, b.value, b.confirm) for b in buttons] == [
        ("Approve", "approve", "RB-1", False),
        ("Reject", "reject", "RB-1", True),
    ]
    approve_button = fake.find_button(CHANNEL, root.ts, action_id="approve")
    assert approve_button.thread_ts == root.ts and approve_button.block_id == "approval"
    with pytest.raises(AssertionError, match="buttons posted"):
        fake.find_button(CHANNEL, action_id="retry")

    resp = await driver.press(approve_button, ALICE)
    assert resp.status == 200
    await wait_for(lambda: fake.message(CHANNEL, approve_button.message_ts).text == "approved by alice")  # type: ignore[union-attr]
    payload = clicks[0]
    assert payload["user"]["id"] == ALICE and payload["actions"][0]["value"] == "RB-1"
    assert payload["container"]["thread_ts"] == root.ts
    assert payload["message"]["ts"] == approve_button.message_ts
    assert payload["message"]["blocks"][1]["elements"][0]["action_id"] == "approve"
    assert fake.buttons(CHANNEL) == [], "the message was replaced, its buttons are gone"
    with pytest.raises(StaleControl):
        await driver.press(approve_button, BOB)
    assert (await driver.press(approve_button, BOB, allow_stale=True)).status == 200  # an outdated client
    await wait_for(lambda: len(clicks) == 2)


async def test_modal_opened_then_submitted(fake: SlackFake) -> None:
    app = make_app(fake)
    submitted: list[dict[str, Any]] = []
    modal = {
        "type": "modal",
        "callback_id": "rollback_start",
        "private_metadata": json.dumps({"target": "db1"}),
        "title": {"type": "plain_text", "text": "Start a rollback"},
        "submit": {"type": "plain_text", "text": "Start"},
        "blocks": [
            {
                "type": "input",
                "block_id": "severity",
                "label": {"type": "plain_text", "text": "Severity"},
                "element": {
                    "type": "static_select",
                    "action_id": "pick",
                    "options": [{"text": {"type": "plain_text", "text": p}, "value": p} for p in ("P1", "P2", "P3")],
                },
            },
            {
                "type": "input",
                "block_id": "impact",
                "label": {"type": "plain_text", "text": "Impact"},
                "element": {"type": "plain_text_input", "action_id": "text"},
            },
        ],
    }

    @app.command("/rollback")
    async def rollback(ack: Any, client: AsyncWebClient, body: dict[str, Any]) -> None:
        await ack()
        await client.views_open(trigger_id=body["trigger_id"], view=modal)

    @app.view("rollback_start")
    async def on_submit(ack: Any, view: dict[str, Any]) -> None:
        values = view["state"]["values"]
        if not values["impact"]["text"]["value"]:
            await ack(response_action="errors", errors={"impact": "Say what is broken"})
            return
        await ack()
        submitted.append(view)

    driver = SlackDriver(fake, bolt_sender(app))
    await driver.slash_command("start db1 x", user_id=ALICE)
    await wait_for(lambda: bool(fake.views_opened))
    with pytest.raises(AssertionError, match="not offered"):
        await driver.view_submission("rollback_start", values={"pick": "P9", "text": "x"}, user_id=ALICE)
    resp = await driver.view_submission("rollback_start", values={"pick": "P1", "text": ""}, user_id=ALICE)
    assert resp.status == 200
    assert resp.json() == {"response_action": "errors", "errors": {"impact": "Say what is broken"}}
    resp = await driver.view_submission("rollback_start", values={"pick": "P2", "text": "orders fail"}, user_id=ALICE)
    assert resp.status == 200 and resp.body == ""
    (view,) = submitted
    assert view["state"]["values"]["severity"]["pick"]["selected_option"]["value"] == "P2"
    assert json.loads(view["private_metadata"]) == {"target": "db1"}
    assert view["id"] == fake.views_opened[0].id
    with pytest.raises(AssertionError, match="opened no view"):
        await driver.view_submission("never_opened", {}, user_id=ALICE)


async def test_http_sender_against_bolt_web_server(fake: SlackFake) -> None:
    app = make_app(fake)

    @app.command("/rollback")
    async def rollback(ack: Any) -> None:
        await ack("got it")

    runner = web.AppRunner(app.web_app(path="/slack/events"))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        driver = SlackDriver(fake, http_sender(f"http://127.0.0.1:{port}/slack/events"))
        resp = await driver.slash_command("help")
        assert (resp.status, resp.body) == (200, "got it")
        assert (await driver.slash_command("help", forged=True)).status == 401
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------- Socket Mode


async def test_socket_mode_end_to_end(fake: SlackFake) -> None:
    app = make_app(fake)
    commands: list[dict[str, Any]] = []

    @app.command("/rollback")
    async def rollback(ack: Any, body: dict[str, Any]) -> None:
        await ack("on it")
        commands.append(body)

    handler = AsyncSocketModeHandler(app, app_token=fake.app_token)
    await handler.connect_async()
    try:
        await fake.wait_socket_connections(1, timeout=10)
        assert fake.calls_to("apps.connections.open")[0].token == fake.app_token
        payload = {
            "command": "/rollback",
            "text": "status",
            "user_id": ALICE,
            "channel_id": CHANNEL,
            "team_id": fake.team_id,
            "trigger_id": fake.issue_trigger_id(ALICE),
        }
        ack = await fake.socket_send("slash_commands", payload, timeout=10)
        assert ack["payload"] == {"text": "on it"}
        assert fake.socket_acks[-1].envelope_id == ack["envelope_id"]
        await wait_for(lambda: bool(commands))
        assert commands[0]["text"] == "status"

        driver = SlackDriver(fake, socket_sender(fake))
        resp = await driver.slash_command("help", user_id=BOB)
        assert resp.json() == {"text": "on it"}

        await fake.socket_disconnect()
        await fake.wait_socket_connections(2, timeout=15)
        ack = await fake.socket_send("slash_commands", dict(payload, text="after reconnect"), timeout=10)
        assert ack["payload"] == {"text": "on it"}
        await wait_for(lambda: commands[-1]["text"] == "after reconnect")
    finally:
        await handler.close_async()


async def test_socket_send_times_out_without_ack(fake: SlackFake) -> None:
    ws_url = (await AsyncWebClient(base_url=fake.base_url).apps_connections_open(app_token=fake.app_token))["url"]
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
        hello = await ws.receive_json(timeout=5)
        assert hello["type"] == "hello"
        with pytest.raises(asyncio.TimeoutError):
            await fake.socket_send("interactive", {"type": "block_actions"}, timeout=0.2)
        envelope = await ws.receive_json(timeout=5)
        assert envelope["type"] == "interactive" and envelope["accepts_response_payload"] is False


async def _spread_over_connections(seed: int) -> tuple[list[int], dict[int, int], list[int]]:
    """Three raw clients that ack everything; 12 envelopes (every other one a retry), one aimed at
    connection 2, then a disconnect and a fourth client: (connections chosen, acks by connection,
    connections chosen after the disconnect)."""
    async with SlackFake(socket_seed=seed) as fake, aiohttp.ClientSession() as session:
        api = AsyncWebClient(base_url=fake.base_url)
        acks = {1: 0, 2: 0, 3: 0, 4: 0}

        async def client(number: int) -> asyncio.Task[None]:
            ws = await session.ws_connect((await api.apps_connections_open(app_token=fake.app_token))["url"])
            assert (await ws.receive_json(timeout=5))["type"] == "hello"

            async def answer() -> None:
                async for msg in ws:
                    if "envelope_id" in (data := json.loads(msg.data)):
                        acks[number] += 1
                        await ws.send_json({"envelope_id": data["envelope_id"]})

            return asyncio.create_task(answer())

        tasks = [await client(n) for n in (1, 2, 3)]
        try:
            for i in range(12):
                await fake.socket_send("interactive", {"type": "block_actions"}, retry_attempt=i % 2 or None)
            await fake.socket_send("interactive", {"type": "block_actions"}, connection=2)
            chosen = [d.connection for d in fake.socket_deliveries]
            assert chosen[-1] == 2 and fake.socket_connections == [1, 2, 3]
            assert len({port for _host, port in fake.socket_peers.values()}) == 3
            await fake.socket_disconnect()
            tasks.append(await client(4))
            for _ in range(3):
                await fake.socket_send("slash_commands", {"command": "/rollback"})
            after = [d.connection for d in fake.socket_deliveries[13:]]
            assert [a.envelope_id for a in fake.socket_acks] == [d.envelope_id for d in fake.socket_deliveries]
            return chosen[:12], acks, after
        finally:
            await fake.socket_close_all()
            for task in tasks:
                task.cancel()


async def test_socket_mode_hands_each_envelope_to_one_open_connection_at_random() -> None:
    chosen, acks, after = await _spread_over_connections(seed=7)
    print(f"seed 7: envelopes went to connections {chosen}, acks by connection {acks}")
    assert len(set(chosen)) == 3  # spread over every connection, retries included
    assert any(chosen[i] != chosen[i - 1] for i in range(1, 12, 2))  # a retry went to another connection
    assert acks[1] + acks[2] + acks[3] == 13 and after == [4, 4, 4]  # told to disconnect: nothing new
    assert (await _spread_over_connections(seed=7))[0] == chosen  # the seed reproduces the choice
    assert (await _spread_over_connections(seed=8))[0] != chosen


async def test_selects_are_choices_and_pressing_one_sends_selected_option(fake: SlackFake) -> None:
    app = make_app(fake)
    picked: list[dict[str, Any]] = []

    @app.action("strategy")
    async def strategy(ack: Any, action: dict[str, Any]) -> None:
        await ack()
        picked.append(action)

    options = [{"text": {"type": "plain_text", "text": f"Strategy {k}"}, "value": k} for k in "ABC"]
    blocks = [
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": "Pick a restoration strategy"},
            "accessory": {"type": "static_select", "action_id": "strategy", "options": options},
        }
    ]
    await AsyncWebClient(token=fake.bot_token, base_url=fake.base_url).chat_postMessage(
        channel=CHANNEL, text="choose", blocks=blocks
    )
    assert fake.buttons(CHANNEL) == []
    choices = fake.choices(CHANNEL)
    assert [(c.type, c.value, c.text) for c in choices] == [
        ("static_select", "A", "Strategy A"),
        ("static_select", "B", "Strategy B"),
        ("static_select", "C", "Strategy C"),
    ]
    await SlackDriver(fake, bolt_sender(app)).press(choices[1], ALICE)
    await wait_for(lambda: bool(picked))
    assert picked[0]["selected_option"]["value"] == "B" and picked[0]["type"] == "static_select"


async def test_response_url_takes_five_posts(fake: SlackFake) -> None:
    url = fake.issue_response_url(CHANNEL, ALICE)
    async with aiohttp.ClientSession() as session:
        statuses = []
        for i in range(6):
            async with session.post(url, json={"text": f"n{i}"}) as resp:
                statuses.append(resp.status)
    assert statuses == [200] * 5 + [404]
    assert [e.text for e in fake.ephemerals] == [f"n{i}" for i in range(5)]
    assert len(fake.responses) == 6


async def test_socket_mode_retry_headers_reach_bolt(fake: SlackFake) -> None:
    app = make_app(fake)
    retries = _retry_numbers(app)
    handler = AsyncSocketModeHandler(app, app_token=fake.app_token)
    await handler.connect_async()
    try:
        driver = SlackDriver(fake, socket_sender(fake))
        assert (await driver.slash_command("status")).status == 200
        await driver.replay(retry_num=1)
        await wait_for(lambda: len(retries) == 2)
        assert retries == [None, "1"]
    finally:
        await handler.close_async()
