"""``rollback-bot plan``: the runbook for one target, rendered as it would run, and its hash.

Nothing touches the target unless ``--probe`` is given; then only read-only listings run
(the backups a choice would offer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from actions.errors import ActionError
from actions.sqlite import sqlite_op
from bot.core.config import BotConfig, ConfigError, load_settings
from bot.core.decision import BUSINESS_RISKS, IMPACTS, SEVERITIES, decide
from bot.core.redaction import SECRET_ENV, Redactor, env_secrets
from bot.core.runbook import ChoiceStep, Runbook, RunbookError, default_runbook, load_runbook
from bot.core.targets import TargetSettings, open_transport
from bot.core.templating import render_value
from bot.plan.render import Pending, Plan, build_plan, plan_context
from bot.plan.text import markdown


class PlanInputError(ValueError):
    """The command line, config, target or runbook cannot give a plan; the message says why."""


@dataclass
class PlanInputs:
    """What a plan is rendered from: config, target, runbook."""

    config: BotConfig
    target: TargetSettings
    runbook: Runbook

    def redactor(self) -> Redactor:
        """Hides the config's secret patterns and the bot's own secrets."""
        names = [*SECRET_ENV, *(t.github_token_env for t in self.config.targets)]
        return Redactor(self.config.redact, env_secrets(names))


def load_inputs(config: str | None, target: str, runbook: str | None = None) -> PlanInputs:
    """Config file, the named target and the runbook (``runbook`` overrides the config's)."""
    try:
        cfg = load_settings(config, require_secrets=False).config
    except ConfigError as exc:
        raise PlanInputError("; ".join(exc.problems)) from None
    settings = cfg.target(target)
    if settings is None:
        names = ", ".join(t.name for t in cfg.targets)
        raise PlanInputError(f"--target: no target {target[:64]!r} in the config (targets: {names})")
    try:
        if runbook:
            rb = load_runbook(runbook)
        else:
            rb = load_runbook(cfg.runbook) if cfg.runbook else default_runbook()
    except RunbookError as exc:
        raise PlanInputError("runbook: " + "; ".join(exc.problems)) from None
    return PlanInputs(cfg, settings, rb)


def parse_choices(runbook: Runbook, pairs: list[str], strategy: str | None) -> dict[str, str]:
    """``ID=VALUE`` pairs (and ``--strategy``) checked against the runbook's choice steps."""
    out: dict[str, str] = {}
    choices = {s.id: s for _, s in runbook.steps() if isinstance(s, ChoiceStep)}
    items = [p.split("=", 1) if "=" in p else [p, ""] for p in pairs]
    if strategy is not None:
        items.insert(0, ["strategy", strategy])
    for key, value in items:
        step = choices.get(key)
        if step is None:
            raise PlanInputError(f"--choice {key[:40]!r}: the runbook has no choice step with this id "
                                 f"(choices: {', '.join(choices) or 'none'})")
        if not value:
            raise PlanInputError(f"--choice {key}: give a value, e.g. {key}=VALUE")
        allowed = [o.value for o in step.options]
        # strategy_support only annotates the static options (the target's reasons); others list new ones.
        listed = step.options_from is not None and step.options_from.op != "strategy_support"
        if not listed and value not in allowed:
            raise PlanInputError(f"--choice {key}: {value[:40]!r} is not one of {', '.join(allowed)}")
        out[key] = value
    return out


def incident_values(severity: str | None, impact: str | None, business_risk: str | None) -> dict[str, str]:
    """What the incident's decision would be for these inputs (the least urgent for those not given)."""
    if severity is None:
        return {}
    result = decide(severity=severity, impact=impact or IMPACTS[-1], business_risk=business_risk or BUSINESS_RISKS[-1])
    return {"severity": severity, "decision": result.decision.label}


async def probe_options(inputs: PlanInputs, ctx: dict[str, Any]) -> tuple[dict[str, list[dict[str, str]]], list[str]]:
    """Read-only listings of the options each choice would offer; (options by step, problems)."""
    listed: dict[str, list[dict[str, str]]] = {}
    problems: list[str] = []
    target = inputs.target
    transport = open_transport(target)
    try:
        for _, step in inputs.runbook.steps():
            src = step.options_from if isinstance(step, ChoiceStep) else None
            if src is None or src.op == "github_releases" or src.params.get("write"):
                continue
            params = render_value(src.params, ctx)
            if _has_pending(params):
                problems.append(f"{step.id}: options depend on values known only during the run; not listed")
                continue
            try:
                res = await sqlite_op(transport, src.op, params, timeout=step.timeout, python=target.python,
                                      cwd=target.workdir)
            except ActionError as exc:
                problems.append(f"{step.id}: cannot list options: {exc}")
                continue
            rows = res.get("backups") or [dict(zip(res.get("columns") or [], r, strict=False))
                                          for r in res.get("rows") or []]
            listed[step.id] = [{"value": str(r.get(src.value, "")), "label": str(r.get(src.label, "")),
                                "description": " · ".join(f"{k} {r[k]}" for k in ("bytes", "mtime_iso") if k in r)}
                               for r in rows if isinstance(r, Mapping)]
    finally:
        await transport.close()
    return listed, problems


def _has_pending(value: Any) -> bool:
    if isinstance(value, Pending):
        return True
    if isinstance(value, dict):
        return any(_has_pending(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_pending(v) for v in value)
    return False


def make_plan(args: argparse.Namespace, err: TextIO) -> Plan:
    """The plan the command line asks for."""
    inputs = load_inputs(args.config, args.target, getattr(args, "runbook", None))
    choices = parse_choices(inputs.runbook, args.choice or [], args.strategy)
    ctx = plan_context(inputs.target, incident=incident_values(args.severity, args.impact, args.business_risk),
                       choices=choices)
    options: dict[str, list[dict[str, str]]] = {}
    if args.probe:
        options, problems = asyncio.run(probe_options(inputs, ctx))
        for p in problems:
            print(f"probe: {p}", file=err)
    return build_plan(inputs.runbook, inputs.target, runbook_text=inputs.runbook.source_text, ctx=ctx,
                      policies={"default": inputs.config.policy.policy()}, options=options,
                      redact=inputs.redactor())


def plan_main(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Entry point of ``rollback-bot plan``; 0 with the plan printed, 2 on bad input."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        plan = make_plan(args, err)
    except PlanInputError as exc:
        print(f"rollback-bot plan: {exc}", file=err)
        return 2
    if args.json:
        out.write(json.dumps(plan.as_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        out.write(markdown(plan))
        out.write(f"\nplan hash: {plan.hash}\n")
    return 0


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``plan`` shares with the commands built on it."""
    p.add_argument("--config", help="config file (default: $ROLLBACK_BOT_CONFIG)")
    p.add_argument("--target", required=True, help="the target's name in the config")
    p.add_argument("--runbook", help="runbook YAML (default: the config's, else the shipped plan)")
    p.add_argument("--strategy", choices=["A", "B", "C"], help="restoration strategy: A selective, "
                   "B transaction rollback, C full restore (default: every branch shown)")


def register(sub: Any) -> None:
    """Add ``plan`` to the CLI's subcommands."""
    p = sub.add_parser("plan", help="render every step of the runbook for a target as it would run, with its hash")
    add_plan_arguments(p)
    p.add_argument("--severity", choices=SEVERITIES, help="severity the incident would have (decides P3's window)")
    p.add_argument("--impact", choices=IMPACTS, help="impact (default: the least urgent)")
    p.add_argument("--business-risk", choices=BUSINESS_RISKS, help="business risk (default: the least urgent)")
    p.add_argument("--choice", action="append", metavar="ID=VALUE", help="a choice made in advance (repeatable)")
    p.add_argument("--json", action="store_true", help="JSON instead of Markdown")
    p.add_argument("--probe", action="store_true", help="read from the target (list backups); changes nothing")
    p.set_defaults(func=plan_main)
