"""The drill's terminal view: what runs now, fitted to the terminal.

On a terminal it is a ``rich`` Live display, redrawn in place and never taller than the
terminal: the incident header, a one-line summary of the finished phases, the current
phase with its steps (a window around the running step when they do not all fit), the
stability checks as they run, what the incident waits for, and after an abort the
compensation's account. Before the incident exists it shows what is being prepared, so
nothing is blank while the sandbox is built. Anywhere else (a pipe, a file, CI) it
writes one line per change and never redraws.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from bot.clock.stability import check_line, sparkline
from bot.core.lifecycle import FINAL
from bot.record.viewmodel import SYMBOLS, IncidentView, PhaseView, StepView, short
from bot.state.store import StabilityCheck

STYLES = {"done": "green", "failed": "bold red", "interrupted": "bold red", "waiting": "bold yellow",
          "running": "bold cyan", "skipped": "dim", "pending": "dim"}
#: Lines of stability checks shown at most (the newest), when the terminal has room.
MAX_CHECK_LINES = 6


def _short_title(title: str) -> str:
    """``Phase 3`` for ``Phase 3: Database Restoration``; other titles as they are."""
    return title.split(":", 1)[0] if title.startswith("Phase ") else title


def _current(view: IncidentView) -> PhaseView | None:
    """The phase to show in full: the one running or waiting, else the last one reached."""
    for phase in view.phases:
        if phase.status in ("running", "waiting", "failed", "interrupted"):
            return phase
    reached = [p for p in view.phases if p.status != "pending"]
    if view.incident.status in FINAL and reached:
        return reached[-1]
    pending = [p for p in view.phases if p.status == "pending"]
    return pending[0] if pending else (reached[-1] if reached else None)


def _focus(phase: PhaseView) -> int:
    """Index of the step that matters now: running, waiting or failed, else the first pending."""
    for wanted in (("running",), ("waiting", "failed", "interrupted"), ("pending",)):
        for i, s in enumerate(phase.steps):
            if s.status in wanted:
                return i
    return len(phase.steps) - 1


def _step_line(s: StepView, width: int) -> Text:
    line = Text(f"  {SYMBOLS.get(s.status, '?')} ", style=STYLES.get(s.status, ""))
    line.append(s.title, style="bold" if s.status in ("running", "waiting") else "")
    if s.duration is not None:
        line.append(f" ({s.duration:.2f}s)", style="dim")
    if s.attempt > 1:
        line.append(f" · attempt {s.attempt}", style="dim")
    facts = "; ".join(f"{k}: {short(v, 40)}" for k, v in list(s.facts.items())[:3])
    if facts:
        line.append(f" — {facts}", style="dim")
    if s.status in ("failed", "interrupted") and s.error:
        line.append(f" — {short(s.error, 100)}", style="red")
    return line


def _window(steps: list[StepView], focus: int, room: int, width: int) -> list[Text]:
    """At most ``room`` lines: the steps around ``focus``, the others counted on one line each side."""
    n = len(steps)
    if room <= 0:
        return []
    if n <= room:
        return [_step_line(s, width) for s in steps]
    if room <= 2:
        more = [Text(f"  … {n - 1} other steps", style="dim")] if room == 2 else []
        return [_step_line(steps[focus], width), *more]
    k = room - 2  # steps shown when both sides are counted on a line of their own
    lo = max(0, focus - (k - 1) // 3)  # a few steps before the focus, more after it
    hi = min(n, lo + k)
    lo = max(0, hi - k)
    if lo == 0:
        hi = min(n, hi + 1)
    elif hi == n:
        lo -= 1
    out: list[Text] = []
    if lo > 0:
        done = sum(1 for s in steps[:lo] if s.status in ("done", "skipped"))
        out.append(Text(f"  … {lo} earlier step{'s' if lo != 1 else ''} ({done} done or skipped)", style="dim"))
    out += [_step_line(s, width) for s in steps[lo:hi]]
    if hi < n:
        out.append(Text(f"  … {n - hi} more step{'s' if n - hi != 1 else ''}", style="dim"))
    return out


def _stability(phase: PhaseView, checks: Sequence[StabilityCheck]) -> tuple[Text | None, list[Text]]:
    """The current phase's running (or last) stability series: a summary line and its check lines."""
    for s in phase.steps:
        plan = (s.waiting or {}).get("plan")
        if not plan or s.status == "pending":
            continue
        mine = [c for c in checks if c.step_id == s.id]
        if not mine and s.status != "waiting":
            continue
        run_id = max((c.run_id for c in mine), default=None)
        mine = [c for c in mine if c.run_id == run_id]
        total = int(plan.get("checks") or len(mine) or 1)
        ok = sum(1 for c in mine if c.outcome == "ok")
        head = Text(f"  ⏱ {short(s.title, 60)}: {len(mine)}/{total} checks, {ok} ok", style="cyan")
        spark = sparkline([c.latency_ms for c in mine])
        if spark:
            head.append(f"  {spark}")
        return head, [Text(f"    {check_line(c, total)}", style="red" if c.outcome == "failed" else "")
                      for c in mine]
    return None, []


def _header(view: IncidentView) -> Text:
    inc = view.incident
    line = Text(f"{inc.id}", style="bold")
    line.append(f"  {inc.target}  {inc.severity or ''} {inc.decision or ''}  ")
    style = "bold green" if inc.status.value == "completed" else (
        "bold red" if inc.status in FINAL else "bold cyan")
    line.append(f"[{inc.status.value}]", style=style)
    if view.elapsed is not None:
        line.append(f"  {view.elapsed:.1f}s", style="dim")
    return line


def _finished(view: IncidentView, current: PhaseView | None, width: int) -> Text | None:
    done = [p for p in view.phases if p is not current and p.status in ("done", "skipped", "failed")]
    if not done:
        return None
    for durations in (True, False):  # without the durations when they would push phases off the row
        line = Text("")
        for i, p in enumerate(done):
            if i:
                line.append(" · ", style="dim")
            line.append(f"{SYMBOLS.get(p.status, '?')} {_short_title(p.title)}", style=STYLES.get(p.status, ""))
            if durations and p.duration:
                line.append(f" {p.duration:.1f}s", style="dim")
        if line.cell_len <= width:
            break
    return line


def frame(view: IncidentView, checks: Sequence[StabilityCheck] = (), *, width: int, height: int) -> list[Text]:
    """The lines of one frame, at most ``height`` of them, each cut to one row of ``width``."""
    height = max(1, height)
    current = _current(view)
    top = [_header(view)]
    finished = _finished(view, current, width)
    if finished is not None:
        top.append(finished)
    bottom: list[Text] = []
    stab_head, stab_lines = (None, []) if current is None else _stability(current, checks)
    waiting = next((s for s in (current.steps if current else []) if s.waiting and not s.answered
                    and s.status in ("waiting", "failed", "interrupted")
                    and s.waiting.get("kind") != "stability"), None)
    if waiting is not None:
        prompt = (waiting.waiting or {}).get("prompt") or waiting.title
        bottom.append(Text(f"⏸ waiting for a person: {short(str(prompt), 200)}", style="yellow"))
    if view.stopped is not None:
        bottom += [Text(line, style="bold" if line.startswith("Production") else "") for line in view.stopped.lines()]
    if current is None:
        return _fit(top + bottom, height, width)
    title = Text(f"{SYMBOLS.get(current.status, '?')} {current.title}", style="bold")
    room = height - len(top) - 1 - (1 if stab_head else 0)
    # The compensation's account and the prompt come before older checks and other steps.
    keep_bottom = bottom[: max(0, room - 1)]
    room -= len(keep_bottom)
    check_room = min(len(stab_lines), MAX_CHECK_LINES, max(0, room // 3) if stab_lines else 0)
    if stab_lines and check_room == 0 and room >= 2:
        check_room = 1  # the newest check is always shown when there is any room
    steps = _window(current.steps, _focus(current), room - check_room, width)
    body = [title, *steps]
    if stab_head is not None:
        body.append(stab_head)
        body += stab_lines[len(stab_lines) - check_room:] if check_room else []
    return _fit(top + body + keep_bottom, height, width)


def _fit(lines: list[Text], height: int, width: int) -> list[Text]:
    out = []
    for line in lines[:height]:
        line.no_wrap = True
        line.overflow = "ellipsis"
        line.truncate(max(1, width), overflow="ellipsis")
        out.append(line)
    return out


class TerminalView:
    """A Live frame on a terminal; one line per change anywhere else."""

    def __init__(self, out: TextIO | None = None, *, live: bool | None = None,
                 size: tuple[int, int] | None = None) -> None:
        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self._seen: dict[str, str] = {}
        self._checks_seen: set[int] = set()
        self._notes: list[str] = []
        self._view: IncidentView | None = None
        self._checks: Sequence[StabilityCheck] = ()
        self._ended = False
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._console: Console | None = None
        self._live: Live | None = None
        if self.live:
            # ``size`` (columns, rows) fixes the terminal's size; by default rich asks the terminal.
            width, height = size if size is not None else (None, None)
            self._console = Console(file=self.out, force_terminal=True, width=width, height=height)
            self._live = Live(console=self._console, get_renderable=self._renderable, auto_refresh=True,
                              refresh_per_second=4, transient=False, redirect_stdout=False,
                              redirect_stderr=False, vertical_overflow="crop")
            self._live.start()

    # ------------------------------------------------------------ input

    def note(self, text: str) -> None:
        """What is being prepared before (or beside) the incident, e.g. the sandbox being built."""
        with self._lock:
            self._notes.append(text)
        if not self.live:
            self.out.write(f"· {text}\n")
            self.out.flush()

    def show(self, view: IncidentView, checks: Sequence[StabilityCheck] = ()) -> None:
        """Take the incident's current state (and its stability checks) and draw it."""
        with self._lock:
            self._view, self._checks = view, list(checks)
        if self.live:
            if self._live is not None:
                self._live.refresh()
            return
        self._lines(view, checks)
        self.out.flush()

    def close(self) -> None:
        """Leave the last frame on screen and stop redrawing."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    # ------------------------------------------------------------ drawing

    def _renderable(self) -> RenderableType:
        assert self._console is not None
        size = self._console.size
        height = max(1, size.height - 1)  # the line the cursor rests on stays free
        with self._lock:
            view, checks, notes = self._view, self._checks, list(self._notes)
        if view is None:
            waited = time.monotonic() - self._started
            text = Text(f"{notes[-1] if notes else 'starting'} ({waited:.0f}s)", no_wrap=True, overflow="ellipsis")
            text.truncate(max(1, size.width - 3), overflow="ellipsis")
            head = Spinner("dots", text=text)
            older = [Text(f"  ✓ {n}", style="dim") for n in notes[:-1]][-(height - 1):] if height > 1 else []
            return Group(head, *_fit(older, height - 1, size.width))
        return Group(*frame(view, checks, width=size.width, height=height))

    def _lines(self, view: IncidentView, checks: Sequence[StabilityCheck]) -> None:
        planned: dict[str, int] = {}
        for phase in view.phases:
            for s in phase.steps:
                plan = (s.waiting or {}).get("plan")
                if plan:
                    planned[s.id] = int(plan.get("checks") or 0)
                if s.status != "pending" and self._seen.get(s.id) != f"{s.status}{s.attempt}":
                    self._seen[s.id] = f"{s.status}{s.attempt}"
                    dur = f" ({s.duration:.2f}s)" if s.duration is not None else ""
                    self.out.write(f"{SYMBOLS.get(s.status, '?')} {phase.id}/{s.id}: {s.status}{dur}\n")
        for c in checks:
            if c.id not in self._checks_seen:
                self._checks_seen.add(c.id)
                self.out.write(f"    {c.step_id} {check_line(c, planned.get(c.step_id) or c.index + 1)}\n")
        if view.stopped is not None and view.incident.status in FINAL and not self._ended:
            self._ended = True
            for line in view.stopped.lines():
                self.out.write(line + "\n")
