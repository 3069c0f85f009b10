"""A target's schema contract: its change log, the deployment boundary, row keys.

The plan names only some columns (``change_history.changed_at``,
``change_history.governance_log_id``, the governance_logs fields, ``user_permissions.role``
and ``access_level``). Everything else strategies A and B need is described here, per
target; a setting left unset is looked up among common column names by the agent and
reported as guessed (``rollback-bot check`` prints the guesses, the step outputs show them).
A column set to ``""`` is declared absent and never looked for.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ChangeLogSettings(BaseModel):
    """Which table records changes, and which of its columns hold what."""

    model_config = ConfigDict(extra="forbid")

    table: str = Field("change_history", description="the change-log table")
    shape: Literal["rows", "columns"] | None = Field(
        None, description="rows: old/new hold JSON objects of the row; columns: one log row per changed column")
    table_column: str | None = Field(None, description="names the changed table (e.g. table_name)")
    key_column: str | None = Field(None, description="the changed row's key, as text (a JSON array if composite)")
    column_column: str | None = Field(None, description="shape 'columns': the changed column's name")
    old_column: str | None = Field(None, description="values before the change")
    new_column: str | None = Field(None, description="values after the change")
    operation_column: str | None = Field(None, description="INSERT/UPDATE/DELETE (or I/U/D); inferred when absent")
    time_column: str | None = Field(None, description="when the change was made (the plan's changed_at)")
    marker_column: str | None = Field(None, description="the deployment or release that made the change")
    governance_column: str | None = Field(None, description="the governance_logs row of the change "
                                                            "(the plan's governance_log_id)")
    order_column: str | None = Field(None, description="the log's order (default: its integer primary key, "
                                                       "else rowid)")

    def as_param(self) -> dict[str, Any]:
        """The agent's ``change_log`` param (unset settings left for the agent to look up)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class BoundarySettings(BaseModel):
    """How the bot knows which changes are the bad deployment's (the parts given are combined)."""

    model_config = ConfigDict(extra="forbid")

    marker: str | None = Field(None, description="the change log's marker value of the deployment")
    deployed_at: str | None = Field(None, description="when the deployment started (ISO 8601)")
    deployed_until: str | None = Field(None, description="when it ended; open when unset")
    governance: dict[str, str] | None = Field(
        None, description="governance_logs fields of the deployment's entries, e.g. "
                          "{resource_id: of-bev-phase-3} or {details.version: phase-3.0.0}")

    @model_validator(mode="after")
    def _something(self) -> BoundarySettings:
        if self.deployed_until and not self.deployed_at:
            raise ValueError("boundary: deployed_until needs deployed_at")
        if self.governance is not None and not self.governance:
            raise ValueError("boundary.governance: give at least one field")
        return self

    def as_param(self) -> dict[str, Any] | None:
        """The agent's ``boundary`` param, or None when nothing is set."""
        out: dict[str, Any] = {}
        if self.marker:
            out["marker"] = self.marker
        if self.deployed_at:
            out["from"] = self.deployed_at
        if self.deployed_until:
            out["to"] = self.deployed_until
        if self.governance:
            out["governance"] = dict(self.governance)
        return out or None


KeyColumns = dict[str, str | list[str]]


def contract_values(change_log: ChangeLogSettings | None, boundary: BoundarySettings | None,
                    key_columns: KeyColumns) -> dict[str, Any]:
    """The ``target.*`` template values of the contract, in the agent's param shapes."""
    return {
        "change_log": (change_log or ChangeLogSettings.model_validate({})).as_param(),
        "boundary": boundary.as_param() if boundary is not None else None,
        "key_columns": dict(key_columns),
    }
