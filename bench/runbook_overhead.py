"""Benchmark: what the engine costs over a plain script, for the whole incident.

Each repetition runs the default runbook twice, each time on a fresh, identical drill
sandbox (same root, port, seed and clock) reached through a real local sshd:

1. **engine**: ``bot.core.engine.Engine`` wired as ``rollback-bot drill`` wires it (store,
   records, in-process scheduler) with the drill's simulated people (approvals and
   choices answered at once, waits compressed by ``--time-scale``), over ``SSHTransport``
   (persistent shells on one connection), checked with the drill's verdict;
2. **one script**: the same commands, rendered with the engine's own context and
   templating (``render_shell`` for command steps, ``actions.sqlite.build_command`` for
   sqlite steps and option listings, ``curl`` for http steps, ``sleep`` for waits), piped
   as ONE script to ``ssh host bash -s`` with the system OpenSSH client, checked too.

The headline is the whole run: the incident's wall time through the engine (approvals,
choices, journal, audit log, view) against the script's, and the difference per machine
step (the bookkeeping). The machine steps alone (their durations in the store against the
script's time for them) are a detail. Steps with no one-script form (scheduled stability
series, notifications, governance record, evidence archive, report) are left out of both
and their engine time is printed apart. Every sqlite op pays python3's start-up on the
target in both variants, and both run the agent installed in the target's cache. With
``--strategy all`` (the default) the repetitions take strategies A, B and C in turn.
Only loopback traffic.

    python bench/runbook_overhead.py                  # A, B, C: 3 repetitions
    python bench/runbook_overhead.py --strategy C --repeat 5 --steps
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import secrets
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import load, real_python3

from actions.sqlite import OPS, build_command
from bot.core.engine import Engine, Target
from bot.core.lifecycle import Status, StepStatus
from bot.core.runbook import (
    ApprovalStep,
    ChoiceStep,
    CommandStep,
    HttpStep,
    ManualStep,
    Runbook,
    SqliteStep,
    StepBase,
    WaitStep,
    default_runbook,
)
from bot.core.targets import TargetSettings, open_transport
from bot.core.templating import render_shell, render_text, render_value
from bot.drill.clock import DrillClock
from bot.drill.person import DRILL_APPROVERS, DRILL_REQUESTER, Commander, run_simulated
from bot.drill.sandbox import ProcessManager, Sandbox, build_sandbox, free_port
from bot.drill.sshd import SshdTarget, SshdUnavailable, start_sshd
from bot.drill.verdict import check_verdict, differing_rows, expected_levels
from bot.record.records import Records, RecordsConfig
from bot.state.store import StepRun, Store

#: The whole incident against the one script, and the engine's bookkeeping a machine step.
RATIO_TARGET = 1.10
PER_STEP_TARGET_MS = 15.0
#: Step kinds compared with the one script; others (stability series, maintenance windows,
#: governance record, evidence archive, report, notifications, GitHub) are timed apart.
MACHINE_KINDS = (CommandStep, HttpStep, SqliteStep, WaitStep)
#: Option listings a one-script run can do too (the sqlite agent's ops).
SQLITE_LISTINGS = frozenset(OPS)


class BenchError(RuntimeError):
    """A run did not complete as it should; its figures would mean nothing."""


@dataclass(frozen=True)
class Action:
    """One command of the one-script variant."""

    step_id: str
    kind: str  # command | http | sqlite | wait | options
    text: str
    stdin: str | None = None
    expect: tuple[int, ...] = (0,)

    @property
    def is_step(self) -> bool:
        """True for a machine step (an option listing belongs to a choice step)."""
        return self.kind != "options"


@dataclass
class EngineRun:
    """What one engine run measured, and what the script variant needs to replay it."""

    wall: float
    step_durations: dict[str, float]
    context: dict[str, Any]
    executed: list[tuple[str, str]]  # (step id, "step" | "options") in execution order
    verdict_failures: list[str]
    #: Steps with no one-script form (scheduled series, bot-side records): kind, wall seconds.
    excluded: dict[str, tuple[str, float]] = field(default_factory=dict)

    @property
    def compared_wall(self) -> float:
        """The whole run's wall time without the excluded steps."""
        return self.wall - sum(seconds for _, seconds in self.excluded.values())


@dataclass
class ScriptRun:
    """What one one-script run measured."""

    wall: float
    options_seconds: float
    step_seconds: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


@dataclass
class Repetition:
    """One engine run and one script run on identical sandboxes."""

    engine: EngineRun
    script: ScriptRun

    @property
    def steps(self) -> int:
        """Number of machine steps the engine ran."""
        return len(self.engine.step_durations)


# ----------------------------------------------------------------------------- sandbox


@dataclass(frozen=True)
class SandboxSpec:
    """Everything that makes two sandboxes identical."""

    root: Path
    port: int
    now: datetime
    rows: int
    process_manager: ProcessManager
    python: str  # the target's python3 for sqlite ops (both variants)


@contextlib.contextmanager
def sandbox_at(spec: SandboxSpec) -> Iterator[Sandbox]:
    """A fresh sandbox at ``spec.root``; stopped and removed afterwards."""
    shutil.rmtree(spec.root, ignore_errors=True)
    sandbox = build_sandbox(spec.root, port=spec.port, now=spec.now, rows=spec.rows,
                            process_manager=spec.process_manager)
    try:
        yield sandbox
    finally:
        sandbox.stop()
        shutil.rmtree(spec.root, ignore_errors=True)


def target_settings(sandbox: Sandbox, sshd: SshdTarget, python: str) -> TargetSettings:
    """The sandbox as an SSH target behind the local sshd, its sqlite ops run by ``python``."""
    return TargetSettings.model_validate({
        "name": "sandbox", "transport": "ssh", "host": sshd.host, "port": sshd.port,
        "user": sshd.username, "key_file": sshd.client_key_path,
        "known_hosts": sshd.known_hosts_path, **sandbox.settings(), "python": python,
    })


# ----------------------------------------------------------------------------- engine


def _span(run: StepRun) -> float:
    if run.started_at is not None and run.ended_at is not None:
        return (run.ended_at - run.started_at).total_seconds()
    return run.duration or 0.0


def _executed(runbook: Runbook, runs: list[StepRun]) -> tuple[
        dict[str, float], list[tuple[str, str]], dict[str, tuple[str, float]]]:
    """Compared machine-step durations, the remote actions in the engine's order, and the
    steps left out of the comparison (kind and wall seconds)."""
    steps = {step.id: step for _, step in runbook.steps()}
    durations: dict[str, float] = {}
    order: list[tuple[str, str]] = []
    excluded: dict[str, tuple[str, float]] = {}
    for run in runs:
        step = steps[run.step_id]
        if run.status is StepStatus.SKIPPED:
            continue
        if isinstance(step, MACHINE_KINDS):
            if run.duration is None or run.status not in (StepStatus.DONE, StepStatus.FAILED):
                continue
            if run.step_id in durations:
                raise BenchError(f"step {run.step_id} ran more than once; figures would not compare")
            durations[run.step_id] = run.duration
            order.append((run.step_id, "step"))
        elif isinstance(step, ChoiceStep):
            if step.options_from is not None:
                if step.options_from.op not in SQLITE_LISTINGS:
                    raise BenchError(f"choice {step.id} lists options with {step.options_from.op}: "
                                     "no one-script form")
                order.append((run.step_id, "options"))
        elif not isinstance(step, ApprovalStep | ManualStep):
            kind = str(getattr(step, "kind", type(step).__name__))
            _, before = excluded.get(run.step_id, (kind, 0.0))
            excluded[run.step_id] = (kind, before + _span(run))
    return durations, order, excluded


async def _drive_engine(sandbox: Sandbox, sshd: SshdTarget, python: str, runbook: Runbook, strategy: str,
                        time_scale: float, timeout: float, work: Path) -> EngineRun:
    """Run the incident as ``bot.drill.run.run_drill`` does (records, in-process scheduler)."""
    settings = target_settings(sandbox, sshd, python)
    transport = open_transport(settings)
    store = await Store.open(str(work / "state.db"))
    clock: DrillClock | None = None
    engine: Engine | None = None
    try:
        records = Records.open(RecordsConfig.model_validate(
            {"audit_log": work / "logs" / "governance.jsonl", "evidence_root": work / "evidence"}))
        engine = Engine(store, runbook, {"sandbox": Target(settings, transport)},
                        artifacts_dir=work / "artifacts", time_scale=time_scale, records=records)
        inc = await store.create_incident(
            target="sandbox", runbook=runbook.name, severity="P1", decision="IMMEDIATE",
            inputs={"triggers": ["data_corruption"], "impact": "High",
                    "business_risk": "Critical", "description": "Benchmark"},
            requester=DRILL_REQUESTER, reason=f"Benchmark of strategy {strategy}",
        )
        clock = await DrillClock.start(engine, work, time_scale=time_scale, out=io.StringIO())

        person = Commander(strategy, str(sandbox.backup_path))
        started = time.perf_counter()
        ended = await asyncio.wait_for(run_simulated(engine, clock, inc.id, approvers=DRILL_APPROVERS,
                                                     answer=person, time_scale=time_scale), timeout)
        wall = time.perf_counter() - started
        if ended.status is not Status.COMPLETED:
            raise BenchError(f"engine run ended {ended.status.value}")
        final = await store.incident(inc.id)
        verdict = await check_verdict(store=store, incident=final, transport=transport,
                                      settings=settings, sandbox=sandbox, strategy=strategy, runbook=runbook)
        durations, order, excluded = _executed(runbook, await store.step_runs(inc.id))
        context = await engine.context(inc.id)
    finally:
        if clock is not None:
            await clock.close()
        if engine is not None:
            await engine.aclose()
        await transport.close()
        await store.close()
    failures = [f"{c.name}: {c.detail}" for c in verdict.checks if not c.ok]
    return EngineRun(wall, durations, context, order, failures, excluded)


def run_engine(spec: SandboxSpec, sshd: SshdTarget, runbook: Runbook, strategy: str,
               time_scale: float, timeout: float, work: Path) -> EngineRun:
    """The runbook through the engine on a fresh sandbox (verified as the drill does)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        with sandbox_at(spec) as sandbox:
            return asyncio.run(_drive_engine(sandbox, sshd, spec.python, runbook, strategy, time_scale,
                                             timeout, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------- one script


def _curl(step: HttpStep, ctx: dict[str, Any]) -> str:
    argv = ["curl", "-sS", "--max-time", f"{step.timeout:g}", "-X", step.method]
    for name, value in step.headers.items():
        argv += ["-H", f"{name}: {render_text(value, ctx)}"]
    if step.json_body is not None:
        body = json.dumps(render_value(step.json_body, ctx))
        argv += ["-H", "Content-Type: application/json", "--data-binary", body]
    argv += ["-w", "\\n%{http_code}\\n", render_text(step.url, ctx)]
    return shlex.join(argv)


def render_actions(runbook: Runbook, run: EngineRun, settings: TargetSettings,
                   time_scale: float) -> list[Action]:
    """The engine's remote actions, rendered as the engine rendered them, for ``settings``."""
    ctx = dict(run.context)
    ctx["target"] = settings.template_values()
    steps = {step.id: step for _, step in runbook.steps()}
    actions: list[Action] = []
    for step_id, what in run.executed:
        step: StepBase = steps[step_id]
        if what == "options":
            assert isinstance(step, ChoiceStep) and step.options_from is not None
            params = render_value(step.options_from.params, ctx)
            command, stdin = build_command(step.options_from.op, params, python=settings.python, agent_dir="")
            actions.append(Action(step_id, "options", command, stdin))
        elif isinstance(step, CommandStep):
            actions.append(Action(step_id, "command", render_shell(step.run, ctx),
                                  expect=tuple(step.expect_exit)))
        elif isinstance(step, SqliteStep):
            params = render_value(step.params, ctx)
            params["db"] = render_text(step.db, ctx)
            command, stdin = build_command(step.op, params, python=settings.python, agent_dir="")
            actions.append(Action(step_id, "sqlite", command, stdin))
        elif isinstance(step, HttpStep):
            actions.append(Action(step_id, "http", _curl(step, ctx), expect=tuple(step.expect_status)))
        elif isinstance(step, WaitStep):
            seconds = step.seconds * time_scale
            actions.append(Action(step_id, "wait", f"sleep {seconds:.3f}"))
        else:
            raise BenchError(f"step {step_id}: {type(step).__name__} has no script form")
    return actions


def build_script(actions: list[Action], workdir: str, marker: str) -> str:
    """One bash script: each action in a subshell, followed by a timing line on stdout."""
    lines = ["cd -- " + shlex.quote(workdir) + " || exit 97"]
    for a in actions:
        body = a.text if a.text.endswith("\n") else a.text + "\n"
        if a.stdin is None:
            run = f"(\n{body}) </dev/null"
        else:
            delim = "__STDIN_" + secrets.token_hex(8)
            run = f"(\n{body}) <<'{delim}'\n{a.stdin}{'' if a.stdin.endswith(chr(10)) else chr(10)}{delim}"
        lines += [
            "__t0=$EPOCHREALTIME",
            run,
            f"__rc=$?; printf '\\n{marker} %s %s %s %s\\n' {shlex.quote(a.step_id)} "
            '"$__rc" "$__t0" "$EPOCHREALTIME"',
        ]
    return "\n".join(lines) + "\n"


def _seconds(stamp: str) -> float:
    return float(stamp.replace(",", "."))


def _check_output(action: Action, rc: int, output: str) -> str | None:
    """Why the action did not do what the engine's step did, or None."""
    if action.kind == "http":
        last = output.strip().splitlines()[-1:] or ["?"]
        if rc != 0 or not last[0].isdigit() or int(last[0]) not in action.expect:
            return f"{action.step_id}: curl exit {rc}, status {last[0]}"
        return None
    if rc not in action.expect:
        return f"{action.step_id}: exit status {rc}"
    if action.kind in ("sqlite", "options"):
        docs = [ln for ln in output.splitlines() if ln.startswith('{"ok": ')]
        if not docs or not json.loads(docs[-1]).get("ok"):
            return f"{action.step_id}: agent answered {docs[-1][:200] if docs else 'nothing'}"
    return None


def run_ssh_script(sshd: SshdTarget, script: str, marker: str, actions: list[Action],
                   timeout: float) -> ScriptRun:
    """Pipe ``script`` to ``ssh host bash -s``; time it and check each action's outcome."""
    argv = [
        "ssh", "-F", "/dev/null", "-i", str(sshd.client_key_path),
        "-o", f"UserKnownHostsFile={sshd.known_hosts_path}", "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-p", str(sshd.port),
        f"{sshd.username}@{sshd.host}", "bash -s",
    ]
    started = time.perf_counter()
    proc = subprocess.run(argv, input=script.encode(), capture_output=True, timeout=timeout, check=False)
    wall = time.perf_counter() - started
    result = ScriptRun(wall=wall, options_seconds=0.0)
    if proc.returncode != 0:
        result.failures.append(f"ssh exit {proc.returncode}: {proc.stderr.decode()[-500:]!r}")
    pending = iter(actions)
    reported = 0
    output: list[str] = []
    for line in proc.stdout.decode("utf-8", "replace").split("\n"):
        if not line.startswith(marker + " "):
            output.append(line)
            continue
        step_id, rc, t0, t1 = line.split()[1:5]
        action = next(pending, None)
        if action is None or action.step_id != step_id:
            result.failures.append(f"script reported {step_id} out of order")
            break
        reported += 1
        seconds = _seconds(t1) - _seconds(t0)
        if action.is_step:
            result.step_seconds[step_id] = seconds
        else:
            result.options_seconds += seconds
        problem = _check_output(action, int(rc), "\n".join(output))
        if problem:
            result.failures.append(problem)
        output = []
    if reported != len(actions):
        result.failures.append(f"{reported} of {len(actions)} actions reported")
    return result


def check_script_outcome(sandbox: Sandbox, strategy: str) -> list[str]:
    """The drill verdict's database checks, done here on the sandbox after the script."""
    problems: list[str] = []
    differing = differing_rows(strategy, sandbox, sandbox.db_path)
    if differing:
        problems.append(f"database differs from what strategy {strategy} must leave: {differing}")
    conn = sqlite3.connect(f"file:{sandbox.db_path}?mode=ro", uri=True)
    try:
        levels = {str(k): v for k, v in conn.execute("SELECT user_id, access_level FROM user_permissions")}
    finally:
        conn.close()
    wrong = sorted(k for k, v in expected_levels(strategy, sandbox).items() if levels.get(k) != v)
    if wrong:
        problems.append(f"access levels differ for {wrong}")
    if "MAINTENANCE_MODE" in sandbox.env_path.read_text():
        problems.append("maintenance mode still on")
    return problems


def run_script_variant(spec: SandboxSpec, sshd: SshdTarget, runbook: Runbook, engine_run: EngineRun,
                       strategy: str, time_scale: float, timeout: float) -> tuple[ScriptRun, list[Action]]:
    """The same commands as one ``ssh host bash -s`` script on a fresh identical sandbox."""
    with sandbox_at(spec) as sandbox:
        settings = target_settings(sandbox, sshd, spec.python)
        actions = render_actions(runbook, engine_run, settings, time_scale)
        marker = "__BENCH_STEP_" + secrets.token_hex(12)
        script = build_script(actions, settings.workdir, marker)
        result = run_ssh_script(sshd, script, marker, actions, timeout)
        result.failures += check_script_outcome(sandbox, strategy)
    return result, actions


# ----------------------------------------------------------------------------- main


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def report(reps: list[Repetition], strategies: str, show_steps: bool) -> bool:
    """Print the medians and the target lines; True when the whole-run targets are met."""
    pairs_run = [(r.engine.compared_wall, r.script.wall, r.steps) for r in reps]
    pairs_steps = [(sum(r.engine.step_durations.values()), r.script.wall - r.script.options_seconds, r.steps)
                   for r in reps]
    # Ratios and overheads are medians over the repetitions' own pairs (each engine run and
    # its script run are close in time), so a load change between repetitions cancels out.
    e_wall = statistics.median(e for e, _, _ in pairs_run)
    s_wall = statistics.median(s for _, s, _ in pairs_run)
    ratio_run = statistics.median(e / s for e, s, _ in pairs_run)
    per_step_run = statistics.median((e - s) / n for e, s, n in pairs_run)
    e_steps = statistics.median(e for e, _, _ in pairs_steps)
    s_steps = statistics.median(s for _, s, _ in pairs_steps)
    ratio = statistics.median(e / s for e, s, _ in pairs_steps)
    per_step = statistics.median((e - s) / n for e, s, n in pairs_steps)
    steps = sorted({n for _, _, n in pairs_run})
    print()
    print(f"medians of {len(reps)} repetitions, strategies {strategies} (ratios and overheads: medians of "
          "each repetition's own pair):")
    print(f"whole run: engine {e_wall:.2f} s, one script {s_wall:.2f} s, ratio {ratio_run:.2f} "
          f"(target <= {RATIO_TARGET}), bookkeeping {per_step_run * 1000:.1f} ms a machine step "
          f"(target <= {PER_STEP_TARGET_MS:g} ms), {'/'.join(map(str, steps))} machine steps")
    print("  engine = wall time of the whole incident (approvals, choices, journal, audit log, view, option "
          "listing) less the steps below; one script = ssh wall time (connect, login, the same commands "
          "and the option listing); bookkeeping = (engine - script) / machine steps")
    print(f"  machine steps alone: engine {e_steps:.2f} s, one script {s_steps:.2f} s, ratio {ratio:.2f}, "
          f"{per_step * 1000:.1f} ms a step (engine = sum of the machine-step durations in the store; "
          "one script = its ssh wall time less the option listing)")
    excluded: dict[str, tuple[str, list[float]]] = {}
    for r in reps:
        for step_id, (kind, seconds) in r.engine.excluded.items():
            excluded.setdefault(step_id, (kind, []))[1].append(seconds)
    if excluded:
        parts = ", ".join(f"{step_id} ({kind}) {statistics.median(values):.2f} s"
                          for step_id, (kind, values) in excluded.items())
        print(f"  not compared (no one-script form; engine wall, medians): {parts}")
    if show_steps:
        print()
        print(f"{'step':<28}{'engine':>12}{'script':>12}{'diff':>12}   (medians)")
        ids = list(dict.fromkeys(step_id for r in reps for step_id in r.engine.step_durations))
        for step_id in ids:
            both = [(r.engine.step_durations[step_id], r.script.step_seconds.get(step_id, 0.0))
                    for r in reps if step_id in r.engine.step_durations]
            e = statistics.median(x for x, _ in both)
            s = statistics.median(y for _, y in both)
            print(f"{step_id:<28}{_ms(e):>12}{_ms(s):>12}{_ms(e - s):>12}")
    return ratio_run <= RATIO_TARGET and per_step_run * 1000 <= PER_STEP_TARGET_MS


def bench(args: argparse.Namespace) -> int:
    """Run the repetitions and print the figures."""
    runbook = default_runbook()
    base = Path(tempfile.mkdtemp(prefix="rb-bench-", dir="/tmp"))
    deadline = time.monotonic() + args.max_seconds
    reps: list[Repetition] = []
    try:
        with start_sshd(base / "sshd") as sshd:
            spec = SandboxSpec(root=base / "t", port=free_port(), now=datetime.now(UTC).replace(microsecond=0),
                               rows=args.rows, process_manager=args.process_manager,
                               python=args.python or real_python3())
            print(f"{load()}; target python for sqlite ops: {spec.python}", flush=True)
            previous: EngineRun | None = None
            strategies = ["A", "B", "C"] if args.strategy == "all" else [args.strategy]
            for i in range(args.repeat):
                left = deadline - time.monotonic()
                if left <= 0:
                    print(f"stopping after {i} repetitions: --max-seconds {args.max_seconds:g} reached")
                    break
                # Alternate which variant goes first (after the first engine run, which the
                # script needs), so neither always meets a warmer machine.
                script_first = previous is not None and i % 2 == 1 and len(strategies) == 1
                strategy = strategies[i % len(strategies)]
                if script_first:
                    assert previous is not None
                    script, _ = run_script_variant(spec, sshd, runbook, previous, strategy, args.time_scale, left)
                eng = run_engine(spec, sshd, runbook, strategy, args.time_scale, left, base / "engine")
                if not script_first:
                    script, _ = run_script_variant(spec, sshd, runbook, eng, strategy, args.time_scale,
                                                   max(deadline - time.monotonic(), 30))
                previous = eng
                if eng.verdict_failures or script.failures:
                    print(f"repetition {i + 1}: FAILED engine {eng.verdict_failures} script {script.failures}")
                    return 2
                rep = Repetition(eng, script)
                reps.append(rep)
                e_steps = sum(eng.step_durations.values())
                s_steps = script.wall - script.options_seconds
                print(f"repetition {i + 1}, strategy {strategy}{' (script first)' if script_first else ''}: "
                      f"whole run: engine {eng.compared_wall:.2f} s, one script {script.wall:.2f} s, ratio "
                      f"{eng.compared_wall / script.wall:.2f}, bookkeeping "
                      f"{_ms((eng.compared_wall - script.wall) / rep.steps)} a step; machine steps: engine "
                      f"{e_steps:.2f} s, script {s_steps:.2f} s, ratio {e_steps / s_steps:.2f}; "
                      f"{rep.steps} machine steps; both verified", flush=True)
    except SshdUnavailable as exc:
        print(f"cannot run: {exc}")
        return 2
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if not reps:
        return 2
    met = report(reps, args.strategy if args.strategy != "all" else "A, B, C in turn", args.steps)
    print(load())
    return 0 if met or not args.strict else 1


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", choices=("A", "B", "C", "all"), default="all",
                        help="restoration strategy; all: A, B and C in turn, each verified (default all)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; medians are printed (default 3: "
                        "one per strategy)")
    parser.add_argument("--time-scale", type=float, default=0.01,
                        help="factor on wait steps, as in the drill (default 0.01: 60 s -> 0.6 s)")
    parser.add_argument("--rows", type=int, default=200, help="sandbox size, as build_sandbox's rows (default 200)")
    parser.add_argument("--process-manager", choices=("auto", "pm2", "procman"), default="auto",
                        help="the sandbox app's process manager (default auto: pm2 when installed)")
    parser.add_argument("--python", help="the target's python3 for sqlite ops (default: the interpreter "
                        "python3 on PATH runs, past launcher shims)")
    parser.add_argument("--steps", action="store_true", help="also print per-step medians")
    parser.add_argument("--max-seconds", type=float, default=900,
                        help="stop starting repetitions after this long (default 900)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if os.environ.get("ROLLBACK_BOT_BENCH_DEBUG"):
        import logging

        logging.basicConfig(level=logging.INFO)
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
