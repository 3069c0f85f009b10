"""``wait`` steps: a pause, scaled by the time-compression setting."""

from __future__ import annotations

import asyncio
from typing import Any

from bot.core.executors.base import Call, StepExecutor, register
from bot.core.runbook import WaitStep


@register(WaitStep)
class WaitExecutor(StepExecutor):
    """Sleeps; a journaled attempt like any machine step (a crash in it re-runs it)."""

    async def perform(self, call: Call, attempt: int | None) -> tuple[dict[str, Any], str]:
        """How long it waited, in real seconds."""
        assert isinstance(call.step, WaitStep)
        seconds = call.step.seconds * call.host.time_scale
        await asyncio.sleep(seconds)
        return {"waited": seconds}, ""
