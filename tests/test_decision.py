"""The plan's decision matrix: rows, most urgent wins, the deciding input is named."""

from __future__ import annotations

import itertools

import pytest

from bot.core.decision import (
    BUSINESS_RISKS,
    IMPACTS,
    ROWS,
    SEVERITIES,
    Decision,
    DecisionInputError,
    decide,
)


@pytest.mark.parametrize("row", range(4))
def test_each_row_of_the_plan(row: int) -> None:
    r = decide(severity=SEVERITIES[row], impact=IMPACTS[row], business_risk=BUSINESS_RISKS[row])
    assert r.decision is ROWS[row]
    assert r.unanimous
    assert "agree" in r.explain()


def test_plan_words() -> None:
    assert Decision.IMMEDIATE.label == "IMMEDIATE"
    assert Decision.WITHIN_2_HOURS.label == "Within 2 hours"
    assert Decision.NEXT_WINDOW.label == "Next maintenance window"
    assert Decision.NO_ROLLBACK.label == "No rollback needed"


def test_most_urgent_row_wins_and_names_the_input() -> None:
    r = decide(severity="P3", impact="Low", business_risk="Critical")
    assert r.decision is Decision.IMMEDIATE
    assert r.decided_by == ("business_risk",)
    text = r.explain()
    assert "decided by business risk" in text
    assert "severity points to P3" in text


def test_two_inputs_decide_together() -> None:
    r = decide(severity="P2", impact="medium", business_risk="Low")
    assert r.decision is Decision.WITHIN_2_HOURS
    assert r.decided_by == ("severity", "impact")


def test_every_combination_takes_the_minimum_row() -> None:
    for s, i, b in itertools.product(range(4), repeat=3):
        r = decide(severity=SEVERITIES[s], impact=IMPACTS[i], business_risk=BUSINESS_RISKS[b])
        assert r.row == min(s, i, b)
        assert r.decided_by
        assert all(r.rows[name] == r.row for name in r.decided_by)


def test_bad_input_names_the_field() -> None:
    with pytest.raises(DecisionInputError) as exc:
        decide(severity="P1", impact="Huge", business_risk="Low")
    assert exc.value.field == "impact"
    assert "impact" in str(exc.value)
