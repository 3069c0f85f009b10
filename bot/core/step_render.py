"""What a step sends, rendered from its templates: one function per step kind.

The engine calls these right before it acts, and ``rollback-bot plan`` calls the same
ones to show what will be sent, so the plan an approver reads cannot drift from what runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.core.runbook import CommandStep, HttpStep, SqliteStep
from bot.core.templating import render_shell, render_text, render_value


@dataclass(frozen=True)
class HttpRequest:
    """An HTTP step's request as it will be sent."""

    method: str
    url: str
    headers: dict[str, str]
    json_body: Any


def command_text(step: CommandStep, ctx: dict[str, Any]) -> str:
    """The shell command of a command step, every substituted value shell-quoted."""
    return render_shell(step.run, ctx)


def http_request(step: HttpStep, ctx: dict[str, Any]) -> HttpRequest:
    """The method, URL, headers and JSON body of an http step."""
    body = render_value(step.json_body, ctx) if step.json_body is not None else None
    return HttpRequest(step.method, render_text(step.url, ctx),
                       {k: render_text(v, ctx) for k, v in step.headers.items()}, body)


def sqlite_params(step: SqliteStep, ctx: dict[str, Any]) -> dict[str, Any]:
    """The bound parameters of a SQLite operation, ``db`` included."""
    params: dict[str, Any] = render_value(step.params, ctx)
    params["db"] = render_text(step.db, ctx)
    return params
