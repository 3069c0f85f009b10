"""What the steps on a clock need from the scheduler side: ``ClockHost``."""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from bot.clock.stability import StabilitySettings
from bot.state.store import Incident


class ClockHost(Protocol):
    """What the engine needs from the scheduler side."""

    stability: StabilitySettings

    def now(self) -> dt.datetime:
        """The clock's time."""
        ...

    def scaled(self, seconds: float) -> float:
        """Plan seconds as real seconds."""
        ...

    async def series_started(self, incident_id: str, run_id: int, first_at: dt.datetime) -> None:
        """Schedule the first check of a series."""
        ...

    async def window_start(self, inc: Incident) -> dt.datetime | None:
        """When the incident's maintenance window opens; None when it is open now."""
        ...

    async def window_waiting(self, incident_id: str, run_id: int, at: dt.datetime) -> None:
        """Schedule the start of the rollback at the window."""
        ...
