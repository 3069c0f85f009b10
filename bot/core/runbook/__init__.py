"""The runbook as data: runbook -> phases -> steps, validated by pydantic.

``base`` is what every step has, ``steps`` the step kinds, ``model`` the phases, the
compensation and the runbook; ``loader`` reads YAML and reports every problem with file,
line and reason, ``checks`` and ``safety`` are the rules it applies beyond the models;
``defaults`` is the shipped plan, ``tree`` prints a runbook.
"""

from __future__ import annotations

from bot.core.runbook.base import Capture, CaptureFrom, Condition, OnFailure, Option, StepBase
from bot.core.runbook.checks import TARGET_FIELDS
from bot.core.runbook.defaults import DEFAULT_RUNBOOK, default_runbook, default_runbook_text
from bot.core.runbook.loader import RunbookError, load_runbook, parse_runbook
from bot.core.runbook.model import NOT_IN_COMPENSATION, Compensation, CompensationTrigger, Phase, Runbook
from bot.core.runbook.steps import (
    GITHUB_CAPTURES,
    KINDS,
    SQLITE_OPS,
    SQLITE_WRITE_OPS,
    STABILITY_CAPTURES,
    STEP_MODELS,
    ApprovalStep,
    ChoiceStep,
    CommandStep,
    EvidenceStep,
    GithubWorkflowStep,
    GovernanceStep,
    HttpStep,
    ManualStep,
    NotifyStep,
    OptionsFrom,
    PreflightStep,
    ReportStep,
    SqliteStep,
    StabilityStep,
    Step,
    WaitStep,
    WindowStep,
)
from bot.core.runbook.tree import tree

__all__ = [
    "DEFAULT_RUNBOOK", "GITHUB_CAPTURES", "KINDS", "NOT_IN_COMPENSATION", "SQLITE_OPS", "SQLITE_WRITE_OPS",
    "STABILITY_CAPTURES", "STEP_MODELS", "TARGET_FIELDS", "ApprovalStep", "Capture", "CaptureFrom", "ChoiceStep",
    "CommandStep", "Compensation", "CompensationTrigger", "Condition", "EvidenceStep", "GithubWorkflowStep",
    "GovernanceStep", "HttpStep", "ManualStep", "NotifyStep", "OnFailure", "Option", "OptionsFrom", "Phase",
    "PreflightStep", "ReportStep", "Runbook", "RunbookError", "SqliteStep", "StabilityStep", "Step", "StepBase",
    "WaitStep", "WindowStep", "default_runbook", "default_runbook_text", "load_runbook", "parse_runbook", "tree",
]
