"""A runbook: phases of steps in order, and the compensation that runs when a run stops half-way."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr

from bot.core.runbook.base import ID_PATTERN, Model, StepBase
from bot.core.runbook.steps import Step
from bot.core.templating import Ref, value_refs


class Phase(Model):
    """A phase of the plan: an ordered list of steps."""

    id: Annotated[str, Field(pattern=ID_PATTERN, max_length=64)]
    title: str
    timeline: str = ""
    #: A phase that runs later than the written plan puts it is shown where the plan has it:
    #: before this phase (by id), with a note saying when it really runs.
    shown_before: str | None = None
    steps: list[Step] = Field(min_length=1)


CompensationTrigger = Literal["abort", "failure"]
_TRIGGERS: tuple[CompensationTrigger, ...] = ("abort", "failure")
#: Step kinds a compensation cannot use: it runs to its end without gates or the clock.
NOT_IN_COMPENSATION = frozenset({"approval", "stability", "window"})


class Compensation(Phase):
    """What leaves production safe when a run stops half-way (AWS SSM's onCancel / onFailure):
    on an abort, and on a failure a person gives up on (or a step with ``on_failure: stop``).

    Its steps are of the usual kinds, journaled like any other; a step that names the steps
    it ``undoes`` runs only when one of them was started. ``statement`` is what the thread
    says at the end about the state production is in (templates on captures and choices).
    """

    id: Annotated[str, Field(pattern=ID_PATTERN, max_length=64)] = "compensation"
    title: str = "Compensation: leave production safe"
    triggers: list[CompensationTrigger] = Field(default_factory=lambda: list(_TRIGGERS), min_length=1)
    #: The compensation applies once a step of this phase (or a later one) was reached; by
    #: default once any step past the approvals and the window was. Checks that change
    #: nothing (a preflight) go in earlier phases: stopping there needs no compensation.
    from_phase: str | None = None
    statement: list[str] = Field(default_factory=list)

    def statement_refs(self) -> Iterator[Ref]:
        """Every template reference in the statement lines."""
        for line in self.statement:
            yield from value_refs(line)


class Runbook(Model):
    """A whole runbook."""

    name: str
    version: str = "1"
    description: str = ""
    phases: list[Phase] = Field(min_length=1)
    compensation: Compensation | None = None
    #: The YAML text the runbook was parsed from (its sha256 is part of the plan hash).
    _source: str | None = PrivateAttr(default=None)

    @property
    def source_text(self) -> str | None:
        """The YAML text this runbook was loaded from, if it came from one."""
        return self._source

    def steps(self) -> Iterator[tuple[Phase, StepBase]]:
        """Every (phase, step) in order."""
        for phase in self.phases:
            for step in phase.steps:
                yield phase, step

    def all_phases(self) -> list[Phase]:
        """The phases, then the compensation (when the runbook declares one)."""
        return [*self.phases, *([self.compensation] if self.compensation else [])]

    def step(self, step_id: str) -> StepBase:
        """The step with this id (a phase's or the compensation's); KeyError if none."""
        return self._find(step_id)[1]

    def phase_of(self, step_id: str) -> Phase:
        """The phase (or the compensation) that holds this step."""
        return self._find(step_id)[0]

    def is_compensation(self, step_id: str) -> bool:
        """True for a step of the compensation."""
        return self.compensation is not None and any(s.id == step_id for s in self.compensation.steps)

    def _find(self, step_id: str) -> tuple[Phase, StepBase]:
        for phase in self.all_phases():
            for step in phase.steps:
                if step.id == step_id:
                    return phase, step
        raise KeyError(step_id)

