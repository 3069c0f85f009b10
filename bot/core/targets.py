"""Targets: where a runbook runs, and the settings its templates use."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from actions.transport import Transport
from bot.core.change_log import BoundarySettings, ChangeLogSettings, KeyColumns, contract_values


class HostSpec(BaseModel):
    """One host of a host group; what it leaves unset it takes from its target."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="the host's name in results")
    host: str | None = Field(default=None, description="address (default: the target's host)")
    port: int | None = Field(default=None, ge=1, le=65535)
    user: str | None = None
    key_file: Path | None = None
    known_hosts: Path | None = None


class TargetSettings(BaseModel):
    """One target: how to reach it and the values ``{{ target.* }}`` refers to.

    With ``hosts`` the target is a host group: command steps run on every host at once
    and succeed only if every host succeeds; everything else (SQLite operations, option
    listings, record steps) runs on the first host, the group's primary.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    transport: Literal["ssh", "local"] = "ssh"
    host: str = "127.0.0.1"
    port: int = Field(22, ge=1, le=65535)
    user: str = "root"
    key_file: Path | None = None
    known_hosts: Path | None = None
    connect_timeout: float = 10.0
    max_channels: int = Field(8, ge=1, le=8)
    hosts: list[HostSpec] = Field(default_factory=list,
                                  description="a host group: command steps fan out to every host")
    group_concurrency: int = Field(20, ge=1, le=200, description="hosts of a group run at once, at most")

    workdir: str = Field(description="working directory of the app on the target")
    app_name: str = "orbis-forge-admin"
    db_path: str = "databases/production.db"
    databases_dir: str = "databases"
    backup_pattern: str = "production_backup_*.db"
    env_file: str = ".env.production"
    health_url: str = "http://127.0.0.1:3000/health"
    export_url: str = "http://127.0.0.1:3000/api/json-operations/export"
    import_url: str = "http://127.0.0.1:3000/api/json-operations/import"
    export_user: str = "emergency_admin"
    pm_start: str = "pm2 start orbis-forge-admin"
    pm_stop: str = "pm2 stop orbis-forge-admin"
    pm_restart: str = "pm2 restart orbis-forge-admin"
    pm_status: str = "pm2 jlist"
    python: str = "python3"
    maintenance_message: str = "System maintenance in progress. Please try again in 30 minutes."
    app_rollback_command: str = ""
    previous_version: str = ""
    smoke_test_command: str = ""
    # Phase 4, the application rollback: a plain command (check out the tag, reload the
    # process manager) or a GitHub Actions workflow; unset means "command" when one is given.
    app_rollback: Literal["none", "command", "github"] | None = Field(
        default=None, description="how the app is rolled back: none, command (app_rollback_command) or github")
    github_repo: str = Field(default="", description="owner/name of the repository with the deploy workflow")
    github_workflow: str = Field(default="deploy-production.yml", description="workflow file name or id")
    github_api_url: str = Field(default="https://api.github.com",
                                description="REST API base (GitHub Enterprise: …/api/v3)")
    github_token_env: str = Field(default="GITHUB_TOKEN", pattern=r"^[A-Z_][A-Z0-9_]*$",
                                  description="environment variable holding the GitHub token")
    release_tag_pattern: str = Field(default=r"^v\d+\.\d+\.\d+$",
                                     description="regex of the tags that may be rolled back to")
    deployed_version: str = Field(default="", description="the bad version being rolled back (tag)")
    deploy_environment: str = "production"
    # The schema contract (bot/core/change_log.py): what strategies A and B need beyond the plan's columns.
    change_log: ChangeLogSettings | None = Field(
        default=None, description="the change log's table and columns; unset ones are looked up and reported")
    boundary: BoundarySettings | None = Field(
        default=None, description="which changes are the bad deployment's: marker, deployed_at, governance entry")
    key_columns: KeyColumns = Field(default_factory=dict,
                                    description="row key columns per table, where a table has no primary key")
    rehearsal: Literal["allowed", "forbidden"] = Field(
        default="forbidden", description="'allowed' marks a staging target `rollback-bot rehearse` may run the "
                                         "whole plan against (it restores the database and restarts the app)")

    @model_validator(mode="after")
    def _ssh_needs_keys(self) -> TargetSettings:
        if self.transport == "ssh" and (self.key_file is None or self.known_hosts is None):
            raise ValueError(f"target {self.name!r}: ssh needs 'key_file' and 'known_hosts'")
        return self

    @model_validator(mode="after")
    def _hosts_unique(self) -> TargetSettings:
        names = [h.name for h in self.hosts]
        if len(set(names)) != len(names):
            raise ValueError(f"target {self.name!r}: host names must be unique, got {names}")
        return self

    @property
    def is_group(self) -> bool:
        """True for a host group (``hosts`` given)."""
        return bool(self.hosts)

    def host_settings(self) -> list[TargetSettings]:
        """One single-host settings per host of the group (the target itself when not a group)."""
        if not self.hosts:
            return [self]
        out = []
        for h in self.hosts:
            values = {k: v for k, v in h.model_dump().items() if v is not None}
            out.append(self.model_copy(update={**values, "hosts": []}))
        return out

    @model_validator(mode="after")
    def _app_rollback(self) -> TargetSettings:
        if self.app_rollback is None:
            self.app_rollback = "command" if self.app_rollback_command else "none"
        if self.app_rollback == "command" and not self.app_rollback_command:
            raise ValueError(f"target {self.name!r}: app_rollback 'command' needs 'app_rollback_command'")
        if self.app_rollback == "github" and "/" not in self.github_repo:
            raise ValueError(f"target {self.name!r}: app_rollback 'github' needs 'github_repo' (owner/name)")
        try:
            re.compile(self.release_tag_pattern)
        except re.error as exc:
            raise ValueError(f"target {self.name!r}: release_tag_pattern: {exc}") from None
        return self

    def template_values(self) -> dict[str, Any]:
        """The values runbook templates see as ``target.*``."""
        data = self.model_dump(mode="json")
        for secretish in ("key_file", "known_hosts", "host", "port", "user", "transport"):
            data.pop(secretish, None)
        data["hosts"] = [h.name for h in self.hosts]
        data.update(contract_values(self.change_log, self.boundary, self.key_columns))
        return data


def open_transports(settings: TargetSettings) -> dict[str, Transport]:
    """One transport per host of a group, by host name (connections open lazily)."""
    return {h.name: open_transport(s) for h, s in zip(settings.hosts, settings.host_settings(), strict=True)}


def open_transport(settings: TargetSettings) -> Transport:
    """A transport for the target, or a group's primary host (connections open lazily on first use)."""
    if settings.hosts:
        settings = settings.host_settings()[0]
    if settings.transport == "local":
        from actions.local import LocalTransport

        return LocalTransport(name=settings.name)
    from actions.ssh import SSHTransport

    assert settings.key_file is not None and settings.known_hosts is not None
    return SSHTransport(
        name=settings.name,
        host=settings.host,
        port=settings.port,
        username=settings.user,
        client_keys=[str(settings.key_file)],
        known_hosts=str(settings.known_hosts),
        connect_timeout=settings.connect_timeout,
        max_channels=settings.max_channels,
    )


@dataclass
class Target:
    """A target's settings and its open transport; a host group also has one transport per host."""

    settings: TargetSettings
    transport: Transport
    #: A host group's transports by host name (``transport`` is the first, the primary).
    hosts: dict[str, Transport] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: TargetSettings) -> Target:
        """The target with its transports (connections open lazily on first use)."""
        if settings.is_group:
            hosts = open_transports(settings)
            return cls(settings, next(iter(hosts.values())), hosts)
        return cls(settings, open_transport(settings))

    async def close(self) -> None:
        """Close every transport of the target."""
        for transport in {id(t): t for t in (self.transport, *self.hosts.values())}.values():
            await transport.close()
