"""The default runbook's own commands on a real target: maintenance mode is idempotent."""

from __future__ import annotations

from pathlib import Path

from actions.local import LocalTransport
from actions.ssh import SSHTransport
from bot.core.runbook import CommandStep, default_runbook
from bot.core.targets import TargetSettings
from bot.core.templating import render_shell


def _command(step_id: str, workdir: Path) -> str:
    step = default_runbook().step(step_id)
    assert isinstance(step, CommandStep)
    settings = TargetSettings(name="t", transport="local", workdir=str(workdir),
                              pm_restart="echo restarted >> pm.log",
                              maintenance_message="Back in 30' — \"really\" $(soon)")
    return render_shell(step.run, {"target": settings.template_values()})


async def test_maintenance_mode_on_twice_and_off(transport: LocalTransport | SSHTransport, tmp_path: Path) -> None:
    work = tmp_path / "app dir"
    work.mkdir()
    env = work / ".env.production"
    env.write_text("APP_VERSION=phase-3.0.0\nDATABASE_PATH=databases/production.db\n")
    on = _command("maintenance_on", work)
    for _ in range(2):
        res = await transport.run(on, timeout=30, cwd=str(work))
        assert res.exit_status == 0, res.stderr
    lines = env.read_text().splitlines()
    assert lines.count("MAINTENANCE_MODE=true") == 1
    assert [ln for ln in lines if ln.startswith("MAINTENANCE_MESSAGE=")] == [
        "MAINTENANCE_MESSAGE=Back in 30' — \"really\" $(soon)"
    ]
    assert lines[:2] == ["APP_VERSION=phase-3.0.0", "DATABASE_PATH=databases/production.db"]
    assert (work / "pm.log").read_text().count("restarted") == 2
    off = _command("maintenance_off", work)
    for _ in range(2):
        res = await transport.run(off, timeout=30, cwd=str(work))
        assert res.exit_status == 0, res.stderr
    assert env.read_text() == "APP_VERSION=phase-3.0.0\nDATABASE_PATH=databases/production.db\n"
