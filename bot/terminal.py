"""The drill's terminal view: the phase/step checklist, updated in place."""

from __future__ import annotations

import sys
from typing import TextIO

from bot.viewmodel import SYMBOLS, IncidentView, short


def render_lines(view: IncidentView, *, width: int = 110) -> list[str]:
    """The checklist as lines of text."""
    inc = view.incident
    head = f"{inc.id}  target {inc.target}  {inc.severity or ''} {inc.decision or ''}  [{inc.status.value}]"
    lines = [head]
    for phase in view.phases:
        dur = f" {phase.duration:.2f}s" if phase.duration else ""
        lines.append(f"{SYMBOLS.get(phase.status, '?')} {phase.title}{dur}")
        for s in phase.steps:
            dur = f" ({s.duration:.2f}s)" if s.duration is not None else ""
            facts = "; ".join(f"{k}: {short(v, 48)}" for k, v in list(s.facts.items())[:3])
            line = f"    {SYMBOLS.get(s.status, '?')} {s.title}{dur}" + (f" — {facts}" if facts else "")
            if s.status in ("failed", "interrupted") and s.error:
                line += f" — {short(s.error, 60)}"
            lines.append(line[:width])
    if view.stopped is not None:
        lines += [line[:width] for line in view.stopped.lines()]
    return lines


class TerminalView:
    """Redraws in place on a terminal; prints each step's change once otherwise."""

    def __init__(self, out: TextIO | None = None, *, live: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self._drawn = 0
        self._seen: dict[str, str] = {}

    def show(self, view: IncidentView) -> None:
        """Draw the current state."""
        if self.live:
            lines = render_lines(view)
            if self._drawn:
                self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self.out.write("\n".join(lines) + "\n")
            self._drawn = len(lines)
        else:
            for phase in view.phases:
                for s in phase.steps:
                    if s.status != "pending" and self._seen.get(s.id) != f"{s.status}{s.attempt}":
                        self._seen[s.id] = f"{s.status}{s.attempt}"
                        dur = f" ({s.duration:.2f}s)" if s.duration is not None else ""
                        self.out.write(f"{SYMBOLS.get(s.status, '?')} {phase.id}/{s.id}: {s.status}{dur}\n")
        self.out.flush()
