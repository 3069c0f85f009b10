"""Socket Mode end to end: ``serve`` with SLACK_APP_TOKEN against the fake's websocket.

The real wiring (token check, services, Bolt app, ``AsyncSocketModeHandler``) connects
through ``apps.connections.open``; envelopes come over the websocket as Slack sends them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from bot.core.config import Settings, SlackSecrets, parse_config
from handlers.app import serve
from tests.runbooks import runbook
from tests.slack_driver import SlackDriver, socket_sender
from tests.slack_fake import SlackFake

CH = "C0INCIDENT1"
REQ, LEAD, IC = "U0REQUESTER", "U0LEAD", "U0COMMANDER"

RUNBOOK = runbook("socket", """\
    - id: work
      title: Work
      steps:
        - {id: note, title: "Write a note", kind: command, idempotent: true, run: "echo done > note.txt"}
        - {id: confirm, title: "Confirm", kind: manual}
    """)


async def _until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)


async def test_socket_mode_start_modal_and_buttons(tmp_path: Path) -> None:
    workdir = tmp_path / "app"
    workdir.mkdir()
    (tmp_path / "runbook.yml").write_text(RUNBOOK)
    config = parse_config({
        "slack": {"channels": [CH], "update_interval_seconds": 0.05, "health_port": 0},
        "roles": {"tech_lead": {"users": [LEAD]}, "incident_commander": {"users": [IC]}},
        "targets": [{"name": "t1", "transport": "local", "workdir": str(workdir)}],
        "runbook": str(tmp_path / "runbook.yml"),
        "state_db": str(tmp_path / "state.db"),
        "artifacts_dir": str(tmp_path / "artifacts"),
        "time_scale": 0.01,
    })
    async with SlackFake(users={u: u.lower() for u in (REQ, LEAD, IC)}) as fake:
        fake.add_channel(CH, "incident-response")
        # Socket Mode: the app-level token, no signing secret.
        secrets = SlackSecrets.model_validate({
            "slack_bot_token": fake.bot_token, "slack_app_token": fake.app_token,
            "slack_api_url": fake.base_url})
        assert secrets.socket_mode and not secrets.problems()
        stop = asyncio.Event()
        task = asyncio.create_task(serve(Settings(config, secrets), stop=stop))
        try:
            await fake.wait_socket_connections(1, timeout=30)
            assert fake.calls_to("apps.connections.open")[0].token == fake.app_token
            driver = SlackDriver(fake, socket_sender(fake), default_user_id=REQ)

            # /rollback start: acked over the socket at once; the modal opens.
            r = await driver.slash_command(text="start t1 the deploy broke", channel_id=CH)
            assert r.status == 200 and fake.socket_acks[-1].envelope_id
            await _until(lambda: bool(fake.views_opened), "the start modal opened")
            assert fake.views_opened[0].callback_id == "rb_start"

            # Form errors come back in the envelope's ack payload.
            r = await driver.view_submission("rb_start", values={
                "target": "t1", "triggers": [], "severity": "P1", "impact": "High", "business_risk": "Critical",
                "reason": "the deploy broke"})
            assert r.json()["response_action"] == "errors" and "triggers" in r.json()["errors"]
            r = await driver.view_submission("rb_start", values={
                "target": "t1", "triggers": ["data_corruption"], "severity": "P1", "impact": "High",
                "business_risk": "Critical", "reason": "the deploy broke"})
            assert r.status == 200 and not r.body

            def approve_posted() -> bool:
                return any(b.action_id == "rb_approve" for b in fake.buttons(CH))

            await _until(approve_posted, "the approval request was posted")
            root = next(m for m in fake.messages(CH) if not m.is_reply)

            # A button press over the socket: the incident commander approves alone.
            await driver.press(fake.find_button(CH, root.ts, action_id="rb_approve"), IC)
            await _until(lambda: bool([b for b in fake.buttons(CH, root.ts) if b.text == "Done"]),
                         "the run reached the manual item")
            assert (workdir / "note.txt").read_text() == "done\n"
            await driver.press(fake.find_button(CH, root.ts, text="Done"), IC)
            await _until(lambda: "completed" in (fake.message(CH, root.ts) or root).text, "the incident completed")

            # A dropped connection is reopened and still served.
            await fake.socket_disconnect()
            await fake.wait_socket_connections(2, timeout=30)
            r = await driver.slash_command(text="help", channel_id=CH)
            assert r.status == 200
            await _until(lambda: any("/rollback start" in e.text for e in fake.ephemerals), "help answered")
        finally:
            stop.set()
            assert await asyncio.wait_for(task, 30) == 0
