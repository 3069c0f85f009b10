"""``choice`` and ``manual`` steps: a question to a person, answered in the thread.

A choice's options are static or listed when the step is reached (backups or rows from the
target, releases from GitHub); each option's confirm dialog shows the destructive steps it
leads to, rendered. A manual step is a checklist item a person marks done.
"""

from __future__ import annotations

from typing import Any

from actions.errors import ActionError
from actions.sqlite import sqlite_op
from bot.core.executors.base import Call, StepExecutor, StepHost, answer_options, register
from bot.core.lifecycle import StepStatus
from bot.core.runbook import ChoiceStep, ManualStep, Phase, StepBase
from bot.core.templating import render_text, render_value
from bot.plan.binding import confirm_previews
from bot.record.steps import record_context, release_options
from bot.state.store import Incident, StepRun


class _Question(StepExecutor):
    """Asks the step's question: the run waits until a person answers."""

    async def options(self, call: Call) -> list[dict[str, str]]:
        """The answers offered."""
        raise NotImplementedError

    def waiting(self, call: Call, options: list[dict[str, str]]) -> dict[str, Any]:
        """What the run waits for."""
        raise NotImplementedError

    async def start(self, call: Call) -> str:
        """Record the waiting run with its options (a failed listing fails the step)."""
        host, inc, step = call.host, call.inc, call.step
        try:
            options = await self.options(call)
        except ActionError as exc:
            run = await host.store.begin_step(inc.id, step.id, call.phase.id)
            return await host.failed(inc, step, run, exc)
        waiting = self.waiting(call, options)
        suggested = next((o["value"] for o in options if o.get("suggested")), None)
        if suggested is not None and "default" not in waiting:
            waiting["default"] = suggested
        await host.store.begin_step(inc.id, step.id, call.phase.id, status=StepStatus.WAITING, waiting=waiting)
        return "wait"

    async def answer(self, host: StepHost, inc: Incident, phase: Phase, step: StepBase, run: StepRun) -> str | None:
        """The pick (and who made it) become the step's captures."""
        assert run.answer is not None and run.waiting is not None
        if run.waiting["kind"] not in ("choice", "manual"):
            return None
        value, user = run.answer["value"], run.answer.get("user")
        label = next((o["label"] for o in run.waiting.get("options", []) if o["value"] == value), value)
        await host.store.end_step(run.id, StepStatus.DONE, actor=user,
                                  captures={"choice": value, "by": user, "label": label})
        return "next"


@register(ManualStep)
class ManualExecutor(_Question):
    """A blocking item waits for Done; a non-blocking one is only noted."""

    async def start(self, call: Call) -> str:
        """Wait for Done, or note a non-blocking item and go on."""
        assert isinstance(call.step, ManualStep)
        if call.step.blocking:
            return await super().start(call)
        run = await call.host.store.begin_step(call.inc.id, call.step.id, call.phase.id)
        await call.host.store.end_step(run.id, StepStatus.DONE, captures={"noted": True})
        return "next"

    async def options(self, call: Call) -> list[dict[str, str]]:
        """Done."""
        return answer_options(call.host.answers(call.step)["manual"])

    def waiting(self, call: Call, options: list[dict[str, str]]) -> dict[str, Any]:
        """The item's title and Done."""
        return {"kind": "manual", "prompt": call.step.title, "options": options}


@register(ChoiceStep)
class ChoiceExecutor(_Question):
    """Options static or listed from the target or GitHub; a default or a suggested one preselected."""

    async def options(self, call: Call) -> list[dict[str, str]]:
        """The static options, refined and extended by what the target lists."""
        step, ctx = call.step, call.ctx
        assert isinstance(step, ChoiceStep)
        opts = [o.model_dump() for o in step.options]
        src = step.options_from
        if src is not None and src.op == "github_releases":
            listed, pick = await release_options(record_context(call.host, call.inc, step),
                                                 render_value(src.params, ctx))
            return opts + [{**o, "suggested": "yes"} if o["value"] == pick else o for o in listed]
        if src is not None:
            target = call.target
            res = await sqlite_op(target.transport, src.op, render_value(src.params, ctx), timeout=step.timeout,
                                  python=target.settings.python, cwd=target.settings.workdir)
            for row in _rows(res):
                value = str(row.get(src.value, ""))
                desc = str(row.get("description") or " · ".join(
                    f"{k} {row[k]}" for k in ("bytes", "mtime_iso", "count") if k in row))
                if row.get("note"):
                    desc += f" ({row['note']})"
                opt = {"value": value, "label": str(row.get(src.label, value)), "description": desc}
                # An option the target cannot support is shown with its reason, never picked.
                opt.update({k: str(row[k]) for k in ("disabled", "suggested") if row.get(k)})
                same = next((o for o in opts if o["value"] == value), None)
                if same is not None:  # the target's word on a static option refines it
                    same.update(opt)
                else:
                    opts.append(opt)
        return opts

    def waiting(self, call: Call, options: list[dict[str, str]]) -> dict[str, Any]:
        """The prompt, the options with their confirm dialogs, the default."""
        step = call.step
        assert isinstance(step, ChoiceStep)
        waiting: dict[str, Any] = {"kind": "choice", "prompt": step.prompt, "options": options}
        # The confirm dialog of each option shows the destructive steps it leads to, rendered.
        *each, generic = confirm_previews(call.host.runbook, call.target.settings, call.ctx, step.id,
                                          [*(o["value"] for o in options), None], redact=call.host.redact)
        for option, preview in zip(options, each, strict=True):
            if preview:
                option["confirm"] = preview
        if generic:
            waiting["confirm"] = generic
        if step.default is not None:
            waiting["default"] = render_text(step.default, call.ctx)
        return waiting


def _rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of a listing result as dicts: backups, or a query's columns zipped with rows."""
    for key in ("backups", "items"):
        if isinstance(res.get(key), list):
            return [r for r in res[key] if isinstance(r, dict)]
    cols = res.get("columns") or []
    rows = [dict(zip(cols, r, strict=False)) if isinstance(r, list) else r for r in res.get("rows") or []]
    return [r for r in rows if isinstance(r, dict)]
