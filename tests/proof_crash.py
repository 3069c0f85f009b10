"""Proof, crash: the bot, and the agent on the target, killed with SIGKILL at seeded points.

Each incident runs the default runbook against a fresh sandbox through a real sshd, in a
bot process (``tests.proof_runner``) that is killed at each of the incident's kill points
and started again, until it completes. A kill point is either

- on the target: the SQLite agent of a writing step is held at its N-th write point (its
  kill hook, enabled for that one run by the target's shim), then the bot and the agent are
  both killed: a change is running on the target when the bot dies, by construction (the
  restore's points include the window between releasing the live file and the rename);
- or in the bot: killed ``d`` ms after a chosen step started (including mid-stability).

How many kills landed while a change was running on the target is read from the target's
own command log (a writing command begun and not yet ended at the kill), printed and
asserted. Then, checked on the target and not taken from the bot's word:

- the database equals the chosen backup's content, access levels equal the originals,
  maintenance mode is off, the app is healthy, the emergency backup verifies
  (``bot.drill.verdict``);
- the journal against the target's own command log: every effect on the target (the
  SQLite agent's writing operations and the process manager, logged by shims on the
  target) belongs to a journaled attempt of a step that does exactly that, no attempt
  ran more than once, every finished attempt ran exactly once;
- no ``resume`` question: every step the drill runs is idempotent or read-only, so an
  interrupted step is re-run by itself; a non-idempotent step would have asked.

30 kill points, each in its own incident (strategies C, A, B in turn), in three slices of ten
incidents, one test file each (``tests/test_proof_crash*.py``), so pytest-xdist runs them side by
side; each slice asserts its share of kills landed on the target. ``ROLLBACK_PROOF_SEED`` picks
the points.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actions.local import LocalTransport
from actions.sqlite_agent import KILL_HOOK_ENV
from bot.core.lifecycle import Status
from bot.core.runbook import (
    ChoiceStep,
    CommandStep,
    GovernanceStep,
    HttpStep,
    Runbook,
    SqliteStep,
    StabilityStep,
    StepBase,
    WaitStep,
    default_runbook,
)
from bot.core.targets import TargetSettings
from bot.core.templating import TemplateError, lookup
from bot.drill.sandbox import Sandbox, build_sandbox
from bot.drill.verdict import check_verdict
from bot.state.store import Store
from tests.sshd import SshdTarget

ROOT = Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("ROLLBACK_PROOF_SEED", "20261125"))
POINTS = 30
KILLS_PER_INCIDENT = 1
#: Kills that must land while a change runs on the target: of all 30, and of each slice of 10.
MIN_ON_TARGET = 10
MIN_ON_TARGET_PER_SLICE = 4
SLICES = 3
STRATEGIES = ("C", "A", "B")
#: 60 plan seconds are 0.24 s: the 15 stability checks take ~3.6 s.
TIME_SCALE = 0.004
RESTORE_STEPS = {"A": "selective_restore", "B": "transaction_rollback", "C": "full_restore"}
#: The SQLite agent's operations that write; the others only read.
WRITING_OPS = {"restrict_access", "restore_access", "backup", "restore", "selective_restore",
               "transaction_rollback", "governance_insert"}
#: Steps whose agent is held on the target at a write point (besides the strategy's restore).
TARGET_STEPS = ("restrict_access", "emergency_backup", "restore_access", "governance_record")
#: Write points every run of an operation reaches on the drill's data (a full restore: its
#: file steps up to the journal mode, the backup: its finished partial copy).
MIN_POINTS = {"restore": 6, "backup": 1}


@dataclass(frozen=True)
class KillPoint:
    """Kill the bot ``delay_ms`` after the next attempt of ``step_id`` started; with ``write_point``,
    when that attempt's agent reaches its N-th write point on the target, and the agent too."""

    incident: int
    strategy: str
    step_id: str
    delay_ms: int
    write_point: int | None = None

    def __str__(self) -> str:
        if self.write_point is not None:
            return f"#{self.incident} {self.strategy} {self.step_id}@write point {self.write_point}"
        return f"#{self.incident} {self.strategy} {self.step_id}+{self.delay_ms}ms"


@dataclass
class IncidentOutcome:
    """What one incident of the crash proof showed."""

    points: list[KillPoint]
    problems: list[str] = field(default_factory=list)
    interrupted: int = 0
    rerun_effects: int = 0
    #: When each kill fell (ns since the epoch, the command log's clock).
    killed_at: list[int] = field(default_factory=list)
    #: Kills that fell while a writing command ran on the target, and which.
    on_target: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- the plan


def _runs(step: StepBase, strategy: str) -> bool:
    """Whether the drill runs this step for this strategy (its `when` against the drill's values)."""
    if step.condition is None:
        return True
    ctx = {"incident": {"decision": "IMMEDIATE"}, "choices": {"strategy": strategy},
           "target": {"app_rollback": "command", "smoke_test_command": "set"}}
    try:
        value = lookup(ctx, step.condition.ref)
    except TemplateError:
        value = None
    return step.condition.holds(value)


def _killable(rb: Runbook, strategy: str) -> list[StepBase]:
    kinds = (CommandStep, SqliteStep, HttpStep, WaitStep, StabilityStep, GovernanceStep, ChoiceStep)
    return [s for _, s in rb.steps() if isinstance(s, kinds) and _runs(s, strategy)]


def _agent_op(step: StepBase) -> str | None:
    """The writing agent operation a step runs on the target, if any."""
    if isinstance(step, GovernanceStep):
        return "governance_insert"
    if isinstance(step, SqliteStep) and step.op in WRITING_OPS:
        return step.op
    return None


def kill_plan(rb: Runbook, seed: int) -> list[list[KillPoint]]:
    """The seeded kill points, incident by incident, each incident's in runbook order.

    One point per incident, in turn (three incidents each, one per strategy): on the target
    mid-restore, on the target in another writing step, mid-stability, anywhere the drill runs.
    """
    rng = random.Random(seed)
    incidents = POINTS // KILLS_PER_INCIDENT
    plan = []
    for i in range(incidents):
        strategy = STRATEGIES[i % len(STRATEGIES)]
        steps = _killable(rb, strategy)
        order = {s.id: n for n, s in enumerate(steps)}
        on_target = [RESTORE_STEPS[strategy], TARGET_STEPS[(i // len(STRATEGIES)) % len(TARGET_STEPS)]]
        forced = [[on_target[0]], [on_target[1]], ["stability_checks"], []][(i // len(STRATEGIES)) % 4]
        chosen = [(s, s in on_target) for s in forced[:KILLS_PER_INCIDENT]]
        while len(chosen) < KILLS_PER_INCIDENT:
            chosen.append((rng.choice(steps).id, False))
        points = []
        for step_id, held in sorted(chosen, key=lambda c: order[c[0]]):
            step = rb.step(step_id)
            op = _agent_op(step)
            if held and op is not None:
                points.append(KillPoint(i + 1, strategy, step_id, 0, rng.randint(1, MIN_POINTS.get(op, 5))))
                continue
            if isinstance(step, StabilityStep):
                # anywhere in the series of 15 checks
                delay = rng.randint(100, int(15 * 60 * TIME_SCALE * 1000))
            else:
                delay = rng.randint(0, 400)
            points.append(KillPoint(i + 1, strategy, step_id, delay))
        plan.append(points)
    return plan


# ----------------------------------------------------------------------------- the target's command log


def _write_shims(sandbox: Sandbox, log: Path) -> dict[str, str]:
    """Shims on the target that log each run of the SQLite agent and the process manager;
    returns the settings that route the runbook's commands through them.

    The agent's shim reads ``hold.spec`` ("OP SKIP N"): the SKIP+1-th run of OP from now gets
    the agent's kill hook, held at its N-th write point (noted in ``hold.log``)."""
    q = shlex.quote
    shim_dir = sandbox.root / "shim"
    shim_dir.mkdir()
    stamp = 'printf "%s %s %s %s\\n" "$(date +%s%N)" "$$"'
    py = shim_dir / "python3-logged"
    spec, held = q(str(log.with_name("hold.spec"))), str(log.with_name("hold.log"))
    hold = (f'if [ -f {spec} ]; then read -r kop kskip kat < {spec}\n'
            f'  if [ "$kop" = "${{4:-}}" ]; then\n'
            f'    if [ "$kskip" -gt 0 ]; then echo "$kop $((kskip - 1)) $kat" > {spec}\n'
            f'    else rm -f {spec}; export {KILL_HOOK_ENV}="$kat:"{q(held)}":hold"; fi\n'
            f'  fi\nfi\n')
    # python3 -I -c SOURCE OP PARAMS: $4 is the operation
    py.write_text(f"#!/bin/bash\n{hold}{stamp} begin \"${{4:-?}}\" >> {q(str(log))}\n"
                  f"{q(sandbox.python)} \"$@\"\nrc=$?\n"
                  f"{stamp} end \"${{4:-?}}:$rc\" >> {q(str(log))}\nexit $rc\n")
    pm = shim_dir / "pm-logged"
    base = sandbox.pm_stop.rsplit(" stop ", 1)[0]
    pm.write_text(f"#!/bin/bash\n{stamp} begin \"pm_$1\" >> {q(str(log))}\n"
                  f"{base} \"$1\" {q(sandbox.app_name)}\nrc=$?\n"
                  f"{stamp} end \"pm_$1:$rc\" >> {q(str(log))}\nexit $rc\n")
    for f in (py, pm):
        f.chmod(0o755)
    restart = f"{q(str(pm))} restart"
    return {
        "python": str(py),
        "pm_start": f"{q(str(pm))} start",
        "pm_stop": f"{q(str(pm))} stop",
        "pm_restart": restart,
        "app_rollback_command": sandbox.app_rollback_command.replace(sandbox.pm_restart, restart),
    }


def _effect_of(step: StepBase) -> str | None:
    """What a step does to the target, as the command log names it (None: reads only)."""
    if isinstance(step, SqliteStep):
        return step.op if step.op in WRITING_OPS else None
    if isinstance(step, GovernanceStep):
        return "governance_insert"
    if isinstance(step, CommandStep):
        for action in ("restart", "stop", "start"):
            if f"target.pm_{action}" in step.run:
                return f"pm_{action}"
        if "app_rollback_command" in step.run:
            return "pm_restart"
    return None


def _read_log(log: Path) -> list[tuple[float, str, str]]:
    """(epoch seconds, begin|end, what) per line of the target's command log."""
    entries = []
    for line in log.read_text().splitlines():
        ns, _pid, kind, what = line.split(" ", 3)
        entries.append((int(ns) / 1e9, kind, what))
    return entries


def writes_running(log: Path, at_ns: int, since_ns: int = 0) -> list[str]:
    """The writing commands the target's log shows begun and not yet ended at ``at_ns``.

    One that never logged its end died with a kill: it counts for the first kill after its
    begin only (``since_ns``, the kill before this one, is after it began otherwise)."""
    began: dict[str, tuple[int, str]] = {}
    spans: list[tuple[int, int | None, str]] = []
    for line in log.read_text().splitlines():
        ns, pid, kind, what = line.split(" ", 3)
        if kind == "begin":
            began[pid] = (int(ns), what)
        elif pid in began:
            start, name = began.pop(pid)
            spans.append((start, int(ns), name))
    spans += [(start, None, name) for start, name in began.values()]
    writing = WRITING_OPS | {"pm_start", "pm_stop", "pm_restart"}
    return [name for start, end, name in spans
            if name in writing and start <= at_ns and (end > at_ns if end is not None else start > since_ns)]


async def check_journal_against_log(store: Store, rb: Runbook, incident_id: str, log: Path) -> tuple[list[str], int]:
    """Each effect the target logged belongs to the latest journaled attempt (started before it)
    of a step with that effect; each attempt has at most one; each finished one exactly one.
    Returns the problems and how many interrupted attempts had reached the target."""
    attempts: dict[str, list[tuple[float, Any]]] = {}
    for run in await store.step_runs(incident_id):
        effect = _effect_of(rb.step(run.step_id))
        if effect is not None and run.started_at is not None:
            attempts.setdefault(effect, []).append((run.started_at.timestamp(), run))
    problems: list[str] = []
    seen: dict[int, int] = {}
    for at, kind, what in _read_log(log):
        if kind != "begin" or what not in {e for e in attempts} | WRITING_OPS | {"pm_start", "pm_stop", "pm_restart"}:
            continue
        before = [r for t, r in attempts.get(what, []) if t <= at]
        if not before:
            problems.append(f"{what} ran at {at:.3f} with no journaled attempt before it")
            continue
        run = before[-1]
        seen[run.id] = seen.get(run.id, 0) + 1
    reached_interrupted = 0
    for effect, runs in attempts.items():
        for _, run in runs:
            n = seen.get(run.id, 0)
            if n > 1:
                problems.append(f"{run.step_id} attempt {run.attempt} ran {n} times on the target ({effect})")
            if run.status.value == "done" and n != 1:
                problems.append(f"{run.step_id} attempt {run.attempt} is done but ran {n} times ({effect})")
            if run.status.value == "interrupted" and n == 1:
                reached_interrupted += 1
    return problems, reached_interrupted


# ----------------------------------------------------------------------------- the bot process


def _start(root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.proof_runner", str(root)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _attempts(state: Path, step_id: str) -> tuple[int, str | None]:
    """How many attempts of a step the journal holds, and the latest one's status."""
    if not state.exists():
        return 0, None
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as conn:
            rows = conn.execute("SELECT status FROM step_runs WHERE step_id = ? ORDER BY id", (step_id,)).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return 0, None
    return len(rows), (rows[-1][0] if rows else None)


def _done_steps(state: Path) -> set[str]:
    if not state.exists():
        return set()
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as conn:
            rows = conn.execute("SELECT step_id, status FROM step_runs ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return set()
    latest = dict(rows)
    return {step for step, status in latest.items() if status == "done"}


def hold_spec(rb: Runbook, point: KillPoint, done: set[str]) -> str:
    """``OP SKIP N`` for the target's shim: the point's step is the SKIP+1-th run of OP from now
    (the engine goes on from the first step not done, in runbook order, re-running an
    interrupted one)."""
    op = _agent_op(rb.step(point.step_id))
    assert op is not None and point.write_point is not None
    ahead = []
    for step in _killable(rb, point.strategy):
        if step.id not in done and _agent_op(step) == op:
            ahead.append(step.id)
        if step.id == point.step_id:
            break
    return f"{op} {len(ahead) - 1} {point.write_point}\n"


def _bury(proc: subprocess.Popen[str]) -> None:
    proc.wait(timeout=30)
    if proc.stdout:
        proc.stdout.close()
    if proc.stderr:
        proc.stderr.close()


def _kill_at(root: Path, proc: subprocess.Popen[str], point: KillPoint, before: tuple[int, str | None],
             outcome: IncidentOutcome) -> str | None:
    """SIGKILL the bot ``delay_ms`` after the next attempt of the point's step started (when the
    previous run already got past that step, ``delay_ms`` after the restart); for a point on the
    target, when the step's agent is held at its write point, then the agent too. An error text
    if the bot ended first."""
    state = root / "state.db"
    held_log = root / "target" / "hold.log"
    held_before = len(held_log.read_text().splitlines()) if held_log.exists() else 0
    count, status = before
    deadline = time.monotonic() + 240
    while True:
        if proc.poll() is not None:
            out, err = proc.communicate()
            return f"bot ended before {point}: {out.strip()[-500:]} {err.strip()[-1500:]}"
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            return f"{point} never came"
        if point.write_point is None:
            if status not in (None, "running") or _attempts(state, point.step_id)[0] > count:
                time.sleep(point.delay_ms / 1000)
                break
        else:
            held = held_log.read_text().splitlines()[held_before:] if held_log.exists() else []
            if held:
                outcome.killed_at.append(time.time_ns())
                os.kill(proc.pid, signal.SIGKILL)
                os.kill(int(held[0].split()[0]), signal.SIGKILL)  # the agent, held inside its write
                _bury(proc)
                return None
            n, last = _attempts(state, point.step_id)
            if n > count and last not in (None, "running"):
                break  # the step ended without reaching the write point: kill the bot now
        time.sleep(0.005)
    outcome.killed_at.append(time.time_ns())
    os.kill(proc.pid, signal.SIGKILL)  # the bot only: what it started on the target lives on
    _bury(proc)
    return None


def _finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=300)
    if proc.returncode != 0 or not out.strip():
        return {"status": "crashed", "error": err[-2000:]}
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


async def run_incident(base: Path, sshd: SshdTarget, points: list[KillPoint]) -> IncidentOutcome:
    """One incident with its kill points, then the checks on the target."""
    outcome = IncidentOutcome(points)
    strategy = points[0].strategy
    root = base / f"incident-{points[0].incident}"
    root.mkdir(parents=True)
    sandbox = await asyncio.to_thread(build_sandbox, root / "target", process_manager="procman")
    try:
        log = root / "target" / "command.log"
        log.touch()
        settings = {"name": "sandbox", "transport": "ssh", "host": sshd.host, "port": sshd.port,
                    "user": sshd.username, "key_file": str(sshd.client_key_path),
                    "known_hosts": str(sshd.known_hosts_path), **sandbox.settings(), **_write_shims(sandbox, log)}
        (root / "runner.json").write_text(json.dumps({
            "settings": settings, "strategy": strategy, "backup_path": str(sandbox.backup_path),
            "time_scale": TIME_SCALE}))
        rb = default_runbook()
        spec = root / "target" / "hold.spec"
        for point in points:
            before = await asyncio.to_thread(_attempts, root / "state.db", point.step_id)
            if point.write_point is not None:
                spec.write_text(hold_spec(rb, point, await asyncio.to_thread(_done_steps, root / "state.db")))
            error = await asyncio.to_thread(_kill_at, root, _start(root), point, before, outcome)
            spec.unlink(missing_ok=True)
            if error:
                outcome.problems.append(error)
                return outcome
        for since, at in zip([0, *outcome.killed_at], outcome.killed_at, strict=False):
            running = writes_running(log, at, since)
            if running:
                outcome.on_target.append(running[0])
        final = await asyncio.to_thread(_finish, _start(root))
        if final.get("status") != "completed":
            outcome.problems.append(f"after the last kill the bot ended {final}")
            return outcome
        outcome.problems += await _check_target(root, sandbox, strategy, log, outcome)
    finally:
        await asyncio.to_thread(sandbox.stop)
    return outcome


async def _check_target(root: Path, sandbox: Sandbox, strategy: str, log: Path, outcome: IncidentOutcome) -> list[str]:
    rb = default_runbook()
    store = await Store.open(str(root / "state.db"))
    transport = LocalTransport(name="verify")
    problems: list[str] = []
    try:
        inc = (await store.incidents())[0]
        plain = TargetSettings.model_validate({"name": "sandbox", "transport": "local", **sandbox.settings()})
        verdict = await check_verdict(store=store, incident=inc, transport=transport, settings=plain,
                                      sandbox=sandbox, strategy=strategy)
        problems += [f"{c.name}: {c.detail}" for c in verdict.checks if not c.ok]
        if inc.status is not Status.COMPLETED:
            problems.append(f"incident is {inc.status.value}")
        found, outcome.rerun_effects = await check_journal_against_log(store, rb, inc.id, log)
        problems += found
        runs = await store.step_runs(inc.id)
        outcome.interrupted = sum(r.status.value == "interrupted" for r in runs)
        asked = [r.step_id for r in runs if r.waiting and r.waiting.get("kind") == "resume"]
        if asked:
            problems.append(f"asked to resume {asked}: every step the drill runs should be idempotent")
        for r in runs:
            if r.status.value == "interrupted" and not rb.step(r.step_id).is_idempotent:
                problems.append(f"non-idempotent {r.step_id} was interrupted")
        done_once = [r.step_id for r in runs if r.status.value == "done"]
        doubled = sorted({s for s in done_once if done_once.count(s) > 1 and
                          not isinstance(rb.step(s), StabilityStep)})
        if doubled:
            problems.append(f"steps done more than once: {doubled}")
    finally:
        await transport.close()
        await store.close()
    return problems


async def run_slice(part: int, sshd: SshdTarget, tmp_path: Path, proof_report: Callable[[str], None]) -> None:
    """Incidents ``10 * part + 1`` to ``10 * part + 10`` of the seeded plan, each with its kill; then
    the checks, and the share of kills that landed while a change ran on the target."""
    full = kill_plan(default_runbook(), SEED)
    size = len(full) // SLICES
    plan = full[part * size:(part + 1) * size]
    started = time.monotonic()
    outcomes = [await run_incident(tmp_path, sshd, points) for points in plan]
    passed = sum(len(o.points) for o in outcomes if not o.problems)
    interrupted = sum(o.interrupted for o in outcomes)
    reran = sum(o.rerun_effects for o in outcomes)
    landed = [w for o in outcomes for w in o.on_target]
    kinds = ", ".join(f"{w} {landed.count(w)}" for w in sorted(set(landed)))
    proof_report(f"crash, incidents {part * size + 1}-{(part + 1) * size} of {len(full)}: {passed}/{len(plan)} "
                 f"recovered (seed {SEED}, one kill per incident); {len(landed)} of "
                 f"{sum(len(o.killed_at) for o in outcomes)} kills landed while a change was running on the "
                 f"target ({kinds}); {interrupted} steps interrupted and re-run, {reran} of them had reached "
                 f"the target; {time.monotonic() - started:.0f} s")
    failures = [(str(o.points[0]), o.problems) for o in outcomes if o.problems]
    assert not failures, "\n".join(f"{first}: {problems}" for first, problems in failures)
    assert len(landed) >= MIN_ON_TARGET_PER_SLICE, f"only {len(landed)} kills landed while a change ran on the target"
