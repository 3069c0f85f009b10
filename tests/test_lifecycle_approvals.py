"""The incident lifecycle table and the approval policy."""

from __future__ import annotations

import pytest

from bot.core.approvals import DEFAULT_POLICY, ApprovalPath, ApprovalPolicy, Vote, counts, evaluate
from bot.core.lifecycle import TRANSITIONS, Event, IllegalTransition, Status, transition


def test_legal_and_illegal_moves() -> None:
    assert transition(Status.OPEN, Event.START) is Status.RUNNING
    assert transition(Status.RUNNING, Event.WAIT) is Status.WAITING
    assert transition(Status.WAITING, Event.RESUME) is Status.RUNNING
    with pytest.raises(IllegalTransition, match="cannot start an incident that is completed"):
        transition(Status.COMPLETED, Event.START)
    with pytest.raises(IllegalTransition):
        transition(Status.OPEN, Event.COMPLETE)


def test_final_states_have_no_exit() -> None:
    finals = {Status.COMPLETED, Status.FAILED, Status.ABORTED, Status.REJECTED, Status.CLOSED}
    assert not [k for k in TRANSITIONS if k[0] in finals]


def v(user: str, *roles: str) -> Vote:
    return Vote(user, frozenset(roles))


def test_plan_policy_needs_primary_and_secondary() -> None:
    assert not evaluate(DEFAULT_POLICY, [v("U1", "tech_lead")], requester="U9").met
    state = evaluate(DEFAULT_POLICY, [v("U1", "tech_lead"), v("U2", "vp_engineering")], requester="U9")
    assert state.met and state.path == "standard"


def test_one_person_counts_once() -> None:
    both = v("U1", "cto", "product_owner")
    assert not evaluate(DEFAULT_POLICY, [both], requester="U9").met
    assert not evaluate(DEFAULT_POLICY, [both, both], requester="U9").met


def test_incident_commander_alone_on_emergency_path() -> None:
    state = evaluate(DEFAULT_POLICY, [v("U5", "incident_commander")], requester="U9")
    assert state.met and state.path == "emergency"


def test_requester_does_not_approve_own_rollback() -> None:
    assert not evaluate(DEFAULT_POLICY, [v("U9", "incident_commander")], requester="U9").met
    ok, why = counts(DEFAULT_POLICY, v("U9", "incident_commander"), requester="U9")
    assert not ok and "requested this rollback" in why
    allowed = ApprovalPolicy(paths=[ApprovalPath(name="emergency", groups=[["incident_commander"]],
                                                 requester_may_approve=True)])
    assert evaluate(allowed, [v("U9", "incident_commander")], requester="U9").met


def test_role_less_click_does_not_count() -> None:
    ok, why = counts(DEFAULT_POLICY, v("U7", "developer"), requester="U9")
    assert not ok and "none of the approving roles" in why
