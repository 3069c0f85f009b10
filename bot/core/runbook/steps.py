"""The step kinds of a runbook, one model each; ``Step`` is their union, told apart by ``kind``.

A new kind is a model here (in ``Step``) and an executor registered for it (``bot.core.executors``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field, field_validator, model_validator

from bot.core.runbook.base import Model, OnFailure, Option, StepBase
from bot.core.templating import Ref, value_refs

#: SQLite operations that change the target's files.
SQLITE_WRITE_OPS = frozenset(
    {"backup", "restore", "restrict_access", "restore_access", "selective_restore",
     "transaction_rollback", "governance_insert"}
)
SQLITE_OPS = SQLITE_WRITE_OPS | {
    "integrity_check", "quick_check", "foreign_key_check", "record_counts", "query",
    "content_hash", "verify", "list_backups", "diff", "strategy_support", "change_points", "data_loss",
}



class CommandStep(StepBase):
    """A remote command over SSH; every substituted value is shell-quoted."""

    kind: Literal["command"]
    run: str
    expect_exit: list[int] = Field(default_factory=lambda: [0])

    @property
    def has_side_effect(self) -> bool:
        return True

    templated: ClassVar[tuple[str, ...]] = ("run",)


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

    templated: ClassVar[tuple[str, ...]] = ("url", "headers", "json_body")


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

    templated: ClassVar[tuple[str, ...]] = ("db", "params")


class OptionsFrom(Model):
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

    produces: ClassVar[tuple[str, ...]] = STABILITY_CAPTURES
    templated: ClassVar[tuple[str, ...]] = ("url", "headers", "baseline")


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

    produces: ClassVar[tuple[str, ...]] = GITHUB_CAPTURES
    templated: ClassVar[tuple[str, ...]] = ("repo", "workflow", "ref", "inputs")


class GovernanceStep(StepBase):
    """The plan's governance record: filled from the incident, inserted into the target's
    governance table with bound values and appended to the local hash-chained log."""

    kind: Literal["governance"]
    db: str = "{{ target.db_path }}"
    table: str = "governance_logs"

    @property
    def has_side_effect(self) -> bool:
        return True

    produces: ClassVar[tuple[str, ...]] = ("row_id", "inserted", "anchor", "record_sha256", "chain_seq")
    templated: ClassVar[tuple[str, ...]] = ("db",)


class EvidenceStep(StepBase):
    """The evidence archive: a folder named by the anchor with every tracked artifact,
    the emergency backup (fetched or noted), summaries and a sha256 manifest."""

    kind: Literal["evidence_archive"]

    produces: ClassVar[tuple[str, ...]] = ("path", "anchor", "files", "manifest_sha256")


class ReportStep(StepBase):
    """The post-incident report: Markdown, written to the archive and uploaded to the thread."""

    kind: Literal["report"]

    produces: ClassVar[tuple[str, ...]] = ("report_path", "metrics", "overall", "manifest_sha256")


class NotifyStep(StepBase):
    """A stakeholder webhook (status page, another channel) at a milestone; the URL comes from
    the environment variable ``url_env`` and the step is skipped when it is not set."""

    kind: Literal["notify"]
    url_env: str = Field("ROLLBACK_STAKEHOLDER_WEBHOOK", pattern=r"^[A-Z_][A-Z0-9_]{0,99}$")
    text: str
    on_failure: OnFailure = "continue"

    templated: ClassVar[tuple[str, ...]] = ("text",)


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



#: Every step model, and the ``kind`` each is written as in YAML.
STEP_MODELS: tuple[type[StepBase], ...] = get_args(get_args(Step)[0])
KINDS: dict[str, type[StepBase]] = {get_args(m.model_fields["kind"].annotation)[0]: m for m in STEP_MODELS}
