"""``preflight`` steps: is the target ready? Reads only; a failure is fixed and retried, never skipped."""

from __future__ import annotations

from typing import Any

from bot.core.executors.base import Call, StepExecutor, register
from bot.core.preflight import PreflightFailed, failure_message, findings_result, report, run_preflight
from bot.core.runbook import PreflightStep


@register(PreflightStep)
class PreflightExecutor(StepExecutor):
    """Runs every check of the target (each host of a group) and reports them all."""

    failure_answers = ("retry", "abort")

    async def perform(self, call: Call, attempt: int | None) -> tuple[dict[str, Any], str]:
        """The findings as the result; ``PreflightFailed`` when one of them fails."""
        step, host, target = call.step, call.host, call.target
        findings = await run_preflight(target.settings, target.transport, http=host.http, timeout=step.timeout,
                                       hosts=target.hosts or None)
        text = report(findings)
        await host.artifact(call.inc, step, "log", text, attempt)
        result = findings_result(findings)
        if result["failed"]:
            raise PreflightFailed(host.redact(failure_message(findings)), findings=findings)
        return result, text
