"""Incident state and journal, in SQLite by default through SQLAlchemy 2 async.

Everything the thread or the terminal shows is rendered from here. A step's start is
committed before its side effect begins, so a crash leaves a ``running`` row that the
engine finds on restart.

``Store`` is one class made of its parts: the database (``database``: opening it,
durability, Slack request ids), the incidents (``incidents``), the step runs
(``steps``) and what an incident gathers beside them (``journal``: approvals, events,
stability checks, artifacts). The tables are in ``tables``, the rows it hands out in
``rows``.
"""

from __future__ import annotations

from bot.state.store.database import DEDUP_SECONDS, PASSWORD_ENV, StateUrlError, StoreUnavailable, state_url
from bot.state.store.incidents import IncidentRecords
from bot.state.store.journal import JournalRecords
from bot.state.store.rows import (
    AlreadyAnswered,
    Approval,
    Artifact,
    ArtifactFile,
    Incident,
    JournalEvent,
    StabilityCheck,
    StepRun,
    TargetBusy,
    utcnow,
)
from bot.state.store.steps import StepRecords
from bot.state.store.tables import (
    approvals,
    artifacts,
    control_pollers,
    control_requests,
    incidents,
    journal,
    metadata,
    rehearsals,
    stability_checks,
    step_runs,
)


class Store(IncidentRecords, StepRecords, JournalRecords):
    """Async access to the incident state. One instance per process."""


__all__ = [
    "DEDUP_SECONDS",
    "PASSWORD_ENV",
    "AlreadyAnswered",
    "Approval",
    "Artifact",
    "ArtifactFile",
    "Incident",
    "JournalEvent",
    "StabilityCheck",
    "StateUrlError",
    "StepRun",
    "Store",
    "StoreUnavailable",
    "TargetBusy",
    "approvals",
    "artifacts",
    "control_pollers",
    "control_requests",
    "incidents",
    "journal",
    "metadata",
    "rehearsals",
    "stability_checks",
    "state_url",
    "step_runs",
    "utcnow",
]
