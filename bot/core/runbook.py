"""The runbook as data: runbook -> phases -> steps, validated by pydantic.

A runbook is YAML. ``load_runbook`` reports every problem with file, line and reason,
for example ``runbook.yml:42: step 'backup': unknown field 'timout'``, including
references to captures or choices that no earlier step provides.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from bot.core.templating import ROOTS, Ref, value_refs

OnFailure = Literal["stop", "continue", "ask"]
_ID = r"^[a-z][a-z0-9_]*$"

#: Target settings a runbook may reference as ``{{ target.NAME }}``.
TARGET_FIELDS = frozenset(
    {
        "name", "workdir", "app_name", "db_path", "databases_dir", "env_file", "health_url",
        "export_url", "import_url", "pm_start", "pm_stop", "pm_restart", "pm_status",
        "python", "backup_pattern", "maintenance_message", "app_rollback_command",
        "previous_version", "smoke_test_command", "export_user",
        # the application rollback (Phase 4): command variant or GitHub Actions
        "app_rollback", "github_repo", "github_workflow", "github_api_url", "github_token_env",
        "release_tag_pattern", "deployed_version", "deploy_environment",
        # the schema contract (bot/core/change_log.py), in the agent's param shapes
        "change_log", "boundary", "key_columns",
    }
)

#: SQLite operations that change the target's files.
SQLITE_WRITE_OPS = frozenset(
    {"backup", "restore", "restrict_access", "restore_access", "selective_restore",
     "transaction_rollback", "governance_insert"}
)
SQLITE_OPS = SQLITE_WRITE_OPS | {
    "integrity_check", "quick_check", "foreign_key_check", "record_counts", "query",
    "content_hash", "verify", "list_backups", "diff", "strategy_support", "change_points", "data_loss",
}


class RunbookError(ValueError):
    """A runbook failed to load; ``problems`` holds one ``file:line: reason`` per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


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


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CaptureFrom(_Model):
    """Take a value from the step's output with a regular expression (first group)."""

    regex: str
    source: Literal["stdout", "stderr"] = Field("stdout", alias="from")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        re.compile(v)
        return v


Capture = str | CaptureFrom


class Option(_Model):
    """One option of a choice step."""

    value: str
    label: str
    description: str = ""


class StepBase(_Model):
    """Fields every step has."""

    id: Annotated[str, Field(pattern=_ID, max_length=64)]
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
        return iter(())

    @model_validator(mode="after")
    def _idempotent_required(self) -> StepBase:
        if self.has_side_effect and self.idempotent is None:
            raise ValueError(
                "field 'idempotent' is required for a step with a side effect on the target"
            )
        return self


class CommandStep(StepBase):
    """A remote command over SSH; every substituted value is shell-quoted."""

    kind: Literal["command"]
    run: str
    expect_exit: list[int] = Field(default_factory=lambda: [0])

    @property
    def has_side_effect(self) -> bool:
        return True

    def template_refs(self) -> Iterator[Ref]:
        return value_refs(self.run)


class HttpStep(StepBase):
    """An HTTP request with httpx; the body is kept as an artifact with its sha256."""

    kind: Literal["http"]
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(None, alias="json")
    expect_status: list[int] = Field(default_factory=lambda: [200])

    @property
    def has_side_effect(self) -> bool:
        return self.method not in ("GET", "HEAD")

    def template_refs(self) -> Iterator[Ref]:
        yield from value_refs(self.url)
        yield from value_refs(self.headers)
        yield from value_refs(self.json_body)


class SqliteStep(StepBase):
    """A typed SQLite operation run on the target; values are bound, never pasted."""

    kind: Literal["sqlite"]
    op: str
    db: str = "{{ target.db_path }}"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("op")
    @classmethod
    def _op(cls, v: str) -> str:
        if v not in SQLITE_OPS:
            raise ValueError(f"unknown sqlite op {v!r} (one of {', '.join(sorted(SQLITE_OPS))})")
        return v

    @property
    def has_side_effect(self) -> bool:
        return self.op in SQLITE_WRITE_OPS or bool(self.params.get("write"))

    def template_refs(self) -> Iterator[Ref]:
        yield from value_refs(self.db)
        yield from value_refs(self.params)


class OptionsFrom(_Model):
    """Options listed from the target when the choice is reached."""

    op: Literal["list_backups", "query", "github_releases", "strategy_support", "change_points"]
    params: dict[str, Any] = Field(default_factory=dict)
    value: str = "path"
    label: str = "name"


class ChoiceStep(StepBase):
    """Waits for a person's pick among options, static or listed from the target."""

    kind: Literal["choice"]
    prompt: str
    options: list[Option] = Field(default_factory=list)
    options_from: OptionsFrom | None = None
    default: str | None = None

    @property
    def needs_person(self) -> bool:
        return True

    def template_refs(self) -> Iterator[Ref]:
        if self.options_from:
            yield from value_refs(self.options_from.params)

    @model_validator(mode="after")
    def _has_options(self) -> ChoiceStep:
        if not self.options and self.options_from is None:
            raise ValueError("a choice needs 'options' or 'options_from'")
        return self


class ManualStep(StepBase):
    """A checklist item a person confirms; non-blocking items do not hold the run."""

    kind: Literal["manual"]
    blocking: bool = True
    checklist: list[str] = Field(default_factory=list)

    @property
    def needs_person(self) -> bool:
        return self.blocking


class ApprovalStep(StepBase):
    """A gate that waits until the approval policy is met (or someone rejects)."""

    kind: Literal["approval"]
    policy: str = "default"

    @property
    def needs_person(self) -> bool:
        return True


class WaitStep(StepBase):
    """Waits a number of seconds (scaled by the time-compression setting)."""

    kind: Literal["wait"]
    seconds: float = Field(gt=0, le=24 * 3600)


#: What a stability step captures at the end of its series (see ``bot.clock.stability.summary``).
STABILITY_CAPTURES = ("checks_count", "checks_ok", "checks_failed", "checks_missed", "checks_planned",
                      "availability", "error_rate", "p50_ms", "p95_ms", "latency_limit_ms", "baseline_ms",
                      "mode", "passed")


class StabilityStep(StepBase):
    """Scheduled health checks: ``gate`` (the plan's 15 x 1 minute, holds the next step on a
    failure) or ``watch`` (the extended watch, silent unless a check fails). Unset numbers
    come from the ``stability`` settings; ``baseline`` is a template giving the latency (ms)
    measured before the rollback."""

    kind: Literal["stability"]
    mode: Literal["gate", "watch"] = "gate"
    url: str = "{{ target.health_url }}"
    headers: dict[str, str] = Field(default_factory=dict)
    checks: int | None = Field(None, ge=1, le=1000)
    interval: float | None = Field(None, gt=0, le=24 * 3600)
    max_latency_ms: float | None = Field(None, gt=0)
    baseline: str | None = None
    baseline_multiple: float | None = Field(None, gt=1)
    failures_allowed: int | None = Field(None, ge=0)
    expect_status: list[int] = Field(default_factory=lambda: [200])
    status_field: str = "status"
    expect_value: list[str] = Field(default_factory=lambda: ["ok"])
    maintenance_step: str | None = Field(None, description="the earlier step that re-enables maintenance mode")

    @property
    def produces(self) -> tuple[str, ...]:
        """Captures the step provides without declaring them."""
        return STABILITY_CAPTURES

    def template_refs(self) -> Iterator[Ref]:
        yield from value_refs(self.url)
        yield from value_refs(self.headers)
        if self.baseline:
            yield from value_refs(self.baseline)


class WindowStep(StepBase):
    """Waits for the next maintenance window (cron and time zone from the settings); a
    decision other than the one in ``when`` skips it."""

    kind: Literal["window"]


#: What a github_workflow step captures (see ``bot.record.steps``).
GITHUB_CAPTURES = ("run_id", "html_url", "status", "conclusion", "correlation_id", "ref", "title")


class GithubWorkflowStep(StepBase):
    """Dispatches a GitHub Actions workflow with a correlation id in ``correlation_input``
    (the workflow puts it in its ``run-name``), finds the run and watches it to completion."""

    kind: Literal["github_workflow"]
    repo: str = "{{ target.github_repo }}"
    workflow: str = "{{ target.github_workflow }}"
    ref: str
    inputs: dict[str, str] = Field(default_factory=dict)
    correlation_input: str = Field("correlation_id", pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,99}$")
    poll_seconds: float = Field(10, gt=0, le=600)
    find_timeout: float = Field(180, gt=0, le=3600)

    @property
    def has_side_effect(self) -> bool:
        return True

    @property
    def produces(self) -> tuple[str, ...]:
        """Captures the step provides without declaring them."""
        return GITHUB_CAPTURES

    def template_refs(self) -> Iterator[Ref]:
        yield from value_refs(self.repo)
        yield from value_refs(self.workflow)
        yield from value_refs(self.ref)
        yield from value_refs(self.inputs)


class GovernanceStep(StepBase):
    """The plan's governance record: filled from the incident, inserted into the target's
    governance table with bound values and appended to the local hash-chained log."""

    kind: Literal["governance"]
    db: str = "{{ target.db_path }}"
    table: str = "governance_logs"

    @property
    def has_side_effect(self) -> bool:
        return True

    @property
    def produces(self) -> tuple[str, ...]:
        """Captures the step provides without declaring them."""
        return ("row_id", "inserted", "anchor", "record_sha256", "chain_seq")

    def template_refs(self) -> Iterator[Ref]:
        return value_refs(self.db)


class EvidenceStep(StepBase):
    """The evidence archive: a folder named by the anchor with every tracked artifact,
    the emergency backup (fetched or noted), summaries and a sha256 manifest."""

    kind: Literal["evidence_archive"]

    @property
    def produces(self) -> tuple[str, ...]:
        """Captures the step provides without declaring them."""
        return ("path", "anchor", "files", "manifest_sha256")


class ReportStep(StepBase):
    """The post-incident report: Markdown, written to the archive and uploaded to the thread."""

    kind: Literal["report"]

    @property
    def produces(self) -> tuple[str, ...]:
        """Captures the step provides without declaring them."""
        return ("report_path", "metrics", "overall", "manifest_sha256")


class NotifyStep(StepBase):
    """A stakeholder webhook (status page, another channel) at a milestone; the URL comes from
    the environment variable ``url_env`` and the step is skipped when it is not set."""

    kind: Literal["notify"]
    url_env: str = Field("ROLLBACK_STAKEHOLDER_WEBHOOK", pattern=r"^[A-Z_][A-Z0-9_]{0,99}$")
    text: str
    on_failure: OnFailure = "continue"

    def template_refs(self) -> Iterator[Ref]:
        return value_refs(self.text)


class PreflightStep(StepBase):
    """Is the target ready? SSH and the pinned host key, workdir, env file, Python, free disk,
    database, backups, app and health, each reported; reads only, changes nothing."""

    kind: Literal["preflight"]
    timeout: float = Field(900, gt=0, le=24 * 3600)


Step = Annotated[
    CommandStep | HttpStep | SqliteStep | ChoiceStep | ManualStep | ApprovalStep | WaitStep | StabilityStep
    | WindowStep | GithubWorkflowStep | GovernanceStep | EvidenceStep | ReportStep | NotifyStep | PreflightStep,
    Field(discriminator="kind"),
]


class Phase(_Model):
    """A phase of the plan: an ordered list of steps."""

    id: Annotated[str, Field(pattern=_ID, max_length=64)]
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

    id: Annotated[str, Field(pattern=_ID, max_length=64)] = "compensation"
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


class Runbook(_Model):
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


# ---------------------------------------------------------------- loading


def _node_at(node: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """Walk the composed YAML tree along a pydantic error location."""
    for part in loc:
        if node is None:
            return None
        if isinstance(node, yaml.MappingNode):
            found = None
            for k, v in node.value:
                if k.value == part:
                    found = v
                    break
            if found is None:
                # The discriminator tag (e.g. 'command') appears in the loc; skip it.
                kinds = [v.value for k, v in node.value if k.value == "kind"]
                if kinds and part == kinds[0]:
                    continue
                # An unknown key: point at the key itself.
                for k, _ in node.value:
                    if k.value == part:
                        return k
                return node
            node = found
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else node
        else:
            return node
    return node


def _key_node(node: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """For 'unknown field' errors, the line of the key itself."""
    parent = _node_at(node, loc[:-1])
    if isinstance(parent, yaml.MappingNode):
        for k, _ in parent.value:
            if k.value == loc[-1]:
                return k
    return _node_at(node, loc)


def _step_label(data: Any, loc: tuple[Any, ...]) -> tuple[str, int]:
    """('step 'backup': ', how many loc parts it names) for the start of a message."""
    try:
        if len(loc) >= 4 and loc[0] == "phases" and loc[2] == "steps":
            return f"step {data['phases'][loc[1]]['steps'][loc[3]]['id']!r}: ", 4
        if len(loc) >= 2 and loc[0] == "phases":
            return f"phase {data['phases'][loc[1]]['id']!r}: ", 2
        if len(loc) >= 3 and loc[0] == "compensation" and loc[1] == "steps":
            return f"compensation step {data['compensation']['steps'][loc[2]]['id']!r}: ", 3
        if loc and loc[0] == "compensation":
            return "compensation: ", 1
    except (KeyError, IndexError, TypeError):
        pass
    return "", 0


def _describe(err: Any, skip: int) -> str:
    loc = [p for p in err["loc"][skip:] if not (isinstance(p, str) and p in _KINDS)]
    field = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        return f"unknown field {field!r}"
    if err["type"] == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return f"unknown kind {ctx.get('tag')!r} (one of {ctx.get('expected_tags')})"
    if err["type"] == "missing":
        return f"missing field {field!r}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{field}: {msg}" if field else msg


_KINDS = {"command", "http", "sqlite", "choice", "manual", "approval", "wait", "stability", "window",
          "github_workflow", "governance", "evidence_archive", "report", "notify"}


_STATEMENT = "\0statement"
_FROM_PHASE = "\0from_phase"


def _bad_ref(ref: Ref, captures: dict[str, set[str]], choices: set[str]) -> str | None:
    """Why a reference names nothing an earlier step or the settings provide; None when fine."""
    parts = ref.parts
    root = parts[0]
    if root not in ROOTS:
        return f"unknown root {root!r} (one of {', '.join(ROOTS)})"
    if ref.raw and root != "target":
        return "'| raw' is only allowed on target settings"
    if root == "target" and (len(parts) != 2 or parts[1] not in TARGET_FIELDS):
        return "not a target setting"
    if root == "captures":
        if len(parts) < 3 or parts[1] not in captures:
            return "no earlier step captures it"
        if parts[2] not in captures[parts[1]]:
            return f"step {parts[1]!r} captures no {parts[2]!r}"
    if root == "choices" and (len(parts) != 2 or parts[1] not in choices):
        return "no earlier choice step has this id"
    return None


def _check_refs(rb: Runbook, where: dict[str, int]) -> list[tuple[int, str]]:
    """References must name target settings, or captures/choices of earlier steps; the
    compensation comes after every phase and may read any of their steps."""
    problems: list[tuple[int, str]] = []
    captures: dict[str, set[str]] = {}
    choices: set[str] = set()
    seen: set[str] = set()
    phase_ids = [p.id for p in rb.phases]
    for phase in rb.phases:
        if phase.shown_before is not None and phase.shown_before not in phase_ids:
            problems.append((where.get(phase.steps[0].id, 0),
                             f"phase {phase.id!r}: shown_before names no phase ({phase.shown_before!r})"))
    main = {s.id for _, s in rb.steps()}
    comp_ids = {s.id for s in rb.compensation.steps} if rb.compensation else set()
    for phase in rb.all_phases():
        in_comp = phase is rb.compensation
        label = "compensation step" if in_comp else "step"
        for step in phase.steps:
            line = where.get(step.id, 0)
            if step.id in seen:
                problems.append((line, f"{label} {step.id!r}: duplicate step id"))
            seen.add(step.id)
            refs_here = list(step.template_refs())
            cond = step.condition
            if cond:
                refs_here.append(Ref(cond.ref, False))
            for ref in refs_here:
                bad = _bad_ref(ref, captures, choices)
                if bad:
                    problems.append((line, f"{label} {step.id!r}: bad reference {ref.path!r}: {bad}"))
            if isinstance(step, StabilityStep) and step.maintenance_step and step.maintenance_step not in seen:
                problems.append((line, f"step {step.id!r}: maintenance_step {step.maintenance_step!r} "
                                       "is not an earlier step"))
            problems += [(line, msg) for msg in _compensation_rules(step, in_comp, main, comp_ids)]
            captures[step.id] = set(step.captures) | set(getattr(step, "produces", ()))
            if isinstance(step, ChoiceStep):
                choices.add(step.id)
    if rb.compensation is not None:
        phase_ids = [p.id for p in rb.phases]
        if rb.compensation.from_phase is not None and rb.compensation.from_phase not in phase_ids:
            problems.append((where.get(_FROM_PHASE, 0), f"compensation: from_phase {rb.compensation.from_phase!r} "
                                                        f"is no phase of the runbook (one of {', '.join(phase_ids)})"))
        for ref in rb.compensation.statement_refs():
            bad = _bad_ref(ref, captures, choices)
            if bad is None and ref.parts[0] not in ("captures", "choices", "incident"):
                bad = "the statement reads captures, choices and incident only"
            if bad:
                problems.append((where.get(_STATEMENT, 0),
                                 f"compensation statement: bad reference {ref.path!r}: {bad}"))
    return problems


def _compensation_rules(step: StepBase, in_comp: bool, main: set[str], comp_ids: set[str]) -> list[str]:
    """What a step of the compensation may not do, and ``undoes`` outside it."""
    kind = getattr(step, "kind", "?")
    if not in_comp:
        return [f"step {step.id!r}: {name!r} is only for steps of the compensation"
                for name, used in (("undoes", step.undoes), ("unless_done", step.unless_done)) if used]
    out = []
    if kind in NOT_IN_COMPENSATION:
        out.append(f"compensation step {step.id!r}: kind {kind!r} cannot run in the compensation "
                   "(it runs to its end without gates or scheduled waits)")
    if step.on_failure == "stop":
        out.append(f"compensation step {step.id!r}: on_failure 'stop' would end the incident half undone; "
                   "use 'ask' (Retry / Skip) or 'continue'")
    for field_name, names in (("undoes", step.undoes), ("unless_done", step.unless_done)):
        for name in names:
            if name in comp_ids:
                out.append(f"compensation step {step.id!r}: {field_name} {name!r}, a step of the compensation itself")
            elif name not in main:
                out.append(f"compensation step {step.id!r}: {field_name} {name!r}, which is no step of the phases")
    return out


def parse_runbook(text: str, filename: str = "runbook.yml") -> Runbook:
    """Parse and validate runbook YAML; raises ``RunbookError`` with file:line reasons."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        raise RunbookError([f"{filename}:{line}: not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise RunbookError([f"{filename}:1: a runbook is a mapping with 'name' and 'phases'"])
    try:
        rb = Runbook.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            node = _key_node(root, loc) if err["type"] == "extra_forbidden" else _node_at(root, loc)
            line = node.start_mark.line + 1 if node is not None else 0
            label, skip = _step_label(data, loc)
            problems.append(f"{filename}:{line}: {label}{_describe(err, skip)}")
        raise RunbookError(problems) from None
    where: dict[str, int] = {}
    for pi, phase in enumerate(rb.phases):
        for si, step in enumerate(phase.steps):
            node = _node_at(root, ("phases", pi, "steps", si))
            where.setdefault(step.id, node.start_mark.line + 1 if node is not None else 0)
    if rb.compensation is not None:
        for si, step in enumerate(rb.compensation.steps):
            node = _node_at(root, ("compensation", "steps", si))
            where.setdefault(step.id, node.start_mark.line + 1 if node is not None else 0)
        for key, name in ((_STATEMENT, "statement"), (_FROM_PHASE, "from_phase")):
            node = _node_at(root, ("compensation", name))
            where[key] = node.start_mark.line + 1 if node is not None else 0
    problems2 = _check_refs(rb, where)
    from bot.core.runbook_safety import unquoted_user_values  # it reads this module's step models

    def line_of(step_id: str, field: str) -> int:
        for pi, phase in enumerate(rb.phases):
            for si, step in enumerate(phase.steps):
                if step.id == step_id:
                    node = _node_at(root, ("phases", pi, "steps", si, field))
                    return node.start_mark.line + 1 if node is not None else where.get(step_id, 0)
        return where.get(step_id, 0)

    problems2 += unquoted_user_values(rb, line_of)
    if problems2:
        raise RunbookError([f"{filename}:{line}: {msg}" for line, msg in problems2])
    rb._source = text
    return rb


def load_runbook(path: str | Path) -> Runbook:
    """Load a runbook file; raises ``RunbookError``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise RunbookError([f"{p}:0: cannot read: {exc.strerror}"]) from exc
    return parse_runbook(text, p.name)


DEFAULT_RUNBOOK = "default.yml"


def default_runbook_text() -> str:
    """The YAML of the plan's seven phases shipped in the package."""
    return resources.files("bot.runbooks").joinpath(DEFAULT_RUNBOOK).read_text(encoding="utf-8")


def default_runbook() -> Runbook:
    """The plan's default runbook, validated."""
    return parse_runbook(default_runbook_text(), DEFAULT_RUNBOOK)


def tree(rb: Runbook) -> str:
    """A printable phase/step tree."""
    lines = [f"{rb.name} (version {rb.version})"]
    for phase in rb.all_phases():
        when = f"  (on {', '.join(rb.compensation.triggers)})" if rb.compensation is phase and rb.compensation else ""
        lines.append(f"  {phase.title} [{phase.id}]" + (f"  ({phase.timeline})" if phase.timeline else "") + when)
        for step in phase.steps:
            flags = []
            if step.has_side_effect:
                flags.append("idempotent" if step.idempotent else "NOT idempotent")
            if step.destructive:
                flags.append("destructive")
            if step.when:
                flags.append(f"when {step.when}")
            if step.undoes:
                flags.append(f"undoes {', '.join(step.undoes)}")
            if step.unless_done:
                flags.append(f"unless done: {', '.join(step.unless_done)}")
            extra = f"  [{', '.join(flags)}]" if flags else ""
            kind = getattr(step, "kind", "?")
            lines.append(f"    - {step.id}: {kind} — {step.title}{extra}")
    return "\n".join(lines)
