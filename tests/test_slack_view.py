"""The thread rendered from the store: checklists, approvals, questions, limits."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.core.approvals import DEFAULT_POLICY
from bot.core.lifecycle import Event, StepStatus
from bot.core.runbook import Runbook, default_runbook, parse_runbook
from bot.slack.status import render_root
from bot.slack.thread import desired_messages
from bot.slack.view import APPROVE, REJECT, answer_value, load_state, parse_answer_value
from bot.state.store import Store

RUNBOOK = textwrap.dedent("""\
    name: v
    phases:
      - id: gate
        title: Gate
        steps:
          - {id: approval, title: Approval, kind: approval}
      - id: restoration
        title: "Phase 3: Restoration"
        timeline: "15-30 minutes"
        steps:
          - id: strategy
            title: Strategy
            kind: choice
            prompt: Choose the restoration method
            guidance: "A for minor issues, C for severe corruption."
            options:
              - {value: A, label: "A: Selective", description: "minor issues"}
              - {value: C, label: "C: Full restore", description: "severe corruption"}
          - {id: restore, title: Full restore, kind: command, idempotent: false, destructive: true, run: "true"}
    """)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(str(tmp_path / "state.db"))
    yield s
    await s.close()


def _rb() -> Runbook:
    return parse_runbook(RUNBOOK)


async def test_root_message_carries_the_decision(store: Store) -> None:
    inc = await store.create_incident(target="prod", runbook="v", severity="P3", decision="IMMEDIATE",
                                      inputs={"explanation": "IMMEDIATE: decided by business risk",
                                              "triggers": ["data_corruption"]},
                                      requester="U0REQ", reason="bad <deploy> & co")
    r = render_root(inc)
    text = str(r.payload())
    assert inc.id in text and "prod" in text and "P3" in text and "decided by business risk" in text
    assert "<@U0REQ>" in text
    assert "&lt;deploy&gt; &amp; co" in text  # user text cannot ping or link


async def test_approval_message_shows_missing_roles_and_every_click(store: Store) -> None:
    rb = _rb()
    inc = await store.create_incident(target="prod", runbook="v", requester="U0REQ", reason="r")
    await store.update_incident(inc.id, channel="C1")
    await store.apply(inc.id, Event.START)
    await store.begin_step(inc.id, "approval", "gate", status=StepStatus.WAITING,
                           waiting={"kind": "approval", "prompt": "Approval"})
    await store.add_approval(inc.id, user_id="U0LEAD", roles=["tech_lead"], decision="approve", counted=True)
    await store.add_approval(inc.id, user_id="U0NOBODY", roles=[], decision="approve", counted=False,
                             note="you hold none of the approving roles")
    msgs = desired_messages(await load_state(store, rb, inc.id), rb, DEFAULT_POLICY)
    approval = next(m for m in msgs if m.key == "approval")
    blob = str(approval.payload())
    assert "one of product_owner/vp_engineering (standard)" in blob
    assert "<@U0LEAD> (tech_lead) approve" in blob and "counted" in blob
    assert "<@U0NOBODY> (no role) approve" in blob and "not counted: you hold none" in blob
    actions = [e for b in approval.payload() if b["type"] == "actions" for e in b["elements"]]
    assert [e["action_id"] for e in actions] == [APPROVE, REJECT]
    assert all(e["value"] == inc.id for e in actions)
    # the phase of the gate alone gets no checklist; the pending phase none either
    assert [m.key for m in msgs] == ["root", "approval"]


async def test_choice_buttons_confirm_destructive_and_encode_the_run(store: Store) -> None:
    rb = _rb()
    inc = await store.create_incident(target="prod", runbook="v", requester="U0REQ", reason="r")
    await store.apply(inc.id, Event.START)
    run = await store.begin_step(inc.id, "approval", "gate", status=StepStatus.WAITING,
                                 waiting={"kind": "approval"})
    await store.end_step(run.id, StepStatus.DONE, captures={"approvers": ["U0LEAD", "U0PO"]})
    opts = [{"value": "A", "label": "A: Selective", "description": "minor issues"},
            {"value": "C", "label": "C: Full restore", "description": "severe corruption"}]
    q = await store.begin_step(inc.id, "strategy", "restoration", status=StepStatus.WAITING,
                               waiting={"kind": "choice", "prompt": "Choose the restoration method",
                                        "options": opts})
    msgs = desired_messages(await load_state(store, rb, inc.id), rb, DEFAULT_POLICY)
    keys = [m.key for m in msgs]
    assert keys == ["root", "approval", "milestone:approved", "phase:restoration", f"ask:{q.id}"]
    assert next(m for m in msgs if m.key == "milestone:approved").broadcast
    ask = next(m for m in msgs if m.key == f"ask:{q.id}").payload()
    blob = str(ask)
    assert "A for minor issues, C for severe corruption." in blob
    buttons = [e for b in ask if b["type"] == "actions" for e in b["elements"]]
    assert [b["text"]["text"] for b in buttons] == ["A: Selective", "C: Full restore"]
    assert all("confirm" in b and "Full restore" in b["confirm"]["text"]["text"] for b in buttons)
    assert parse_answer_value(buttons[1]["value"]) == (inc.id, q.id, 1)
    phase = next(m for m in msgs if m.key == "phase:restoration").payload()
    assert "Plan timeline: 15-30 minutes" in str(phase)


async def test_answered_question_loses_its_buttons(store: Store) -> None:
    rb = _rb()
    inc = await store.create_incident(target="prod", runbook="v", reason="r")
    await store.apply(inc.id, Event.START)
    q = await store.begin_step(inc.id, "strategy", "restoration", status=StepStatus.WAITING,
                               waiting={"kind": "choice", "prompt": "p",
                                        "options": [{"value": "A", "label": "A: Selective"}]})
    await store.end_step(q.id, StepStatus.WAITING, answer={"value": "A", "user": "U0IC"})
    msgs = desired_messages(await load_state(store, rb, inc.id), rb, DEFAULT_POLICY)
    ask = next(m for m in msgs if m.key == f"ask:{q.id}").payload()
    assert not [b for b in ask if b["type"] == "actions"]
    assert "Answered *A: Selective* by <@U0IC>" in str(ask)


async def test_failure_shows_error_tail_with_retry_skip_abort(store: Store) -> None:
    rb = _rb()
    inc = await store.create_incident(target="prod", runbook="v", reason="r")
    await store.apply(inc.id, Event.START)
    run = await store.begin_step(inc.id, "restore", "restoration")
    tail = "\n".join(f"line {i}" for i in range(100)) + "\n```boom```"
    await store.end_step(run.id, StepStatus.FAILED, error="CommandFailed: exit status 3", output_tail=tail,
                         waiting={"kind": "failure", "prompt": "Full restore failed",
                                  "error": "CommandFailed: exit status 3",
                                  "options": [{"value": v, "label": v.title()} for v in ("retry", "skip", "abort")]})
    msgs = desired_messages(await load_state(store, rb, inc.id), rb, DEFAULT_POLICY)
    ask = next(m for m in msgs if m.key == f"ask:{run.id}")
    blob = str(ask.payload())
    assert "exit status 3" in blob and "line 99" in blob and "line 10\\n" not in blob
    assert "```boom```" not in blob.replace("```", "", 1)  # fences in output cannot break the block
    buttons = [e for b in ask.payload() if b["type"] == "actions" for e in b["elements"]]
    assert [b["text"]["text"] for b in buttons] == ["Retry", "Skip", "Abort"]
    assert "confirm" in buttons[0] and "confirm" not in buttons[1]


async def test_default_runbook_fits_slack_limits(store: Store) -> None:
    rb = default_runbook()
    inc = await store.create_incident(target="prod", runbook=rb.name, reason="x" * 300,
                                      inputs={"description": "d" * 2900})
    await store.apply(inc.id, Event.START)
    for phase, step in rb.steps():
        run = await store.begin_step(inc.id, step.id, phase.id)
        await store.end_step(run.id, StepStatus.DONE, captures={"path": "/p" * 60, "sha256": "a" * 64,
                                                                "counts": {f"t{i}": i for i in range(30)}})
    msgs = desired_messages(await load_state(store, rb, inc.id), rb, DEFAULT_POLICY)
    for m in msgs:
        m.payload()  # slack_sdk validates lengths; raises when over
        for b in m.payload():
            if b["type"] == "section":
                assert len(b["text"]["text"]) <= 3000


def test_answer_value_round_trip() -> None:
    assert parse_answer_value(answer_value("RB-20261125-0001", 7, 2)) == ("RB-20261125-0001", 7, 2)
    with pytest.raises(ValueError):
        parse_answer_value("rm -rf|1|2")
