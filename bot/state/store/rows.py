"""The rows the store hands out, as dataclasses, and the errors its callers catch."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from bot.core.lifecycle import Status, StepStatus


def utcnow() -> dt.datetime:
    """Now, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)



def aware(value: dt.datetime | None) -> dt.datetime | None:
    """A datetime read back from the database, timezone-aware."""
    # SQLite hands datetimes back naive; they were stored as UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value



class AlreadyAnswered(RuntimeError):
    """A question was answered meanwhile (by another click, possibly on another replica)."""


class TargetBusy(RuntimeError):
    """The target already has an active incident."""

    def __init__(self, target: str, incident_id: str) -> None:
        super().__init__(f"target {target!r} already has an active incident {incident_id}")
        self.target = target
        self.incident_id = incident_id


@dataclass
class Incident:
    """An incident row."""

    id: str
    target: str
    runbook: str
    status: Status
    severity: str | None
    decision: str | None
    inputs: dict[str, Any]
    requester: str | None
    reason: str
    stamp: str
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    abort_reason: str | None
    channel: str | None
    thread_ts: str | None
    view: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepRun:
    """One execution attempt of a step."""

    id: int
    incident_id: str
    step_id: str
    phase_id: str
    attempt: int
    status: StepStatus
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    duration: float | None
    exit_status: int | None
    output_tail: str
    output_digest: str | None
    output_bytes: int | None
    captures: dict[str, Any]
    error: str | None
    waiting: dict[str, Any] | None
    answer: dict[str, Any] | None


@dataclass
class Approval:
    """One approve/reject click."""

    id: int
    incident_id: str
    user_id: str
    roles: list[str]
    decision: str
    counted: bool
    note: str
    at: dt.datetime
    plan_hash: str | None = None


@dataclass
class JournalEvent:
    """One entry of the incident's event log."""

    id: int
    incident_id: str
    at: dt.datetime
    kind: str
    actor: str | None
    step_id: str | None
    data: dict[str, Any]


@dataclass
class StabilityCheck:
    """One stability check of a series: ok, failed, or missed while the bot was down."""

    id: int
    incident_id: str
    run_id: int
    step_id: str
    index: int
    due_at: dt.datetime
    at: dt.datetime
    outcome: str
    status_code: int | None
    body_status: str | None
    latency_ms: float | None
    reason: str


@dataclass
class ArtifactFile:
    """A file a step made: where, its sha256 and size, when."""

    step_id: str | None
    name: str
    path: str
    sha256: str
    bytes: int
    at: dt.datetime


@dataclass
class Artifact(ArtifactFile):
    """A file an incident produced, tracked as it was made."""

    id: int
    incident_id: str



def from_row(cls: type, row: sa.Row[Any]) -> Any:
    """A database row as one of the dataclasses above."""
    d = dict(row._mapping)
    for k, v in d.items():
        if isinstance(v, dt.datetime):
            d[k] = aware(v)
    if cls is Incident:
        d.pop("active_target", None)
        d["status"] = Status(d["status"])
    if cls is StepRun:
        d["status"] = StepStatus(d["status"])
    return cls(**d)



def jsonable(value: Any) -> Any:
    """A value as JSON can hold it (datetimes as ISO 8601 text)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value
