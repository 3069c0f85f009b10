"""The bot's configuration: a YAML file for the settings, the environment for secrets.

The file comes from ``--config`` or ``ROLLBACK_BOT_CONFIG``. Secrets never live in it:
``SLACK_BOT_TOKEN``, ``SLACK_APP_TOKEN`` and ``SLACK_SIGNING_SECRET`` are read from the
environment as ``SecretStr`` (they never print), ``SLACK_API_URL`` optionally points
the Web API elsewhere. Every problem is reported with the key it is about, e.g.
``roles.tech_lead.users[0]: 'alice' is not a Slack user id (U…/W…)``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot.clock.settings import ClockSettings, MaintenanceWindow
from bot.clock.stability import StabilitySettings
from bot.core.approvals import DEFAULT_POLICY, ApprovalPath, ApprovalPolicy
from bot.core.paths import STATE_DIR_ENV, path_problems, state_dir_for, target_key_problems
from bot.core.redaction import DEFAULT_PATTERNS
from bot.core.secrets import SECRET_VARS, SlackSecrets
from bot.core.targets import TargetSettings
from bot.record.records import RecordsConfig
from bot.state.store import StateUrlError, state_url

CONFIG_ENV = "ROLLBACK_BOT_CONFIG"

#: Roles the bot knows besides the approving ones: the incident commander may act on
#: choices, failures and aborts and override a P4 decision.
INCIDENT_COMMANDER = "incident_commander"


class ConfigError(ValueError):
    """The configuration is unusable; ``problems`` holds one ``key: reason`` per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: A local account name (``useradd``'s rules, loosely).
_ACCOUNT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")

#: A user-group handle as Slack allows it (``@db-leads``; the ``@`` is optional in the config).
_HANDLE = re.compile(r"^@?[a-z0-9][a-z0-9._-]{0,79}$")


def is_group_id(group: str) -> bool:
    """True for a user-group id (``S…``), False for a handle (``@db-leads``)."""
    return group.startswith("S") and group[1:].isalnum() and group.isupper() and len(group) >= 3


class RoleMembers(_Model):
    """Who holds a role: Slack user ids and/or user groups by id or handle (resolved at runtime)."""

    users: list[str] = Field(default_factory=list, description="Slack user ids (U…/W…)")
    groups: list[str] = Field(default_factory=list,
                              description="user-group ids (S…) or handles (@db-leads), resolved with Slack")

    @field_validator("users")
    @classmethod
    def _user_ids(cls, v: list[str]) -> list[str]:
        for i, uid in enumerate(v):
            if not (uid[:1] in ("U", "W") and uid[1:].isalnum() and uid.isupper() and len(uid) >= 3):
                raise ValueError(f"[{i}] {uid!r} is not a Slack user id (U…/W…); display names are never used")
        return v

    @field_validator("groups")
    @classmethod
    def _group_ids(cls, v: list[str]) -> list[str]:
        for i, gid in enumerate(v):
            if not (is_group_id(gid) or _HANDLE.match(gid)):
                raise ValueError(f"[{i}] {gid!r} is neither a Slack user-group id (S…) nor a handle (@db-leads)")
        return v


class PolicyConfig(_Model):
    """The approval policy; the default is the plan's rule."""

    paths: list[ApprovalPath] = Field(default_factory=lambda: list(DEFAULT_POLICY.paths))
    emergency_requester_may_approve: bool | None = Field(
        None, description="override requester_may_approve on the 'emergency' path")

    def policy(self) -> ApprovalPolicy:
        """The ``ApprovalPolicy`` the engine uses."""
        paths = []
        for p in self.paths:
            if p.name == "emergency" and self.emergency_requester_may_approve is not None:
                p = p.model_copy(update={"requester_may_approve": self.emergency_requester_may_approve})
            paths.append(p)
        return ApprovalPolicy(paths=paths)


class SlackConfig(_Model):
    """How the bot behaves in Slack."""

    channels: list[str] = Field(min_length=1, description="channel ids (C…) or names (#incident-response)")
    command: str = Field("/rollback", pattern=r"^/[a-z0-9_-]{1,31}$")
    usergroup_refresh_seconds: float = Field(300, gt=0, description="how long a resolved user group is cached")
    update_interval_seconds: float = Field(1.0, ge=0, description="least time between two edits of one message")
    retry_max_seconds: float = Field(30, gt=0, description="longest wait between two tries while Slack is down")
    upload_over_bytes: int = Field(3500, ge=0, description="outputs longer than this go to a file in the thread")
    http_port: int = Field(3000, ge=1, le=65535, description="HTTP mode: port of /slack/events and /healthz")
    health_port: int = Field(8080, ge=0, le=65535, description="Socket Mode: port of /healthz (0: none)")

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: list[str]) -> list[str]:
        for i, c in enumerate(v):
            if not c.strip().lstrip("#"):
                raise ValueError(f"[{i}] empty channel")
        return [c.strip() for c in v]


class RehearsalSchedule(_Model):
    """A scheduled rehearsal: the whole plan against a staging target, reported to a channel."""

    target: str = Field(description="a target marked `rehearsal: allowed`")
    cron: str = Field(description="when, crontab syntax (minute hour day month weekday)")
    timezone: str = Field("UTC", description="IANA time zone of the cron expression")
    channel: str = Field(description="channel id (C…) the result is posted to")
    strategy: Literal["A", "B", "C"] = Field("C", description="restoration strategy rehearsed")
    time_scale: float = Field(0.01, gt=0, le=1.0, description="factor on every wait of the rehearsal")

    @model_validator(mode="after")
    def _cron(self) -> RehearsalSchedule:
        MaintenanceWindow.model_validate({"cron": self.cron, "timezone": self.timezone})
        return self


class ReplicaSettings(_Model):
    """Several replicas on PostgreSQL: how long a lease lasts and how often a replica looks."""

    lease_seconds: float = Field(6.0, ge=1.0, le=120.0,
                                 description="a lease not renewed for this long is taken over by a standby")
    poll_seconds: float = Field(0.25, gt=0, le=5.0,
                                description="how often a replica renews, looks for nudges and free leases")

    @model_validator(mode="after")
    def _poll_below_lease(self) -> ReplicaSettings:
        if self.poll_seconds * 4 > self.lease_seconds:
            raise ValueError("poll_seconds must be at most a quarter of lease_seconds")
        return self


class BotConfig(_Model):
    """Everything in the config file."""

    slack: SlackConfig
    roles: dict[str, RoleMembers] = Field(default_factory=dict)
    policy: PolicyConfig = Field(default_factory=lambda: PolicyConfig.model_validate({}))
    targets: list[TargetSettings] = Field(min_length=1)
    runbook: Path | None = Field(None, description="runbook YAML; the shipped plan when empty")
    state_dir: Path | None = Field(None, description="folder of everything the bot writes; relative state_db, "
                                   "jobs, artifacts_dir and records.* paths are taken from it (default: "
                                   f"${STATE_DIR_ENV}, else the folder of an absolute state_db, else the config's)")
    state_db: str = Field("rollback-bot.db", description="SQLite file, or postgresql+asyncpg://user@host:5432/db "
                          "for several replicas (password from ROLLBACK_BOT_DB_PASSWORD)")
    replicas: ReplicaSettings = Field(default_factory=lambda: ReplicaSettings.model_validate({}),
                                      description="leases of several replicas (PostgreSQL only)")
    artifacts_dir: Path = Path("artifacts")
    time_scale: float = Field(1.0, gt=0, le=1.0, description="factor on every wait (1.0 in production)")
    stability: StabilitySettings = Field(default_factory=lambda: StabilitySettings.model_validate({}),
                                         description="thresholds and rates of the stability checks and watch")
    clock: ClockSettings = Field(default_factory=lambda: ClockSettings.model_validate({}),
                                 description="P2 deadline, P3 window, escalation, Phase 7 reminders")
    jobs_db: str | None = Field(None, description="SQLAlchemy URL of the scheduled jobs; beside state_db when empty")
    records: RecordsConfig = Field(default_factory=lambda: RecordsConfig.model_validate({}),
                                   description="audit log, evidence archive, governance record, report")
    rehearsals: list[RehearsalSchedule] = Field(default_factory=list,
                                                description="scheduled rehearsals on staging targets")
    redact: list[str] = Field(default_factory=lambda: list(DEFAULT_PATTERNS),
                              description="regexes of secrets hidden in command output before it is stored or posted")
    operators: dict[str, list[str]] = Field(
        default_factory=dict,
        description="the control plane (rollback-bot incident ...): local account -> the Slack user ids it may "
                    "act as (the first unless --as names another); an account not listed may only read")

    @field_validator("state_db", "jobs_db")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value and "://" in value:
            try:
                state_url(value, environ={})
            except StateUrlError as exc:
                raise ValueError(str(exc).split(": ", 1)[1]) from None
        return value

    @field_validator("redact")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"redact: {pattern!r} is not a valid regex: {exc}") from None
        return value

    @field_validator("operators", mode="before")
    @classmethod
    def _operator_ids(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        for account, ids in value.items():
            ids = [ids] if isinstance(ids, str) else ids
            if not isinstance(account, str) or not _ACCOUNT.match(account):
                raise ValueError(f"operators: {account!r} is not a local account name")
            if not isinstance(ids, list) or not ids:
                raise ValueError(f"operators.{account}: a Slack user id (U…) or a list of them")
            for uid in ids:
                if not (isinstance(uid, str) and uid[:1] in ("U", "W") and uid[1:].isalnum() and uid.isupper()):
                    raise ValueError(f"operators.{account}: {uid!r} is not a Slack user id (U…/W…)")
            out[account] = ids
        return out

    @model_validator(mode="after")
    def _cross_checks(self) -> BotConfig:
        names = [t.name for t in self.targets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"targets: duplicate name(s) {', '.join(dupes)}")
        for i, r in enumerate(self.rehearsals):
            target = self.target(r.target)
            if target is None:
                raise ValueError(f"rehearsals[{i}].target: no target {r.target!r}")
            if target.rehearsal != "allowed":
                raise ValueError(f"rehearsals[{i}].target: {r.target!r} is not marked 'rehearsal: allowed'")
        known = self.policy.policy().roles | {INCIDENT_COMMANDER}
        unknown = sorted(set(self.roles) - known)
        if unknown:
            raise ValueError(f"roles: unknown role(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return self

    def target(self, name: str) -> TargetSettings | None:
        """The target named so, if configured."""
        return next((t for t in self.targets if t.name == name), None)

    def path_problems(self) -> list[str]:
        """Every path setting the bot could not use as this user, one ``key: reason`` line each."""
        from bot.clock.scheduler import jobs_url

        out = path_problems(state_db=self.state_db, jobs_db=self.jobs_db or jobs_url(self.state_db),
                            artifacts_dir=self.artifacts_dir, records=self.records, runbook=self.runbook)
        for i, target in enumerate(self.targets):
            out += target_key_problems(i, target, target.host_settings() if target.is_group else None)
        return out


@dataclass
class Settings:
    """The config file and the environment's secrets together."""

    config: BotConfig
    secrets: SlackSecrets
    path: Path | None = None


def _key(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def validation_problems(exc: ValidationError, prefix: str = "") -> list[str]:
    """One ``key: reason`` line per pydantic error."""
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if p not in ("function-after",))
        # Tagged unions and validators add their own location parts; keep the keys.
        key = _key(tuple(p for p in loc if not (isinstance(p, str) and p.startswith(("function-", "json-")))))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        problems.append(f"{prefix}{key}: {msg}")
    return problems


def parse_config(data: Mapping[str, Any], *, base: Path | None = None, state_dir: str | None = None) -> BotConfig:
    """Validate config data; a relative runbook is taken from ``base`` (the file's folder), relative
    written paths from the state directory (``state_dir``: the value of ``$ROLLBACK_BOT_STATE_DIR``)."""
    try:
        cfg = BotConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc)) from None
    if base is not None and cfg.runbook is not None and not cfg.runbook.is_absolute():
        cfg.runbook = base / cfg.runbook
    state = state_dir_for(cfg.state_dir, state_dir, cfg.state_db, base)
    cfg.state_dir = state
    if state is not None:
        if not cfg.artifacts_dir.is_absolute():
            cfg.artifacts_dir = state / cfg.artifacts_dir
        cfg.records = cfg.records.resolved(state)
        if "://" not in cfg.state_db and not Path(cfg.state_db).is_absolute():
            cfg.state_db = str(state / cfg.state_db)
    elif cfg.artifacts_dir.is_absolute():
        cfg.records = cfg.records.resolved(cfg.artifacts_dir.parent)
    return cfg


def config_path(explicit: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The config file from ``--config`` or ``ROLLBACK_BOT_CONFIG``; ``ConfigError`` if neither."""
    env = os.environ if environ is None else environ
    value = explicit or env.get(CONFIG_ENV)
    if not value:
        raise ConfigError([f"{CONFIG_ENV}: no config file (pass --config FILE or set {CONFIG_ENV})"])
    return Path(value)


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> BotConfig:
    """Read and validate the YAML config file (``$ROLLBACK_BOT_STATE_DIR`` from ``environ``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError([f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of keys"])
    try:
        env = os.environ if environ is None else environ
        return parse_config(data, base=path.parent, state_dir=env.get(STATE_DIR_ENV) or None)
    except ConfigError as exc:
        raise ConfigError([f"{path}: {p}" for p in exc.problems]) from None


def load_settings(explicit: str | None = None, environ: Mapping[str, str] | None = None,
                  *, require_secrets: bool = True) -> Settings:
    """Config file plus secrets; ``ConfigError`` lists every problem of both."""
    env = dict(os.environ if environ is None else environ)
    problems: list[str] = []
    cfg: BotConfig | None = None
    path: Path | None = None
    try:
        path = config_path(explicit, env)
        cfg = load_config(path, env)
    except ConfigError as exc:
        problems.extend(exc.problems)
    secrets = SlackSecrets.model_validate({k.lower(): v for k, v in env.items() if k in SECRET_VARS})
    if require_secrets:
        problems.extend(secrets.problems())
    if problems:
        raise ConfigError(problems)
    assert cfg is not None
    return Settings(cfg, secrets, path)
