"""The rendered plan: every step of a runbook for one target, as it would run, and its hash.

Each step is rendered with the engine's own functions (``bot.core.step_render``, the SQLite
agent's command builder, the transport's command wrapping), so what an approver reads
is what runs. Values only known during the run (captures of earlier steps, choices not
made yet, the incident's id) appear as ``<captures.emergency_backup.path>``; a step
selected by a choice is marked with the condition that selects it.

The plan hash is sha256 over the rendered steps, the runbook file and the target's
settings: change any of them and the hash changes; nothing else does.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from actions import agent_cache
from actions.shellsession import wrap_command
from actions.sqlite import agent_bundle, agent_sha256, build_command
from bot.core.approvals import ApprovalPolicy
from bot.core.runbook import (
    ApprovalStep,
    ChoiceStep,
    CommandStep,
    GithubWorkflowStep,
    GovernanceStep,
    HttpStep,
    ManualStep,
    NotifyStep,
    Phase,
    Runbook,
    SqliteStep,
    StabilityStep,
    StepBase,
    WaitStep,
    WindowStep,
)
from bot.core.step_render import command_text, http_request, sqlite_params
from bot.core.targets import TargetSettings
from bot.core.templating import TemplateError, lookup, render_text, render_value

PLAN_FORMAT = "rbplan1"


class Pending(Mapping[str, Any]):
    """A value known only during the run; prints as ``<path>`` and answers every lookup."""

    def __init__(self, path: str, known: Mapping[str, Any] | None = None) -> None:
        self.path = path
        self.known = dict(known or {})

    def __getitem__(self, key: str) -> Any:
        return self.known[key] if key in self.known else Pending(f"{self.path}.{key}")

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.known)

    def __len__(self) -> int:
        return len(self.known)

    def __str__(self) -> str:
        return f"<{self.path}>"

    __repr__ = __str__


def _plain(value: Any) -> Any:
    """A JSON-ready copy: pending values become their ``<path>`` text."""
    if isinstance(value, Pending):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _redacted(value: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v, redact) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v, redact) for v in value]
    return value


def sha256_text(text: str) -> str:
    """sha256 hex of a text's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def settings_digests(settings: TargetSettings) -> dict[str, str]:
    """A short hash of each target setting: says which setting changed without showing it."""
    return {k: sha256_text(_canonical(v))[:12] for k, v in settings.model_dump(mode="json").items()}


@dataclass
class PlannedStep:
    """One step as it would run."""

    phase_id: str
    phase_title: str
    step_id: str
    kind: str
    title: str
    #: ``runs``, ``branch`` (selected by a choice made during the run), ``skipped``, or
    #: ``compensation`` (runs only when the run stops half-way).
    state: str
    when: str | None
    destructive: bool
    side_effect: bool
    idempotent: bool
    timeout: float
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self, *, listed: bool = True) -> dict[str, Any]:
        """The step as JSON; ``listed=False`` leaves out options probed from the target (not plan)."""
        detail = self.detail if listed else {k: v for k, v in self.detail.items() if k != "listed"}
        return {"phase": self.phase_id, "id": self.step_id, "kind": self.kind, "title": self.title,
                "state": self.state, "when": self.when, "destructive": self.destructive,
                "side_effect": self.side_effect, "idempotent": self.idempotent, "timeout": self.timeout,
                **detail}


@dataclass
class Plan:
    """The rendered plan of one runbook on one target."""

    runbook_name: str
    runbook_version: str
    target: str
    runbook_sha256: str
    target_sha256: str
    choices: dict[str, str]
    steps: list[PlannedStep]
    phases: list[tuple[str, str, str]]  # id, title, timeline
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        """sha256 over the rendered steps, the runbook file and the target's settings."""
        return sha256_text(_canonical({"format": PLAN_FORMAT, "runbook_sha256": self.runbook_sha256,
                                       "target_sha256": self.target_sha256,
                                       "steps": [s.as_dict(listed=False) for s in self.steps]}))

    def step_digests(self) -> dict[str, str]:
        """A short hash of each rendered step: says which steps changed."""
        return {s.step_id: sha256_text(_canonical(s.as_dict(listed=False)))[:12] for s in self.steps}

    @property
    def destructive(self) -> list[PlannedStep]:
        """Destructive steps that may run (skipped branches and the compensation left out)."""
        return [s for s in self.steps if s.destructive and s.state not in ("skipped", "compensation")]

    def as_json(self) -> dict[str, Any]:
        """The whole plan as JSON, with its hash."""
        return {"format": PLAN_FORMAT, "plan_hash": self.hash, "runbook": self.runbook_name,
                "runbook_version": self.runbook_version, "runbook_sha256": self.runbook_sha256,
                "target": self.target, "target_sha256": self.target_sha256, "choices": self.choices,
                "agent_sha256": _agent_sha256(),
                "phases": [{"id": p, "title": t, "timeline": tl} for p, t, tl in self.phases],
                "steps": [s.as_dict() for s in self.steps]}


def runbook_sha256(runbook: Runbook, text: str | None = None) -> str:
    """sha256 of the runbook file's text (of its canonical JSON when the text is unknown)."""
    if text is None:
        text = runbook.source_text or _canonical(runbook.model_dump(mode="json"))
    return sha256_text(text)


def plan_context(settings: TargetSettings, *, incident: Mapping[str, Any] | None = None,
                 inputs: Mapping[str, Any] | None = None, captures: Mapping[str, Any] | None = None,
                 choices: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The template context of a plan: known values, and ``Pending`` for the rest."""
    return {
        "target": settings.template_values(),
        "incident": Pending("incident", incident),
        "inputs": Pending("inputs", inputs),
        "captures": Pending("captures", captures),
        "choices": Pending("choices", choices),
    }


def _state(step: StepBase, ctx: dict[str, Any]) -> str:
    cond = step.condition
    if cond is None:
        return "runs"
    try:
        value = lookup(ctx, cond.ref)
    except TemplateError:
        value = None
    if isinstance(value, Pending):
        return "branch"
    return "runs" if cond.holds(value) else "skipped"


@functools.cache
def _quoted_agent() -> str:
    # The engine runs the agent from its install on the target (``actions.agent_cache``).
    return shlex.quote(agent_cache.bootstrap(agent_bundle(), agent_cache.DEFAULT_DIR))


@functools.cache
def _agent_sha256() -> str:
    return agent_sha256()


def _sqlite_sent(op: str, params: dict[str, Any], settings: TargetSettings, timeout: float) -> str:
    command, stdin = build_command(op, params, python=settings.python, agent_dir=agent_cache.DEFAULT_DIR)
    agent = _quoted_agent()
    short = f"<the SQLite agent, actions/sqlite_agent/, sha256 {_agent_sha256()}>"
    # The agent follows the interpreter and its flags; compared in place (a 70 KB search is slow).
    head = f"{shlex.quote(settings.python)} -I -c "
    named = (head + short + command[len(head) + len(agent):]
             if command.startswith(agent, len(head)) else command)
    line = wrap_command(named, timeout=timeout, cwd=settings.workdir)
    return line + ("  (params on stdin)" if stdin is not None else "")


def _detail(step: StepBase, ctx: dict[str, Any], settings: TargetSettings, policies: Mapping[str, ApprovalPolicy],
            options: Mapping[str, list[dict[str, str]]]) -> dict[str, Any]:
    """The kind-specific part of a planned step, rendered by the engine's own functions."""
    if isinstance(step, CommandStep):
        text = command_text(step, ctx)
        out: dict[str, Any] = {"command": text, "sent": wrap_command(text, timeout=step.timeout, cwd=settings.workdir)}
        if settings.hosts:
            out["hosts"] = [h.name for h in settings.hosts]
        return out
    if isinstance(step, HttpStep):
        req = http_request(step, ctx)
        return {"method": req.method, "url": req.url, "headers": req.headers, "json": _plain(req.json_body),
                "expect_status": step.expect_status}
    if isinstance(step, SqliteStep):
        params = _plain(sqlite_params(step, ctx))
        return {"op": step.op, "params": params, "sent": _sqlite_sent(step.op, params, settings, step.timeout)}
    if isinstance(step, ChoiceStep):
        out = {"prompt": step.prompt, "options": [o.model_dump() for o in step.options]}
        if step.options_from is not None:
            src = step.options_from
            out["options_from"] = {"op": src.op, "params": _plain(render_value(src.params, ctx)),
                                   "value": src.value, "label": src.label}
            if src.op == "github_releases":
                out["options_from"]["repo"] = settings.github_repo
        if step.id in options:
            out["listed"] = options[step.id]
        if step.default is not None:
            out["default"] = _plain(render_text(step.default, ctx))
        chosen = ctx["choices"].known.get(step.id)
        if chosen is not None:
            out["chosen"] = chosen
        return out
    if isinstance(step, ManualStep):
        return {"blocking": step.blocking, "checklist": step.checklist}
    if isinstance(step, ApprovalStep):
        policy = policies.get(step.policy)
        paths = [{"name": p.name, "groups": p.groups} for p in policy.paths] if policy else []
        return {"policy": step.policy, "paths": paths}
    if isinstance(step, WaitStep):
        return {"seconds": step.seconds}
    if isinstance(step, StabilityStep):
        return {"mode": step.mode, "url": render_text(step.url, ctx),
                "headers": {k: render_text(v, ctx) for k, v in step.headers.items()},
                "checks": step.checks, "interval": step.interval,
                "baseline": render_text(step.baseline, ctx) if step.baseline else None,
                "maintenance_step": step.maintenance_step}
    if isinstance(step, WindowStep):
        return {"waits_for": "the next maintenance window (clock settings)"}
    if isinstance(step, GithubWorkflowStep):
        return {"repo": render_text(step.repo, ctx), "workflow": render_text(step.workflow, ctx),
                "ref": render_text(step.ref, ctx), "inputs": _plain(render_value(dict(step.inputs), ctx)),
                "correlation_input": step.correlation_input, "api": settings.github_api_url}
    if isinstance(step, GovernanceStep):
        return {"db": render_text(step.db, ctx), "table": step.table, "values": "bound parameters"}
    if isinstance(step, NotifyStep):
        return {"url_env": step.url_env, "text": render_text(step.text, ctx)}
    return {}


def plan_step(phase: Phase, step: StepBase, ctx: dict[str, Any], settings: TargetSettings, *,
              policies: Mapping[str, ApprovalPolicy] | None = None,
              options: Mapping[str, list[dict[str, str]]] | None = None,
              redact: Callable[[str], str] | None = None) -> PlannedStep:
    """One step rendered as it would run in ``ctx``."""
    state = _state(step, ctx)
    try:
        detail = (_detail(step, ctx, settings, policies or {}, options or {}) if state != "skipped"
                  else {"skipped": f"condition not met: {step.when}"})
    except (TemplateError, ValueError) as exc:
        detail = {"error": f"cannot render: {exc}"}
    return PlannedStep(phase.id, phase.title, step.id, str(getattr(step, "kind", "?")), step.title, state,
                       step.when, step.destructive, step.has_side_effect, step.is_idempotent, step.timeout,
                       _redacted(detail, redact or (lambda text: text)))


def build_plan(runbook: Runbook, settings: TargetSettings, *, runbook_text: str | None = None,
               ctx: dict[str, Any] | None = None, policies: Mapping[str, ApprovalPolicy] | None = None,
               options: Mapping[str, list[dict[str, str]]] | None = None,
               redact: Callable[[str], str] | None = None) -> Plan:
    """Render every step of ``runbook`` for ``settings``; ``ctx`` from ``plan_context``."""
    ctx = ctx if ctx is not None else plan_context(settings)
    steps = [plan_step(phase, step, ctx, settings, policies=policies, options=options, redact=redact)
             for phase, step in runbook.steps()]
    # The compensation runs only when a run stops half-way; approvers see it too.
    compensation = runbook.compensation
    for step in compensation.steps if compensation is not None else []:
        assert compensation is not None
        planned = plan_step(compensation, step, ctx, settings, policies=policies, options=options, redact=redact)
        planned.state = "compensation"
        steps.append(planned)
    choices = {k: str(v) for k, v in ctx["choices"].known.items()} if isinstance(ctx["choices"], Pending) else {}
    return Plan(runbook.name, runbook.version, settings.name, runbook_sha256(runbook, runbook_text),
                sha256_text(_canonical(settings.model_dump(mode="json"))), choices, steps,
                [(p.id, p.title, p.timeline) for p in runbook.all_phases()], settings_digests(settings))
