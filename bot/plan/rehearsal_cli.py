"""``rollback-bot rehearse``: the whole plan against a staging target marked for it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from bot.plan.cli import PlanInputError, add_plan_arguments, load_inputs
from bot.plan.rehearsal import RehearsalRefused, RehearsalResult, rehearse, result_lines
from bot.plan.rehearsal_watch import rehearse_in_channel
from bot.state.store import Store


def result_json(result: RehearsalResult) -> dict[str, Any]:
    """A rehearsal's result as JSON (what the scheduled job reports)."""
    return {"target": result.target, "incident_id": result.incident_id, "status": result.status.value,
            "strategy": result.strategy, "passed": result.passed, "backup": result.backup, "root": str(result.root),
            "recovery_seconds": round(result.recovery_seconds, 2), "runbook_sha256": result.runbook_sha256,
            "data_loss_records": result.verdict.data_loss_records,
            "data_loss_detail": result.verdict.data_loss_detail,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in result.verdict.checks]}


async def _run(args: argparse.Namespace, out: TextIO) -> RehearsalResult:
    inputs = load_inputs(args.config, args.target, args.runbook)
    state_db = inputs.config.state_db
    if "://" not in state_db and not Path(state_db).parent.is_dir():
        raise PlanInputError(f"state_db: folder {Path(state_db).parent} does not exist (rehearsals are stored there)")
    state = await Store.open(state_db)
    try:
        if args.channel:
            return await rehearse_in_channel(config=inputs.config, config_path=args.config, target=inputs.target.name,
                                             runbook=inputs.runbook, channel=args.channel, state=state,
                                             out=out if not args.json else None)
        return await rehearse(config=inputs.config, target=inputs.target.name, runbook=inputs.runbook,
                              strategy=args.strategy or "C", backup=args.backup, time_scale=args.time_scale or 0.01,
                              out=out if not args.json else None, state=state)
    finally:
        await state.close()


def _usage_problem(args: argparse.Namespace) -> str:
    if args.time_scale is not None and not 0 < args.time_scale <= 1:
        return f"--time-scale must be > 0 and <= 1, not {args.time_scale}"
    if args.channel:
        given = [o for o, v in (("--strategy", args.strategy), ("--backup", args.backup),
                                ("--time-scale", args.time_scale)) if v is not None]
        if given:
            return (f"{', '.join(given)}: not with --channel (the people in the channel choose, and the waits "
                    "are the serving bot's)")
    return ""


def rehearse_main(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Entry point: 0 when the rehearsal passed, 1 when it failed, 2 when refused."""
    out, err = out or sys.stdout, err or sys.stderr
    problem = _usage_problem(args)
    if problem:
        print(f"rollback-bot rehearse: {problem}", file=err)
        return 2
    try:
        result = asyncio.run(_run(args, out))
    except (PlanInputError, RehearsalRefused) as exc:
        print(f"rollback-bot rehearse: {exc}", file=err)
        return 2
    except KeyboardInterrupt:
        print("rollback-bot rehearse: interrupted; a rehearsal still running goes on in the serving bot "
              "(`rollback-bot incidents` lists it)", file=err)
        return 130
    if args.json:
        out.write(json.dumps(result_json(result)) + "\n")
    else:
        out.write("\n" + "\n".join(result_lines(result)) + "\n")
    return 0 if result.passed else 1


def register(sub: Any) -> None:
    """Add ``rehearse`` to the CLI's subcommands."""
    p = sub.add_parser("rehearse", help="run the whole plan against a staging target marked 'rehearsal: allowed', "
                       "with simulated people, or with real ones in a Slack channel (--channel)")
    add_plan_arguments(p)
    p.add_argument("--backup", help="backup to restore (path or file name; default: the newest listed)")
    p.add_argument("--time-scale", type=float,
                   help="factor applied to every wait (default 0.01: a minute takes 0.6 s)")
    p.add_argument("--channel", metavar="ID",
                   help="rehearse as an incident in this configured channel: the role holders approve and choose "
                        "there through the serving bot (rollback-bot serve); Ctrl-C aborts it")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    p.set_defaults(func=rehearse_main)
