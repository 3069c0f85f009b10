"""Errors raised by actions. Every error carries the evidence a person needs.

ActionError
 ├── TransportError            the link to the target is not usable
 │    ├── ConnectError         could not connect or authenticate
 │    ├── HostKeyError         host key unknown or changed (never accepted blindly)
 │    └── ConnectionLost       the link dropped while a command ran: outcome unknown
 ├── CommandTimeout            the command ran past its timeout and was killed on the target
 ├── CommandFailed             the command finished with a non-zero exit status
 ├── HostsFailed               a command on a host group failed on some of its hosts
 ├── HttpCheckFailed           an HTTP call failed or answered an unexpected status
 └── SqliteOpFailed            a typed SQLite operation on the target failed
"""

from __future__ import annotations


class ActionError(Exception):
    """Base of every error an action raises."""

    #: True when the side effect may or may not have happened (the outcome is unknown).
    outcome_unknown: bool = False


class TransportError(ActionError):
    """The transport to the target is not usable."""


class ConnectError(TransportError):
    """Connecting or authenticating to the target failed."""


class HostKeyError(ConnectError):
    """The target's host key is not pinned, or differs from the pinned one."""


class ConnectionLost(TransportError):
    """The connection dropped while a command was running; its outcome is unknown."""

    outcome_unknown = True


class CommandTimeout(ActionError):
    """The command exceeded its timeout; the target-side timeout killed it."""

    outcome_unknown = True

    def __init__(self, message: str, *, timeout: float, stdout: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr


class CommandFailed(ActionError):
    """A command exited non-zero. Carries exit status and output."""

    def __init__(self, message: str, *, exit_status: int, stdout: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr


class HostsFailed(ActionError):
    """A command on a host group failed on some hosts. Carries every host's result."""

    def __init__(self, message: str, *, hosts: list[dict[str, object]], failed: list[str],
                 output: str = "", outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.hosts = hosts
        self.failed = failed
        self.stdout = output
        self.stderr = ""
        self.outcome_unknown = outcome_unknown


class HttpCheckFailed(ActionError):
    """An HTTP request failed or returned an unexpected status."""

    def __init__(self, message: str, *, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class SqliteOpFailed(ActionError):
    """A SQLite operation on the target failed."""

    def __init__(self, message: str, *, op: str, detail: str = "") -> None:
        super().__init__(message)
        self.op = op
        self.detail = detail
