"""Loading a runbook from YAML: every problem reported with file, line and reason.

For example ``runbook.yml:42: step 'backup': unknown field 'timout'``, including references
to captures or choices that no earlier step provides (see ``bot.core.runbook.checks``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bot.core.runbook.checks import FROM_PHASE, STATEMENT, check_refs
from bot.core.runbook.model import Runbook
from bot.core.runbook.safety import unquoted_user_values
from bot.core.runbook.steps import KINDS


class RunbookError(ValueError):
    """A runbook failed to load; ``problems`` holds one ``file:line: reason`` per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems



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
    loc = [p for p in err["loc"][skip:] if not (isinstance(p, str) and p in KINDS)]
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
        for key, name in ((STATEMENT, "statement"), (FROM_PHASE, "from_phase")):
            node = _node_at(root, ("compensation", name))
            where[key] = node.start_mark.line + 1 if node is not None else 0
    problems2 = check_refs(rb, where)

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
