"""The plan's rollback decision matrix.

| Severity | Impact  | Business risk | Decision                |
| P1       | High    | Critical      | IMMEDIATE               |
| P2       | Medium  | High          | Within 2 hours          |
| P3       | Low     | Medium        | Next maintenance window |
| P4       | Minimal | Low           | No rollback needed      |

The three inputs may point to different rows; the most urgent row wins and the
result names the input(s) that decided it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Decision(StrEnum):
    """What the matrix decides."""

    IMMEDIATE = "IMMEDIATE"
    WITHIN_2_HOURS = "WITHIN_2_HOURS"
    NEXT_WINDOW = "NEXT_MAINTENANCE_WINDOW"
    NO_ROLLBACK = "NO_ROLLBACK"

    @property
    def label(self) -> str:
        """The plan's words for the decision."""
        return _LABELS[self]


_LABELS = {
    Decision.IMMEDIATE: "IMMEDIATE",
    Decision.WITHIN_2_HOURS: "Within 2 hours",
    Decision.NEXT_WINDOW: "Next maintenance window",
    Decision.NO_ROLLBACK: "No rollback needed",
}

SEVERITIES = ("P1", "P2", "P3", "P4")
IMPACTS = ("High", "Medium", "Low", "Minimal")
BUSINESS_RISKS = ("Critical", "High", "Medium", "Low")
ROWS = (Decision.IMMEDIATE, Decision.WITHIN_2_HOURS, Decision.NEXT_WINDOW, Decision.NO_ROLLBACK)

#: The inputs in the order the plan's table lists them, with their column values by row.
COLUMNS: dict[str, tuple[str, ...]] = {
    "severity": SEVERITIES,
    "impact": IMPACTS,
    "business_risk": BUSINESS_RISKS,
}


class DecisionInputError(ValueError):
    """An input that is not one of the matrix's values; ``field`` names it."""

    def __init__(self, field: str, value: str) -> None:
        allowed = ", ".join(COLUMNS[field])
        super().__init__(f"{field}: {value!r} is not one of {allowed}")
        self.field = field
        self.value = value


@dataclass(frozen=True)
class MatrixResult:
    """The decision, its row (0 = P1) and the inputs that put it there."""

    decision: Decision
    row: int
    decided_by: tuple[str, ...]
    rows: dict[str, int]

    @property
    def unanimous(self) -> bool:
        """True when all three inputs point to the same row."""
        return len(set(self.rows.values())) == 1

    @property
    def severity(self) -> str:
        """The severity of the winning row (P1..P4)."""
        return SEVERITIES[self.row]

    def explain(self) -> str:
        """One line for the root message: why this row."""
        if self.unanimous:
            return f"{self.decision.label}: severity, impact and business risk agree"
        names = " and ".join(name.replace("_", " ") for name in self.decided_by)
        others = ", ".join(
            f"{name.replace('_', ' ')} points to {self_row_label(row)}"
            for name, row in self.rows.items() if name not in self.decided_by
        )
        return f"{self.decision.label}: decided by {names} (the most urgent row wins; {others})"


def self_row_label(row: int) -> str:
    """'P2 (Within 2 hours)' for a row index."""
    return f"{SEVERITIES[row]} ({ROWS[row].label})"


def decide(*, severity: str, impact: str, business_risk: str) -> MatrixResult:
    """The plan's decision for three inputs; ``DecisionInputError`` names a bad one."""
    given = {"severity": severity, "impact": impact, "business_risk": business_risk}
    rows: dict[str, int] = {}
    for field, value in given.items():
        values = COLUMNS[field]
        match = next((i for i, v in enumerate(values) if v.lower() == value.strip().lower()), None)
        if match is None:
            raise DecisionInputError(field, value)
        rows[field] = match
    row = min(rows.values())
    decided_by = tuple(name for name, r in rows.items() if r == row)
    return MatrixResult(ROWS[row], row, decided_by, rows)
