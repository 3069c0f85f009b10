"""The bot process killed with SIGKILL during a step, then started again.

A step's start is committed before its side effect, so the restarted engine finds it
'running': an idempotent step is re-run, any other waits for a person.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

RUNBOOK = textwrap.dedent("""\
    name: crash
    phases:
      - id: p
        title: P
        steps:
          - id: first
            title: First
            kind: command
            idempotent: true
            run: "echo first >> log.txt"
          - id: once
            title: Not idempotent
            kind: command
            idempotent: false
            timeout: 20
            run: "echo once-start >> log.txt; sleep {sleep}; echo once-end >> log.txt"
          - id: again
            title: Idempotent
            kind: command
            idempotent: true
            timeout: 20
            run: "echo again-start >> log.txt; sleep {sleep2}; echo again-end >> log.txt"
    """)
ROOT = Path(__file__).resolve().parent.parent


def _runner(tmp: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash_runner", str(tmp / "state.db"), str(tmp / "work"),
         str(tmp / "runbook.yml"), *extra],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )


def _wait_for(path: Path, text: str, proc: subprocess.Popen[str], limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        if proc.poll() is not None:
            pytest.fail(f"runner ended early: {proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.05)
    pytest.fail(f"{text!r} never appeared in {path}")


def _finish(proc: subprocess.Popen[str]) -> dict[str, str]:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)  # the bot only: its remote commands live on
    proc.wait(timeout=10)


def _killed_at(tmp: Path, marker: str, *extra: str) -> dict[str, str]:
    """Run the bot (with ``extra`` arguments) until ``marker`` is in the target's log, kill it there,
    and run it again until it stops: the state it stops in."""
    proc = _runner(tmp, *extra)
    _wait_for(tmp / "work" / "log.txt", marker, proc)
    _kill(proc)
    return _finish(_runner(tmp))


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    (tmp_path / "work").mkdir()
    return tmp_path


def test_killed_during_a_non_idempotent_step_waits_for_a_person(tmp: Path) -> None:
    (tmp / "runbook.yml").write_text(RUNBOOK.format(sleep=3, sleep2=0))
    log = tmp / "work" / "log.txt"
    state = _killed_at(tmp, "once-start")
    assert state == {"status": "waiting", "waiting": "resume", "step": "once"}
    # nothing ran the step again on its own
    assert log.read_text().count("once-start") == 1
    assert "again-start" not in log.read_text()
    # a person says it did run: mark done, and the rest goes on
    state = _finish(_runner(tmp, "--answer", "once=mark_done"))
    assert state["status"] == "completed"
    assert log.read_text().count("once-start") == 1
    assert log.read_text().count("again-end") == 1


def test_killed_during_an_idempotent_step_re_runs_it(tmp: Path) -> None:
    (tmp / "runbook.yml").write_text(RUNBOOK.format(sleep=0, sleep2=3))
    log = tmp / "work" / "log.txt"
    state = _killed_at(tmp, "again-start")
    assert state["status"] == "completed"
    text = log.read_text()
    assert text.count("first") == 1 and text.count("once-start") == 1
    assert text.count("again-start") == 2  # re-run after the crash
    assert text.count("again-end") >= 1


COMPENSATION_RUNBOOK = textwrap.dedent("""\
    name: crash-comp
    phases:
      - id: p
        title: P
        steps:
          - id: change
            title: Change
            kind: command
            idempotent: true
            run: "echo changed >> log.txt"
          - id: pick
            title: Pick
            kind: choice
            prompt: Which?
            options: [{value: "A", label: "A"}]
    compensation:
      steps:
        - id: undo
          title: Undo the change
          kind: command
          idempotent: {idempotent}
          undoes: [change]
          timeout: 20
          run: "echo undo-start >> log.txt; sleep 3; echo undo-end >> log.txt"
        - id: after
          title: After the undo
          kind: command
          idempotent: true
          run: "echo after >> log.txt"
    """)


@pytest.mark.parametrize("idempotent", [True, False])
def test_killed_during_the_compensation_resumes_it(tmp: Path, idempotent: bool) -> None:
    (tmp / "runbook.yml").write_text(COMPENSATION_RUNBOOK.replace("{idempotent}", str(idempotent).lower()))
    log = tmp / "work" / "log.txt"
    assert _finish(_runner(tmp)) == {"status": "waiting", "waiting": "choice", "step": "pick"}
    state = _killed_at(tmp, "undo-start", "--abort", "wrong deployment")  # the bot dies in the compensation
    if idempotent:
        # The compensation resumes by itself: the interrupted undo runs again, then the rest.
        assert state == {"status": "aborted", "waiting": None, "step": None}
        assert log.read_text().count("undo-start") == 2 and log.read_text().count("after") == 1
        return
    # Not idempotent: a person says whether it ran; there is no Abort in a compensation.
    assert state == {"status": "compensating", "waiting": "resume", "step": "undo"}
    assert log.read_text().count("undo-start") == 1 and "after" not in log.read_text()
    state = _finish(_runner(tmp, "--answer", "undo=rerun"))
    assert state == {"status": "aborted", "waiting": None, "step": None}
    assert log.read_text().count("undo-start") == 2 and log.read_text().count("after") == 1
