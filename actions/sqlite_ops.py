"""``SqliteOps``: the SQLite agent's operations on one target, with typed params and results.

Each method builds the operation's params and runs it with ``actions.sqlite.sqlite_op``;
the operations and their params are listed in ``actions.sqlite``.
"""

from __future__ import annotations

from typing import Any, Literal, cast

from actions import agent_cache
from actions.sqlite import sqlite_op
from actions.sqlite_results import (
    BackupResult,
    CheckResult,
    ContentHashResult,
    CountsResult,
    DiffResult,
    FkCheckResult,
    GovernanceResult,
    ListBackupsResult,
    QueryResult,
    RestoreAccessResult,
    RestoreResult,
    RestrictResult,
    RollbackResult,
    SelectiveRestoreResult,
    VerifyResult,
)
from actions.transport import Transport


def _drop_none(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


class SqliteOps:
    """The agent's operations on one target, with typed params and results.

    Every method takes ``timeout`` (seconds, killed on the target after it); paths are on
    the target, relative to ``cwd``. Errors: ``SqliteAgentError`` and transport errors.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        python: str = "python3",
        cwd: str | None = None,
        timeout: float = 120.0,
        agent_dir: str = agent_cache.DEFAULT_DIR,
    ) -> None:
        self.transport = transport
        self.python = python
        self.cwd = cwd
        self.timeout = timeout
        self.agent_dir = agent_dir

    async def call(
        self, op: str, params: dict[str, Any], *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Run ``op`` with ``params`` (None values dropped) and return its result."""
        return await sqlite_op(
            self.transport,
            op,
            _drop_none(params),
            timeout=self.timeout if timeout is None else timeout,
            python=self.python,
            cwd=self.cwd,
            agent_dir=self.agent_dir,
        )

    async def integrity_check(
        self,
        db: str,
        *,
        quick: bool = False,
        max_errors: int = 100,
        immutable: bool = False,
        timeout: float | None = None,
    ) -> CheckResult:
        """PRAGMA integrity_check (or quick_check); never raises for a damaged file."""
        op = "quick_check" if quick else "integrity_check"
        params = {"db": db, "max_errors": max_errors, "immutable": immutable}
        return cast(CheckResult, await self.call(op, params, timeout=timeout))

    async def foreign_key_check(
        self, db: str, *, max_rows: int = 1000, timeout: float | None = None
    ) -> FkCheckResult:
        """PRAGMA foreign_key_check."""
        params = {"db": db, "max_rows": max_rows}
        return cast(FkCheckResult, await self.call("foreign_key_check", params, timeout=timeout))

    async def record_counts(
        self, db: str, tables: list[str] | None = None, *, timeout: float | None = None
    ) -> CountsResult:
        """Row counts of ``tables`` (every user table for None), in one read transaction."""
        params = {"db": db, "tables": tables}
        return cast(CountsResult, await self.call("record_counts", params, timeout=timeout))

    async def query(
        self,
        db: str,
        sql: str,
        params: list[Any] | dict[str, Any] | None = None,
        *,
        max_rows: int = 1000,
        write: bool = False,
        timeout: float | None = None,
    ) -> QueryResult:
        """One statement with bound ``params``; read-only unless ``write`` (one transaction)."""
        body = {"db": db, "sql": sql, "params": params, "max_rows": max_rows, "write": write}
        return cast(QueryResult, await self.call("query", body, timeout=timeout))

    async def content_hash(
        self,
        db: str,
        tables: list[str] | None = None,
        *,
        immutable: bool = False,
        timeout: float | None = None,
    ) -> ContentHashResult:
        """Logical content hash per table and in total (layout-independent)."""
        params = {"db": db, "tables": tables, "immutable": immutable}
        return cast(ContentHashResult, await self.call("content_hash", params, timeout=timeout))

    async def verify(
        self,
        db: str,
        *,
        immutable: bool = False,
        check: Literal["integrity_check", "quick_check"] = "integrity_check",
        content_hash: bool = True,
        timeout: float | None = None,
    ) -> VerifyResult:
        """Integrity check beside file sha256 + content hash + counts; ``ok`` says all passed."""
        params = {"db": db, "immutable": immutable, "check": check, "content_hash": content_hash}
        return cast(VerifyResult, await self.call("verify", params, timeout=timeout))

    async def backup(
        self,
        db: str,
        dest: str,
        *,
        verify: bool = False,
        content_hash: bool = True,
        timeout: float | None = None,
    ) -> BackupResult:
        """Consistent snapshot of ``db`` at ``dest`` (never overwritten), optionally verified."""
        params = {"db": db, "dest": dest, "verify": verify, "content_hash": content_hash}
        return cast(BackupResult, await self.call("backup", params, timeout=timeout))

    async def list_backups(
        self, folder: str, pattern: str = "*.db", *, limit: int = 100, timeout: float | None = None
    ) -> ListBackupsResult:
        """Files in ``folder`` matching ``pattern``, newest first, with size and header check."""
        params = {"dir": folder, "pattern": pattern, "limit": limit}
        return cast(ListBackupsResult, await self.call("list_backups", params, timeout=timeout))

    async def restore(
        self,
        db: str,
        backup: str,
        *,
        corrupted_dir: str | None = None,
        expect_content_hash: str | None = None,
        journal_mode: str | None = None,
        verify_copy: Literal["sha256", "full"] = "sha256",
        timeout: float | None = None,
    ) -> RestoreResult:
        """Full restore (verify first, keep the live db's copy, atomic swap); re-run safe."""
        params = {
            "db": db,
            "backup": backup,
            "corrupted_dir": corrupted_dir,
            "expect_content_hash": expect_content_hash,
            "journal_mode": journal_mode,
            "verify_copy": verify_copy,
        }
        return cast(RestoreResult, await self.call("restore", params, timeout=timeout))

    async def restrict_access(
        self,
        db: str,
        snapshot: str,
        *,
        table: str = "user_permissions",
        key: str = "user_id",
        column: str = "access_level",
        level: Any = "read_only",
        exempt_roles: list[str] | None = None,
        role_column: str = "role",
        tag: str | None = None,
        timeout: float | None = None,
    ) -> RestrictResult:
        """Save every row's level to ``snapshot`` first, then restrict non-exempt rows.

        A re-run keeps the originals already saved (new rows are added to the snapshot);
        an existing snapshot of another db or another ``tag`` (give the incident id) is
        refused rather than trusted.
        """
        params = {
            "db": db,
            "snapshot": snapshot,
            "table": table,
            "key": key,
            "column": column,
            "level": level,
            "exempt_roles": ["superuser", "emergency_admin"]
            if exempt_roles is None
            else exempt_roles,
            "role_column": role_column,
            "tag": tag,
        }
        return cast(RestrictResult, await self.call("restrict_access", params, timeout=timeout))

    async def restore_access(
        self, db: str, snapshot: str, *, timeout: float | None = None
    ) -> RestoreAccessResult:
        """Set every row's level back to the value saved in ``snapshot``."""
        params = {"db": db, "snapshot": snapshot}
        return cast(RestoreAccessResult, await self.call("restore_access", params, timeout=timeout))

    async def selective_restore(
        self,
        db: str,
        backup: str,
        tables: list[str],
        *,
        keys: dict[str, list[Any]] | None = None,
        key_columns: dict[str, str | list[str]] | None = None,
        allow_fk_violations: bool = False,
        timeout: float | None = None,
    ) -> SelectiveRestoreResult:
        """Strategy A: restore rows by key (or every differing row) from ``backup``."""
        params = {
            "db": db,
            "backup": backup,
            "tables": tables,
            "keys": keys,
            "key_columns": key_columns,
            "allow_fk_violations": allow_fk_violations,
        }
        return cast(
            SelectiveRestoreResult, await self.call("selective_restore", params, timeout=timeout)
        )

    async def diff(
        self,
        db: str,
        other: str,
        tables: list[str] | None = None,
        *,
        key_columns: dict[str, str | list[str]] | None = None,
        sample: int = 20,
        timeout: float | None = None,
    ) -> DiffResult:
        """Rows of ``db`` against ``other`` by primary key: added, removed, changed."""
        params = {
            "db": db,
            "other": other,
            "tables": tables,
            "key_columns": key_columns,
            "sample": sample,
        }
        return cast(DiffResult, await self.call("diff", params, timeout=timeout))

    async def transaction_rollback(
        self,
        db: str,
        *,
        since_id: int | None = None,
        since_time: str | None = None,
        history_table: str = "change_history",
        deployment: str | None = None,
        ignore_drift: bool = False,
        allow_fk_violations: bool = False,
        timeout: float | None = None,
    ) -> RollbackResult:
        """Strategy B: undo change_history rows after a point, newest first, one transaction."""
        params = {
            "db": db,
            "since_id": since_id,
            "since_time": since_time,
            "history_table": history_table,
            "deployment": deployment,
            "ignore_drift": ignore_drift,
            "allow_fk_violations": allow_fk_violations,
        }
        return cast(RollbackResult, await self.call("transaction_rollback", params, timeout=timeout))

    async def governance_insert(
        self,
        db: str,
        record: dict[str, Any],
        *,
        table: str = "governance_logs",
        if_absent: bool = False,
        timeout: float | None = None,
    ) -> GovernanceResult:
        """Insert one governance row with bound values (objects stored as JSON text)."""
        params = {"db": db, "record": record, "table": table, "if_absent": if_absent}
        return cast(GovernanceResult, await self.call("governance_insert", params, timeout=timeout))
