"""The table of step executors: one per step kind, looked up by the engine.

An executor does what its kind of step says. The engine keeps everything around it: the
journal, the lifecycle, retries, approvals and the hand-off to the compensation. A kind
registers its executor with ``register``; ``executor_for`` finds the executor of a step.
Executors see the engine only as a ``StepHost``, so nothing here imports the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx

from bot.clock.host import ClockHost
from bot.core.approvals import ApprovalPolicy
from bot.core.runbook import Phase, Runbook, StepBase
from bot.core.targets import Target
from bot.plan.render import Plan
from bot.record.audit import AuditSink
from bot.record.records import Records
from bot.slack.people import Names
from bot.state.store import Incident, StepRun, Store

#: Output kept of a step in its journal row (and of a failed check's detail).
TAIL_CHARS = 2000

_LABELS = {"retry": "Retry", "skip": "Skip", "abort": "Abort", "rerun": "Re-run", "mark_done": "Mark done",
           "done": "Done"}


class EngineError(Exception):
    """Base of the engine's own errors."""


def answer_options(values: tuple[str, ...]) -> list[dict[str, str]]:
    """Buttons for the engine's own answers (Retry, Skip, Abort, Re-run, Mark done, Done)."""
    return [{"value": v, "label": _LABELS.get(v, v), "description": ""} for v in values]


class StepHost(Protocol):
    """What an executor may use of the engine that runs it."""

    store: Store
    runbook: Runbook
    time_scale: float
    artifacts_dir: Path
    redact: Callable[[str], str]
    records: Records
    audit: AuditSink
    names: Names | None
    clock_host: ClockHost | None
    policies: dict[str, ApprovalPolicy]

    @property
    def http(self) -> httpx.AsyncClient:
        """The shared HTTP client."""
        ...

    def target(self, inc: Incident, step: StepBase) -> Target:
        """The target a step runs on (its own, else the incident's)."""
        ...

    def answers(self, step: StepBase) -> Mapping[str, tuple[str, ...]]:
        """The answers a question of this step offers, by what it waits for."""
        ...

    def binding_plan(self, inc: Incident) -> Plan:
        """The rendered plan approvals are bound to."""
        ...

    async def context(self, incident_id: str) -> dict[str, Any]:
        """The values templates see now."""
        ...

    async def changed(self, incident_id: str) -> None:
        """The view and the audit log catch up with the incident now."""
        ...

    async def attempt(self, call: Call) -> str:
        """A machine step's journaled attempt around its executor's ``perform``."""
        ...

    async def perform(self, call: Call, *, attempt: int | None = None) -> tuple[dict[str, Any], str]:
        """The step's side effect, at the lease's boundary; (result, whole output)."""
        ...

    async def failed(self, inc: Incident, step: StepBase, run: StepRun, exc: Exception) -> str:
        """Journal a failed run as the step's ``on_failure`` says: 'next', 'wait' or 'end'."""
        ...

    async def artifact(self, inc: Incident, step: StepBase, ext: str, text: str, attempt: int | None) -> Path:
        """Keep a step's output as a file, tracked with the attempt."""
        ...


@dataclass
class Call:
    """A step the engine reached: the incident, the step's phase, the values its templates see."""

    host: StepHost
    inc: Incident
    phase: Phase
    step: StepBase
    #: The values the step's templates see: target, incident, inputs, captures, choices.
    ctx: dict[str, Any]
    #: The failed attempt a retry follows (a host group re-runs only its failed hosts).
    prior: StepRun | None = field(default=None, kw_only=True)

    @property
    def target(self) -> Target:
        """The target the step runs on."""
        return self.host.target(self.inc, self.step)


class StepExecutor:
    """How the engine runs one kind of step. By default a machine step: the engine journals
    an attempt (its start synced before the side effect) around ``perform``."""

    #: Answers offered after a failure; None: the engine's (Retry / Skip / Abort).
    failure_answers: tuple[str, ...] | None = None

    async def start(self, call: Call) -> str:
        """Bring the step under way: 'next', 'wait' (for a person or the clock) or 'end'."""
        return await call.host.attempt(call)

    async def perform(self, call: Call, attempt: int | None) -> tuple[dict[str, Any], str]:
        """Do what the step says; (result, whole output), ``ActionError`` when it fails.
        ``attempt`` names its artifacts (None: performed outside a run of its own)."""
        raise EngineError(f"step {call.step.id!r}: kind {type(call.step).__name__} cannot run here")

    async def revisit(self, host: StepHost, inc: Incident, phase: Phase, step: StepBase, run: StepRun) -> str | None:
        """A waiting run of this step looked at again; None: it waits for its answer."""
        return None

    async def answer(self, host: StepHost, inc: Incident, phase: Phase, step: StepBase, run: StepRun) -> str | None:
        """Act on the answer to this step's own question; None: one of the engine's answers."""
        return None


E = TypeVar("E", bound=StepExecutor)

#: The executor of each step model.
REGISTRY: dict[type[StepBase], StepExecutor] = {}


def register(*kinds: type[StepBase]) -> Callable[[type[E]], type[E]]:
    """Class decorator: one instance of the executor runs the steps of these models."""

    def add(cls: type[E]) -> type[E]:
        executor = cls()
        for kind in kinds:
            if kind in REGISTRY:
                raise ValueError(f"{kind.__name__} has an executor already ({type(REGISTRY[kind]).__name__})")
            REGISTRY[kind] = executor
        return cls

    return add


def executor_for(step: StepBase) -> StepExecutor:
    """The executor of a step's kind; ``EngineError`` when the kind has none."""
    try:
        return REGISTRY[type(step)]
    except KeyError:
        raise EngineError(f"step {step.id!r}: kind {type(step).__name__} cannot run here") from None
