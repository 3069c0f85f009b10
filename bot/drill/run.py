"""``rollback-bot drill``: the whole runbook against a throwaway local production.

Builds a sandbox (a real SQLite database in WAL mode with the plan's tables, a
pre-deployment backup, a bad deployment to undo, a small app under a process manager),
runs the default runbook with simulated approvers and choices and compressed waits,
shows the checklist in the terminal, and ends with a verdict it checks itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bot.cli.terminal import TerminalView
from bot.core.engine import Engine, Target
from bot.core.lifecycle import Status
from bot.core.runbook import Runbook, default_runbook
from bot.core.targets import TargetSettings, open_transport
from bot.drill.clock import DrillClock
from bot.drill.person import DRILL_APPROVERS, DRILL_NAMES, DRILL_REQUESTER, Commander, DrillError, run_simulated
from bot.drill.record_checks import record_checks
from bot.drill.sandbox import build_sandbox
from bot.drill.verdict import Verdict, check_verdict
from bot.record.metrics import gather, rollback_seconds
from bot.record.records import Records, RecordsConfig
from bot.record.viewmodel import load
from bot.slack.people import fixed_names
from bot.state.store import Store


@dataclass
class DrillResult:
    """What a drill did and found."""

    incident_id: str
    status: Status
    strategy: str
    verdict: Verdict
    #: Start of the run to service restored, as the report and the governance record count it.
    recovery_seconds: float | None
    root: Path
    notes: list[str] = field(default_factory=list)
    #: Where the record is (inside ``root``: removed with it unless the drill keeps it).
    evidence: Path | None = None
    report: Path | None = None
    audit_log: Path | None = None


async def run_drill(
    *,
    strategy: str = "C",
    use_ssh: bool = False,
    keep: bool = False,
    time_scale: float = 0.01,
    runbook: Runbook | None = None,
    out: TextIO | None = None,
    root: Path | None = None,
    reason: str | None = None,
) -> DrillResult:
    """Build the sandbox, run the runbook against it, check the outcome."""
    out = out or sys.stdout
    root = root or Path(tempfile.mkdtemp(prefix="rollback-drill-"))
    runbook = runbook or default_runbook()
    view = TerminalView(out)
    view.note("Building the sandbox production: database with the plan's tables, backups, "
              "a bad deployment, the app under its process manager")
    try:
        sandbox = await asyncio.to_thread(build_sandbox, root / "target")
    except BaseException:
        view.close()
        raise
    view.note(f"Sandbox built in {root} (app under {sandbox.process_manager})")
    stack = contextlib.ExitStack()
    store: Store | None = None
    closers: list[Callable[[], Awaitable[None]]] = []
    transport = None
    try:
        base = sandbox.settings()
        if use_ssh:
            from bot.drill.sshd import start_sshd

            view.note("Starting sshd on 127.0.0.1 with its own host key")
            sshd = await asyncio.to_thread(stack.enter_context, start_sshd(root / "sshd"))
            settings = TargetSettings.model_validate({
                "name": "sandbox", "transport": "ssh", "host": sshd.host, "port": sshd.port,
                "user": sshd.username, "key_file": sshd.client_key_path,
                "known_hosts": sshd.known_hosts_path, **base,
            })
        else:
            settings = TargetSettings.model_validate({"name": "sandbox", "transport": "local", **base})
        transport = open_transport(settings)
        store = await Store.open(str(root / "state.db"))

        async def show(incident_id: str) -> None:
            assert store is not None
            view.show(await load(store, runbook, incident_id), await store.stability_checks(incident_id))

        records = Records.open(RecordsConfig.model_validate(
            {"audit_log": root / "logs" / "governance.jsonl", "evidence_root": root / "evidence",
             "environment": "drill"}))
        engine = Engine(store, runbook, {"sandbox": Target(settings, transport)},
                        artifacts_dir=root / "artifacts", time_scale=time_scale, on_change=show, records=records,
                        names=fixed_names(DRILL_NAMES))
        closers.append(engine.aclose)
        inc = await store.create_incident(
            target="sandbox", runbook=runbook.name, severity="P1", decision="IMMEDIATE",
            inputs={"triggers": ["data_corruption"], "impact": "High", "business_risk": "Critical",
                    "description": "Drill: undo the Phase 3 deployment", "environment": "drill"},
            requester=DRILL_REQUESTER, reason=reason or f"Drill of strategy {strategy}",
        )
        view.note(f"Incident {inc.id} opened; running the runbook")
        clock = await DrillClock.start(engine, root, time_scale=time_scale)
        closers.append(clock.close)
        notes: list[str] = []
        inc = await run_simulated(engine, clock, inc.id, approvers=DRILL_APPROVERS,
                                  answer=Commander(strategy, str(sandbox.backup_path), runbook),
                                  time_scale=time_scale)
        recovery = rollback_seconds(await gather(store, runbook, inc.id))
        notes += await clock.summary(inc.id)
        verdict = await check_verdict(store=store, incident=inc, transport=transport,
                                      settings=settings, sandbox=sandbox, strategy=strategy, runbook=runbook)
        verdict.checks += await record_checks(store=store, incident=inc, transport=transport, settings=settings,
                                              records=records, data_loss_records=verdict.data_loss_records)
        report = (await store.latest_runs(inc.id)).get("report")
        report_path = report.captures.get("report_path") if report is not None else None
        return DrillResult(inc.id, inc.status, strategy, verdict, recovery, root, notes,
                           evidence=records.archive_dir(inc.stamp), audit_log=records.log.path,
                           report=Path(str(report_path)) if report_path else None)
    finally:
        view.close()
        for close in closers:
            await close()
        if transport is not None:
            await transport.close()
        if store is not None:
            await store.close()
        await asyncio.to_thread(sandbox.stop)
        await asyncio.to_thread(stack.close)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def print_result(result: DrillResult, out: TextIO, *, kept: bool) -> None:
    """The closing lines of a drill: verdict, recovery time, data loss, where the record is."""
    v = result.verdict
    out.write("\nVerdict\n")
    for check in v.checks:
        out.write(f"  {'PASS' if check.ok else 'FAIL'}  {check.name}: {check.detail}\n")
    out.write(f"\nIncident {result.incident_id}: {result.status.value}, strategy {result.strategy}\n")
    took = "service not restored" if result.recovery_seconds is None else f"{result.recovery_seconds:.1f} s"
    out.write(f"Recovery time: {took} (start of run to service restored)\n")
    out.write(f"Data loss: {v.data_loss_records} records ({v.data_loss_detail})\n")
    for note in result.notes:
        out.write(note + "\n")
    if kept:
        out.write(f"Evidence archive: {result.evidence or 'not written'}\n")
        out.write(f"Report: {result.report or 'not written'}\n")
        if result.audit_log is not None:
            out.write(f"Audit log: {result.audit_log} (check it: rollback-bot audit verify {result.audit_log})\n")
        out.write(f"Sandbox kept at {result.root}\n")
    else:
        out.write("The sandbox was removed with its evidence archive, report and audit log; "
                  "run the drill with --keep to keep them.\n")
    out.write(f"DRILL {'PASSED' if v.passed and result.status is Status.COMPLETED else 'FAILED'}\n")


def drill_main(args: Any) -> int:
    """Entry point of ``rollback-bot drill``; exit 0 only on a passing verdict."""
    from bot.drill.sshd import SshdUnavailable, sshd_missing

    out = sys.stdout
    missing = sshd_missing() if args.ssh else None
    if missing:
        print(f"rollback-bot drill: --ssh needs OpenSSH's sshd on this machine: {missing}", file=sys.stderr)
        return 3
    runbook = None
    if getattr(args, "runbook", None):
        from bot.core.runbook import RunbookError, load_runbook

        try:
            runbook = load_runbook(args.runbook)
        except RunbookError as exc:
            for problem in exc.problems:
                sys.stderr.write(f"{problem}\n")
            return 2
    try:
        result = asyncio.run(run_drill(strategy=args.strategy, use_ssh=args.ssh, keep=args.keep,
                                       time_scale=args.time_scale, runbook=runbook))
    except DrillError as exc:
        out.write(f"\nDRILL FAILED: {exc}\n")
        return 1
    except SshdUnavailable as exc:
        reason = " ".join(str(exc).split())[:300]
        print(f"rollback-bot drill: --ssh needs OpenSSH's sshd on this machine: {reason}", file=sys.stderr)
        return 3
    print_result(result, out, kept=args.keep)
    return 0 if result.verdict.passed and result.status is Status.COMPLETED else 1
