"""How the engine runs a step: its kind's executor from the table, and for a machine step a
journaled attempt around it (the start synced before the side effect, the end, outputs and
files in one transaction), a failure handled as the step's ``on_failure`` says."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from pathlib import Path
from typing import Any

from actions.errors import ActionError, CommandFailed, CommandTimeout, HostsFailed
from bot.core.engine.base import EngineBase
from bot.core.executors.base import TAIL_CHARS, Call, answer_options
from bot.core.executors.table import executor_for
from bot.core.lifecycle import Event, Status, StepStatus
from bot.core.preflight import PreflightFailed
from bot.core.runbook import CaptureFrom, Phase, StepBase
from bot.core.templating import TemplateError, lookup
from bot.plan.binding import confirm_previews
from bot.state.store import ArtifactFile, Incident, StepRun, utcnow


class Attempts(EngineBase):
    """Starting steps, a machine step's attempts, failures, and a stop of the bot in the middle."""

    async def _execute(self, inc: Incident, phase: Phase, step: StepBase, ctx: dict[str, Any], *,
                       prior: StepRun | None = None) -> str:
        """Start the step with its kind's executor: 'next', 'wait' or 'end'."""
        return await executor_for(step).start(Call(self, inc, phase, step, ctx, prior=prior))

    async def perform(self, call: Call, *, attempt: int | None = None) -> tuple[dict[str, Any], str]:
        """Do what the step says; returns (result, whole output). ``attempt`` names its artifacts
        (None: performed outside a run of its own)."""
        # The side-effect boundary: a replica that lost the incident's lease stops here.
        await self.store.check_lease(call.inc.id)
        return await executor_for(call.step).perform(call, attempt)

    async def attempt(self, call: Call) -> str:
        """A machine step: the attempt is committed before its side effect begins."""
        inc, step = call.inc, call.step
        run = await self.store.begin_step(inc.id, step.id, call.phase.id)
        # Until it ends, a stop of the bot journals this step as interrupted (see ``stop``).
        self._in_flight[run.id] = (inc.id, step)
        # The view shows the step running before its side effect begins; its journal event
        # reaches the audit log with the next catch-up.
        await self._show(inc.id)
        started = time.monotonic()
        made = self._made[inc.id] = []
        try:
            result, output = await self.perform(call, attempt=run.attempt)
            captures = self._captures(step, result, output)
            if "failed_hosts" in result:  # a host group: every host's result stays with the step
                captures.update(hosts=result["hosts"], failed_hosts=result["failed_hosts"])
        except (ActionError, TemplateError) as exc:
            self._in_flight.pop(run.id, None)
            return await self.failed(inc, step, run, exc, artifacts=made)
        finally:
            self._made.pop(inc.id, None)
        self._in_flight.pop(run.id, None)
        tail = output[-TAIL_CHARS:]
        if result.get("skipped"):  # the step found nothing to do (a notify without its webhook)
            await self.store.end_step(run.id, StepStatus.SKIPPED, captures={"skip_reason": str(result["skipped"])},
                                      output_tail=tail, duration=time.monotonic() - started)
            return "next"
        await self.store.end_step(
            run.id, StepStatus.DONE, captures=captures, output_tail=tail,
            output_digest=hashlib.sha256(output.encode("utf-8", "replace")).hexdigest(),
            output_bytes=len(output.encode()), exit_status=result.get("exit_status"),
            duration=time.monotonic() - started, artifacts=made,
        )
        return "next"

    async def failed(self, inc: Incident, step: StepBase, run: StepRun, exc: Exception, *,
                     artifacts: list[ArtifactFile] | None = None) -> str:
        """Journal a failed run as the step's ``on_failure`` says: 'next', 'wait' (a question) or 'end'."""
        out = ""
        if isinstance(exc, CommandFailed | CommandTimeout | HostsFailed | PreflightFailed):
            out = self.redact(exc.stdout + exc.stderr)[-TAIL_CHARS:]
        error = self.redact(f"{type(exc).__name__}: {exc}")
        exit_status = exc.exit_status if isinstance(exc, CommandFailed) else None
        # A host group's failure keeps every host's result: the view lists them, Retry reads them.
        extra: dict[str, Any] = {"artifacts": artifacts}
        if isinstance(exc, HostsFailed):
            extra["captures"] = {"hosts": exc.hosts, "failed_hosts": exc.failed}
        if step.on_failure in ("continue", "stop"):
            await self.store.end_step(run.id, StepStatus.FAILED, error=error, output_tail=out,
                                      exit_status=exit_status, **extra)
            if step.on_failure == "continue":
                return "next"
            inc = await self.store.incident(inc.id)
            await self._stop(inc, "failure", Event.FAIL, actor=None,
                             data={"step": step.id, "error": error, "reason": f"{step.title} failed: {error}"})
            return "end"
        # Some kinds offer their own answers (a failed preflight is fixed and retried, never skipped).
        offered = executor_for(step).failure_answers or self.answers(step)["failure"]
        waiting: dict[str, Any] = {"kind": "failure", "prompt": f"{step.title} failed", "error": error,
                                   "options": answer_options(offered)}
        if step.destructive:  # Retry's confirm dialog shows what runs again, rendered
            settings = self.target(inc, step).settings
            [preview] = confirm_previews(self.runbook, settings, await self.context(inc.id), step.id, [None],
                                         redact=self.redact, including=True)
            if preview:
                waiting["confirm"] = preview
        await self.store.end_step(run.id, StepStatus.FAILED, error=error, output_tail=out,
                                  exit_status=exit_status, **extra, waiting=waiting)
        return "wait"

    async def _interrupted(self, run: StepRun, step: StepBase, why: str) -> str:
        """Journal a step cut off while it ran: re-run next if idempotent ('next'), else ask ('wait')."""
        if step.is_idempotent and not step.needs_person:
            await self.store.end_step(run.id, StepStatus.INTERRUPTED, error=f"{why}; re-running")
            return "next"
        await self.store.end_step(
            run.id, StepStatus.INTERRUPTED, error=f"{why}; it may have run",
            waiting={"kind": "resume", "prompt": f"{step.title}: may have run before the bot stopped",
                     "options": answer_options(self.answers(step)["resume"])},
        )
        return "wait"

    async def stop(self, why: str) -> list[str]:
        """Start no new step; journal each step cut off by the stop as interrupted (it resumes as
        after a crash). Call after the incidents' tasks were cancelled; returns the step ids."""
        self.stopping = True
        stopped = []
        for run_id, (incident_id, step) in list(self._in_flight.items()):
            latest = (await self.store.latest_runs(incident_id)).get(step.id)
            if latest is None or latest.id != run_id or latest.status is not StepStatus.RUNNING:
                continue
            if await self._interrupted(latest, step, why) == "wait":
                inc = await self.store.incident(incident_id)
                if inc.status is Status.RUNNING:
                    await self.store.apply(incident_id, Event.WAIT, data={"step": step.id})
            stopped.append(step.id)
        self._in_flight.clear()
        return stopped

    def _captures(self, step: StepBase, result: dict[str, Any], output: str) -> dict[str, Any]:
        captures: dict[str, Any] = {k: result[k] for k in step.produces if k in result}
        for name, spec in step.captures.items():
            if isinstance(spec, CaptureFrom):
                text = result.get(spec.source, "") if isinstance(result.get(spec.source), str) else output
                m = re.search(spec.regex, text, re.MULTILINE)
                if not m:
                    raise TemplateError(f"capture {name!r}: /{spec.regex}/ found nothing in {spec.source}")
                captures[name] = m.group(1) if m.groups() else m.group(0)
            else:
                captures[name] = result if spec == "result" else lookup(result, spec)
        return captures

    async def artifact(self, inc: Incident, step: StepBase, ext: str, text: str, attempt: int | None) -> Path:
        """Keep a step's output as a file (redacted), tracked with the attempt's end."""
        folder = self.artifacts_dir / inc.id
        folder.mkdir(parents=True, exist_ok=True)
        made = self._made.get(inc.id) if attempt is not None else None
        if attempt is None:  # a step performed outside a run of its own (maintenance of a timed step)
            runs = await self.store.latest_runs(inc.id)
            attempt = runs[step.id].attempt if step.id in runs else 1
        path = folder / f"{step.id}.{attempt}.{ext}"
        data = self.redact(text).encode("utf-8", "replace")
        await asyncio.to_thread(path.write_bytes, data)
        digest = hashlib.sha256(data).hexdigest()
        if made is not None:  # tracked with the attempt's end, in the same transaction
            made.append(ArtifactFile(step.id, path.name, str(path), digest, len(data), utcnow()))
        else:
            await self.store.add_artifact(inc.id, step_id=step.id, name=path.name, path=str(path),
                                          sha256=digest, size=len(data))
        return path
