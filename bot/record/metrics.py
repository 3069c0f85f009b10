"""What an incident measured, read from the store: the plan's success metrics and the
figures the governance record and the report share.

Everything here is computed from the journal, the step runs and their captures, never
from the run's own claims: rollback duration from the clock, data loss from the data-loss step
(the emergency backup against the restored database, row by row, told apart by the
deployment boundary) and the conflicts the strategy kept, availability and error rate from
the health checks that ran after the restoration.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from bot.core.lifecycle import StepStatus
from bot.core.runbook import HttpStep, Runbook
from bot.record.records import MetricTargets
from bot.state.store import Approval, Incident, JournalEvent, StabilityCheck, StepRun, Store, utcnow

STRATEGY_METHODS = {"A": "selective_rollback", "B": "transaction_rollback", "C": "full_database_restore"}
STRATEGY_WORDS = {"A": "Selective rollback", "B": "Transaction rollback", "C": "Full database restore"}


@dataclass
class Facts:
    """One incident's state, loaded once."""

    incident: Incident
    runbook: Runbook
    runs: list[StepRun]
    approvals: list[Approval]
    events: list[JournalEvent]
    now: dt.datetime = field(default_factory=utcnow)
    #: The stability checks of every series, ran or missed.
    checks: list[StabilityCheck] = field(default_factory=list)

    @property
    def latest(self) -> dict[str, StepRun]:
        """The latest attempt of each step."""
        out: dict[str, StepRun] = {}
        for r in self.runs:
            out[r.step_id] = r
        return out

    def done(self, step_id: str) -> StepRun | None:
        """The step's latest run if it is done."""
        run = self.latest.get(step_id)
        return run if run is not None and run.status is StepStatus.DONE else None

    def capture(self, step_id: str, name: str, default: Any = None) -> Any:
        """A capture of a done step."""
        run = self.done(step_id)
        return run.captures.get(name, default) if run else default


async def gather(store: Store, runbook: Runbook, incident_id: str) -> Facts:
    """Load an incident's facts from the store."""
    return Facts(await store.incident(incident_id), runbook, await store.step_runs(incident_id),
                 await store.approvals(incident_id), await store.events(incident_id),
                 checks=await store.stability_checks(incident_id))


# ---------------------------------------------------------------- single figures


def strategy(f: Facts) -> str | None:
    """The restoration strategy chosen (A / B / C), if any."""
    value = f.capture("strategy", "choice")
    return str(value) if value else None


#: The step whose end is "service restored": maintenance mode off, the app serving users again.
RESTORED_STEP = "maintenance_off"


def rollback_window(f: Facts) -> tuple[dt.datetime | None, dt.datetime | None]:
    """(start, end) of the recovery, the one definition every figure uses: from the start of
    the run (the incident's start) to service restored (maintenance mode off); end None
    while the service is not restored."""
    start = f.incident.started_at or f.incident.created_at
    end_run = f.done(RESTORED_STEP)
    return start, end_run.ended_at if end_run else None


def rollback_seconds(f: Facts) -> float | None:
    """The recovery time: seconds from the start of the run to service restored."""
    start, end = rollback_window(f)
    return (end - start).total_seconds() if start and end else None


def downtime_seconds(f: Facts) -> float | None:
    """Maintenance mode on (its step's start) to off (its step's end)."""
    on, off = f.latest.get("maintenance_on"), f.done("maintenance_off")
    if on is None or on.started_at is None:
        return None
    end = off.ended_at if off and off.ended_at else f.now
    return (end - on.started_at).total_seconds()


#: The steps whose results list the conflicts kept: the strategy's, then the person's "take" re-run.
CONFLICT_STEPS = (("selective_restore", "take_conflicts_a"), ("transaction_rollback", "take_conflicts_b"))


@dataclass(frozen=True)
class TableLoss:
    """One table's data-loss figures; None where the boundary is unknown."""

    undone: int | None
    lost: int | None
    kept: int
    changed: int | None


@dataclass(frozen=True)
class DataLoss:
    """The three numbers per table: deployment rows undone on purpose, legitimate writes
    gone, conflicts kept; ``known`` False when no boundary told the deployment's rows apart."""

    known: bool
    tables: dict[str, TableLoss]
    why_unknown: str | None = None

    def total(self, name: str) -> int | None:
        """Sum of one figure over the tables (None when unknown)."""
        values = [getattr(t, name) for t in self.tables.values()]
        if any(v is None for v in values):
            return None
        return sum(values)

    def as_dict(self) -> dict[str, Any]:
        """For the governance record: per table {undone, lost, conflicts_kept}."""
        return {t: {"undone": v.undone, "lost": v.lost, "conflicts_kept": v.kept}
                for t, v in self.tables.items() if v.changed or v.kept}


def conflicts_kept(f: Facts) -> dict[str, int]:
    """Rows kept as they are (conflicts), per table, from the strategy's last run."""
    rows: set[tuple[str, str]] = set()  # B lists every change of a kept row: count rows
    for first, taken in CONFLICT_STEPS:
        step = taken if f.done(taken) else first
        for c in f.capture(step, "conflicts") or []:
            if isinstance(c, dict) and c.get("table"):
                rows.add((str(c["table"]), repr(c.get("key"))))
    out: dict[str, int] = {}
    for table, _key in rows:
        out[table] = out.get(table, 0) + 1
    return out


def data_loss_detail(f: Facts) -> DataLoss | None:
    """The data-loss step's figures with the conflicts kept; None when not assessed."""
    tables = f.capture("data_loss", "tables")
    if not isinstance(tables, dict):
        return None
    known = f.capture("data_loss", "known") is not False
    kept = conflicts_kept(f)
    out: dict[str, TableLoss] = {}
    for name, d in sorted(tables.items()):
        if not isinstance(d, dict):
            continue
        out[name] = TableLoss(d.get("undone") if known else None, d.get("lost") if known else None,
                              kept.get(name, 0), d.get("changed"))
    return DataLoss(known, out, None if known else "no deployment boundary")


def data_loss(f: Facts) -> tuple[int | None, dict[str, int]]:
    """Legitimate writes gone (None when unknown or not assessed), and per table where any."""
    detail = data_loss_detail(f)
    if detail is None or not detail.known:
        return None, {}
    per = {t: v.lost for t, v in detail.tables.items() if v.lost}
    return detail.total("lost"), {t: n for t, n in per.items() if n is not None}


def data_loss_word(records: int | None, minimal: int) -> str:
    """The plan's none | minimal | significant."""
    if records is None:
        return "unknown"
    if records == 0:
        return "none"
    return "minimal" if records <= minimal else "significant"


@dataclass(frozen=True)
class HealthCheck:
    """One health check that ran after the restoration."""

    step_id: str
    at: dt.datetime | None
    ok: bool
    status: Any
    latency_ms: Any


def health_checks(f: Facts) -> list[HealthCheck]:
    """Health checks of the phases after the database restoration, every attempt."""
    phase_ids = [p.id for p in f.runbook.phases]
    after = phase_ids.index("restoration") + 1 if "restoration" in phase_ids else 0
    wanted = {s.id for p in f.runbook.phases[after:] for s in p.steps
              if isinstance(s, HttpStep) and "health" in s.id}
    out = []
    for r in f.runs:
        if r.step_id in wanted and r.status in (StepStatus.DONE, StepStatus.FAILED):
            status = r.captures.get("status")
            out.append(HealthCheck(r.step_id, r.ended_at, r.status is StepStatus.DONE and status == 200,
                                   status, r.captures.get("latency_ms")))
    return out


def availability(f: Facts) -> tuple[float | None, float | None, int]:
    """(availability %, error rate %, checks counted): a stability step's own figures
    when one captured them, else the share of health checks that passed."""
    series = []  # (availability, error rate, checks) of every stability series, weighted by checks
    for r in f.latest.values():
        c = r.captures
        if r.status is StepStatus.DONE and "availability" in c and "error_rate" in c:
            try:
                series.append((float(c["availability"]), float(c["error_rate"]), int(c.get("checks_count") or 0)))
            except (TypeError, ValueError):
                continue
    if series:
        n = sum(s[2] for s in series)
        if n == 0:
            return series[0][0], series[0][1], 0
        return (sum(a * k for a, _, k in series) / n, sum(e * k for _, e, k in series) / n, n)
    checks = health_checks(f)
    if not checks:
        return None, None, 0
    ok = sum(1 for c in checks if c.ok)
    return 100.0 * ok / len(checks), 100.0 * (len(checks) - ok) / len(checks), len(checks)


def affected_users(f: Facts) -> int | None:
    """Users affected, when someone entered the figure."""
    value = (f.incident.inputs or {}).get("affected_users")
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Metric:
    """One row of the plan's success-metrics table; ``ok`` None when not measured."""

    name: str
    target: str
    actual: str
    ok: bool | None

    @property
    def mark(self) -> str:
        """✅ met, ❌ missed, ⚪ not measured."""
        return "⚪" if self.ok is None else ("✅" if self.ok else "❌")

    def as_dict(self) -> dict[str, Any]:
        """The row as a capture."""
        return {"metric": self.name, "target": self.target, "actual": self.actual, "ok": self.ok}


def success_metrics(f: Facts, targets: MetricTargets) -> list[Metric]:
    """The plan's five success metrics, measured and marked against its targets."""
    rows = []
    secs = rollback_seconds(f)
    rows.append(Metric("Rollback Duration", f"<{targets.rollback_duration_hours:g} hours",
                       "service not restored" if secs is None else f"{secs / 3600:.2f} hours ({secs:.1f} s)",
                       None if secs is None else secs < targets.rollback_duration_hours * 3600))
    loss = data_loss_detail(f)
    lost = loss.total("lost") if loss is not None else None
    want = "None" if targets.data_loss_records == 0 else f"<= {targets.data_loss_records} records"
    if loss is None:
        actual = "not assessed"
    elif lost is None:
        actual = "unknown (no deployment boundary)"
    else:
        per = ", ".join(f"{t} {v.undone}/{v.lost}/{v.kept}" for t, v in loss.tables.items()
                        if v.undone or v.lost or v.kept)
        actual = (f"{lost} records lost; {loss.total('undone')} deployment rows undone, "
                  f"{loss.total('kept')} conflicts kept" + (f" (undone/lost/kept: {per})" if per else ""))
    rows.append(Metric("Data Loss", want, actual, None if lost is None else lost <= targets.data_loss_records))
    avail, err, n = availability(f)
    rows.append(Metric("Service Availability", f">{targets.availability_percent:g}%",
                       "not measured" if avail is None else f"{avail:.2f}% of {n} checks",
                       None if avail is None else avail > targets.availability_percent))
    rows.append(Metric("Error Rate", f"<{targets.error_rate_percent:g}%",
                       "not measured" if err is None else f"{err:.2f}% of {n} checks",
                       None if err is None else err < targets.error_rate_percent))
    users = affected_users(f)
    rows.append(Metric("User Impact", f"Minimal (<= {targets.affected_users} users)",
                       "not known" if users is None else f"{users} users",
                       None if users is None else users <= targets.affected_users))
    return rows


def overall(metrics: list[Metric], completed: bool) -> str:
    """The plan's SUCCESS / PARTIAL SUCCESS / FAILED."""
    if not completed:
        return "FAILED"
    if all(m.ok is not False for m in metrics):
        return "SUCCESS"
    return "PARTIAL SUCCESS"


def metrics_table(metrics: list[Metric]) -> str:
    """The table as Markdown, as the plan prints it."""
    lines = ["| Metric | Target | Actual | Status |", "|--------|--------|--------|--------|"]
    for m in metrics:
        lines.append(f"| {m.name} | {m.target} | {m.actual.replace('|', '/')} | {m.mark} |")
    return "\n".join(lines)
