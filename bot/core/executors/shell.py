"""``command`` steps: a shell command on the target, or on every host of a group at once."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from actions.errors import CommandFailed, HostsFailed
from actions.fanout import HostResult, run_on_hosts
from bot.core.executors.base import Call, StepExecutor, register
from bot.core.runbook import CommandStep
from bot.core.step_render import command_text
from bot.core.targets import Target

#: Output kept per host of a host group (20 hosts fit in a step's captures).
HOST_TAIL_CHARS = 300


def _joined(stdout: str, stderr: str) -> str:
    return stdout + (("\n[stderr]\n" + stderr) if stderr else "")


@register(CommandStep)
class CommandExecutor(StepExecutor):
    """Runs the command with every substituted value shell-quoted; its exit status decides."""

    async def perform(self, call: Call, attempt: int | None) -> tuple[dict[str, Any], str]:
        """The command on the target (or its group); the output kept as the step's log."""
        step, host = call.step, call.host
        assert isinstance(step, CommandStep)
        target = call.target
        if target.hosts:
            return await self._group(call, step, target, command_text(step, call.ctx), attempt)
        res = await target.transport.run(command_text(step, call.ctx), timeout=step.timeout,
                                         cwd=target.settings.workdir)
        res = replace(res, stdout=host.redact(res.stdout), stderr=host.redact(res.stderr))
        output = _joined(res.stdout, res.stderr)
        await host.artifact(call.inc, step, "log", output, attempt)
        result: dict[str, Any] = {"exit_status": res.exit_status, "stdout": res.stdout, "stderr": res.stderr}
        try:
            result["json"] = json.loads(res.stdout)
        except ValueError:
            pass
        if res.exit_status not in step.expect_exit:
            raise CommandFailed(f"exit status {res.exit_status}", exit_status=res.exit_status,
                                stdout=res.stdout, stderr=res.stderr)
        return result, output

    async def _group(self, call: Call, step: CommandStep, target: Target, command: str,
                     attempt: int | None) -> tuple[dict[str, Any], str]:
        """A command on every host of a group at once; ``HostsFailed`` names the hosts that failed.

        A retry runs again only on the hosts that failed before: a command is not assumed
        idempotent, and the hosts where it succeeded keep that result (marked with its attempt).
        """
        prior, redact = call.prior, call.host.redact
        kept: dict[str, dict[str, Any]] = {}
        if prior is not None and isinstance(prior.captures.get("hosts"), list):
            kept = {h["host"]: {**h, "attempt": h.get("attempt", prior.attempt)}
                    for h in prior.captures["hosts"] if isinstance(h, dict) and h.get("ok")}
        todo = {name: t for name, t in target.hosts.items() if name not in kept}
        results = await run_on_hosts(todo, command, timeout=step.timeout, cwd=target.settings.workdir,
                                     concurrency=target.settings.group_concurrency)
        fresh = {r.host: _host_record(step, r, attempt, redact) for r in results}
        records = [kept.get(name) or fresh[name] for name in target.hosts]
        failed = [r["host"] for r in records if not r["ok"]]
        sections = [f"== {r.host}: {_host_state(fresh[r.host])} ==\n" + redact(_joined(r.stdout, r.stderr))
                    for r in results]
        summary = (f"{len(records) - len(failed)}/{len(records)} hosts ok"
                   + (f" ({len(kept)} kept from an earlier attempt)" if kept else "")
                   + (f"; failed: {', '.join(f'{h} ({_host_state(fresh[h])})' for h in failed)}" if failed else ""))
        output = "\n".join([*sections, summary])
        await call.host.artifact(call.inc, step, "log", output, attempt)
        if failed:
            raise HostsFailed(f"failed on {len(failed)} of {len(records)} hosts: "
                              + ", ".join(f"{h} ({_host_state(fresh[h])})" for h in failed),
                              hosts=records, failed=failed, output=output,
                              outcome_unknown=any(fresh[h].get("outcome_unknown") for h in failed))
        return {"exit_status": 0, "stdout": output, "stderr": "", "hosts": records, "failed_hosts": []}, output


def _host_record(step: CommandStep, r: HostResult, attempt: int | None, redact: Callable[[str], str]) -> dict[str, Any]:
    ok = r.error is None and r.exit_status in step.expect_exit
    tail = redact(_joined(r.stdout, r.stderr))[-HOST_TAIL_CHARS:]
    record: dict[str, Any] = {"host": r.host, "ok": ok, "exit_status": r.exit_status,
                              "duration": round(r.duration, 3), "tail": tail, "attempt": attempt}
    if r.error is not None:
        record["error"] = redact(r.error)
        record["outcome_unknown"] = r.outcome_unknown
    return record


def _host_state(record: dict[str, Any]) -> str:
    """``exit 0``, ``exit 3`` or the error that stopped the host."""
    return str(record.get("error") or f"exit {record.get('exit_status')}")
