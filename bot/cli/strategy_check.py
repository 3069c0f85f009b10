"""What ``rollback-bot check`` says about a target's schema: which strategies it supports.

Read-only, through the SQLite agent on the target (``strategy_support``): for each of A, B
and C whether the target's tables allow it and, when not, why and which setting to add;
the change-log columns that were guessed rather than configured; tables without a key.
"""

from __future__ import annotations

from typing import Any

from actions.errors import ActionError
from actions.sqlite import sqlite_op
from actions.transport import Transport
from bot.core.targets import TargetSettings

STRATEGY_NAMES = {"A": "A selective", "B": "B transaction rollback", "C": "C full restore"}


async def strategy_support(transport: Transport, target: TargetSettings) -> dict[str, Any]:
    """The agent's ``strategy_support`` for the target's database and contract settings."""
    values = target.template_values()
    params = {"db": target.db_path, "change_log": values["change_log"], "boundary": values["boundary"],
              "key_columns": values["key_columns"]}
    return await sqlite_op(transport, "strategy_support", params, timeout=target.connect_timeout + 60,
                           python=target.python, cwd=target.workdir)


def support_lines(key: str, report: dict[str, Any]) -> list[str]:
    """One line per strategy (supported, or why not and what to set), then the guesses."""
    lines = []
    for name, s in report.get("strategies", {}).items():
        label = STRATEGY_NAMES.get(name, name)
        if s.get("ok"):
            lines.append(f"{key}.strategies: {label}: supported"
                         + (f" ({'; '.join(s['notes'])})" if s.get("notes") else ""))
        else:
            lines.append(f"{key}.strategies: {label}: NOT supported: {s.get('why')}")
    mapping = report.get("mapping")
    if mapping:
        shown = ", ".join(f"{k}={v}" for k, v in mapping.items() if v)
        lines.append(f"{key}.change_log: {shown}")
    for guess in report.get("guessed", []):
        lines.append(f"{key}.{guess.split(':')[0]}: guessed '{guess.split(': ', 1)[-1]}' "
                     "from the column names; set it to confirm")
    for table, info in sorted(report.get("tables", {}).items()):
        if "no_key" in info:
            lines.append(f"{key}.key_columns.{table}: {info['no_key']}")
    return lines


async def target_strategy_lines(key: str, transport: Transport, target: TargetSettings) -> tuple[list[str], str | None]:
    """(report lines, problem or None): a schema the agent cannot read is a problem."""
    try:
        report = await strategy_support(transport, target)
    except ActionError as exc:
        return [], f"{key}.db_path: cannot read the schema of {target.db_path!r}: {exc}"
    return support_lines(key, report), None
