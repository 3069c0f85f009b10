"""The engine on a local transport: order, waits, answers, failures, abort, resume."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from actions.local import LocalTransport
from bot.core.engine import AnswerRefused, Engine, Target
from bot.core.lifecycle import Status, StepStatus
from bot.core.runbook import Runbook, parse_runbook
from bot.core.targets import TargetSettings
from bot.state.store import Incident, Store, TargetBusy
from tests.runbooks import gated

RUNBOOK = gated("t", """\
    - id: pick
      title: Pick
      kind: choice
      prompt: Which?
      options:
        - {value: "A", label: "A"}
        - {value: "B", label: "B"}
    - id: only_a
      title: Only for A
      kind: command
      idempotent: true
      when: "choices.pick == 'A'"
      run: "echo A >> log.txt"
    - id: write
      title: Write
      kind: command
      idempotent: false
      run: "echo {{ incident.reason }} >> log.txt; echo 'path=/x y' "
      captures:
        path: {regex: "path=(.*)"}
    - id: flaky
      title: Flaky
      kind: command
      idempotent: true
      run: "test -f ok.flag"
    - id: manual
      title: Confirm
      kind: manual
    """)


@dataclass
class Env:
    store: Store
    engine: Engine
    workdir: Path
    runbook: Runbook


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    workdir = tmp_path / "app"
    workdir.mkdir()
    store = await Store.open(str(tmp_path / "state.db"))
    rb = parse_runbook(RUNBOOK)
    settings = TargetSettings(name="t1", transport="local", workdir=str(workdir))
    transport = LocalTransport(name="t1")
    engine = Engine(store, rb, {"t1": Target(settings, transport)}, artifacts_dir=tmp_path / "art")
    yield Env(store, engine, workdir, rb)
    await transport.close()
    await store.close()


async def _approved(env: Env, **fields: str) -> Incident:
    """A new incident on t1 requested by U9, approved by both approvers and run up to the choice."""
    inc = await env.store.create_incident(target="t1", runbook="t", requester="U9", **fields)
    await env.engine.run(inc.id)
    await env.engine.approve(inc.id, user_id="U1", roles=["tech_lead"], decision="approve")
    await env.engine.approve(inc.id, user_id="U2", roles=["product_owner"], decision="approve")
    return await env.engine.run(inc.id)


async def test_whole_run_with_choices_failure_retry_and_quoting(env: Env) -> None:
    reason = "it's broken; $(touch pwned) `id` \"x\""
    inc = await env.store.create_incident(target="t1", runbook="t", requester="U9", reason=reason)
    inc = await env.engine.run(inc.id)
    assert inc.status is Status.WAITING
    w = await env.engine.waiting_for(inc.id)
    assert w is not None and w.kind == "approval"
    # the requester's own click does not count; one approver is not enough
    counted, why = await env.engine.approve(inc.id, user_id="U9", roles=["incident_commander"], decision="approve")
    assert not counted and "requested" in why
    await env.engine.approve(inc.id, user_id="U1", roles=["tech_lead"], decision="approve")
    assert (await env.engine.run(inc.id)).status is Status.WAITING
    await env.engine.approve(inc.id, user_id="U2", roles=["product_owner"], decision="approve")
    inc = await env.engine.run(inc.id)
    w = await env.engine.waiting_for(inc.id)
    assert w is not None and w.kind == "choice" and [o["value"] for o in w.options] == ["A", "B"]
    with pytest.raises(AnswerRefused):
        await env.engine.answer(inc.id, "pick", "C", user="U1")
    await env.engine.answer(inc.id, "pick", "B", user="U1")
    with pytest.raises(AnswerRefused):  # a double click: the first answer wins
        await env.engine.answer(inc.id, "pick", "A", user="U2")
    inc = await env.engine.run(inc.id)
    w = await env.engine.waiting_for(inc.id)
    assert w is not None and w.kind == "failure" and w.step_id == "flaky"
    runs = await env.store.latest_runs(inc.id)
    assert runs["only_a"].status is StepStatus.SKIPPED
    assert runs["write"].captures == {"path": "/x y"}
    assert (env.workdir / "log.txt").read_text() == reason + "\n"
    assert not (env.workdir / "pwned").exists()
    (env.workdir / "ok.flag").touch()
    await env.engine.answer(inc.id, "flaky", "retry", user="U1")
    inc = await env.engine.run(inc.id)
    w = await env.engine.waiting_for(inc.id)
    assert w is not None and w.kind == "manual"
    await env.engine.answer(inc.id, "manual", "done", user="U1")
    inc = await env.engine.run(inc.id)
    assert inc.status is Status.COMPLETED
    assert [r.attempt for r in await env.store.step_runs(inc.id) if r.step_id == "flaky"] == [1, 2]
    kinds = [e.kind for e in await env.store.events(inc.id)]
    assert kinds[0] == "incident_opened" and kinds[-1] == "incident_complete"
    assert len(await env.store.artifacts(inc.id)) >= 3


async def test_one_active_incident_per_target(env: Env) -> None:
    inc = await env.store.create_incident(target="t1", runbook="t")
    with pytest.raises(TargetBusy) as exc:
        await env.store.create_incident(target="t1", runbook="t")
    assert exc.value.incident_id == inc.id
    await env.engine.request_abort(inc.id, user="U1", reason="wrong target")
    assert (await env.store.incident(inc.id)).status is Status.ABORTED
    again = await env.store.create_incident(target="t1", runbook="t")
    assert again.id != inc.id


async def test_rejection_ends_the_incident(env: Env) -> None:
    inc = await env.store.create_incident(target="t1", runbook="t", requester="U9")
    await env.engine.run(inc.id)
    await env.engine.approve(inc.id, user_id="U3", roles=["cto"], decision="reject", note="not yet")
    inc = await env.engine.run(inc.id)
    assert inc.status is Status.REJECTED


async def test_crash_mid_step_reruns_idempotent_and_asks_for_others(env: Env) -> None:
    inc = await _approved(env, reason="r")
    await env.engine.answer(inc.id, "pick", "A", user="U1")
    # A bot that died while steps ran leaves their committed starts behind.
    await env.store.begin_step(inc.id, "only_a", "work")
    await env.store.begin_step(inc.id, "write", "work")
    inc = await env.engine.run(inc.id)
    runs = await env.store.latest_runs(inc.id)
    # only_a is idempotent: re-run at once (attempt 2)
    assert runs["only_a"].status is StepStatus.DONE and runs["only_a"].attempt == 2
    assert (env.workdir / "log.txt").read_text() == "A\n"
    # write is not: the incident waits for a person, and nothing ran it again
    w = await env.engine.waiting_for(inc.id)
    assert w is not None and w.kind == "resume" and w.step_id == "write"
    assert [o["value"] for o in w.options] == ["rerun", "mark_done", "abort"]
    assert runs["write"].status is StepStatus.INTERRUPTED
    await env.engine.answer(inc.id, "write", "mark_done", user="U1")
    inc = await env.engine.run(inc.id)
    runs = await env.store.latest_runs(inc.id)
    assert runs["write"].status is StepStatus.DONE and runs["write"].attempt == 1
    assert (env.workdir / "log.txt").read_text() == "A\n"


async def test_crash_then_rerun_runs_once_more(env: Env) -> None:
    inc = await _approved(env, reason="r")
    await env.engine.answer(inc.id, "pick", "B", user="U1")
    await env.store.begin_step(inc.id, "write", "work")
    await env.engine.run(inc.id)
    await env.engine.answer(inc.id, "write", "rerun", user="U1")
    await env.engine.run(inc.id)
    runs = await env.store.latest_runs(inc.id)
    assert runs["write"].status is StepStatus.DONE and runs["write"].attempt == 2
    assert (env.workdir / "log.txt").read_text() == "r\n"


async def test_abort_stops_before_next_step(env: Env) -> None:
    inc = await _approved(env)
    inc = await env.engine.request_abort(inc.id, user="U1", reason="stop it")
    assert inc.status is Status.ABORTED
    with pytest.raises(AnswerRefused):
        await env.engine.approve(inc.id, user_id="U5", roles=["cto"], decision="approve")
