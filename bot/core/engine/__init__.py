"""The engine: runs a runbook's steps for an incident, journaled and resumable.

``Engine.run`` runs steps in order until the incident ends or a step waits for a
person; the state lives in the store, so ``run`` is the same call after a restart.
A person's answer goes in through ``answer`` (choices, manual items, retry / skip /
abort after a failure, re-run / mark done after a crash) or ``approve``.

Each step kind is done by its executor (``bot.core.executors``); the engine keeps what is
around it: ``base`` (its state, the view and audit catch-ups, the end of a run),
``attempts`` (a step's journaled attempts and failures), ``answers`` (people's answers,
approvals, aborts) and ``loop`` (the steps in order, the compensation, the plan's binding).
"""

from __future__ import annotations

from bot.core.engine.base import AnswerRefused, Waiting
from bot.core.engine.loop import Engine
from bot.core.executors.base import EngineError
from bot.core.targets import Target

__all__ = ["AnswerRefused", "Engine", "EngineError", "Target", "Waiting"]
