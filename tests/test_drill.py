"""`rollback-bot drill`: the whole default runbook against the sandbox, for each strategy."""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import pytest

from bot.cli.main import main
from bot.core.lifecycle import Status
from bot.drill.run import print_result, run_drill

#: The plan's minutes as a few milliseconds: the drill's own default is 0.01.
FAST = 0.002
HAVE_SSHD = bool(shutil.which("sshd")) or os.path.exists("/usr/sbin/sshd")


@pytest.mark.parametrize("strategy", ["A", "B", "C"])
async def test_drill_passes_for_each_strategy(strategy: str, tmp_path: Path) -> None:
    out = io.StringIO()
    result = await run_drill(strategy=strategy, out=out, root=tmp_path / "drill", keep=True, time_scale=FAST)
    failed = [c for c in result.verdict.checks if not c.ok]
    assert not failed, failed
    assert result.status is Status.COMPLETED
    # People's writes since the backup: A loses the one on a row the deployment changed, C all.
    lost = {"A": 1, "B": 0, "C": 16}[strategy]
    assert result.verdict.data_loss_records == lost
    names = {c.name for c in result.verdict.checks}
    content = ("database content equals the chosen backup's" if strategy == "C"
               else "database equals the chosen point plus the legitimate writes")
    assert {content, "emergency backup verified", "access levels are the chosen point's",
            "data loss exactly as constructed", "maintenance mode off", "app healthy"} <= names
    print_result(result, out, kept=True)
    text = out.getvalue()
    assert "DRILL PASSED" in text and "Recovery time:" in text and f"Data loss: {lost} records" in text
    # the terminal view showed the checklist as it went, and the stability checks as they ran
    assert "restoration/" in text
    assert re.search(r"^    stability_checks [✓✗·]  1/15 ", text, re.MULTILINE), text[-3000:]
    # the ending names where the record is; without --keep it says it is gone and how to keep it
    assert f"Evidence archive: {result.evidence}" in text and f"Audit log: {result.audit_log}" in text
    assert result.report is not None and f"Report: {result.report}" in text and result.report.is_file()
    gone = io.StringIO()
    print_result(result, gone, kept=False)
    assert "removed with its evidence archive, report and audit log; run the drill with --keep" in gone.getvalue()
    assert "Evidence archive:" not in gone.getvalue()


async def test_drill_through_real_sshd(tmp_path: Path) -> None:
    if not HAVE_SSHD:
        if os.environ.get("CI"):
            pytest.fail("sshd is required in CI")
        pytest.skip("sshd not installed: apt-get install openssh-server")
    result = await run_drill(strategy="C", use_ssh=True, out=io.StringIO(), root=tmp_path / "drill",
                            time_scale=FAST)
    assert result.verdict.passed, result.verdict.checks
    assert result.status is Status.COMPLETED


def test_drill_command_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["drill", "--strategy", "B", "--time-scale", str(FAST)]) == 0
    assert "DRILL PASSED" in capsys.readouterr().out
