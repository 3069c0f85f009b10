"""What every step has: the base model, its condition (``when``) and its captures."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bot.core.templating import Ref, value_refs

OnFailure = Literal["stop", "continue", "ask"]
ID_PATTERN = r"^[a-z][a-z0-9_]*$"


_COND = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(==|!=|not in|in)\s*(.+?)\s*$")


@dataclass(frozen=True)
class Condition:
    """``<ref> == | != | in | not in <literal>`` on earlier choices, captures or settings."""

    ref: str
    op: str
    literal: Any

    @classmethod
    def parse(cls, text: str) -> Condition:
        """Parse a condition; raises ValueError naming what is wrong."""
        m = _COND.match(text)
        if not m:
            raise ValueError(f"condition {text!r} is not '<ref> ==|!=|in|not in <value>'")
        ref, op, lit = m.groups()
        try:
            literal = ast.literal_eval(lit)
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"condition {text!r}: {lit!r} is not a literal") from exc
        if op in ("in", "not in") and not isinstance(literal, list | tuple | set):
            raise ValueError(f"condition {text!r}: 'in' needs a list")
        return cls(ref, op, literal)

    def words(self, value: Any) -> str:
        """Why the condition did not hold, in words (the reason a step was skipped)."""
        root, _, rest = self.ref.partition(".")
        name = {"choices": f"the {rest} choice", "target": f"the target's {rest}",
                "incident": f"the incident's {rest}"}.get(root, self.ref)

        def show(v: Any) -> str:
            return "empty" if v in ("", None) else repr(v)

        now = "not chosen" if value is None and root == "choices" else f"it is {show(value)}"
        if self.op == "!=" and self.literal in ("", None):
            return f"runs only when {name} is set; {now}"
        if self.op == "==":
            return f"runs only when {name} is {show(self.literal)}; {now}"
        if self.op == "in":
            return f"runs only when {name} is one of {', '.join(show(v) for v in self.literal)}; {now}"
        return f"not needed when {name} is {show(value)}"

    def holds(self, value: Any) -> bool:
        """Evaluate against the referenced value."""
        if self.op == "==":
            return bool(value == self.literal)
        if self.op == "!=":
            return bool(value != self.literal)
        if self.op == "in":
            return value in self.literal
        return value not in self.literal


class Model(BaseModel):
    """A runbook part: unknown fields are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CaptureFrom(Model):
    """Take a value from the step's output with a regular expression (first group)."""

    regex: str
    source: Literal["stdout", "stderr"] = Field("stdout", alias="from")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        re.compile(v)
        return v


Capture = str | CaptureFrom


class Option(Model):
    """One option of a choice step."""

    value: str
    label: str
    description: str = ""


class StepBase(Model):
    """Fields every step has."""

    #: Captures the step provides without declaring them.
    produces: ClassVar[tuple[str, ...]] = ()
    #: The fields that hold templates (their references are checked when the runbook loads).
    templated: ClassVar[tuple[str, ...]] = ()
    id: Annotated[str, Field(pattern=ID_PATTERN, max_length=64)]
    title: str
    target: str | None = None
    timeout: float = Field(60, gt=0, le=24 * 3600)
    idempotent: bool | None = None
    on_failure: OnFailure = "ask"
    captures: dict[str, Capture] = Field(default_factory=dict)
    when: str | None = None
    destructive: bool = False
    guidance: str = ""
    #: Compensation steps only: the steps of the phases this one undoes; it runs only when
    #: at least one of them was started (see ``Compensation``).
    undoes: list[str] = Field(default_factory=list)
    #: Compensation steps only: skipped when one of these steps of the phases is done (the
    #: run itself already undid what this step would).
    unless_done: list[str] = Field(default_factory=list)

    @field_validator("when")
    @classmethod
    def _when(cls, v: str | None) -> str | None:
        if v is not None:
            Condition.parse(v)
        return v

    @property
    def condition(self) -> Condition | None:
        """The parsed ``when`` condition, if any."""
        return Condition.parse(self.when) if self.when else None

    @property
    def has_side_effect(self) -> bool:
        """True when the step changes something on the target."""
        return False

    @property
    def needs_person(self) -> bool:
        """True when the step waits for a person's answer."""
        return False

    @property
    def is_idempotent(self) -> bool:
        """Safe to run again after a crash that left its outcome unknown."""
        return (not self.has_side_effect) or bool(self.idempotent)

    def template_refs(self) -> Iterator[Ref]:
        """Every template reference in this step's fields."""
        for name in self.templated:
            yield from value_refs(getattr(self, name))

    @model_validator(mode="after")
    def _idempotent_required(self) -> StepBase:
        if self.has_side_effect and self.idempotent is None:
            raise ValueError(
                "field 'idempotent' is required for a step with a side effect on the target"
            )
        return self
