"""Settings and runtime of the incident's records: audit log, governance, evidence, report.

``RecordsConfig`` is the ``records:`` key of the config file; ``Records`` holds what the
engine uses at run time (the settings and the open audit log).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bot.record.audit import AuditLog

#: The plan's Phase 5 list of systems a Phase 3 rollback affects.
PLAN_AFFECTED_SYSTEMS = [
    "live_database_integration",
    "inline_editing_system",
    "json_import_export",
    "runtime_status_dashboard",
    "data_integrity_tools",
]


class MetricTargets(BaseModel):
    """The plan's success-metrics targets."""

    model_config = ConfigDict(extra="forbid")

    rollback_duration_hours: float = Field(default=2.0, gt=0, description="Rollback Duration < this")
    data_loss_records: int = Field(default=0, ge=0, description="Data Loss: at most this many records (None = 0)")
    availability_percent: float = Field(default=99.0, ge=0, le=100, description="Service Availability > this")
    error_rate_percent: float = Field(default=0.1, ge=0, le=100, description="Error Rate < this")
    affected_users: int = Field(default=10, ge=0, description="User Impact 'Minimal': at most this many users")


class RecordsConfig(BaseModel):
    """Where the audit log, the evidence archive and the report go, and the record's fixed fields."""

    model_config = ConfigDict(extra="forbid")

    audit_log: Path = Field(default=Path("logs/governance.jsonl"),
                            description="the local append-only hash-chained JSONL (the plan's logs/governance.jsonl)")
    evidence_root: Path = Field(default=Path("evidence"), description="evidence archives go under this folder, one per "
                                "incident (the plan's DriveMemory/OrbisForge/BackEndVisibility/Production/Rollbacks)")
    anchor_prefix: str = Field(default="of-bev-phase3-rollback", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$",
                               description="archive folders and anchors are named <prefix>-YYYYmmdd_HHMMSS")
    backup_copy: Literal["fetch", "leave"] = Field(
        default="fetch", description="fetch: copy the emergency backup into the archive over SFTP; "
                             "leave: keep it on the target and record its path and hashes")
    event_type: str = "emergency_rollback"
    user_id: str = Field(default="emergency_admin", description="governance_logs.user_id of the rollback entry")
    user_role: str = "incident_commander"
    resource_type: str = "production_deployment"
    resource_id: str = "of-bev-phase-3"
    action: str = "rollback_deployment"
    operation: str = "OF-BEV Phase 3 Emergency Rollback"
    phase: str = "OF-BEV-Phase-3-Emergency-Rollback"
    environment: str = "production"
    affected_systems: list[str] = Field(default_factory=lambda: list(PLAN_AFFECTED_SYSTEMS))
    data_loss_minimal: int = Field(default=10, ge=0, description="up to this many lost records count as 'minimal'")
    targets: MetricTargets = Field(default_factory=lambda: MetricTargets.model_validate({}))

    def resolved(self, base: Path) -> RecordsConfig:
        """A copy with relative paths taken from ``base``."""
        upd = {}
        if not self.audit_log.is_absolute():
            upd["audit_log"] = base / self.audit_log
        if not self.evidence_root.is_absolute():
            upd["evidence_root"] = base / self.evidence_root
        return self.model_copy(update=upd)


@dataclass
class Records:
    """What the engine needs to keep the records: the settings and the audit log."""

    config: RecordsConfig
    log: AuditLog

    @classmethod
    def open(cls, config: RecordsConfig) -> Records:
        """Records for the (already resolved) settings; files are created on first write."""
        return cls(config, AuditLog(config.audit_log))

    def anchor(self, stamp: str) -> str:
        """The incident's anchor: ``<prefix>-YYYYmmdd_HHMMSS`` from the incident's stamp."""
        return f"{self.config.anchor_prefix}-{stamp}"

    def archive_dir(self, stamp: str) -> Path:
        """The incident's evidence folder."""
        return self.config.evidence_root / self.anchor(stamp)
