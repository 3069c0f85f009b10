"""The incident lifecycle as a table of allowed transitions.

Every status change goes through ``transition``; a move the table does not list is
refused with ``IllegalTransition`` instead of silently happening.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Where an incident stands."""

    OPEN = "open"                      # inputs taken, decision made, nothing run yet
    SCHEDULED = "scheduled"            # P3: waits for the maintenance window
    RUNNING = "running"                # the engine is running steps
    WAITING = "waiting"                # a step waits for a person (approval, choice, retry...)
    COMPENSATING = "compensating"      # aborted or given up: the runbook's compensation runs
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"
    REJECTED = "rejected"
    CLOSED = "closed"                  # P4: recorded, no rollback


class Event(StrEnum):
    """What can happen to an incident."""

    SCHEDULE = "schedule"
    START = "start"
    WAIT = "wait"
    RESUME = "resume"
    COMPLETE = "complete"
    FAIL = "fail"
    ABORT = "abort"
    REJECT = "reject"
    CLOSE = "close"
    COMPENSATE = "compensate"          # abort or give up: undo what ran before the incident ends


FINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.ABORTED, Status.REJECTED, Status.CLOSED})

TRANSITIONS: dict[tuple[Status, Event], Status] = {
    (Status.OPEN, Event.START): Status.RUNNING,
    (Status.OPEN, Event.SCHEDULE): Status.SCHEDULED,
    (Status.OPEN, Event.CLOSE): Status.CLOSED,
    (Status.OPEN, Event.ABORT): Status.ABORTED,
    (Status.OPEN, Event.REJECT): Status.REJECTED,
    (Status.SCHEDULED, Event.START): Status.RUNNING,
    (Status.SCHEDULED, Event.ABORT): Status.ABORTED,
    (Status.SCHEDULED, Event.REJECT): Status.REJECTED,
    (Status.RUNNING, Event.WAIT): Status.WAITING,
    (Status.RUNNING, Event.COMPLETE): Status.COMPLETED,
    (Status.RUNNING, Event.FAIL): Status.FAILED,
    (Status.RUNNING, Event.ABORT): Status.ABORTED,
    (Status.RUNNING, Event.REJECT): Status.REJECTED,
    (Status.WAITING, Event.RESUME): Status.RUNNING,
    (Status.WAITING, Event.ABORT): Status.ABORTED,
    (Status.WAITING, Event.REJECT): Status.REJECTED,
    (Status.WAITING, Event.FAIL): Status.FAILED,
    # An abort, or a failure a person gives up on, runs the runbook's compensation first;
    # the incident ends aborted or failed when the compensation is through.
    (Status.RUNNING, Event.COMPENSATE): Status.COMPENSATING,
    (Status.WAITING, Event.COMPENSATE): Status.COMPENSATING,
    (Status.COMPENSATING, Event.ABORT): Status.ABORTED,
    (Status.COMPENSATING, Event.FAIL): Status.FAILED,
}


class IllegalTransition(RuntimeError):
    """An event that the lifecycle does not allow in the current status."""

    def __init__(self, status: Status, event: Event) -> None:
        super().__init__(f"cannot {event.value} an incident that is {status.value}")
        self.status = status
        self.event = event


def transition(status: Status, event: Event) -> Status:
    """The status after ``event``; raises ``IllegalTransition`` when not allowed."""
    try:
        return TRANSITIONS[(status, event)]
    except KeyError:
        raise IllegalTransition(status, event) from None


def is_active(status: Status) -> bool:
    """An active incident holds its target: no second incident may start there."""
    return status not in FINAL


class StepStatus(StrEnum):
    """Where one step execution stands."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"        # needs a person's answer
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"  # the bot died while it ran: outcome unknown
