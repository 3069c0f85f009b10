"""The building blocks of the incident thread's messages.

A message is ``Rendered`` from the store's state (``ThreadState``, loaded in one go by
``load_state``); the modules beside this one render each kind of message
(``bot.slack.status``, ``approval``, ``questions``, ``outcome``), ``bot.slack.thread``
puts them in thread order and ``bot.slack.publisher`` makes Slack match.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slack_sdk.models.blocks import Block, MarkdownTextObject, SectionBlock

from bot.core.lifecycle import Status
from bot.core.runbook import Runbook
from bot.record.viewmodel import IncidentView, build
from bot.state.store import Approval, Artifact, Incident, JournalEvent, StabilityCheck, StepRun, Store

SECTION_LIMIT = 3000
MAX_BLOCKS = 50

# Action ids the handlers listen to.
APPROVE = "rb_approve"
REJECT = "rb_reject"
ANSWER = "rb_answer"     # rb_answer_<n>: buttons; rb_answer_select: the select menu
P4_OVERRIDE = "rb_p4_override"

STATUS_WORDS = {
    Status.OPEN: "open",
    Status.SCHEDULED: "scheduled",
    Status.RUNNING: "running",
    Status.WAITING: "waiting for a person",
    Status.COMPENSATING: "stopping: undoing what ran",
    Status.COMPLETED: "completed",
    Status.FAILED: "failed",
    Status.ABORTED: "aborted",
    Status.REJECTED: "rejected",
    Status.CLOSED: "closed (no rollback)",
}
STATUS_ICONS = {
    Status.OPEN: "🟡", Status.SCHEDULED: "🗓️", Status.RUNNING: "🔄", Status.WAITING: "⏸️", Status.COMPENSATING: "↩️",
    Status.COMPLETED: "✅", Status.FAILED: "❌", Status.ABORTED: "🛑", Status.REJECTED: "🚫",
    Status.CLOSED: "⚪",
}


# ---------------------------------------------------------------- value encoding


def answer_value(incident_id: str, run_id: int, index: int) -> str:
    """The value of an answer button or select option: incident, step run, option index."""
    return f"{incident_id}|{run_id}|{index}"


def parse_answer_value(value: str) -> tuple[str, int, int]:
    """Inverse of ``answer_value``; ``ValueError`` for anything else."""
    parts = value.split("|")
    if len(parts) != 3 or not parts[0].startswith("RB-"):
        raise ValueError(f"not an answer value: {value[:60]!r}")
    return parts[0], int(parts[1]), int(parts[2])



# ---------------------------------------------------------------- rendering


@dataclass
class Rendered:
    """One message as Slack gets it."""

    key: str
    text: str
    blocks: list[Block] = field(default_factory=list)
    broadcast: bool = False
    file: Path | None = None      # an upload instead of a message
    in_channel: bool = False      # the root message

    def payload(self) -> list[dict[str, Any]]:
        """The blocks as dicts, checked against Slack's limits by slack_sdk."""
        if len(self.blocks) > MAX_BLOCKS:
            raise ValueError(f"{self.key}: {len(self.blocks)} blocks (Slack allows {MAX_BLOCKS})")
        return [b.to_dict() for b in self.blocks]

    def digest(self) -> str:
        """A hash of what Slack shows, to skip edits that change nothing."""
        if self.file is not None:
            return "file:" + str(self.file)
        raw = json.dumps([self.text, self.payload()], sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()


def clip(text: str, limit: int = SECTION_LIMIT - 100) -> str:
    """Text cut to fit a section, marked when cut."""
    return text if len(text) <= limit else text[: limit - 2] + " …"


def sections(lines: Iterable[str], limit: int = SECTION_LIMIT - 100) -> list[Block]:
    """Lines packed into as few sections as fit Slack's 3000 characters each."""
    blocks: list[Block] = []
    chunk = ""
    for line in lines:
        line = clip(line, limit)
        if chunk and len(chunk) + 1 + len(line) > limit:
            blocks.append(SectionBlock(text=MarkdownTextObject(text=chunk)))
            chunk = line
        else:
            chunk = f"{chunk}\n{line}" if chunk else line
    if chunk:
        blocks.append(SectionBlock(text=MarkdownTextObject(text=chunk)))
    return blocks



def esc(text: str) -> str:
    """Escape Slack's control characters in user-typed text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")



def when(at: dt.datetime | None) -> str:
    """A time of day in UTC, or a dash."""
    return at.astimezone(dt.UTC).strftime("%H:%M:%S UTC") if at else "—"



def duration_text(seconds: float | None) -> str:
    """A duration as ``12.3s`` or ``4m05s`` (empty when unknown)."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


@dataclass
class ThreadState:
    """Everything the thread is rendered from, loaded in one go."""

    incident: Incident
    view: IncidentView
    runs: list[StepRun]
    approvals: list[Approval]
    artifacts: list[Artifact]
    checks: list[StabilityCheck] = field(default_factory=list)
    events: list[JournalEvent] = field(default_factory=list)


async def load_state(store: Store, runbook: Runbook, incident_id: str) -> ThreadState:
    """Read the incident, its step runs, clicks, artifacts, stability checks and journal."""
    inc = await store.incident(incident_id)
    runs = await store.step_runs(incident_id)
    latest: dict[str, StepRun] = {}
    for r in runs:
        latest[r.step_id] = r
    return ThreadState(inc, build(runbook, inc, latest), runs, await store.approvals(incident_id),
                       await store.artifacts(incident_id), await store.stability_checks(incident_id),
                       await store.events(incident_id))


__all__ = [
    "ANSWER",
    "APPROVE",
    "P4_OVERRIDE",
    "REJECT",
    "STATUS_ICONS",
    "STATUS_WORDS",
    "Rendered",
    "ThreadState",
    "answer_value",
    "clip",
    "duration_text",
    "esc",
    "load_state",
    "parse_answer_value",
    "sections",
    "when",
]
