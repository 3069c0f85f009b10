"""Proof, crash (see ``tests/proof_crash.py``): the kill plan and the checks themselves, and the
first ten of the 30 incidents; ``test_proof_crash_2.py`` and ``_3.py`` run the others."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.core.lifecycle import StepStatus
from bot.core.runbook import default_runbook
from bot.state.store import Store
from tests.proof_crash import (
    KILLS_PER_INCIDENT,
    MIN_ON_TARGET,
    MIN_ON_TARGET_PER_SLICE,
    POINTS,
    SEED,
    SLICES,
    STRATEGIES,
    KillPoint,
    _agent_op,
    _killable,
    check_journal_against_log,
    hold_spec,
    kill_plan,
    run_slice,
    writes_running,
)
from tests.sshd import SshdTarget


def test_kill_plan_is_seeded_and_covers_restore_and_stability() -> None:
    rb = default_runbook()
    plan = kill_plan(rb, SEED)
    assert plan == kill_plan(rb, SEED)
    assert sum(len(p) for p in plan) == POINTS
    steps = {p.step_id for inc in plan for p in inc}
    assert {"full_restore", "selective_restore", "transaction_rollback", "stability_checks"} <= steps
    held = [p for inc in plan for p in inc if p.write_point is not None]
    assert len(held) >= MIN_ON_TARGET and all(_agent_op(rb.step(p.step_id)) for p in held)
    assert {p.step_id for p in held} >= {"full_restore", "selective_restore", "transaction_rollback"}
    assert all(len(inc) == KILLS_PER_INCIDENT == 1 for inc in plan)  # each kill point in its own incident
    size = len(plan) // SLICES
    for part in range(SLICES):  # each slice can reach its share of kills on the target
        share = [p for inc in plan[part * size:(part + 1) * size] for p in inc if p.write_point is not None]
        assert len(share) >= MIN_ON_TARGET_PER_SLICE
    # no step the drill runs may ask a person after a crash: all idempotent or read-only
    for strategy in STRATEGIES:
        assert all(s.is_idempotent for s in _killable(rb, strategy))


def test_hold_spec_counts_the_runs_of_the_op_still_ahead() -> None:
    rb = default_runbook()
    again = KillPoint(1, "C", "restrict_access_again", 0, 2)
    assert hold_spec(rb, again, set()) == "restrict_access 1 2\n"  # restrict_access runs first
    assert hold_spec(rb, again, {"restrict_access"}) == "restrict_access 0 2\n"
    assert hold_spec(rb, KillPoint(1, "C", "full_restore", 0, 4), set()) == "restore 0 4\n"


def test_writes_running_reads_spans_from_the_command_log(tmp_path: Path) -> None:
    log = tmp_path / "command.log"
    log.write_text("100 7 begin restore\n150 8 begin verify\n160 8 end verify:0\n"
                   "200 7 end restore:137\n300 9 begin pm_stop\n")
    assert writes_running(log, 120) == ["restore"]
    assert writes_running(log, 155) == ["restore"]  # verify only reads
    assert writes_running(log, 250) == []
    assert writes_running(log, 400) == ["pm_stop"]  # never ended: died with this kill
    assert writes_running(log, 500, since_ns=400) == []  # not with the next one


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
async def test_crash_points_1_to_10(sshd_target: SshdTarget, tmp_path: Path,
                                    proof_report: Callable[[str], None]) -> None:
    await run_slice(0, sshd_target, tmp_path, proof_report)
