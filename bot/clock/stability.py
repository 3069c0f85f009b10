"""Stability checks: the plan's 15 one-minute health checks, judged, summed up.

A check GETs the health URL with httpx and is judged on three things: the status
code, the body's status field (the plan reads ``.status``) and the latency, against
a maximum and a multiple of the baseline latency measured before the rollback (the
plan's ">5x baseline" trigger; a floor keeps a 2 ms baseline from failing a 12 ms
check). A series fails when more checks in a row fail than the settings allow.

This module holds the pure parts: settings, the plan of a series, one check, the
judgment, the summary figures (availability, error rate, p50/p95 latency) and the
latency sparkline. Running a series on a schedule is ``bot.clock.jobs``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from bot.state.store import StabilityCheck

Mode = Literal["gate", "watch"]
SPARKS = "▁▂▃▄▅▆▇█"


class StabilitySettings(BaseModel):
    """Thresholds and rates of the stability checks and the extended watch (plan seconds)."""

    model_config = ConfigDict(extra="forbid")

    checks: int = Field(15, ge=1, le=240, description="checks in the Phase 6 series (the plan: 15)")
    interval_seconds: float = Field(60, gt=0, description="between two checks (the plan: 60)")
    check_timeout_seconds: float = Field(10, gt=0, description="one check's HTTP timeout")
    max_latency_ms: float = Field(2000, gt=0, description="a slower answer fails the check")
    baseline_multiple: float = Field(5, gt=1, description="fail a check slower than this many times the baseline")
    baseline_floor_ms: float = Field(100, ge=0, description="the baseline threshold is never below this")
    failures_allowed: int = Field(0, ge=0, description="consecutive failed checks tolerated before the hold")
    watch_seconds: float = Field(7200, gt=0, description="extended watch after maintenance mode is off (2 h)")
    watch_interval_seconds: float = Field(600, gt=0, description="between two checks of the extended watch")


@dataclass
class SeriesPlan:
    """What a series checks and how; stored in the step run so a restart has it all."""

    url: str
    headers: dict[str, str]
    mode: Mode
    checks: int
    interval: float            # real seconds between two checks (plan seconds x time scale)
    started_at: str            # ISO time of check 0
    timeout: float
    max_latency_ms: float
    baseline_ms: float | None
    baseline_multiple: float
    baseline_floor_ms: float
    failures_allowed: int
    expect_status: list[int] = field(default_factory=lambda: [200])
    status_field: str = "status"
    expect_value: list[str] = field(default_factory=lambda: ["ok"])
    maintenance_step: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeriesPlan:
        """Inverse of ``to_dict``."""
        return cls(**data)

    @property
    def start(self) -> dt.datetime:
        """When check 0 is due."""
        return dt.datetime.fromisoformat(self.started_at)

    def due(self, index: int) -> dt.datetime:
        """When check ``index`` is due."""
        return self.start + dt.timedelta(seconds=self.interval * index)

    @property
    def latency_limit_ms(self) -> float:
        """The latency above which a check fails: the maximum, or the baseline multiple if lower."""
        limit = self.max_latency_ms
        if self.baseline_ms is not None and self.baseline_ms > 0:
            limit = min(limit, max(self.baseline_ms * self.baseline_multiple, self.baseline_floor_ms))
        return limit


@dataclass(frozen=True)
class CheckResult:
    """What one check saw and the verdict on it."""

    ok: bool
    status_code: int | None
    body_status: str | None
    latency_ms: float | None
    reason: str


def judge(plan: SeriesPlan, status_code: int | None, body: str, latency_ms: float | None) -> CheckResult:
    """The verdict on one answer: status code, body status field, latency."""
    body_status: str | None = None
    try:
        data = json.loads(body)
        if isinstance(data, dict) and plan.status_field in data:
            body_status = str(data[plan.status_field])
    except ValueError:
        pass
    problems = []
    if status_code not in plan.expect_status:
        problems.append(f"HTTP {status_code} (expected {', '.join(map(str, plan.expect_status))})")
    if plan.expect_value and body_status not in plan.expect_value:
        problems.append(f"{plan.status_field} {body_status!r} (expected {' or '.join(plan.expect_value)})")
    limit = plan.latency_limit_ms
    if latency_ms is not None and latency_ms > limit:
        why = "maximum" if limit == plan.max_latency_ms else f"{plan.baseline_multiple:g}x baseline"
        problems.append(f"latency {latency_ms:.0f} ms over {limit:.0f} ms ({why})")
    return CheckResult(not problems, status_code, body_status, latency_ms, "; ".join(problems))


async def check_once(plan: SeriesPlan, client: httpx.AsyncClient | None = None) -> CheckResult:
    """GET the health URL once and judge the answer; a connection error is a failed check."""
    own = client is None
    c = client or httpx.AsyncClient()
    started = time.perf_counter()
    try:
        resp = await c.get(plan.url, headers=plan.headers, timeout=plan.timeout)
    except httpx.HTTPError as exc:
        latency = (time.perf_counter() - started) * 1000
        return CheckResult(False, None, None, round(latency, 2), f"{type(exc).__name__}: {exc}"[:300])
    finally:
        if own:
            await c.aclose()
    latency = round((time.perf_counter() - started) * 1000, 2)
    return judge(plan, resp.status_code, resp.text, latency)


def consecutive_failures(checks: Sequence[StabilityCheck]) -> int:
    """Failed checks at the end of the series; a missed check neither counts nor breaks the run."""
    n = 0
    for c in reversed(checks):
        if c.outcome == "failed":
            n += 1
        elif c.outcome == "ok":
            break
    return n


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(checks: Sequence[StabilityCheck], plan: SeriesPlan) -> dict[str, Any]:
    """The series' figures: availability and error rate over the checks that ran, p50/p95 latency."""
    ran = [c for c in checks if c.outcome != "missed"]
    ok = sum(1 for c in ran if c.outcome == "ok")
    lat = [c.latency_ms for c in ran if c.latency_ms is not None]
    out: dict[str, Any] = {
        "checks_count": len(ran),
        "checks_ok": ok,
        "checks_failed": len(ran) - ok,
        "checks_missed": len(checks) - len(ran),
        "checks_planned": plan.checks,
        "availability": round(100.0 * ok / len(ran), 2) if ran else None,
        "error_rate": round(100.0 * (len(ran) - ok) / len(ran), 2) if ran else None,
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "latency_limit_ms": round(plan.latency_limit_ms, 1),
        "baseline_ms": plan.baseline_ms,
        "mode": plan.mode,
    }
    return out


def sparkline(values: Sequence[float | None]) -> str:
    """Latencies as ``▁▂▃▅▇``; a check without a latency shows as ``·``."""
    known = [v for v in values if v is not None]
    if not known:
        return ""
    lo, hi = min(known), max(known)
    span = hi - lo
    out = []
    for v in values:
        if v is None:
            out.append("·")
        else:
            i = 0 if span <= 0 else min(len(SPARKS) - 1, int((v - lo) / span * (len(SPARKS) - 1) + 0.5))
            out.append(SPARKS[i])
    return "".join(out)


def check_line(c: StabilityCheck, total: int) -> str:
    """One line of the series message (plain text; the caller escapes for Slack)."""
    if c.outcome == "missed":  # the slot it was due at; it never ran
        slot = c.due_at.astimezone(dt.UTC).strftime("%H:%M:%S")
        return f"·  {c.index + 1}/{total} {slot}  missed: {c.reason}"
    when = c.at.astimezone(dt.UTC).strftime("%H:%M:%S")  # when it really ran
    mark = "✓" if c.outcome == "ok" else "✗"
    code = c.status_code if c.status_code is not None else "—"
    lat = f"{c.latency_ms:.0f} ms" if c.latency_ms is not None else "—"
    line = f"{mark}  {c.index + 1}/{total} {when}  {code} {c.body_status or '—'}  {lat}"
    return line + (f"  {c.reason}" if c.reason and c.outcome != "ok" else "")


def figures_line(fig: dict[str, Any]) -> str:
    """Availability, error rate, p50/p95 in one line."""
    def pct(v: Any) -> str:
        return "—" if v is None else f"{v:g}%"

    def ms(v: Any) -> str:
        return "—" if v is None else f"{v:.0f} ms"

    line = (f"availability {pct(fig.get('availability'))} · error rate {pct(fig.get('error_rate'))} · "
            f"p50 {ms(fig.get('p50_ms'))} · p95 {ms(fig.get('p95_ms'))}")
    if fig.get("checks_missed"):
        line += f" · {fig['checks_missed']} missed"
    return line
