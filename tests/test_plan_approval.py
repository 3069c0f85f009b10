"""Approvals bound to the rendered plan: through the real Bolt stack and the Slack fake, and in
the engine between approval and the first side effect."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.core.engine import Engine, Target
from bot.core.lifecycle import Status
from bot.core.runbook import parse_runbook
from bot.core.targets import TargetSettings
from bot.state.store import Store
from tests.slack_fake import bot_scopes_from_manifest
from tests.test_slack_e2e import CH, IC, LEAD, PO, RUNBOOK, Harness, _config, _open_incident, _start, running


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(tmp_path, scopes=bot_scopes_from_manifest()) as harness:
        yield harness


def _approval_text(h: Harness) -> str:
    msg = next(m for m in h.thread() if "Approval" in str(m.blocks))
    return str(msg.blocks)


async def test_a_runbook_change_voids_approvals_and_asks_again(h: Harness, tmp_path: Path) -> None:
    await _open_incident(h)
    inc = await h.incident()
    waiting = (await h.services.store.latest_runs(inc.id))["approval"].waiting or {}
    first_hash = waiting["plan_hash"]
    assert f"Plan hash:* `{first_hash[:16]}`" in _approval_text(h)
    assert "Last tested: never" in str(h.thread()[0].blocks)  # the root message
    assert "Destructive steps:* Write the marker" in _approval_text(h)
    plans = [f for f in h.fake.files if f.filename.startswith("plan_")]
    assert len(plans) == 1 and first_hash in plans[0].text
    assert "echo '<choices.strategy>' >> marker.txt" in plans[0].text

    await h.driver.press(h.fake.find_button(CH, h.thread_ts(), action_id="rb_approve"), LEAD)
    await h.idle()
    [lead] = await h.services.store.approvals(inc.id)
    assert lead.counted and lead.plan_hash == first_hash

    # The runbook is edited and the bot restarted before the second approval.
    await h.services.close()
    config = _config(tmp_path, h.workdir)
    assert config.runbook is not None
    config.runbook.write_text(RUNBOOK.replace(">> marker.txt", ">> changed-marker.txt"))
    h2 = await _start(h.fake, config, h.workdir)
    try:
        await h2.idle()
        await h2.driver.press(h.fake.find_button(CH, h2.thread_ts(), action_id="rb_approve"), PO)
        await h2.idle()
        inc = await h2.incident()
        assert inc.status is Status.WAITING
        runs = await h2.services.store.step_runs(inc.id)
        approvals_asked = [r for r in runs if r.step_id == "approval"]
        assert [r.status.value for r in approvals_asked] == ["skipped", "waiting"]
        second = approvals_asked[-1].waiting or {}
        assert second["plan_hash"] != first_hash
        clicks = await h2.services.store.approvals(inc.id)
        assert [(a.user_id, a.counted) for a in clicks] == [(LEAD, False), (PO, False)]
        assert all(a.note.startswith("void: the plan changed") for a in clicks)
        notice = next(m for m in h2.thread() if "the plan changed before the run started" in str(m.blocks)
                      and "approval is asked again" in str(m.blocks))
        assert "the runbook file changed" in str(notice.blocks) and "steps rendered differently: write" in str(
            notice.blocks)
        assert "The plan changed before the run started" in _approval_text(h2)
        plans = [f for f in h.fake.files if f.filename.startswith("plan_")]
        assert len(plans) == 2 and "changed-marker.txt" in plans[1].text
        assert not (h.workdir / "marker.txt").exists() and not (h.workdir / "changed-marker.txt").exists()

        # Approved again, the new plan runs; each counted click holds the hash it approved.
        for user in (LEAD, PO):
            await h2.driver.press(h.fake.find_button(CH, h2.thread_ts(), action_id="rb_approve"), user)
        await h2.idle()
        clicks = await h2.services.store.approvals(inc.id)
        assert [(a.user_id, a.counted, a.plan_hash) for a in clicks[2:]] == [
            (LEAD, True, second["plan_hash"]), (PO, True, second["plan_hash"])]
        button = h.fake.find_button(CH, h2.thread_ts(), text="C: Full database restore")
        question = next(m for m in h2.thread() if m.ts == button.message_ts)
        assert button.confirm and "This runs: Write the marker: echo C &gt;&gt; changed-marker.txt" in str(
            question.blocks), question.blocks
        await h2.driver.press(button, IC)
        await h2.idle()
        assert (h.workdir / "changed-marker.txt").read_text() == "C\n"
    finally:
        await h2.services.close()
        h.services = h2.services


RUNBOOK_GATED = textwrap.dedent("""\
    name: gated
    phases:
      - id: p
        title: P
        steps:
          - {id: approval, title: Approval, kind: approval}
          - {id: window, title: "Wait for the window", kind: manual}
          - {id: write, title: Write, kind: command, idempotent: true, destructive: true,
             run: "echo {{ target.app_name }} > out.txt"}
    """)


async def test_a_target_setting_changed_after_approval_voids_it_before_the_first_side_effect(
        tmp_path: Path) -> None:
    runbook = parse_runbook(RUNBOOK_GATED)
    settings = TargetSettings(name="t1", transport="local", workdir=str(tmp_path), app_name="shop")
    store = await Store.open(str(tmp_path / "state.db"))
    engine = Engine(store, runbook, {"t1": Target.open(settings)}, artifacts_dir=tmp_path / "artifacts")
    try:
        inc = await store.create_incident(target="t1", runbook="gated", requester="U0REQ", reason="r")
        await engine.run(inc.id)
        await engine.approve(inc.id, user_id="U0IC", roles=["incident_commander"], decision="approve")
        await engine.run(inc.id)
        assert (await engine.waiting_for(inc.id)).step_id == "window"  # type: ignore[union-attr]
        # Between approval and the run: the target's app name is changed in the config.
        changed = settings.model_copy(update={"app_name": "other-shop"})
        engine.targets = {"t1": Target.open(changed)}
        await engine.answer(inc.id, "window", "done", user="U0IC")
        await engine.run(inc.id)
        w = await engine.waiting_for(inc.id)
        assert w is not None and w.kind == "approval"
        assert not (tmp_path / "out.txt").exists()
        events = [e for e in await store.events(inc.id) if e.kind == "plan_changed"]
        assert events and events[0].data["changed"][0] == "target settings changed: app_name"
        [old] = await store.approvals(inc.id)
        assert not old.counted
        await engine.approve(inc.id, user_id="U0IC", roles=["incident_commander"], decision="approve")
        done: Any = await engine.run(inc.id)
        assert done.status is Status.COMPLETED and (tmp_path / "out.txt").read_text() == "other-shop\n"
    finally:
        await engine.aclose()
        await store.close()


async def test_retry_of_a_failed_destructive_step_confirms_its_rendered_command(tmp_path: Path) -> None:
    runbook = parse_runbook(textwrap.dedent("""\
        name: retry
        phases:
          - id: p
            title: P
            steps:
              - {id: pick, title: Pick, kind: choice, prompt: Which, options: [{value: "v1", label: V1}]}
              - {id: write, title: Write, kind: command, idempotent: true, destructive: true,
                 run: "echo {{ choices.pick }} > out.txt; test -f ok.flag"}
        """))
    settings = TargetSettings(name="t1", transport="local", workdir=str(tmp_path))
    store = await Store.open(str(tmp_path / "state.db"))
    engine = Engine(store, runbook, {"t1": Target.open(settings)}, artifacts_dir=tmp_path / "artifacts")
    try:
        inc = await store.create_incident(target="t1", runbook="retry", requester="U0REQ", reason="r")
        await engine.run(inc.id)
        run = (await store.latest_runs(inc.id))["pick"]
        assert run.waiting is not None
        assert run.waiting["options"][0]["confirm"] == "Write: echo v1 > out.txt; test -f ok.flag"
        await engine.answer(inc.id, "pick", "v1", user="U0IC")
        await engine.run(inc.id)
        failed = (await store.latest_runs(inc.id))["write"]
        assert failed.waiting is not None and failed.waiting["kind"] == "failure"
        assert failed.waiting["confirm"] == "Write: echo v1 > out.txt; test -f ok.flag"
    finally:
        await engine.aclose()
        await store.close()
