"""Proof, guardrails: what must hold whatever happens.

- A full restore without a verified backup is refused, always: in the default runbook the
  emergency backup's verification stops the incident when it fails, before any
  destructive step; and the agent itself refuses a backup that fails verification (random
  corruptions, hypothesis), touching nothing.
- Two starts on one target give one incident: concurrent creations through two stores on
  one state file (two bot replicas), and two start modals submitted at once in Slack.
- An abort during a destructive step, or the step killed on the target at a seeded moment,
  leaves the database either fully old or fully restored, never between.
"""

from __future__ import annotations

import asyncio
import random
import shlex
import shutil
import sqlite3
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actions import sqlite_agent
from actions.errors import ActionError
from actions.local import LocalTransport
from actions.sqlite import SqliteAgentError, sqlite_op
from actions.sqlite_agent import content_hash
from bot.core.engine import Engine, Target
from bot.core.lifecycle import Status, StepStatus
from bot.core.runbook import SqliteStep, default_runbook, load_runbook
from bot.core.targets import TargetSettings
from bot.drill.sandbox import Sandbox, build_sandbox
from bot.state.store import Store, TargetBusy
from tests import test_slack_e2e as e2e

SEED = 20261125
RESTORED = {"A": ["projects", "phases", "step_progress"],
            "B": ["projects", "phases", "step_progress", "user_permissions"],
            "C": None}
figures: dict[str, str] = {}


def _hash(db: Path, tables: list[str] | None = None) -> dict[str, str]:
    return dict(content_hash(str(db), tables)["tables"])


# ----------------------------------------------------------------------------- no restore without a verified backup


def test_default_runbook_verifies_the_backup_before_anything_destructive() -> None:
    rb = default_runbook()
    order = [s.id for _, s in rb.steps()]
    verify = rb.step("verify_backup")
    assert isinstance(verify, SqliteStep) and verify.op == "verify" and verify.on_failure == "stop"
    assert order.index("emergency_backup") < order.index("verify_backup")
    destructive = [s.id for _, s in rb.steps() if s.destructive]
    assert destructive and all(order.index(d) > order.index("verify_backup") for d in destructive)


VERIFY_RUNBOOK = textwrap.dedent("""\
    name: guard
    phases:
      - id: p
        title: P
        steps:
          - id: emergency_backup
            title: Emergency backup
            kind: sqlite
            op: backup
            idempotent: true
            params: {dest: "databases/emergency.db", if_exists: keep}
            captures: {path: path}
          - id: damage
            title: The backup is damaged on the disk
            kind: command
            idempotent: true
            run: "yes garbage | head -c 2800 | dd of=databases/emergency.db bs=1 seek=4096 conv=notrunc 2>/dev/null"
    """)


async def test_a_backup_that_fails_verification_stops_the_incident(tmp_path: Path) -> None:
    sandbox = await asyncio.to_thread(build_sandbox, tmp_path / "target", process_manager="procman")
    store = await Store.open(str(tmp_path / "state.db"))
    transport = LocalTransport(name="t")
    try:
        rb_text = VERIFY_RUNBOOK
        default = default_runbook()
        # The default runbook's own verify and restore steps, after the damage.
        tail = [default.step("verify_backup"), default.step("stop_app"), default.step("full_restore")]
        import yaml

        data = yaml.safe_load(rb_text)
        for step in tail:
            d = step.model_dump(exclude_none=True, exclude_defaults=True, by_alias=True)
            d.update(id=step.id, title=step.title, kind=getattr(step, "kind"))  # noqa: B009
            d.pop("when", None)
            if step.id == "full_restore":
                d["params"] = {**d["params"], "backup": str(sandbox.backup_path)}
            data["phases"][0]["steps"].append(d)
        (tmp_path / "rb.yml").write_text(yaml.safe_dump(data))
        settings_ = TargetSettings.model_validate({"name": "t", "transport": "local", **sandbox.settings()})
        engine = Engine(store, load_runbook(tmp_path / "rb.yml"), {"t": Target(settings_, transport)},
                        artifacts_dir=tmp_path / "art")
        before = _hash(sandbox.db_path)
        inc = await store.create_incident(target="t", runbook="guard")
        inc = await engine.run(inc.id)
        runs = await store.latest_runs(inc.id)
        assert inc.status is Status.FAILED
        assert runs["verify_backup"].status is StepStatus.FAILED
        assert "stop_app" not in runs and "full_restore" not in runs
        assert _hash(sandbox.db_path) == before
        figures["verify"] = "a damaged emergency backup stops the incident before any destructive step"
    finally:
        await transport.close()
        await store.close()
        await asyncio.to_thread(sandbox.stop)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    """A built sandbox (its app stopped) whose live database and backup are copied per example."""
    box = build_sandbox(tmp_path_factory.mktemp("guard") / "target", process_manager="procman", rows=3000)
    box.stop()
    return box


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(cuts=st.lists(st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=64)), min_size=1, max_size=4),
       truncate=st.one_of(st.none(), st.floats(0, 1)))
async def test_agent_never_restores_from_a_backup_that_fails_verification(
    pristine: Sandbox, tmp_path: Path, cuts: list[tuple[float, bytes]], truncate: float | None,
) -> None:
    work = tmp_path / f"w{uuid.uuid4().hex}"
    work.mkdir()
    live, backup = work / "production.db", work / "backup.db"
    shutil.copy(pristine.db_path, live)
    shutil.copy(pristine.backup_path, backup)
    data = bytearray(backup.read_bytes())
    for at, junk in cuts:
        pos = int(at * (len(data) - 1))
        data[pos:pos + len(junk)] = junk
    if truncate is not None:
        data = data[: int(truncate * len(data))]
    backup.write_bytes(bytes(data))
    before = _hash(live)
    transport = LocalTransport(root=str(work))
    try:
        try:
            res = await sqlite_op(transport, "restore", {"db": str(live), "backup": str(backup),
                                                         "corrupted_dir": str(work)}, timeout=120)
        except SqliteAgentError as exc:
            assert exc.kind in ("integrity_failed", "sqlite", "not_found", "hash_mismatch"), exc
            assert _hash(live) == before, "a refused restore changed the live database"
            figures["refused"] = str(int(figures.get("refused", "0")) + 1)
            return
        # Restored: only because the backup verifies, and then to exactly its content.
        check = await sqlite_op(transport, "verify", {"db": str(backup)}, timeout=120)
        assert check["ok"], f"restored from a backup that fails verification: {check}"
        assert res["content_hash"] == check["content_hash"] == content_hash(str(live))["total"]
        figures["restored"] = str(int(figures.get("restored", "0")) + 1)
    finally:
        await transport.close()


# ----------------------------------------------------------------------------- one incident per target


async def test_concurrent_starts_on_one_target_give_one_incident(tmp_path: Path) -> None:
    stores = [await Store.open(str(tmp_path / "state.db")) for _ in range(2)]  # two bot replicas
    try:
        async def start(i: int) -> str:
            try:
                return (await stores[i % 2].create_incident(target="db1", runbook="r", reason=f"r{i}")).id
            except TargetBusy as exc:
                return f"busy:{exc.incident_id}"

        results = await asyncio.gather(*(start(i) for i in range(20)))
        opened = [r for r in results if not r.startswith("busy:")]
        assert len(opened) == 1, results
        assert {r.removeprefix("busy:") for r in results} == set(opened)
        assert len(await stores[0].incidents()) == 1
    finally:
        for s in stores:
            await s.close()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[e2e.Harness]:
    async with e2e.running(tmp_path) as h:
        yield h


async def test_two_start_modals_submitted_at_once_give_one_incident(harness: e2e.Harness) -> None:
    h = harness
    for user in (e2e.REQ, e2e.LEAD):
        await h.driver.slash_command(text="start t1 broken", user_id=user, channel_id=e2e.CH)
    await h.idle()
    values = {"target": "t1", "triggers": ["data_corruption"], "severity": "P1", "impact": "High",
              "business_risk": "Critical", "reason": "phase 3 broke the database"}
    rs = await asyncio.gather(*(h.driver.view_submission("rb_start", values=values, user_id=u)
                                for u in (e2e.REQ, e2e.LEAD)))
    await h.idle()
    assert all(r.status == 200 for r in rs)
    incs = await h.services.store.incidents()
    assert len(incs) == 1
    loser = e2e.LEAD if incs[0].requester == e2e.REQ else e2e.REQ
    told = [e.text for e in h.fake.ephemerals if e.user == loser]
    assert told and f"*{incs[0].id}* is already active on `t1`" in told[-1]
    assert len([m for m in h.fake.messages(e2e.CH) if not m.is_reply]) == 1
    figures["starts"] = "two starts on one target -> 1 incident (20 racing creations over 2 replicas -> 1)"


# ----------------------------------------------------------------------------- never half restored

RESTORE_RUNBOOK = textwrap.dedent("""\
    name: restore
    phases:
      - id: p
        title: P
        steps:
          - {id: stop_app, title: Stop, kind: command, idempotent: true, run: "{{ target.pm_stop | raw }}"}
          - id: restore
            title: Restore
            kind: sqlite
            op: {op}
            idempotent: true
            destructive: true
            timeout: 600
            params: {params}
          - {id: start_app, title: Start, kind: command, idempotent: true, run: "{{ target.pm_start | raw }}"}
    """)


def _restore_params(strategy: str, sandbox: Sandbox) -> tuple[str, str]:
    if strategy == "A":
        return "selective_restore", f'{{backup: "{sandbox.backup_path}", tables: [projects, phases, step_progress]}}'
    if strategy == "B":
        with sqlite3.connect(sandbox.db_path) as conn:
            point = conn.execute("SELECT MIN(id) - 1 FROM change_history WHERE deployment = ?",
                                 (sandbox.deployment_version,)).fetchone()[0]
        return "transaction_rollback", f"{{since_id: {point}}}"
    return "restore", f'{{backup: "{sandbox.backup_path}", corrupted_dir: "databases", journal_mode: wal}}'


def _reference(sandbox: Sandbox, strategy: str, tmp: Path) -> dict[str, str]:
    """The tables as the whole operation leaves them, run on a consistent copy (people's writes
    since the backup make that differ from the backup for A and B)."""
    tables = RESTORED[strategy]
    if strategy == "C":
        return {t: h for t, h in sandbox.backup_content_hash["tables"].items() if tables is None or t in tables}
    copy = tmp / "reference.db"
    sqlite_agent.run("backup", {"db": str(sandbox.db_path), "dest": str(copy)})
    if strategy == "A":
        sqlite_agent.run("selective_restore", {"db": str(copy), "backup": str(sandbox.backup_path), "tables": tables})
    else:
        with sqlite3.connect(copy) as conn:
            point = conn.execute("SELECT MIN(id) - 1 FROM change_history WHERE deployment = ?",
                                 (sandbox.deployment_version,)).fetchone()[0]
        sqlite_agent.run("transaction_rollback", {"db": str(copy), "since_id": point})
    return _hash(copy, tables)


def _state_of(sandbox: Sandbox, strategy: str, old: dict[str, str], want: dict[str, str]) -> str:
    tables = RESTORED[strategy]
    now = _hash(sandbox.db_path, tables)
    if now == want:
        return "restored"
    if now == old:
        return "old"
    return "between"


async def _abort_during(tmp_path: Path, strategy: str, delay: float) -> str:
    # More rows than the drill's: the destructive step lasts long enough to be aborted in.
    sandbox = await asyncio.to_thread(build_sandbox, tmp_path / "target", process_manager="procman", rows=3000)
    store = await Store.open(str(tmp_path / "state.db"))
    transport = LocalTransport(name="t")
    try:
        op, params = _restore_params(strategy, sandbox)
        (tmp_path / "rb.yml").write_text(RESTORE_RUNBOOK.replace("{op}", op).replace("{params}", params))
        # The target's python starts half a second late, so the abort (at most 0.15 s after the
        # step began) always lands while the destructive step runs, however fast the machine.
        slow = tmp_path / "slow-python3"
        slow.write_text(f'#!/bin/sh\nsleep 0.5\nexec {shlex.quote(sandbox.settings()["python"])} "$@"\n')
        slow.chmod(0o755)
        settings_ = TargetSettings.model_validate(
            {"name": "t", "transport": "local", **sandbox.settings(), "python": str(slow)})
        engine = Engine(store, load_runbook(tmp_path / "rb.yml"), {"t": Target(settings_, transport)},
                        artifacts_dir=tmp_path / "art")
        old = _hash(sandbox.db_path, RESTORED[strategy])
        want = await asyncio.to_thread(_reference, sandbox, strategy, tmp_path)
        inc = await store.create_incident(target="t", runbook="restore")
        running = asyncio.create_task(engine.run(inc.id))
        for _ in range(12000):
            if "restore" in await store.latest_runs(inc.id):
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(delay)
        mid_step = (await store.latest_runs(inc.id))["restore"].status is StepStatus.RUNNING
        await engine.request_abort(inc.id, user="U0COMMANDER", reason="abort mid-restore")
        inc = await asyncio.wait_for(running, 120)
        assert mid_step, f"the abort after {delay:.3f} s came after the destructive step; make it longer"
        assert inc.status is Status.ABORTED, inc.status
        runs = await store.latest_runs(inc.id)
        assert runs["restore"].status is StepStatus.DONE  # the running step ends, whole
        assert "start_app" not in runs  # nothing after it
        state = _state_of(sandbox, strategy, old, want)
        assert state in ("old", "restored"), f"{strategy}: database between old and restored"
        return state
    finally:
        await transport.close()
        await store.close()
        await asyncio.to_thread(sandbox.stop)


@pytest.mark.parametrize("strategy", ["A", "B", "C"])
async def test_abort_during_a_destructive_step_never_leaves_it_between(strategy: str, tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}-{strategy}")
    seen = [await _abort_during(tmp_path / f"r{i}", strategy, rng.uniform(0, 0.15)) for i in range(3)]
    figures[f"abort {strategy}"] = "/".join(seen)


@pytest.mark.parametrize("strategy", ["A", "B", "C"])
async def test_destructive_op_killed_on_the_target_never_leaves_it_between(
    strategy: str, tmp_path: Path, pristine: Sandbox,
) -> None:
    """The agent killed by the target-side timeout at seeded moments of the operation."""
    rng = random.Random(f"{SEED}-kill-{strategy}")
    states: list[str] = []
    want = await asyncio.to_thread(_reference, pristine, strategy, tmp_path)  # the whole operation's result
    for i in range(8):
        work = tmp_path / f"k{i}"
        (work / "databases").mkdir(parents=True)
        db = work / "databases" / "production.db"
        shutil.copy(pristine.db_path, db)
        old = _hash(db, RESTORED[strategy])
        op, _ = _restore_params(strategy, pristine)
        params: dict[str, Any] = {"db": str(db)}
        if strategy == "A":
            params.update(backup=str(pristine.backup_path), tables=RESTORED["A"])
        elif strategy == "B":
            with sqlite3.connect(db) as conn:
                params["since_id"] = conn.execute("SELECT MIN(id) - 1 FROM change_history WHERE deployment = ?",
                                                  (pristine.deployment_version,)).fetchone()[0]
        else:
            params.update(backup=str(pristine.backup_path), corrupted_dir=str(work / "databases"))
        transport = LocalTransport(root=str(work))
        started = time.monotonic()
        try:
            await sqlite_op(transport, op, params, timeout=rng.uniform(0.05, 0.5))
        except ActionError:
            pass  # killed, or refused: the database must still be whole
        finally:
            await transport.close()
        await asyncio.sleep(max(0.0, 0.6 - (time.monotonic() - started)))  # `timeout -k` has ended it
        tables = RESTORED[strategy]
        now = _hash(db, tables)
        state = "restored" if now == want else "old" if now == old else "between"
        assert state != "between", f"{strategy}: killed op left the database between old and restored"
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        states.append(state)
    figures[f"kill {strategy}"] = "/".join(states)


def test_guardrail_figures(proof_report: Callable[[str], None]) -> None:
    """Runs last in this module: one line for what held."""
    if not figures:
        pytest.skip("the guardrail tests did not run")
    aborts = ", ".join(f"{k}: {v}" for k, v in sorted(figures.items()) if k.startswith(("abort", "kill")))
    proof_report(f"guardrails: hold — restore refused for {figures.get('refused', 0)} corrupted backups, "
                 f"done for {figures.get('restored', 0)} that still verified; {figures.get('verify', '')}; "
                 f"{figures.get('starts', '')}; never half restored ({aborts})")
