"""``http`` steps: one request with the shared client; the body kept as an artifact."""

from __future__ import annotations

from typing import Any

from actions.errors import HttpCheckFailed
from actions.http import http_request
from bot.core.executors.base import TAIL_CHARS, Call, StepExecutor, register
from bot.core.runbook import HttpStep
from bot.core.step_render import http_request as request_of


@register(HttpStep)
class HttpExecutor(StepExecutor):
    """Sends the request as the plan shows it; an unexpected status fails the step."""

    async def perform(self, call: Call, attempt: int | None) -> tuple[dict[str, Any], str]:
        """The request; the answer's status, headers, latency and body sha256 as the result."""
        step, host = call.step, call.host
        assert isinstance(step, HttpStep)
        req = request_of(step, call.ctx)
        resp = await http_request(step.method, req.url, headers=req.headers, json_body=req.json_body,
                                  timeout=step.timeout, client=host.http)
        path = await host.artifact(call.inc, step, "body", resp.text, attempt)
        result = resp.as_dict()
        result["artifact"] = str(path)
        if resp.status not in step.expect_status:
            raise HttpCheckFailed(f"{step.method} {req.url} answered {resp.status}, expected "
                                  f"{step.expect_status}", status=resp.status, body=resp.text[-500:])
        return result, host.redact(resp.text[:TAIL_CHARS])
