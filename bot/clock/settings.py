"""Settings of the flows the clock drives, and the maintenance-window arithmetic.

All durations are plan time; the bot's ``time_scale`` compresses them (drills, tests).
The maintenance window is wall-clock time (a cron expression in a time zone) and is
never compressed.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from pydantic import BaseModel, ConfigDict, Field, field_validator


class MaintenanceWindow(BaseModel):
    """When P3 rollbacks run: a five-field cron expression for the start, in a time zone."""

    model_config = ConfigDict(extra="forbid")

    cron: str = Field("0 2 * * sat", description="window start, crontab syntax (minute hour day month weekday)")
    timezone: str = Field("UTC", description="IANA time zone of the cron expression")
    duration_minutes: float = Field(120, gt=0, description="how long the window stays open")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
        return v

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        try:
            CronTrigger.from_crontab(v, timezone=dt.UTC)
        except ValueError as exc:
            raise ValueError(f"{v!r} is not a crontab expression: {exc}") from None
        return v

    def trigger(self) -> CronTrigger:
        """The APScheduler trigger of window starts."""
        return CronTrigger.from_crontab(self.cron, timezone=ZoneInfo(self.timezone))

    def current_or_next(self, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
        """(start, end) of the window open at ``now``, else of the next one."""
        length = dt.timedelta(minutes=self.duration_minutes)
        start = self.trigger().get_next_fire_time(None, now - length)
        if start is None:  # a cron that never fires again (a past date)
            raise ValueError(f"maintenance window {self.cron!r} never comes again")
        if start + length <= now:
            start = self.trigger().get_next_fire_time(None, now)
            assert start is not None
        return start.astimezone(dt.UTC), (start + length).astimezone(dt.UTC)

    def describe(self, start: dt.datetime) -> str:
        """'Sat 2026-11-28 02:00 Europe/Berlin (01:00 UTC)'."""
        local = start.astimezone(ZoneInfo(self.timezone))
        return f"{local:%a %Y-%m-%d %H:%M} {self.timezone} ({start.astimezone(dt.UTC):%H:%M} UTC)"


class ClockSettings(BaseModel):
    """P2 deadline and reminders, the P3 window, approval escalation and expiry, Phase 7 reminders."""

    model_config = ConfigDict(extra="forbid")

    p2_deadline_minutes: float = Field(120, gt=0, description="a P2 rollback is due within this (the plan: 2 h)")
    p2_reminders_minutes: list[float] = Field(default_factory=lambda: [60.0, 30.0, 10.0],
                                              description="reminders this long before the P2 deadline")
    maintenance_window: MaintenanceWindow = Field(default_factory=lambda: MaintenanceWindow.model_validate({}))
    p1_approval_minutes: float = Field(60, gt=0, description="how long an IMMEDIATE rollback's approvals stay open")
    escalate_after_minutes: float = Field(15, gt=0, description="unanswered approvals escalate after this, "
                                                                 "and again after each further period")
    escalation: list[list[str]] = Field(
        default_factory=lambda: [["cto", "vp_engineering"], ["incident_commander"]],
        description="the roles mentioned at each escalation level, in order")
    phase7_phase: str = Field("post_rollback", description="the runbook phase whose manual items become reminders")
    phase7_due_days: float = Field(7, gt=0, description="Phase 7 items are due this long after completion")
    phase7_reminder_hours: float = Field(24, gt=0, description="between two Phase 7 reminders")
