"""End to end through the real Bolt stack against the local Slack fake.

Every interaction is a signed request as Slack sends it; every button pressed is one
the bot actually posted. The target is a local transport in a temporary directory.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.core.config import BotConfig, SlackSecrets, parse_config
from bot.core.lifecycle import Status
from bot.slack.client import make_client
from bot.slack.services import Services, build_services
from bot.slack.thread import desired_messages
from bot.slack.view import load_state
from handlers.app import create_app
from tests.slack_driver import SlackDriver, bolt_sender
from tests.slack_fake import SlackFake, bot_scopes_from_manifest

CH = "C0INCIDENT1"
REQ, LEAD, PO, IC, NOBODY = "U0REQUESTER", "U0LEAD", "U0PRODOWNER", "U0COMMANDER", "U0RANDOM"

RUNBOOK = textwrap.dedent("""\
    name: e2e
    phases:
      - id: authorization
        title: Authorization
        steps:
          - {id: approval, title: "Approval", kind: approval, policy: default}
      - id: restoration
        title: "Phase 3: Database Restoration"
        steps:
          - id: strategy
            title: Restoration strategy
            kind: choice
            prompt: Choose the restoration method
            guidance: "A selective for minor issues; C full restore for severe corruption."
            options:
              - {value: "A", label: "A: Selective rollback", description: "minor issues"}
              - {value: "C", label: "C: Full database restore", description: "severe corruption"}
          - id: write
            title: Write the marker
            kind: command
            idempotent: true
            destructive: true
            run: "echo {{ choices.strategy }} >> marker.txt; echo 'path=/srv/backup.db'"
            captures:
              path: {regex: "path=(.*)"}
          - id: flaky
            title: Flaky check
            kind: command
            idempotent: true
            run: "echo attempt >> flaky.log; test -f ok.flag"
          - id: long_output
            title: Long output
            kind: command
            idempotent: true
            run: "seq 1 3000"
      - id: stabilization
        title: "Phase 6: Stabilization"
        steps:
          - {id: confirm, title: "Confirm service restored", kind: manual}
    """)


@dataclass
class Harness:
    fake: SlackFake
    driver: SlackDriver
    services: Services
    workdir: Path
    config: BotConfig
    secrets: SlackSecrets

    async def idle(self) -> None:
        await self.services.idle(timeout=60)

    def thread(self) -> list[Any]:
        roots = [m for m in self.fake.messages(CH) if not m.is_reply]
        assert len(roots) == 1, [m.text for m in roots]
        return self.fake.thread(CH, roots[0].ts)

    def thread_ts(self) -> str:
        return self.thread()[0].ts

    async def incident(self) -> Any:
        incs = await self.services.store.incidents()
        assert len(incs) == 1
        return incs[0]


def _config(tmp_path: Path, workdir: Path, **slack: Any) -> BotConfig:
    rb = tmp_path / "runbook.yml"
    rb.write_text(RUNBOOK)
    return parse_config({
        "slack": {"channels": [CH], "update_interval_seconds": 0.05, "retry_max_seconds": 0.5,
                  "upload_over_bytes": 3500, **slack},
        "roles": {"tech_lead": {"users": [LEAD, REQ]}, "product_owner": {"groups": ["S0PRODUCT"]},
                  "incident_commander": {"users": [IC]}},
        "targets": [{"name": "t1", "transport": "local", "workdir": str(workdir)}],
        "runbook": str(rb),
        "state_db": str(tmp_path / "state.db"),
        "artifacts_dir": str(tmp_path / "artifacts"),
        "time_scale": 0.01,
    })


async def _start(fake: SlackFake, config: BotConfig, workdir: Path) -> Harness:
    secrets = SlackSecrets(slack_bot_token=fake.bot_token, slack_signing_secret=fake.signing_secret,
                           slack_api_url=fake.base_url)
    client = make_client(secrets)
    services = await build_services(config, client)
    app = create_app(secrets, services)
    await services.resume()
    return Harness(fake, SlackDriver(fake, bolt_sender(app), default_user_id=REQ), services, workdir, config,
                   secrets)


@asynccontextmanager
async def running(tmp_path: Path, *, channels: Mapping[str, str] | None = None,
                  scopes: list[str] | None = None) -> AsyncIterator[Harness]:
    """The bot on this file's runbook and config, against a Slack fake that knows this file's people,
    the incident channel and ``channels`` (with ``scopes``: only those granted); closed after."""
    workdir = tmp_path / "app"
    workdir.mkdir()
    fake = SlackFake(users={u: u.lower() for u in (REQ, LEAD, PO, IC, NOBODY)}, usergroups={"S0PRODUCT": [PO]},
                     scopes=scopes)
    for channel, name in {CH: "incident-response", **(channels or {})}.items():
        fake.add_channel(channel, name)
    await fake.start()
    h = await _start(fake, _config(tmp_path, workdir), workdir)
    try:
        yield h
    finally:
        await h.services.close()
        await fake.stop()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(tmp_path, channels={"C0OTHER": "random"}, scopes=bot_scopes_from_manifest()) as h:
        yield h


async def _open_incident(h: Harness, severity: str = "P1", impact: str = "High", risk: str = "Critical",
                         override: str | None = None, user: str = REQ) -> Any:
    r = await h.driver.slash_command(text="start t1 phase 3 broke the database", user_id=user, channel_id=CH)
    assert r.status == 200
    await h.idle()  # the modal opens in the background, after the ack
    values: dict[str, Any] = {"target": "t1", "triggers": ["data_corruption"], "severity": severity,
                              "impact": impact, "business_risk": risk, "reason": "phase 3 broke the database"}
    if override is not None:
        values["override"] = override
    r = await h.driver.view_submission("rb_start", values=values, user_id=user)
    assert r.status == 200
    await h.idle()
    return r


def _ephemerals_to(h: Harness, user: str) -> list[str]:
    return [e.text for e in h.fake.ephemerals if e.user == user]


def _assert_thread_matches_state(h: Harness, state_msgs: list[Any]) -> None:
    """Every message the state calls for is there exactly once, nothing else."""
    thread = [m for m in h.thread() if not m.files]
    want = [m for m in state_msgs if m.file is None]
    assert len([m for m in h.thread() if m.files]) == len([m for m in state_msgs if m.file is not None])
    assert len(thread) == len(want), [m.text[:60] for m in thread]
    for msg, slack in zip(want, thread, strict=True):
        assert _no_block_ids(slack.blocks) == _no_block_ids(msg.payload()), msg.key


def _no_block_ids(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Slack fills in a block_id where the bot gave none; the bot's own ids stay compared.
    return [{k: v for k, v in b.items() if not (k == "block_id" and len(v) == 5)} for b in blocks]


async def _until(predicate: Any, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("condition not reached")


async def _state_messages(h: Harness) -> list[Any]:
    inc = await h.incident()
    state = await load_state(h.services.store, h.services.runbook, inc.id)
    return desired_messages(state, h.services.runbook, h.services.policy, upload_over=3500)


# ---------------------------------------------------------------- the whole incident


async def test_whole_incident_from_start_to_completion(harness: Harness) -> None:
    h = harness
    await _open_incident(h, severity="P3", impact="Low", risk="Critical")
    inc = await h.incident()
    assert inc.decision == "IMMEDIATE" and inc.severity == "P3" and inc.requester == REQ
    root = h.thread()[0]
    assert inc.id in root.text and "decided by business risk" in str(root.blocks)
    assert inc.status is Status.WAITING

    # Approvals: requester, nobody, a repeated click: recorded, not counted, explained.
    for user in (REQ, NOBODY, LEAD, LEAD):
        await h.driver.press(h.fake.find_button(CH, h.thread_ts(), action_id="rb_approve"), user)
        await h.idle()
    assert "may not approve it yourself" in _ephemerals_to(h, REQ)[-1]
    assert "none of the approving roles" in _ephemerals_to(h, NOBODY)[-1]
    assert "one person counts once" in _ephemerals_to(h, LEAD)[-1]
    clicks = await h.services.store.approvals(inc.id)
    assert [(c.user_id, c.counted) for c in clicks] == [(REQ, False), (NOBODY, False), (LEAD, True), (LEAD, False)]
    assert (await h.incident()).status is Status.WAITING
    approval_msg = next(m for m in h.thread() if "Still needed" in str(m.blocks))
    assert "product_owner" in str(approval_msg.blocks) and f"<@{NOBODY}>" in str(approval_msg.blocks)

    # The product owner holds the role through a user group.
    await h.driver.press(h.fake.find_button(CH, h.thread_ts(), action_id="rb_approve"), PO)
    await h.idle()
    broadcasts = [m for m in h.thread() if m.reply_broadcast]
    assert any("approved by" in m.text or "approved by" in str(m.blocks) for m in broadcasts)
    assert not [b for b in h.fake.buttons(CH, h.thread_ts()) if b.action_id == "rb_approve"]

    # The strategy choice: only approvers and the incident commander may pick.
    choice = h.fake.find_button(CH, h.thread_ts(), text="A: Selective rollback")
    assert choice.confirm  # leads on to a destructive step
    await h.driver.press(choice, NOBODY)
    await h.idle()
    assert "Only approvers and incident commanders" in _ephemerals_to(h, NOBODY)[-1]
    await h.driver.press(h.fake.find_button(CH, h.thread_ts(), text="A: Selective rollback"), IC)
    await h.idle()
    assert (h.workdir / "marker.txt").read_text() == "A\n"

    # The flaky step failed: error tail, Retry / Skip / Abort; a double click runs once.
    retry = h.fake.find_button(CH, h.thread_ts(), text="Retry")
    assert any("Flaky check failed" in str(m.blocks) for m in h.thread())
    (h.workdir / "ok.flag").write_text("")
    await asyncio.gather(h.driver.press(retry, LEAD), h.driver.press(retry, IC, allow_stale=True))
    await h.idle()
    assert (h.workdir / "flaky.log").read_text().count("attempt") == 2
    runs = [r for r in await h.services.store.step_runs(inc.id) if r.step_id == "flaky"]
    assert len(runs) == 2

    # Long output went into a file in the thread, not into a message.
    outputs = [f for f in h.fake.files if not f.filename.startswith("plan_")]  # the plan is a file too
    assert len(outputs) == 1 and outputs[0].thread_ts == h.thread_ts()
    assert "2999\n3000" in outputs[0].text
    assert not any("2999" in str(m.blocks) for m in h.thread())

    # The manual item; then the incident is complete.
    await h.driver.press(h.fake.find_button(CH, h.thread_ts(), text="Done"), IC)
    await h.idle()
    inc = await h.incident()
    assert inc.status is Status.COMPLETED
    assert "completed" in h.thread()[0].text
    final = [m for m in h.thread() if m.reply_broadcast]
    assert any("completed" in str(m.blocks) for m in final)
    assert not h.fake.buttons(CH, h.thread_ts())  # nothing left to press
    _assert_thread_matches_state(h, await _state_messages(h))
    checklist = next(m for m in h.thread() if "*Phase 3: Database Restoration*" in str(m.blocks))
    assert "path: `/srv/backup.db`" in str(checklist.blocks) and checklist.edits  # edited in place


async def test_reject_ends_the_incident_with_the_reason(harness: Harness) -> None:
    h = harness
    await _open_incident(h)
    await h.driver.press(h.fake.find_button(CH, h.thread_ts(), action_id="rb_reject"), LEAD)
    await h.idle()
    r = await h.driver.view_submission("rb_reject_reason", values={"note": ""}, user_id=LEAD)
    assert r.json()["response_action"] == "errors"
    r = await h.driver.view_submission("rb_reject_reason", values={"note": "the deploy is fine"}, user_id=LEAD)
    await h.idle()
    inc = await h.incident()
    assert inc.status is Status.REJECTED
    assert "the deploy is fine" in str(h.thread()[-1].blocks) and h.thread()[-1].reply_broadcast


async def test_emergency_path_and_abort(harness: Harness) -> None:
    h = harness
    await _open_incident(h)
    await h.driver.press(h.fake.find_button(CH, h.thread_ts(), action_id="rb_approve"), IC)
    await h.idle()
    assert h.fake.find_button(CH, h.thread_ts(), text="C: Full database restore")
    r = await h.driver.slash_command(text="abort", user_id=NOBODY, channel_id=CH)
    await h.idle()
    assert "needs a reason" in _ephemerals_to(h, NOBODY)[-1]
    await h.driver.slash_command(text="abort wrong target after all", user_id=NOBODY, channel_id=CH)
    await h.idle()
    assert "Only approvers and incident commanders may abort" in _ephemerals_to(h, NOBODY)[-1]
    inc = await h.incident()
    await h.driver.slash_command(text=f"abort {inc.id} wrong target after all", user_id=IC, channel_id=CH)
    await h.idle()
    inc = await h.incident()
    assert inc.status is Status.ABORTED and inc.abort_reason == "wrong target after all"
    assert not h.fake.buttons(CH, h.thread_ts())
    assert r.status == 200


# ---------------------------------------------------------------- refusals


async def test_outside_channel_busy_target_status_and_help(harness: Harness) -> None:
    h = harness
    await h.driver.slash_command(text="start t1 x", user_id=REQ, channel_id="C0OTHER")
    await h.idle()
    assert "this channel is not configured" in _ephemerals_to(h, REQ)[-1]
    assert not h.fake.views_opened
    await _open_incident(h)
    inc = await h.incident()
    opened = len(h.fake.views_opened)
    await h.driver.slash_command(text="start t1 again", user_id=NOBODY, channel_id=CH)
    await h.idle()
    assert f"*{inc.id}* is already active on `t1`" in _ephemerals_to(h, NOBODY)[-1]
    assert len(h.fake.views_opened) == opened
    await h.driver.slash_command(text="status", user_id=NOBODY, channel_id=CH)
    await h.idle()
    assert inc.id in _ephemerals_to(h, NOBODY)[-1] and "waiting for approval" in _ephemerals_to(h, NOBODY)[-1]
    await h.driver.slash_command(text="help", user_id=NOBODY, channel_id=CH)
    await h.idle()
    assert "/rollback start" in _ephemerals_to(h, NOBODY)[-1]


async def test_modal_errors_and_p4(harness: Harness) -> None:
    h = harness
    await h.driver.slash_command(text="start t1 x", user_id=REQ, channel_id=CH)
    await h.idle()
    r = await h.driver.view_submission("rb_start", values={
        "target": "t1", "triggers": [], "severity": "P4", "impact": "Minimal", "business_risk": "Low",
        "reason": "noise", "override": "I insist"}, user_id=REQ)
    errors = r.json()["errors"]
    assert set(errors) == {"triggers", "override"}
    assert "incident commander" in errors["override"]
    assert not await h.services.store.incidents()
    r = await h.driver.view_submission("rb_start", values={
        "target": "t1", "triggers": ["performance_degradation"], "severity": "P4", "impact": "Minimal",
        "business_risk": "Low", "reason": "noise"}, user_id=REQ)
    assert r.status == 200 and not r.body
    await h.idle()
    inc = await h.incident()
    assert inc.status is Status.CLOSED and inc.decision == "No rollback needed"
    assert "P4: recorded, no rollback needed" in str(h.thread()[0].blocks)
    assert not h.fake.buttons(CH)
    # The close is in the audit chain at once, not at the next change or start.
    entries = await h.services.engine.records.log.entries(inc.id)
    assert [e["kind"] for e in entries if e.get("type") == "event"][-1] == "incident_close"


async def test_p4_override_by_incident_commander(harness: Harness) -> None:
    h = harness
    await _open_incident(h, severity="P4", impact="Minimal", risk="Low", override="customers report errors",
                         user=IC)
    inc = await h.incident()
    assert inc.status is Status.WAITING and inc.inputs["override"]["by"] == IC
    assert "P4 overridden by" in str(h.thread()[0].blocks)


async def test_forged_and_stale_requests_change_nothing(harness: Harness) -> None:
    h = harness
    r1 = await h.driver.slash_command(text="start t1 x", user_id=REQ, channel_id=CH, forged=True)
    r2 = await h.driver.slash_command(text="start t1 x", user_id=REQ, channel_id=CH, stale=True)
    await h.idle()
    assert r1.status == 401 and r2.status == 401
    assert not h.fake.views_opened and not h.fake.ephemerals
    await _open_incident(h)
    before = await h.services.store.approvals((await h.incident()).id)
    button = h.fake.find_button(CH, h.thread_ts(), action_id="rb_approve")
    r = await h.driver.press(button, LEAD, forged=True)
    await h.idle()
    assert r.status == 401
    assert await h.services.store.approvals((await h.incident()).id) == before


async def test_slack_retries_of_one_click_count_once(harness: Harness) -> None:
    h = harness
    await _open_incident(h)
    await h.driver.press(h.fake.find_button(CH, h.thread_ts(), action_id="rb_approve"), LEAD)
    await h.driver.replay(retry_num=1)
    await h.driver.replay(retry_num=2)
    await h.idle()
    clicks = await h.services.store.approvals((await h.incident()).id)
    assert len(clicks) == 1 and clicks[0].counted
    assert not _ephemerals_to(h, LEAD)


# ---------------------------------------------------------------- Slack misbehaving


async def test_rate_limit_storm_leaves_the_thread_correct(harness: Harness) -> None:
    h = harness
    await _open_incident(h)
    h.fake.rate_limit(times=6, retry_after=1)
    for user in (LEAD, PO):
        await h.driver.press(h.fake.find_button(CH, h.thread_ts(), action_id="rb_approve"), user)
    await h.idle()
    assert any(c.status == 429 for c in h.fake.calls)
    _assert_thread_matches_state(h, await _state_messages(h))
    assert h.fake.find_button(CH, h.thread_ts(), text="A: Selective rollback")


async def test_slack_outage_then_catch_up_without_doubles(harness: Harness) -> None:
    h = harness
    await _open_incident(h)
    # Slack is down (two minutes compressed to two seconds): the run goes on; the thread waits.
    h.fake.down(2.0)
    for user in (LEAD, PO):
        await h.driver.block_action("rb_approve", value=(await h.incident()).id, user_id=user, channel_id=CH,
                                    message_ts=h.thread()[1].ts)
    inc = await h.incident()

    async def asks_strategy() -> bool:
        w = await h.services.engine.waiting_for(inc.id)
        return w is not None and w.step_id == "strategy"

    await _until(asks_strategy)
    assert h.fake.is_down
    await h.services.engine.answer(inc.id, "strategy", "C", user=IC)
    h.services.run_incident((await h.incident()).id)
    await h.idle()
    assert not h.fake.is_down
    _assert_thread_matches_state(h, await _state_messages(h))
    assert (h.workdir / "marker.txt").read_text() == "C\n"


async def test_restart_catches_up_and_doubles_nothing(harness: Harness, tmp_path: Path) -> None:
    h = harness
    await _open_incident(h)
    for user in (LEAD, PO):
        await h.driver.press(h.fake.find_button(CH, h.thread_ts(), action_id="rb_approve"), user)
    await h.idle()
    posted = len(h.fake.calls_to("chat.postMessage"))
    # The bot stops; meanwhile the state moves on (as after a crash mid-update).
    await h.services.close()
    h2 = await _start(h.fake, _config(tmp_path, h.workdir), h.workdir)
    try:
        await h2.idle()
        assert len(h.fake.calls_to("chat.postMessage")) == posted  # nothing re-posted
        await h2.driver.press(h.fake.find_button(CH, h2.thread_ts(), text="C: Full database restore"), IC)
        await h2.idle()
        _assert_thread_matches_state(h2, await _state_messages(h2))
    finally:
        await h2.services.close()
        h.services = h2.services  # closed twice is harmless; the fixture closes again


# ---------------------------------------------------------------- serving


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_serve_refuses_a_bad_token(tmp_path: Path) -> None:
    import io

    from bot.core.config import Settings
    from handlers.app import serve

    workdir = tmp_path / "app"
    workdir.mkdir()
    async with SlackFake() as fake:
        secrets = SlackSecrets(slack_bot_token="xoxb-wrong", slack_signing_secret="s", slack_api_url=fake.base_url)
        err = io.StringIO()
        code = await serve(Settings(_config(tmp_path, workdir), secrets), err=err)
    assert code == 1
    assert "SLACK_BOT_TOKEN: auth.test refused it (invalid_auth)" in err.getvalue()


async def test_http_mode_serves_events_and_health(tmp_path: Path) -> None:
    import httpx

    from bot.core.config import Settings
    from handlers.app import serve
    from tests.slack_driver import http_sender

    workdir = tmp_path / "app"
    workdir.mkdir()
    port = _free_port()
    async with SlackFake(users={REQ: "req"}, usergroups={"S0PRODUCT": [PO]}) as fake:
        fake.add_channel(CH, "incident-response")
        secrets = SlackSecrets(slack_bot_token=fake.bot_token, slack_signing_secret=fake.signing_secret,
                               slack_api_url=fake.base_url)
        stop = asyncio.Event()
        task = asyncio.create_task(serve(Settings(_config(tmp_path, workdir, http_port=port), secrets), stop=stop))
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as http:
            for _ in range(200):
                try:
                    health = await http.get(url + "/healthz")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
            assert health.status_code == 200 and health.json()["ok"] is True
        driver = SlackDriver(fake, http_sender(url + "/slack/events"), default_user_id=REQ)
        assert (await driver.slash_command(text="help", channel_id=CH)).status == 200
        assert (await driver.slash_command(text="help", channel_id=CH, forged=True)).status == 401
        for _ in range(200):
            if fake.ephemerals:
                break
            await asyncio.sleep(0.05)
        assert len(fake.ephemerals) == 1 and "/rollback start" in fake.ephemerals[0].text
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0


async def test_lost_answers_to_posts_and_uploads_double_nothing(harness: Harness) -> None:
    h = harness
    # Slack takes the root post, the approval request and later the file, but every answer is lost.
    h.fake.lose_responses("chat.postMessage", times=2)
    h.fake.lose_responses("files.completeUploadExternal", times=1)
    await _open_incident(h)
    assert [c.error for c in h.fake.calls_to("chat.postMessage")][:2] == ["response_lost", "response_lost"]
    assert h.fake.calls_to("conversations.history") and h.fake.calls_to("conversations.replies")
    for user in (LEAD, PO):
        await h.driver.press(h.fake.find_button(CH, h.thread_ts(), action_id="rb_approve"), user)
        await h.idle()
    await h.driver.press(h.fake.find_button(CH, h.thread_ts(), text="C: Full database restore"), IC)
    await h.idle()
    (h.workdir / "ok.flag").write_text("")
    await h.driver.press(h.fake.find_button(CH, h.thread_ts(), text="Retry"), LEAD)
    await h.idle()
    assert any(c.error == "response_lost" for c in h.fake.calls_to("files.completeUploadExternal"))
    done = [f.filename for f in h.fake.files if f.completed]
    assert len(done) == len(set(done)) == 2  # the rendered plan and the long output, once each
    _assert_thread_matches_state(h, await _state_messages(h))
    assert len([m for m in h.fake.messages(CH) if not m.is_reply]) == 1
