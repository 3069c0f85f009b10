"""``rollback-bot plan`` against a real sshd target: every step rendered, a hash that changes
exactly when the runbook or a target setting changes, and the plan's commands equal to
what the engine really sends."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from actions import agent_cache
from actions.shellsession import wrap_command
from actions.sqlite import agent_bundle, agent_sha256
from actions.transport import ShellResult, Transport
from bot.cli.main import main
from bot.core.engine import Engine, Target
from bot.core.runbook import default_runbook, default_runbook_text, parse_runbook
from bot.core.targets import TargetSettings, open_transport
from bot.plan.render import build_plan, plan_context
from bot.state.store import Store
from tests.sshd import SshdTarget


def _workdir(tmp_path: Path) -> Path:
    work = tmp_path / "app"
    (work / "databases").mkdir(parents=True)
    for name in ("production_backup_20261101_000000.db", "production_backup_20261102_000000.db"):
        with sqlite3.connect(work / "databases" / name) as conn:
            conn.execute("CREATE TABLE t (x)")
    return work


def _config(tmp_path: Path, sshd: SshdTarget, work: Path, *, runbook: str | None = None, **target: Any) -> Path:
    data: dict[str, Any] = {
        "slack": {"channels": ["C0INCIDENT1"]},
        "roles": {"tech_lead": {"users": ["U0LEAD"]}},
        "targets": [{"name": "staging", "transport": "ssh", "host": sshd.host, "port": sshd.port,
                     "user": sshd.username, "key_file": str(sshd.client_key_path),
                     "known_hosts": str(sshd.known_hosts_path), "workdir": str(work), **target}],
    }
    if runbook is not None:
        data["runbook"] = runbook
    path = tmp_path / "bot.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def _plan(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["plan", *argv])
    return code, out.getvalue(), err.getvalue()


def _json_plan(config: Path, *extra: str) -> dict[str, Any]:
    code, out, err = _plan("--config", str(config), "--target", "staging", "--json", *extra)
    assert code == 0, err
    return dict(json.loads(out))


WRITES = {"A": "selective_restore", "B": "transaction_rollback", "C": "full_restore"}


@pytest.mark.parametrize("strategy", ["A", "B", "C"])
def test_plan_renders_every_step_for_each_strategy(tmp_path: Path, sshd_target: SshdTarget, strategy: str) -> None:
    work = _workdir(tmp_path)
    config = _config(tmp_path, sshd_target, work, pm_restart="pm2 restart app --api-token=s3cr3t-value-x")
    plan = _json_plan(config, "--strategy", strategy, "--probe")
    rb = default_runbook()
    compensation = [s.id for s in rb.compensation.steps] if rb.compensation else []
    assert [s["id"] for s in plan["steps"]] == [s.id for _, s in rb.steps()] + compensation
    assert all(s["state"] == "compensation" for s in plan["steps"][len(plan["steps"]) - len(compensation):])
    by_id = {s["id"]: s for s in plan["steps"]}
    assert not [s["id"] for s in plan["steps"] if "error" in s]
    # The chosen strategy's destructive step runs; the others' are skipped.
    for strat, step in WRITES.items():
        assert by_id[step]["state"] == ("runs" if strat == strategy else "skipped"), step
    assert by_id[WRITES[strategy]]["destructive"]
    rendered = 0
    for s in plan["steps"]:
        if s["state"] == "skipped":
            continue
        if s["kind"] == "command":
            assert s["sent"].startswith(f"cd -- {work} && timeout -k 5 ")
            rendered += 1
        if s["kind"] == "sqlite":
            assert s["params"]["db"] and s["op"] in s["sent"]
            rendered += 1
        if s["kind"] == "http":
            assert s["url"].startswith("http")
            rendered += 1
    print(f"strategy {strategy}: {rendered} command/sqlite/http steps rendered of {len(plan['steps'])} steps")
    assert rendered >= 20
    text = json.dumps(plan)
    assert "s3cr3t-value-x" not in text and "--api-token=[REDACTED]" in text
    # --probe listed the backups from the sshd target, newest first; the hash does not include them.
    if strategy in ("A", "C"):
        listed = by_id["restore_backup"]["listed"]
        assert [Path(o["value"]).name for o in listed][:2] == ["production_backup_20261102_000000.db",
                                                                "production_backup_20261101_000000.db"]
    assert plan["plan_hash"] == _json_plan(config, "--strategy", strategy)["plan_hash"]
    assert by_id["strategy"]["chosen"] == strategy


def test_plan_hash_changes_with_runbook_or_target_and_nothing_else(tmp_path: Path, sshd_target: SshdTarget) -> None:
    work = _workdir(tmp_path)
    rb_path = tmp_path / "runbook.yml"
    rb_path.write_text(default_runbook_text())
    base = _json_plan(_config(tmp_path, sshd_target, work, runbook=str(rb_path)))["plan_hash"]
    assert _json_plan(_config(tmp_path, sshd_target, work, runbook=str(rb_path)))["plan_hash"] == base
    # Not the plan: roles and Slack settings, the markdown form, a probe.
    cfg = _config(tmp_path, sshd_target, work, runbook=str(rb_path))
    data = yaml.safe_load(cfg.read_text())
    data["roles"]["cto"] = {"users": ["U0CTO"]}
    data["slack"]["channels"].append("C0OTHER")
    cfg.write_text(yaml.safe_dump(data))
    assert _json_plan(cfg)["plan_hash"] == base
    assert _json_plan(cfg, "--probe")["plan_hash"] == base
    code, md, _ = _plan("--config", str(cfg), "--target", "staging")
    assert code == 0 and md.rstrip().endswith(f"plan hash: {base}")
    # A target setting.
    changed = _json_plan(_config(tmp_path, sshd_target, work, runbook=str(rb_path), pm_restart="systemctl restart app"))
    assert changed["plan_hash"] != base
    assert any("systemctl restart app" in s.get("command", "") for s in changed["steps"])
    # The runbook file, even by a comment only.
    rb_path.write_text(default_runbook_text() + "\n# reviewed\n")
    assert _json_plan(_config(tmp_path, sshd_target, work, runbook=str(rb_path)))["plan_hash"] != base


def test_plan_refuses_bad_input_with_one_line(tmp_path: Path, sshd_target: SshdTarget) -> None:
    config = _config(tmp_path, sshd_target, _workdir(tmp_path))
    for argv, word in ((["--target", "nope"], "no target 'nope'"),
                       (["--target", "staging", "--choice", "strategy=Z"], "'Z' is not one of A, B, C"),
                       (["--target", "staging", "--choice", "bogus=1"], "no choice step")):
        code, out, err = _plan("--config", str(config), *argv)
        assert code == 2 and out == "" and word in err and len(err.strip().splitlines()) == 1, err


class Recorder:
    """A transport that records every command before the real one runs it."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.sent: list[tuple[str, float, str | None]] = []

    async def run(self, command: str, *, timeout: float, cwd: str | None = None, stdin: str | None = None,
                  on_output: Any = None) -> ShellResult:
        self.sent.append((command, timeout, cwd))
        return await self.inner.run(command, timeout=timeout, cwd=cwd, stdin=stdin, on_output=on_output)

    async def get_file(self, remote: str, local: Path) -> None:
        await self.inner.get_file(remote, local)

    async def close(self) -> None:
        await self.inner.close()


RUNBOOK = """\
name: sent-equals-planned
phases:
  - id: p
    title: P
    steps:
      - id: note
        title: Note
        kind: command
        idempotent: true
        run: "printf 'path=%s\\n' {{ target.databases_dir }}/x_{{ incident.stamp }}.db"
        captures:
          path: {regex: "path=(.*)"}
      - id: use
        title: Use the capture
        kind: command
        idempotent: true
        destructive: true
        timeout: 30
        run: "echo {{ captures.note.path }} {{ incident.id }} > used.txt"
      - id: counts
        title: Counts
        kind: sqlite
        op: record_counts
        db: "{{ target.databases_dir }}/production_backup_20261101_000000.db"
        params: {tables: null}
"""


async def test_planned_commands_are_exactly_what_the_engine_sends(tmp_path: Path, sshd_target: SshdTarget) -> None:
    work = _workdir(tmp_path)
    settings = TargetSettings.model_validate({
        "name": "staging", "host": sshd_target.host, "port": sshd_target.port, "user": sshd_target.username,
        "key_file": sshd_target.client_key_path, "known_hosts": sshd_target.known_hosts_path, "workdir": str(work)})
    runbook = parse_runbook(RUNBOOK)
    recorder = Recorder(open_transport(settings))
    store = await Store.open(str(tmp_path / "state.db"))
    engine = Engine(store, runbook, {"staging": Target(settings, recorder)}, artifacts_dir=tmp_path / "artifacts")
    try:
        inc = await store.create_incident(target="staging", runbook=runbook.name, requester="U0REQ", reason="r")
        inc = await engine.run(inc.id)
        assert inc.status.value == "completed"
        ctx = await engine.context(inc.id)
        plan = build_plan(runbook, settings, ctx=plan_context(settings, incident=ctx["incident"],
                                                              captures=ctx["captures"], choices=ctx["choices"]))
    finally:
        await engine.aclose()
        await recorder.close()
        await store.close()
    sent = [wrap_command(c, timeout=t, cwd=cwd) for c, t, cwd in recorder.sent]
    planned = [s.detail["sent"] for s in plan.steps if s.kind == "command"]
    assert planned == sent[:2]
    assert inc.id in planned[1] and inc.stamp in planned[1]
    # The SQLite operation: the same command with the agent's source named by its sha256.
    command, timeout, cwd = recorder.sent[2]
    named = command.replace(shlex.quote(agent_cache.bootstrap(agent_bundle(), agent_cache.DEFAULT_DIR)),
                            f"<the SQLite agent, actions/sqlite_agent/, sha256 {agent_sha256()}>")
    assert plan.steps[2].detail["sent"] == wrap_command(named, timeout=timeout, cwd=cwd)
    print(f"planned == sent for {len(sent)} of {len(plan.steps)} steps")
    assert len(sent) == 3
