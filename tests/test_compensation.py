"""The runbook's compensation: validated with file:line, run on abort and on a failure given
up on, journaled like any step, and its account of what was and was not undone."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from actions.local import LocalTransport
from bot.core.compensation import outcome
from bot.core.engine import AnswerRefused, Engine, Target
from bot.core.lifecycle import Status, StepStatus
from bot.core.runbook import RunbookError, parse_runbook
from bot.core.targets import TargetSettings
from bot.state.store import Store
from tests.runbooks import gated

RUNBOOK = gated("comp", """\
    - id: maint_on
      title: Maintenance on
      kind: command
      idempotent: true
      run: "echo on > maint.txt"
    - id: restrict
      title: Restrict
      kind: command
      idempotent: true
      run: "echo restricted > access.txt"
    - id: pick
      title: Pick
      kind: choice
      prompt: Which?
      options: [{value: "A", label: "A"}, {value: "B", label: "B"}]
    - id: flaky
      title: Flaky
      kind: command
      idempotent: true
      on_failure: {flaky_mode}
      run: "test -f ok.flag"
    - id: maint_off
      title: Maintenance off
      kind: command
      idempotent: true
      run: "rm -f maint.txt"
    """) + textwrap.dedent("""\
    compensation:
      triggers: [abort, failure]
      steps:
        - id: unrestrict
          title: Put access back
          kind: command
          idempotent: true
          undoes: [restrict]
          run: "echo {unrestrict_cmd} >> undo.log; echo normal > access.txt"
        - id: keep_or_off
          title: Maintenance after the stop
          kind: choice
          undoes: [maint_on]
          unless_done: [maint_off]
          prompt: Keep maintenance on?
          options: [{value: "off", label: "Turn it off"}, {value: "keep", label: "Keep it on"}]
        - id: maint_off_after
          title: Turn maintenance off
          kind: command
          idempotent: true
          undoes: [maint_on]
          unless_done: [maint_off]
          when: "choices.keep_or_off == 'off'"
          run: "rm -f maint.txt"
        - id: state
          title: Measure
          kind: command
          idempotent: true
          on_failure: continue
          run: "if test -f maint.txt; then echo m=ON; else echo m=off; fi"
          captures:
            mode: {regex: "m=(\\\\S+)"}
      statement:
        - "maintenance {{ captures.state.mode }}"
    """)


def _runbook(flaky_mode: str = "ask", unrestrict_cmd: str = "undo") -> str:
    return RUNBOOK.replace("{flaky_mode}", flaky_mode).replace("{unrestrict_cmd}", unrestrict_cmd)


@dataclass
class Env:
    store: Store
    engine: Engine
    workdir: Path


async def _env(tmp_path: Path, text: str) -> Env:
    workdir = tmp_path / "app"
    workdir.mkdir(exist_ok=True)
    store = await Store.open(str(tmp_path / "state.db"))
    settings = TargetSettings(name="t1", transport="local", workdir=str(workdir))
    engine = Engine(store, parse_runbook(text), {"t1": Target(settings, LocalTransport(name="t1"))},
                    artifacts_dir=tmp_path / "art")
    return Env(store, engine, workdir)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = await _env(tmp_path, _runbook())
    yield e
    await e.engine.targets["t1"].close()
    await e.store.close()


async def _to_pick(env: Env) -> str:
    inc = await env.store.create_incident(target="t1", runbook="comp", requester="U9", reason="r")
    await env.engine.run(inc.id)
    await env.engine.approve(inc.id, user_id="U1", roles=["tech_lead"], decision="approve")
    await env.engine.approve(inc.id, user_id="U2", roles=["product_owner"], decision="approve")
    inc = await env.engine.run(inc.id)
    w = await env.engine.waiting_for(inc.id)
    assert w is not None and w.step_id == "pick"
    return inc.id


# ---------------------------------------------------------------- runbook check


@pytest.mark.parametrize(("change", "message"), [
    (("      undoes: [restrict]\n", "      undoes: [restrictt]\n"),
     "compensation step 'unrestrict': undoes 'restrictt', which is no step of the phases"),
    (("      on_failure: continue\n", "      on_failure: stop\n"),
     "compensation step 'state': on_failure 'stop' would end the incident half undone"),
    (("    - id: state\n", "    - {id: gate2, title: G, kind: approval}\n    - id: state\n"),
     "compensation step 'gate2': kind 'approval' cannot run in the compensation"),
    (("        run: \"rm -f maint.txt\"\ncompensation:", "        run: \"rm -f maint.txt\"\n"
      "        undoes: [maint_on]\ncompensation:"),
     "step 'maint_off': 'undoes' is only for steps of the compensation"),
    (('    - "maintenance {{ captures.state.mode }}"', '    - "maintenance {{ captures.state.mood }}"'),
     "compensation statement: bad reference 'captures.state.mood': step 'state' captures no 'mood'"),
    (("  triggers: [abort, failure]", "  triggers: [abort, crash]"),
     "compensation: triggers.1: Input should be 'abort' or 'failure'"),
    (("    - id: keep_or_off\n", "    - id: maint_on\n"), "compensation step 'maint_on': duplicate step id"),
    (("  triggers: [abort, failure]\n", "  triggers: [abort, failure]\n  from_phase: nowhere\n"),
     "compensation: from_phase 'nowhere' is no phase of the runbook (one of gate, work)"),
])
def test_runbook_check_names_file_line_and_reason(change: tuple[str, str], message: str) -> None:
    old, new = change
    text = _runbook()
    assert old in text
    bad = text.replace(old, new)
    with pytest.raises(RunbookError) as exc:
        parse_runbook(bad, "rb.yml")
    problem = next((p for p in exc.value.problems if message in p), None)
    assert problem is not None, exc.value.problems
    line = int(problem.split(":")[1])
    assert 0 < line <= len(bad.splitlines())
    assert problem.startswith("rb.yml:")


def test_default_runbook_declares_a_compensation() -> None:
    from bot.core.runbook import default_runbook

    comp = default_runbook().compensation
    assert comp is not None and comp.triggers == ["abort", "failure"]
    undone = {u for s in comp.steps for u in s.undoes}
    assert {"maintenance_on", "restrict_access", "restrict_access_again", "stop_app"} <= undone
    assert any(getattr(s, "kind", "") == "governance" for s in comp.steps)


# ---------------------------------------------------------------- the engine


async def test_abort_at_a_question_compensates_and_ends_aborted(env: Env) -> None:
    iid = await _to_pick(env)
    inc = await env.engine.request_abort(iid, user="U1", reason="wrong target")
    assert inc.status is Status.COMPENSATING
    with pytest.raises(AnswerRefused, match="already being aborted"):
        await env.engine.request_abort(iid, user="U1", reason="again")
    inc = await env.engine.run(iid)
    assert inc.status is Status.COMPENSATING
    w = await env.engine.waiting_for(iid)
    assert w is not None and w.step_id == "keep_or_off" and [o["value"] for o in w.options] == ["off", "keep"]
    with pytest.raises(AnswerRefused, match="no longer asked"):  # the phases' question is closed
        await env.engine.answer(iid, "pick", "A", user="U1")
    assert (env.workdir / "access.txt").read_text() == "normal\n"  # done before the question
    await env.engine.answer(iid, "keep_or_off", "off", user="U1")
    inc = await env.engine.run(iid)
    assert inc.status is Status.ABORTED
    assert not (env.workdir / "maint.txt").exists()
    runs = await env.store.latest_runs(iid)
    assert runs["pick"].status is StepStatus.SKIPPED  # no longer asked
    assert "flaky" not in runs and "maint_off" not in runs
    stopped = outcome(env.engine.runbook, inc, runs.values(), await env.store.events(iid))
    assert stopped is not None and stopped.trigger.trigger == "abort" and stopped.trigger.end == "aborted"
    assert stopped.state == ["maintenance off"]
    assert [line.split(" — ")[0] for line in stopped.undone] == ["Maintenance on", "Restrict"]
    assert not stopped.not_undone and not stopped.pending
    kinds = [e.kind for e in await env.store.events(iid)]
    assert kinds.index("incident_compensate") < kinds.index("incident_abort")


async def test_keeping_maintenance_on_is_stated_as_not_undone(env: Env) -> None:
    iid = await _to_pick(env)
    await env.engine.request_abort(iid, user="U1", reason="stop")
    await env.engine.run(iid)
    await env.engine.answer(iid, "keep_or_off", "keep", user="U7")
    inc = await env.engine.run(iid)
    assert inc.status is Status.ABORTED and (env.workdir / "maint.txt").exists()
    stopped = outcome(env.engine.runbook, inc, (await env.store.latest_runs(iid)).values(),
                      await env.store.events(iid))
    assert stopped is not None and stopped.state == ["maintenance ON"]
    assert stopped.not_undone == ["Maintenance on — kept by choice: Keep it on by U7"]


async def test_giving_up_on_a_failure_compensates(env: Env) -> None:
    iid = await _to_pick(env)
    await env.engine.answer(iid, "pick", "A", user="U1")
    await env.engine.run(iid)
    w = await env.engine.waiting_for(iid)
    assert w is not None and w.kind == "failure" and [o["value"] for o in w.options] == ["retry", "skip", "abort"]
    await env.engine.answer(iid, "flaky", "abort", user="U1")
    inc = await env.engine.run(iid)
    assert inc.status is Status.COMPENSATING
    await env.engine.answer(iid, "keep_or_off", "off", user="U1")
    inc = await env.engine.run(iid)
    assert inc.status is Status.ABORTED and "gave up after 'Flaky' failed" in (inc.abort_reason or "")
    events = await env.store.events(iid)
    start = next(e for e in events if e.kind == "incident_compensate")
    assert start.data["trigger"] == "failure"


async def test_a_failing_compensation_step_offers_retry_and_skip_only(tmp_path: Path) -> None:
    env = await _env(tmp_path, _runbook(unrestrict_cmd="x; exit 3"))
    try:
        iid = await _to_pick(env)
        await env.engine.request_abort(iid, user="U1", reason="stop")
        inc = await env.engine.run(iid)
        w = await env.engine.waiting_for(iid)
        assert inc.status is Status.COMPENSATING and w is not None
        assert w.step_id == "unrestrict" and [o["value"] for o in w.options] == ["retry", "skip"]
        with pytest.raises(AnswerRefused):
            await env.engine.answer(iid, "unrestrict", "abort", user="U1")
        await env.engine.answer(iid, "unrestrict", "skip", user="U3")
        await env.engine.run(iid)
        await env.engine.answer(iid, "keep_or_off", "off", user="U1")
        inc = await env.engine.run(iid)
        stopped = outcome(env.engine.runbook, inc, (await env.store.latest_runs(iid)).values(),
                          await env.store.events(iid))
        assert stopped is not None and stopped.not_undone == ["Restrict — Put access back skipped by U3"]
    finally:
        await env.engine.targets["t1"].close()
        await env.store.close()


async def test_on_failure_stop_compensates_then_ends_failed(tmp_path: Path) -> None:
    env = await _env(tmp_path, _runbook(flaky_mode="stop"))
    try:
        iid = await _to_pick(env)
        await env.engine.answer(iid, "pick", "B", user="U1")
        inc = await env.engine.run(iid)
        assert inc.status is Status.COMPENSATING
        await env.engine.answer(iid, "keep_or_off", "keep", user="U1")
        inc = await env.engine.run(iid)
        assert inc.status is Status.FAILED
        assert (env.workdir / "access.txt").read_text() == "normal\n"
    finally:
        await env.engine.targets["t1"].close()
        await env.store.close()


async def test_abort_before_anything_ran_needs_no_compensation(env: Env) -> None:
    inc = await env.store.create_incident(target="t1", runbook="comp", requester="U9")
    await env.engine.run(inc.id)  # waits for approval: nothing ran on the target
    inc = await env.engine.request_abort(inc.id, user="U1", reason="never mind")
    assert inc.status is Status.ABORTED
    assert not [r for r in await env.store.step_runs(inc.id) if env.engine.runbook.is_compensation(r.step_id)]


async def test_abort_while_the_bot_was_down_closes_the_step_it_died_in(env: Env) -> None:
    iid = await _to_pick(env)
    await env.engine.answer(iid, "pick", "A", user="U1")
    await env.store.begin_step(iid, "flaky", "work")  # a bot died while this ran
    inc = await env.engine.request_abort(iid, user="U1", reason="from the control plane")
    assert inc.status is Status.COMPENSATING
    runs = await env.store.latest_runs(iid)
    assert runs["flaky"].status is StepStatus.INTERRUPTED and runs["flaky"].waiting is None
    await env.engine.run(iid)
    await env.engine.answer(iid, "keep_or_off", "off", user="U1")
    assert (await env.engine.run(iid)).status is Status.ABORTED


async def test_stopping_before_from_phase_needs_no_compensation(tmp_path: Path) -> None:
    text = _runbook().replace("  triggers: [abort, failure]\n", "  triggers: [abort, failure]\n  from_phase: work\n")
    text = text.replace("  - id: work\n", "  - id: preflight\n    title: Preflight\n    steps:\n"
                        "      - {id: look, title: Look, kind: choice, prompt: 'Go on',\n"
                        "         options: [{value: go, label: Go}]}\n"
                        "  - id: work\n")
    env = await _env(tmp_path, text)
    try:
        inc = await env.store.create_incident(target="t1", runbook="comp", requester="U9")
        await env.engine.run(inc.id)
        await env.engine.approve(inc.id, user_id="U1", roles=["incident_commander"], decision="approve")
        await env.engine.run(inc.id)
        w = await env.engine.waiting_for(inc.id)
        assert w is not None and w.step_id == "look"
        inc = await env.engine.request_abort(inc.id, user="U1", reason="preflight says no")
        assert inc.status is Status.ABORTED  # nothing of the phases that change things ran
    finally:
        await env.engine.targets["t1"].close()
        await env.store.close()
