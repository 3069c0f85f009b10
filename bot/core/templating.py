"""Templates in runbook fields: ``{{ target.db_path }}``, ``{{ captures.backup.path }}``.

Every value substituted into a command is shell-quoted. ``| raw`` inserts a value
unquoted and is allowed only for ``target.*`` settings, which come from the operator's
config, never from anything a user types in Slack.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(\|\s*raw\s*)?\}\}")

#: Roots a reference may start with.
ROOTS = ("target", "captures", "choices", "incident", "inputs")


class TemplateError(ValueError):
    """A template names a value that does not exist or uses ``| raw`` where it may not."""


@dataclass(frozen=True)
class Ref:
    """One ``{{ ... }}`` reference found in a template."""

    path: str
    raw: bool

    @property
    def parts(self) -> list[str]:
        """The dotted path split into its parts."""
        return self.path.split(".")


def refs(template: str) -> Iterator[Ref]:
    """Yield every reference in ``template``."""
    for m in _PLACEHOLDER.finditer(template):
        yield Ref(m.group(1), bool(m.group(2)))


def lookup(context: Mapping[str, Any], path: str) -> Any:
    """Resolve a dotted path in ``context``; raises ``TemplateError`` when absent."""
    value: Any = context
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise TemplateError(f"{{{{ {path} }}}} has no value (missing {part!r})")
    return value


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render(template: str, context: Mapping[str, Any], *, quote: Callable[[str], str] | None) -> str:
    """Substitute references; with ``quote`` (e.g. ``shlex.quote``) each value is quoted."""

    def sub(m: re.Match[str]) -> str:
        path, raw = m.group(1), bool(m.group(2))
        if raw and not path.startswith("target."):
            raise TemplateError(f"'| raw' is only allowed on target settings, not {path!r}")
        text = _as_text(lookup(context, path))
        return text if raw or quote is None else quote(text)

    return _PLACEHOLDER.sub(sub, template)


def _shell_quote(text: str) -> str:
    # No quoting carries a NUL through bash: refuse it here, as a step failure, not a crash later.
    if "\0" in text:
        raise TemplateError("a value with a NUL byte cannot be passed to a shell command")
    return shlex.quote(text)


def render_shell(template: str, context: Mapping[str, Any]) -> str:
    """Render a shell command: every substituted value is shell-quoted (a NUL byte is refused)."""
    return render(template, context, quote=_shell_quote)


def render_text(template: str, context: Mapping[str, Any]) -> str:
    """Render plain text (URLs, paths passed as data): values inserted as they are."""
    return render(template, context, quote=None)


def slack_escape(text: str) -> str:
    """Text as Slack mrkdwn shows it literally: ``&``, ``<``, ``>`` escaped, so a typed
    ``<!channel>``, ``<@U…>`` or ``<http://evil|ok>`` is shown, never acted on."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_slack(template: str, context: Mapping[str, Any]) -> str:
    """Render a message for Slack (or a Slack-style webhook): every substituted value escaped."""
    return render(template, context, quote=slack_escape)


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Render templates inside a JSON-like value; a string that is one whole reference
    keeps the referenced value's type (a list stays a list)."""
    if isinstance(value, str):
        m = _PLACEHOLDER.fullmatch(value.strip())
        if m and not m.group(2):
            return lookup(context, m.group(1))
        return render_text(value, context)
    if isinstance(value, list):
        return [render_value(v, context) for v in value]
    if isinstance(value, dict):
        return {k: render_value(v, context) for k, v in value.items()}
    return value


def value_refs(value: Any) -> Iterator[Ref]:
    """Yield the references inside a JSON-like value."""
    if isinstance(value, str):
        yield from refs(value)
    elif isinstance(value, list):
        for v in value:
            yield from value_refs(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from value_refs(v)
