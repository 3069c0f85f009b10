"""The ``rollback-bot`` command line.

Known errors end in one line naming what is wrong and an exit status: 0 success, 1 a check
or verdict failed (or a token was refused), 2 bad usage or configuration, 3 a tool the command
needs is missing.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from bot.core.runbook import RunbookError, default_runbook, load_runbook, tree

if TYPE_CHECKING:
    from bot.core.config import Settings

#: What runs the bot in Slack once its settings are loaded; returns the exit status.
ServeFn = Callable[["Settings"], Coroutine[Any, Any, int]]

DESCRIPTION = ("Turn a written database rollback plan into an approval-gated, audited incident: "
               "in Slack (serve), or rehearsed against a throwaway local production (drill).")
EXIT_CODES = textwrap.fill("exit status: 0 success, 1 a check or verdict failed or a token was refused, "
                           "2 bad usage or configuration, 3 a tool the command needs is missing", 78)
CONFIG_ENV_HELP = """\
environment:
  ROLLBACK_BOT_CONFIG     the config file when --config is not given
  ROLLBACK_BOT_STATE_DIR  folder of state, jobs, artifacts, audit log and evidence (relative paths)"""
SLACK_ENV_HELP = """\
  SLACK_BOT_TOKEN         the bot token (xoxb-…), always
  SLACK_APP_TOKEN         app-level token (xapp-…): Socket Mode when set
  SLACK_SIGNING_SECRET    HTTP mode: verifies every request
  SLACK_API_URL           another Web API base (GovSlack, a test server)"""
RUN_ENV_HELP = """\
  ROLLBACK_STAKEHOLDER_WEBHOOK  URL the notify steps post to (skipped when unset)
  GITHUB_TOKEN            GitHub token of the app rollback (the target's github_token_env)"""
DRILL_ENV_HELP = """\
environment:
  ROLLBACK_BOT_SSHD       the sshd binary for --ssh (default /usr/sbin/sshd)
  ROLLBACK_BOT_PM2        pm2 binary or its install folder (default: pm2 on the PATH, else a minimal manager)"""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each option's help; epilogs (environment, exit status) kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default:" in (action.help or ""):
            return action.help  # a flag, or a default the help already names
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Every (sub)command shows its defaults and keeps its epilog's layout; descriptions are wrapped."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        if isinstance(kwargs.get("description"), str):
            kwargs["description"] = textwrap.fill(str(kwargs["description"]), 78)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rollback-bot")
    except PackageNotFoundError:
        return "unknown"


def time_scale(text: str) -> float:
    """``--time-scale``: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]: 1 is real time, 0.01 makes a minute 0.6 s")
    return value


def _runbook_check(args: argparse.Namespace) -> int:
    try:
        rb = load_runbook(args.file) if args.file else default_runbook()
    except RunbookError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"rollback-bot runbook check: {args.file}: cannot read ({exc.strerror})", file=sys.stderr)
        return 2
    print(tree(rb))
    print("runbook OK")
    return 0


def _drill(args: argparse.Namespace) -> int:
    from bot.drill.run import drill_main

    return drill_main(args)


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from bot.core.config import ConfigError, load_settings
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print("rollback-bot serve: the configuration has problems:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.serve is None:
        print("rollback-bot serve: start the bot with the installed `rollback-bot` command "
              "(or python -m handlers.app)", file=sys.stderr)
        return 2
    return int(asyncio.run(args.serve(settings)))


def _health(args: argparse.Namespace) -> int:
    from bot.cli.health import health_main

    return health_main(url=args.url, config=args.config, timeout=args.timeout)


def _audit_verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bot.record.audit import verify_chain

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
    from bot.cli.check import check_main

    return check_main(args.config)


def parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = _Parser(prog="rollback-bot", description=DESCRIPTION, epilog=EXIT_CODES)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("drill", help="run the whole rollback plan against a throwaway local production",
                       description="Build a sandbox production (SQLite database, backups, a bad deployment, an "
                       "app under a process manager), run the default runbook against it with simulated approvers "
                       "and compressed waits, and check the outcome.", epilog=f"{DRILL_ENV_HELP}\n\n{EXIT_CODES}")
    d.add_argument("--strategy", choices=["A", "B", "C"], default="C",
                   help="restoration strategy: A selective, B transaction rollback, C full restore")
    d.add_argument("--runbook", metavar="FILE", help="runbook YAML to drill (default: the shipped plan)")
    d.add_argument("--ssh", action="store_true", help="reach the sandbox through a local OpenSSH sshd")
    d.add_argument("--keep", action="store_true", help="keep the sandbox directory and print its path")
    d.add_argument("--time-scale", type=time_scale, default=0.01, metavar="F",
                   help="factor in (0, 1] applied to every wait (0.01: a minute takes 0.6 s)")
    d.set_defaults(func=_drill)

    rb = sub.add_parser("runbook", help="runbook tools", description="Runbook tools.")
    rbsub = rb.add_subparsers(dest="runbook_command", required=True, metavar="COMMAND", parser_class=_Parser)
    c = rbsub.add_parser("check", help="validate a runbook and print its phase/step tree",
                         description="Validate a runbook; a problem is printed as file:line: reason.",
                         epilog=EXIT_CODES)
    c.add_argument("file", nargs="?", help="runbook YAML (default: the shipped plan)")
    c.set_defaults(func=_runbook_check)

    s = sub.add_parser("serve", help="run the Slack bot (Socket Mode or HTTP mode)",
                       description="Run the Slack bot: Socket Mode when SLACK_APP_TOKEN is set, HTTP mode "
                       "(/slack/events) otherwise; GET /healthz in both. Paths and tokens are checked first; "
                       "SIGTERM or SIGINT stops it within seconds (a running step resumes at the next start).",
                       epilog=f"{CONFIG_ENV_HELP}\n{SLACK_ENV_HELP}\n{RUN_ENV_HELP}\n\n{EXIT_CODES}")
    s.add_argument("--config", help="config file (default: $ROLLBACK_BOT_CONFIG)")
    s.set_defaults(func=_serve)

    k = sub.add_parser("check", help="check config, paths, each target's preflight and the Slack side",
                       description="Check everything before the first incident: the config and every path "
                       "setting, each target's preflight (what the default runbook checks first), and Slack "
                       "(tokens, granted scopes against the manifest's, the bot in each channel, user groups).",
                       epilog=f"{CONFIG_ENV_HELP}\n{SLACK_ENV_HELP}\n\n{EXIT_CODES}")
    k.add_argument("--config", help="config file (default: $ROLLBACK_BOT_CONFIG)")
    k.set_defaults(func=_check)

    from bot.plan.cli import register as register_plan
    from bot.plan.rehearsal_cli import register as register_rehearse

    register_plan(sub)
    register_rehearse(sub)

    h = sub.add_parser("health", help="probe a running bot's /healthz (container health checks)",
                       description="GET /healthz of a running bot: exit 0 when it answers ok, 1 otherwise. "
                       "Without --url the port comes from the config: slack.health_port in Socket Mode "
                       "(SLACK_APP_TOKEN set), slack.http_port in HTTP mode.",
                       epilog=f"{CONFIG_ENV_HELP}\n  SLACK_APP_TOKEN         set: Socket Mode's port\n\n{EXIT_CODES}")
    h.add_argument("--url", help="the health URL (default: http://127.0.0.1:PORT/healthz from the config)")
    h.add_argument("--config", help="config file (default: $ROLLBACK_BOT_CONFIG)")
    h.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    h.set_defaults(func=_health)

    au = sub.add_parser("audit", help="audit log tools", description="Audit log tools.")
    ausub = au.add_subparsers(dest="audit_command", required=True, metavar="COMMAND", parser_class=_Parser)
    v = ausub.add_parser("verify", help="check the hash chain of an audit log; names the first broken line",
                         description="Check the hash chain of an audit log; names the first broken line.",
                         epilog=EXIT_CODES)
    v.add_argument("file", help="the audit log (JSONL), e.g. logs/governance.jsonl")
    v.set_defaults(func=_audit_verify)

    from bot.cli.control import register as register_control

    register_control(sub)
    return p


def main(argv: Sequence[str] | None = None, *, serve: ServeFn | None = None) -> int:
    """Run the command line; returns the exit status. ``serve`` runs the Slack app (``handlers.app``
    hands it in: bot never imports the layer above it)."""
    args = parser().parse_args(argv)
    args.serve = serve
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("rollback-bot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
