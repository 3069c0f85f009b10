"""``sqlite`` steps: a typed operation of the SQLite agent on the target, values bound."""

from __future__ import annotations

import json
from typing import Any

from actions.errors import SqliteOpFailed
from actions.sqlite import sqlite_op
from bot.core.executors.base import TAIL_CHARS, Call, StepExecutor, register
from bot.core.runbook import SqliteStep
from bot.core.step_render import sqlite_params

#: SQLite operations that report problems as ``ok: false`` rather than as an error.
CHECK_OPS = frozenset({"verify", "integrity_check", "quick_check", "foreign_key_check"})


@register(SqliteStep)
class SqliteExecutor(StepExecutor):
    """Runs the operation; a check that finds problems fails its step."""

    async def perform(self, call: Call, attempt: int | None) -> tuple[dict[str, Any], str]:
        """The operation's result as the step's result, kept as JSON."""
        step, host, target = call.step, call.host, call.target
        assert isinstance(step, SqliteStep)
        params = sqlite_params(step, call.ctx)
        out = await sqlite_op(target.transport, step.op, params, timeout=step.timeout,
                              python=target.settings.python, cwd=target.settings.workdir)
        text = host.redact(json.dumps(out, indent=1, sort_keys=True, default=str))
        await host.artifact(call.inc, step, "json", text, attempt)
        if step.op in CHECK_OPS and out.get("ok") is False and step.on_failure != "continue":
            # A check that finds a problem fails its step (the backup's verification stops the
            # incident before any restore); "continue" steps record the result and go on.
            raise SqliteOpFailed(f"sqlite {step.op} of {params['db']} found problems (ok: false)",
                                 op=step.op, detail=text[-TAIL_CHARS:])
        return out, text
