"""Every step kind's executor in one table; the engine looks a step's kind up here.

Importing this module registers each family: the core ones in this folder, the steps that
keep the record (``bot.record.steps``) and the steps on a clock (``bot.clock.steps``).
"""

from __future__ import annotations

from bot.clock import steps as clock_steps
from bot.core.executors import approval, http, preflight, questions, shell, sqlite, wait
from bot.core.executors.base import REGISTRY, executor_for
from bot.record import steps as record_steps

#: The modules whose executors the table holds.
FAMILIES = (shell, sqlite, http, wait, preflight, questions, approval, record_steps, clock_steps)

__all__ = ["FAMILIES", "REGISTRY", "executor_for"]
