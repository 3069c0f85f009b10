"""What a person typed may only reach a command shell-quoted or a query as a bound parameter.

``unquoted_user_values`` finds every ``{{ incident.reason }}``, ``{{ incident.description }}``
or ``{{ inputs.* }}`` in a runbook field that inserts its value as it is: SQL text, paths,
URLs, headers, table names, repository and workflow names. The fields where such a value is
safe: a command's ``run`` (every value shell-quoted), a SQLite operation's ``params.params``
(bound), an HTTP ``json`` body and a workflow's ``inputs`` (JSON data), a ``notify`` text
(escaped for Slack), and the wording shown to people (``title``, ``prompt``, ``guidance``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel

from bot.core.runbook.base import StepBase
from bot.core.runbook.model import Runbook
from bot.core.runbook.steps import CommandStep, GithubWorkflowStep, HttpStep, NotifyStep
from bot.core.templating import Ref, value_refs

#: References to what a person typed in the start form.
USER_TYPED = ("incident.reason", "incident.description")

#: Fields where any value is safe, by step kind; and the wording fields of every step.
SAFE_FIELDS: dict[type[StepBase], set[str]] = {
    CommandStep: {"run"}, NotifyStep: {"text"}, GithubWorkflowStep: {"inputs"}, HttpStep: {"json_body"}}
WORDING = {"id", "title", "prompt", "guidance", "kind", "when", "captures"}


def user_typed(ref: Ref) -> bool:
    """True for a reference to a value a person typed."""
    return ref.path in USER_TYPED or ref.path.startswith(("inputs.", "incident.description."))


def _fields(step: StepBase) -> Iterator[tuple[str, Any]]:
    """(field path, value) of every templated field, SQL parameters left out."""
    safe = WORDING | next((f for k, f in SAFE_FIELDS.items() if isinstance(step, k)), set())
    for name, value in step:
        if name in safe or value is None:
            continue
        if isinstance(value, BaseModel):
            value = value.model_dump()
            if name == "options_from":
                value = value.get("params") or {}
                name = "options_from.params"
        if name.endswith("params") and isinstance(value, dict):
            for key, inner in value.items():
                if key != "params":  # the bound parameters of a query
                    yield f"{name}.{key}", inner
            continue
        yield name, value


def unquoted_user_values(rb: Runbook, line_of: Callable[[str, str], int]) -> list[tuple[int, str]]:
    """(line, problem) for each user-typed value in a field that inserts it unquoted."""
    problems = []
    for _, step in rb.steps():
        for field, value in _fields(step):
            for ref in value_refs(value):
                if user_typed(ref):
                    problems.append((line_of(step.id, field.split(".")[0]),
                                     f"step {step.id!r}: {{{{ {ref.path} }}}} is typed by a person and would be "
                                     f"inserted as it is into {field!r}; use it only in a command's run "
                                     "(shell-quoted), a query's params (bound) or a notify text"))
    return problems
