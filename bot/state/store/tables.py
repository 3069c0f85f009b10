"""The incident state's tables: incidents, step runs, approvals, the journal, stability
checks, artifacts, control requests and rehearsals (one SQLAlchemy ``metadata``)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

metadata = sa.MetaData()


def _of_an_incident() -> tuple[sa.Column[Any], sa.Column[Any]]:
    """The first columns of a table of an incident's rows: their own id, then the incident's."""
    return (sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("incident_id", sa.ForeignKey("incidents.id"), nullable=False, index=True))


incidents = sa.Table(
    "incidents", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("target", sa.String(128), nullable=False),
    # Equal to target while the incident is active, NULL after: a unique index then
    # allows one active incident per target, enforced by the database itself.
    sa.Column("active_target", sa.String(128), unique=True),
    sa.Column("runbook", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("severity", sa.String(4)),
    sa.Column("decision", sa.String(32)),
    sa.Column("inputs", sa.JSON, nullable=False, default=dict),
    sa.Column("requester", sa.String(64)),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("stamp", sa.String(15), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
    sa.Column("abort_reason", sa.Text),
    sa.Column("channel", sa.String(32)),
    sa.Column("thread_ts", sa.String(32)),
    sa.Column("view", sa.JSON, nullable=False, default=dict),
)

approvals = sa.Table(
    "approvals", metadata,
    *_of_an_incident(),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("roles", sa.JSON, nullable=False),
    sa.Column("decision", sa.String(8), nullable=False),  # approve | reject
    sa.Column("counted", sa.Boolean, nullable=False),
    sa.Column("note", sa.Text, nullable=False, default=""),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("plan_hash", sa.String(64)),  # the rendered plan the click approved
)

step_runs = sa.Table(
    "step_runs", metadata,
    *_of_an_incident(),
    sa.Column("step_id", sa.String(64), nullable=False),
    sa.Column("phase_id", sa.String(64), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
    sa.Column("duration", sa.Float),
    sa.Column("exit_status", sa.Integer),
    sa.Column("output_tail", sa.Text, nullable=False, default=""),
    sa.Column("output_digest", sa.String(64)),
    sa.Column("output_bytes", sa.Integer),
    sa.Column("captures", sa.JSON, nullable=False, default=dict),
    sa.Column("error", sa.Text),
    sa.Column("waiting", sa.JSON),  # what a person is asked: kind, options
    sa.Column("answer", sa.JSON),   # what the person answered
    sa.UniqueConstraint("incident_id", "step_id", "attempt"),
)

journal = sa.Table(
    "events", metadata,
    *_of_an_incident(),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(64)),
    sa.Column("step_id", sa.String(64)),
    sa.Column("data", sa.JSON, nullable=False, default=dict),
)

# One row per stability check of a series (a step run of kind ``stability``): the unique
# (run, index) pair means a check is recorded once, whether it ran or was missed.
stability_checks = sa.Table(
    "stability_checks", metadata,
    *_of_an_incident(),
    sa.Column("run_id", sa.ForeignKey("step_runs.id"), nullable=False),
    sa.Column("step_id", sa.String(64), nullable=False),
    sa.Column("index", sa.Integer, nullable=False),
    sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("outcome", sa.String(8), nullable=False),  # ok | failed | missed
    sa.Column("status_code", sa.Integer),
    sa.Column("body_status", sa.String(64)),
    sa.Column("latency_ms", sa.Float),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.UniqueConstraint("run_id", "index"),
)

artifacts_table = artifacts = sa.Table(
    "artifacts", metadata,
    *_of_an_incident(),
    sa.Column("step_id", sa.String(64)),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("bytes", sa.Integer, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

# The control plane outside Slack (``rollback-bot incident answer|abort``): a request is
# claimed by exactly one process (a conditional UPDATE of ``status``), executed with the
# same rules as a click, and finished with its result.
control_requests = sa.Table(
    "control_requests", metadata,
    *_of_an_incident(),
    sa.Column("action", sa.String(16), nullable=False),  # answer | abort | rehearse | end_rehearsal
    sa.Column("step_id", sa.String(64)),
    sa.Column("value", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("actor", sa.String(64), nullable=False),   # the Slack user id acted as
    sa.Column("operator", sa.String(200), nullable=False),  # the local identity: account@host
    # pending -> claimed -> done | refused; or pending -> applied (no bot ran: applied to the
    # store by the command itself) -> resumed by the bot at its next start; or pending ->
    # withdrawn (a rehearsal no bot took in time).
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("claimed_by", sa.String(200)),
    sa.Column("result", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
)

# Processes that serve control requests, with the time each last looked (a liveness hint
# for the command line, never a lock).
control_pollers = sa.Table(
    "control_pollers", metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
)


#: Each rehearsal of a runbook on a target and its verdict ("Last tested").
rehearsals = sa.Table(
    "rehearsals", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("target", sa.String(128), nullable=False, index=True),
    sa.Column("runbook_sha256", sa.String(64), nullable=False),
    sa.Column("plan_hash", sa.String(64)),
    sa.Column("incident_id", sa.String(32)),
    sa.Column("strategy", sa.String(8)),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("recovery_seconds", sa.Float),
    sa.Column("data_loss_records", sa.Integer),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("detail", sa.JSON, nullable=False, default=dict),
)
