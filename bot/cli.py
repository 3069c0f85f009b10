"""The ``rollback-bot`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bot.runbook import RunbookError, default_runbook, load_runbook, tree


def _runbook_check(args: argparse.Namespace) -> int:
    try:
        rb = load_runbook(args.file) if args.file else default_runbook()
    except RunbookError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    print(tree(rb))
    print("runbook OK")
    return 0


def _drill(args: argparse.Namespace) -> int:
    from bot.drill.run import drill_main

    return drill_main(args)


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from bot.config import ConfigError, load_settings
    from bot.slack_app import serve

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print("rollback-bot serve: the configuration has problems:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve(settings))


def _audit_verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bot.audit import verify_chain

    try:
        check = verify_chain(Path(args.file))
    except OSError as exc:
        print(f"{args.file}: cannot read ({exc.strerror})", file=sys.stderr)
        return 2
    if check.ok:
        print(f"{args.file}: {check.lines} lines, chain intact; head sha256 {check.head}")
        return 0
    print(f"{args.file}:{check.first_bad}: broken: {check.reason}", file=sys.stderr)
    return 1


def _check(args: argparse.Namespace) -> int:
    from bot.check import check_main

    return check_main(args.config)


def parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="rollback-bot", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("drill", help="run the whole rollback plan against a local sandbox")
    d.add_argument("--strategy", choices=["A", "B", "C"], default="C",
                   help="restoration strategy: A selective, B transaction rollback, C full restore")
    d.add_argument("--runbook", metavar="FILE", help="runbook YAML to drill (default: the shipped plan)")
    d.add_argument("--ssh", action="store_true", help="reach the sandbox through a local sshd")
    d.add_argument("--keep", action="store_true", help="keep the sandbox directory")
    d.add_argument("--time-scale", type=float, default=0.01,
                   help="factor applied to every wait (0.01: a minute takes 0.6 s)")
    d.set_defaults(func=_drill)

    rb = sub.add_parser("runbook", help="runbook tools")
    rbsub = rb.add_subparsers(dest="runbook_command", required=True)
    c = rbsub.add_parser("check", help="validate a runbook and print its phase/step tree")
    c.add_argument("file", nargs="?", help="runbook YAML (default: the shipped plan)")
    c.set_defaults(func=_runbook_check)

    s = sub.add_parser("serve", help="run the Slack bot")
    s.add_argument("--config", help="config file (default: $ROLLBACK_BOT_CONFIG)")
    s.set_defaults(func=_serve)

    k = sub.add_parser("check", help="validate config and runbook, try SSH to each target and the Slack token")
    k.add_argument("--config", help="config file (default: $ROLLBACK_BOT_CONFIG)")
    k.set_defaults(func=_check)

    from bot.plan_cli import register as register_plan
    from bot.rehearsal_cli import register as register_rehearse

    register_plan(sub)
    register_rehearse(sub)

    au = sub.add_parser("audit", help="audit log tools")
    ausub = au.add_subparsers(dest="audit_command", required=True)
    v = ausub.add_parser("verify", help="check the hash chain of an audit log; names the first broken line")
    v.add_argument("file", help="the audit log (JSONL), e.g. logs/governance.jsonl")
    v.set_defaults(func=_audit_verify)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
