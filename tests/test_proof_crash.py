"""Proof, crash: the bot killed with SIGKILL at seeded points of whole drill incidents.

Each incident runs the default runbook against a fresh sandbox through a real sshd, in a
bot process (``tests.proof_runner``) that is killed ``d`` ms after a chosen step started
(including mid-restore and mid-stability) and started again, until it completes. Then,
checked on the target and not taken from the bot's word:

- the database equals the chosen backup's content, access levels equal the originals,
  maintenance mode is off, the app is healthy, the emergency backup verifies
  (``bot.drill.verdict``);
- the journal against the target's own command log: every effect on the target (the
  SQLite agent's writing operations and the process manager, logged by shims on the
  target) belongs to a journaled attempt of a step that does exactly that, no attempt
  ran more than once, every finished attempt ran exactly once;
- no ``resume`` question: every step the drill runs is idempotent or read-only, so an
  interrupted step is re-run by itself; a non-idempotent step would have asked.

CI: 30 points over 3 incidents (strategies C, A, B), 10 kills each. ``ROLLBACK_PROOF_LONG=1``:
one kill per incident, 30 incidents. ``ROLLBACK_PROOF_SEED`` picks the points.
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

import pytest

from actions.local import LocalTransport
from bot.drill.sandbox import Sandbox, build_sandbox
from bot.drill.verdict import check_verdict
from bot.lifecycle import Status, StepStatus
from bot.runbook import (
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
from bot.store import Store
from bot.targets import TargetSettings
from bot.templating import TemplateError, lookup
from tests.sshd import SshdTarget

ROOT = Path(__file__).resolve().parent.parent
LONG = os.environ.get("ROLLBACK_PROOF_LONG") == "1"
SEED = int(os.environ.get("ROLLBACK_PROOF_SEED", "20261125"))
POINTS = 30
KILLS_PER_INCIDENT = 1 if LONG else 10
STRATEGIES = ("C", "A", "B")
#: 60 plan seconds are 0.24 s: the 15 stability checks take ~3.6 s.
TIME_SCALE = 0.004
RESTORE_STEPS = {"A": "selective_restore", "B": "transaction_rollback", "C": "full_restore"}
#: The SQLite agent's operations that write; the others only read.
WRITING_OPS = {"restrict_access", "restore_access", "backup", "restore", "selective_restore",
               "transaction_rollback", "governance_insert"}


@dataclass(frozen=True)
class KillPoint:
    """Kill the bot ``delay_ms`` after the next attempt of ``step_id`` started."""

    incident: int
    strategy: str
    step_id: str
    delay_ms: int

    def __str__(self) -> str:
        return f"#{self.incident} {self.strategy} {self.step_id}+{self.delay_ms}ms"


@dataclass
class IncidentOutcome:
    """What one incident of the crash proof showed."""

    points: list[KillPoint]
    problems: list[str] = field(default_factory=list)
    interrupted: int = 0
    rerun_effects: int = 0


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


def kill_plan(rb: Runbook, seed: int) -> list[list[KillPoint]]:
    """The seeded kill points, incident by incident, each incident's in runbook order.

    Every incident has one kill in its restore step and one mid-stability; the others fall
    on any step the drill runs.
    """
    rng = random.Random(seed)
    incidents = POINTS // KILLS_PER_INCIDENT
    plan = []
    for i in range(incidents):
        strategy = STRATEGIES[i % len(STRATEGIES)]
        steps = _killable(rb, strategy)
        order = {s.id: n for n, s in enumerate(steps)}
        forced = [RESTORE_STEPS[strategy], "stability_checks"]
        if LONG:
            # one point per incident: three incidents (C, A, B) mid-restore, three mid-stability,
            # three anywhere, and again
            forced = [[RESTORE_STEPS[strategy]], ["stability_checks"], []][(i // len(STRATEGIES)) % 3]
        chosen = forced[:KILLS_PER_INCIDENT]
        while len(chosen) < KILLS_PER_INCIDENT:
            chosen.append(rng.choice(steps).id)
        points = []
        for step_id in sorted(chosen, key=order.__getitem__):
            step = rb.step(step_id)
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
    returns the settings that route the runbook's commands through them."""
    q = shlex.quote
    shim_dir = sandbox.root / "shim"
    shim_dir.mkdir()
    stamp = 'printf "%s %s %s %s\\n" "$(date +%s%N)" "$$"'
    py = shim_dir / "python3-logged"
    # python3 -I -c SOURCE OP PARAMS: $4 is the operation
    py.write_text(f"#!/bin/bash\n{stamp} begin \"${{4:-?}}\" >> {q(str(log))}\n"
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


def _kill_at(root: Path, proc: subprocess.Popen[str], point: KillPoint, before: tuple[int, str | None]) -> str | None:
    """SIGKILL the bot ``delay_ms`` after the next attempt of the point's step started; when the
    previous run already got past that step, ``delay_ms`` after the restart. An error text if
    the bot ended first."""
    state = root / "state.db"
    count, status = before
    deadline = time.monotonic() + 240
    while status in (None, "running") and _attempts(state, point.step_id)[0] <= count:
        if proc.poll() is not None:
            out, err = proc.communicate()
            return f"bot ended before {point}: {out.strip()[-500:]} {err.strip()[-1500:]}"
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            return f"{point.step_id} never started"
        time.sleep(0.005)
    time.sleep(point.delay_ms / 1000)
    os.kill(proc.pid, signal.SIGKILL)  # the bot only: what it started on the target lives on
    proc.wait(timeout=30)
    if proc.stdout:
        proc.stdout.close()
    if proc.stderr:
        proc.stderr.close()
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
        for point in points:
            before = await asyncio.to_thread(_attempts, root / "state.db", point.step_id)
            error = await asyncio.to_thread(_kill_at, root, _start(root), point, before)
            if error:
                outcome.problems.append(error)
                return outcome
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


# ----------------------------------------------------------------------------- the test


def test_kill_plan_is_seeded_and_covers_restore_and_stability() -> None:
    rb = default_runbook()
    plan = kill_plan(rb, SEED)
    assert plan == kill_plan(rb, SEED)
    assert sum(len(p) for p in plan) == POINTS
    steps = {p.step_id for inc in plan for p in inc}
    assert {"full_restore", "selective_restore", "transaction_rollback", "stability_checks"} <= steps
    # no step the drill runs may ask a person after a crash: all idempotent or read-only
    for strategy in STRATEGIES:
        assert all(s.is_idempotent for s in _killable(rb, strategy))


async def test_journal_check_catches_a_silent_rerun_and_an_unjournaled_effect(tmp_path: Path) -> None:
    rb = default_runbook()
    store = await Store.open(str(tmp_path / "state.db"))
    try:
        inc = await store.create_incident(target="t", runbook=rb.name)
        run = await store.begin_step(inc.id, "stop_app", "restoration")
        await store.end_step(run.id, StepStatus.DONE)
        t = run.started_at.timestamp() if run.started_at else time.time()
        log = tmp_path / "command.log"
        log.write_text(f"{int((t - 5) * 1e9)} 1 begin restore\n"      # before any journaled attempt
                       f"{int((t + 0.1) * 1e9)} 2 begin pm_stop\n"
                       f"{int((t + 0.2) * 1e9)} 3 begin pm_stop\n")   # the same attempt ran twice
        problems, _ = await check_journal_against_log(store, rb, inc.id, log)
        assert any("restore ran" in p and "no journaled attempt" in p for p in problems), problems
        assert any("stop_app attempt 1 ran 2 times" in p for p in problems), problems
        log.write_text(f"{int((t + 0.1) * 1e9)} 2 begin pm_stop\n{int((t + 0.3) * 1e9)} 2 end pm_stop:0\n")
        assert (await check_journal_against_log(store, rb, inc.id, log))[0] == []
    finally:
        await store.close()


@pytest.mark.sshd
async def test_crash_points(sshd_target: SshdTarget, tmp_path: Path,
                            proof_report: Callable[[str], None]) -> None:
    plan = kill_plan(default_runbook(), SEED)
    started = time.monotonic()
    outcomes = [await run_incident(tmp_path, sshd_target, points) for points in plan]
    passed = sum(len(o.points) for o in outcomes if not o.problems)
    interrupted = sum(o.interrupted for o in outcomes)
    reran = sum(o.rerun_effects for o in outcomes)
    proof_report(f"crash: {passed}/{POINTS} (seed {SEED}, {len(plan)} incidents, {interrupted} steps "
                 f"interrupted and re-run, {reran} of them had reached the target; "
                 f"{time.monotonic() - started:.0f} s)")
    failures = [(str(o.points[0]), o.problems) for o in outcomes if o.problems]
    assert not failures, "\n".join(f"{first}: {problems}" for first, problems in failures)
