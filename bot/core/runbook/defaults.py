"""The plan's default runbook, shipped in the package."""

from __future__ import annotations

from importlib import resources

from bot.core.runbook.loader import parse_runbook
from bot.core.runbook.model import Runbook

DEFAULT_RUNBOOK = "default.yml"


def default_runbook_text() -> str:
    """The YAML of the plan's seven phases shipped in the package."""
    return resources.files("bot.runbooks").joinpath(DEFAULT_RUNBOOK).read_text(encoding="utf-8")


def default_runbook() -> Runbook:
    """The plan's default runbook, validated."""
    return parse_runbook(default_runbook_text(), DEFAULT_RUNBOOK)

