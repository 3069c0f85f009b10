"""The drill's terminal view: a frame that fits small terminals and keeps what runs now in
sight; one line per change when the output is not a terminal."""

from __future__ import annotations

import datetime as dt
import io
import re

import pytest
from rich.console import Console, Group

from bot.cli.terminal import TerminalView, frame
from bot.core.lifecycle import Status, StepStatus
from bot.core.runbook import Runbook, default_runbook
from bot.record.viewmodel import IncidentView, build
from bot.state.store import Incident, StabilityCheck, StepRun

T0 = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
RB = default_runbook()


def _incident(status: Status = Status.RUNNING) -> Incident:
    return Incident(id="RB-20261125-0001", target="sandbox", runbook=RB.name, status=status, severity="P1",
                    decision="IMMEDIATE", inputs={}, requester="U1", reason="drill", stamp="20261125_090000",
                    created_at=T0, updated_at=T0, started_at=T0, ended_at=None, abort_reason=None, channel=None,
                    thread_ts=None)


def _run(i: int, step_id: str, phase_id: str, status: StepStatus, waiting: dict[str, object] | None = None) -> StepRun:
    return StepRun(id=i, incident_id="RB-20261125-0001", step_id=step_id, phase_id=phase_id, attempt=1, status=status,
                   started_at=T0, ended_at=T0 if status is StepStatus.DONE else None,
                   duration=0.25 if status is StepStatus.DONE else None, exit_status=0, output_tail="",
                   output_digest=None, output_bytes=None, captures={"path": "/srv/x.db"}, error=None,
                   waiting=waiting, answer=None)


def _until(runbook: Runbook, stop_at: str, status: StepStatus,
           waiting: dict[str, object] | None = None) -> dict[str, StepRun]:
    """Every step before ``stop_at`` done, ``stop_at`` in ``status``."""
    runs: dict[str, StepRun] = {}
    for i, (phase, step) in enumerate(runbook.steps()):
        if step.id == stop_at:
            runs[step.id] = _run(i, step.id, phase.id, status, waiting)
            return runs
        runs[step.id] = _run(i, step.id, phase.id, StepStatus.DONE)
    raise KeyError(stop_at)


def _checks(n: int, run_id: int, failed: tuple[int, ...] = ()) -> list[StabilityCheck]:
    return [StabilityCheck(id=i + 1, incident_id="RB-20261125-0001", run_id=run_id, step_id="stability_checks",
                           index=i, due_at=T0 + dt.timedelta(minutes=i), at=T0 + dt.timedelta(minutes=i),
                           outcome="failed" if i in failed else "ok", status_code=503 if i in failed else 200,
                           body_status="maintenance" if i in failed else "ok", latency_ms=20.0 + i,
                           reason="status 503" if i in failed else "") for i in range(n)]


def _stability_view() -> tuple[IncidentView, list[StabilityCheck]]:
    runs = _until(RB, "stability_checks", StepStatus.WAITING, {"kind": "stability", "plan": {"checks": 15}})
    return build(RB, _incident(), runs), _checks(7, runs["stability_checks"].id, failed=(5,))


def _rendered(lines: list[object], width: int, height: int) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, height=height, force_terminal=False, color_system=None).print(Group(*lines))  # type: ignore[arg-type]
    return out.getvalue().splitlines()


@pytest.mark.parametrize("height", [15, 24])
def test_stability_checks_and_the_running_step_are_in_sight(height: int) -> None:
    view, checks = _stability_view()
    lines = frame(view, checks, width=80, height=height)
    shown = _rendered(lines, 80, height)  # type: ignore[arg-type]
    text = "\n".join(shown)
    assert len(shown) <= height and len(lines) <= height
    assert all(len(line) <= 80 for line in shown)
    assert shown[0].startswith("RB-20261125-0001")
    assert "System stability confirmation: health checks" in text
    assert "7/15 checks, 6 ok" in text
    assert re.search(r"7/15 \d\d:\d\d:\d\d\s+200 ok", text), text  # the newest check
    assert "Phase 3 " in shown[1] and "✓ Phase 1" in shown[1]  # the finished phases, on one line
    if height == 24:
        assert "6/15" in text and "status 503" in text  # older checks when there is room


@pytest.mark.parametrize("height", [15, 24])
def test_a_long_phase_shows_a_window_around_the_running_step(height: int) -> None:
    runs = _until(RB, "full_restore", StepStatus.RUNNING)
    view = build(RB, _incident(), runs)
    shown = _rendered(frame(view, [], width=72, height=height), 72, height)  # type: ignore[arg-type]
    text = "\n".join(shown)
    assert len(shown) <= height
    assert "◐ Full restore from the chosen backup" in text
    phase3 = next(p for p in RB.phases if p.id == "restoration")
    if height < len(phase3.steps) + 3:
        assert "earlier step" in text or "more step" in text
    assert "Phase 3: Database Restoration" in text


@pytest.mark.parametrize("height", [1, 2, 3, 5])
def test_tiny_terminals_still_show_the_header_and_never_overflow(height: int) -> None:
    view, checks = _stability_view()
    lines = frame(view, checks, width=40, height=height)
    assert 1 <= len(lines) <= height
    assert lines[0].plain.startswith("RB-20261125-0001")


def test_a_waiting_question_and_a_stopped_incident_are_stated() -> None:
    runs = _until(RB, "strategy", StepStatus.WAITING, {"kind": "choice", "prompt": "Choose the restoration method",
                                                       "options": []})
    view = build(RB, _incident(Status.WAITING), runs)
    text = "\n".join(line.plain for line in frame(view, [], width=100, height=15))
    assert "waiting for a person: Choose the restoration method" in text


def test_live_view_stays_within_the_terminal(tmp_path: object) -> None:
    out = io.StringIO()
    view, checks = _stability_view()
    tv = TerminalView(out, live=True, size=(70, 12))
    tv.note("Building the sandbox production")
    tv.show(view, checks)
    tv.close()
    raw = out.getvalue()
    last = re.split(r"\x1b\[1A", raw)[-1]
    final = [ln for ln in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", last).replace("\r", "").splitlines() if ln]
    assert 0 < len(final) <= 11  # the terminal's rows, less the cursor's line
    assert any("7/15" in ln for ln in final)


def test_without_a_terminal_one_line_per_change() -> None:
    out = io.StringIO()
    tv = TerminalView(out)
    assert not tv.live
    tv.note("Building the sandbox production")
    view, checks = _stability_view()
    tv.show(view, checks[:3])
    first = out.getvalue()
    tv.show(view, checks[:3])  # nothing changed: nothing written
    assert out.getvalue() == first
    tv.show(view, checks)
    lines = out.getvalue().splitlines()
    assert lines[0] == "· Building the sandbox production"
    assert "✓ emergency_response/maintenance_on: done (0.25s)" in lines
    assert "⏸ stabilization/stability_checks: waiting" in lines
    check_lines = [ln for ln in lines if ln.startswith("    stability_checks ")]
    assert len(check_lines) == 7 and "1/15" in check_lines[0] and "7/15" in check_lines[-1]
    assert "\x1b" not in out.getvalue()


def test_a_stopped_incident_states_what_production_is_in() -> None:
    from bot.core.compensation import Outcome, Trigger

    runs = _until(RB, "verify_restored", StepStatus.DONE)
    view = build(RB, _incident(Status.ABORTED), runs)
    view.stopped = Outcome(Trigger("abort", "aborted", "wrong target", "U1"), state=["maintenance mode off"],
                           undone=["Restrict database access to superusers — Put access levels back"],
                           not_undone=["Full restore from the chosen backup — left as it is"])
    text = "\n".join(line.plain for line in frame(view, [], width=100, height=15))
    assert "Production now: maintenance mode off" in text
    assert "Undone: Restrict database access" in text and "Not undone: Full restore" in text
    out = io.StringIO()
    tv = TerminalView(out)
    tv.show(view)
    tv.show(view)
    assert out.getvalue().count("Production now: maintenance mode off") == 1
