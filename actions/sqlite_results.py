"""The shapes of the SQLite agent's results, one per operation (``actions.sqlite_ops.SqliteOps``)."""

from __future__ import annotations

from typing import Any, TypedDict


class CheckResult(TypedDict):
    """integrity_check / quick_check: ``ok`` is ``messages == ["ok"]``."""

    ok: bool
    messages: list[str]


class FkViolation(TypedDict):
    """One row of PRAGMA foreign_key_check."""

    table: str
    rowid: int | None
    parent: str
    fkid: int


class FkCheckResult(TypedDict):
    """foreign_key_check: the first ``max_rows`` violations and how many there are."""

    ok: bool
    violations: list[FkViolation]
    count: int


class CountsResult(TypedDict):
    """record_counts."""

    counts: dict[str, int]


class QueryResult(TypedDict, total=False):
    """query: ``rows`` hold JSON values (blobs as {"$blob_b64": ...}); writes add counts."""

    columns: list[str]
    rows: list[list[Any]]
    truncated: bool
    rowcount: int
    lastrowid: int | None


class ContentHashResult(TypedDict):
    """content_hash: per-table and total sha256 of the logical content ("rbh1")."""

    tables: dict[str, str]
    counts: dict[str, int]
    total: str
    format: str


class VerifyResult(TypedDict, total=False):
    """verify: integrity + content hash + file sha256 + counts of one file."""

    ok: bool
    check: str
    integrity: list[str]
    content_hash: str | None
    content_hash_error: str
    tables: dict[str, str]
    counts: dict[str, int]
    file_sha256: str
    bytes: int
    path: str
    format: str
    duration: float


class BackupResult(TypedDict, total=False):
    """backup: where the snapshot went, its size and file sha256 (and ``verify`` if asked)."""

    path: str
    bytes: int
    file_sha256: str
    backup_seconds: float
    duration: float
    verify: VerifyResult


class BackupFile(TypedDict):
    """One entry of list_backups."""

    path: str
    name: str
    bytes: int
    mtime: float
    mtime_iso: str
    sqlite: bool
    has_wal: bool


class ListBackupsResult(TypedDict):
    """list_backups: newest first."""

    backups: list[BackupFile]
    total: int
    dir: str


class RestoreResult(TypedDict, total=False):
    """restore: what was restored, where the old live db went, the final state."""

    restored_from: str
    db: str
    content_hash: str
    backup_file_sha256: str
    counts: dict[str, int]
    live_before: dict[str, Any]
    already_restored: bool
    corrupted_copy: str | None
    corrupted: dict[str, Any] | None
    copy: dict[str, Any]
    removed: list[str]
    journal_mode: str
    quick_check: list[str]
    foreign_key_violations: int
    file_sha256: str
    duration: float


class RestrictResult(TypedDict):
    """restrict_access: rows restricted and the originals saved in the snapshot file."""

    restricted: int
    snapshot: str
    saved: int
    already_saved: int
    rows: int
    exempt_roles: list[str]


class RestoreAccessResult(TypedDict):
    """restore_access: rows set back, keys no longer in the table, rows not in the snapshot."""

    restored: int
    changed: int
    missing: list[Any]
    not_in_snapshot: int
    snapshot: str


class SelectiveRestoreResult(TypedDict):
    """selective_restore: per table {restored, deleted, inserted}."""

    tables: dict[str, dict[str, Any]]
    new_fk_violations: int


class DiffResult(TypedDict):
    """diff: per table {added, removed, changed, keys_sample} or {only_in}."""

    tables: dict[str, dict[str, Any]]
    identical: bool


class RollbackResult(TypedDict):
    """transaction_rollback: the undone change_history rows, newest first."""

    undone: int
    by_table: dict[str, dict[str, int]]
    undone_rows: list[dict[str, Any]]
    recorded_by_triggers: int
    new_fk_violations: int


class GovernanceResult(TypedDict):
    """governance_insert: the row id (an existing one when ``if_absent`` matched)."""

    id: int
    inserted: bool
    table: str
