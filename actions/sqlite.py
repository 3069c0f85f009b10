"""Typed SQLite operations on a target, run there by the agent package ``actions/sqlite_agent/``.

Nothing is pasted into SQL and no ``sqlite3`` CLI is needed on the target: the agent (3.9+,
standard library only) is installed once under a content-addressed folder of the target's
cache and checked by sha256 before each use (``actions.agent_cache``); each operation is a
short bootstrap given to the target's ``python3``, the operation name and its JSON params as
two more arguments, each ``shlex.quote``d::

    python3 -I -c '<bootstrap: check agent-<sha256>, import it>' backup '{"db":"databases/production.db",...}'

A target with no writable cache gets the agent's whole package as the ``-c`` argument instead
(``agent_loader``: its modules compressed, served to ``import`` from memory).
``-I`` (isolated mode) keeps the target's ``PYTHON*`` variables, user site-packages and the
working directory out of ``sys.path``. Params too long for one command line go through stdin
(the agent reads them when the argument is ``-``). The agent prints one JSON line;
``sqlite_op`` returns its ``result`` or raises ``SqliteAgentError`` (a ``SqliteOpFailed``).
``actions.sqlite_ops.SqliteOps`` gives each operation typed params and a typed result
(``actions.sqlite_results``).

Operations (params -> result; paths on the target, relative to the command's cwd):

- ``integrity_check`` / ``quick_check`` {db, max_errors=100, immutable=false}
  -> {ok, messages}
- ``foreign_key_check`` {db, max_rows=1000} -> {ok, violations: [{table, rowid, parent,
  fkid}], count}
- ``record_counts`` {db, tables|null} -> {counts: {table: n}}
- ``query`` {db, sql, params: list|object|null, max_rows=1000, write=false}
  -> {columns, rows, truncated} (+ rowcount, lastrowid when write)
- ``content_hash`` {db, tables|null, immutable=false} -> {tables: {t: hex}, counts, total,
  format: "rbh1"}
- ``verify`` {db, immutable=false, check="integrity_check"|"quick_check",
  content_hash=true} -> {ok, check, integrity, content_hash, tables, counts, file_sha256,
  bytes, path, format, duration}
- ``backup`` {db, dest, verify=false, content_hash=true} -> {path, bytes, file_sha256,
  backup_seconds, duration, verify?}; refuses an existing dest (kind ``exists``)
- ``list_backups`` {dir, pattern="*.db", limit=100} -> {backups: [{path, name, bytes,
  mtime, mtime_iso, sqlite, has_wal}] newest first, total, dir}
- ``restore`` {db, backup, corrupted_dir|null, expect_content_hash|null,
  journal_mode|null, verify_copy="sha256"|"full"} -> {restored_from, db, content_hash,
  backup_file_sha256, counts, live_before, already_restored, corrupted_copy, corrupted,
  copy, removed, journal_mode, quick_check, foreign_key_violations, file_sha256, duration}
- ``restrict_access`` {db, snapshot, table="user_permissions", key="user_id",
  column="access_level", level="read_only", exempt_roles=["superuser","emergency_admin"],
  role_column="role", tag|null} -> {restricted, snapshot, saved, already_saved, rows,
  exempt_roles}
- ``restore_access`` {db, snapshot, table?, key?, column?} -> {restored, changed, missing,
  not_in_snapshot, snapshot}
- ``selective_restore`` {db, backup, tables, keys: {t: [key...]}|null,
  key_columns: {t: col|[cols]}|null, allow_fk_violations=false}
  -> {tables: {t: {restored, deleted, inserted}}, new_fk_violations};
  with ``boundary`` (strategy A over the change log) {db, backup, change_log, boundary,
  key_columns, tables|null, take: [[table, key...]], access, tag} -> {tables: {t: {restored,
  deleted, inserted, conflicts, already_restored}}, conflicts, restored, recorded_by_triggers,
  mapping, guessed, new_fk_violations}
- ``diff`` {db, other, tables|null, key_columns|null, sample=20} -> {tables: {t: {added,
  removed, changed, keys_sample} | {only_in}}, identical}
- ``transaction_rollback`` {db, change_log, boundary (or since_id | since_time [+ deployment]),
  key_columns, take: [change id], on_conflict="keep"|"stop", ignore_drift=false, access, tag,
  allow_fk_violations=false} -> {undone, by_table: {t: {INSERT, UPDATE, DELETE}}, rows,
  conflicts, not_undoable, already_undone, kept_records, recorded_by_triggers, undone_rows,
  mapping, guessed, new_fk_violations}
- ``strategy_support`` {db, change_log, boundary, key_columns} (read-only) -> {strategies:
  {A|B|C: {ok, why, notes}}, items: [{value, label, description, disabled?, note?}], mapping,
  guessed, tables: {t: {key} | {no_key}}, boundary}
- ``change_points`` {db, change_log, boundary, key_columns, limit=10, gap_minutes=10,
  suggest_marker} (read-only) -> {items: [{value (boundary JSON), label, description, counts:
  {t: {op: n}}, changes, not_undoable, suggested?}], mapping, guessed}
- ``data_loss`` {db (after), before, backup|null, change_log, boundary, key_columns, access:
  {before_snapshot, after_snapshots: [path...]}} (read-only) -> {tables: {t: {changed, undone,
  lost, unexplained}}, known, why_unknown, total}

- ``governance_insert`` {db, record, table="governance_logs", if_absent=false}
  -> {id, inserted, table}

The change log, boundary, ledger and access parameters are described in the agent's
``changes`` module (the ledger, keys and access levels are implemented in ``rows``);
strategies A and B in ``strategies``; the reports in ``report`` and ``loss``.

Refusals carry a ``kind``: bad_request, bad_op, bad_table, bad_column, not_found, exists,
integrity_failed, hash_mismatch, copy_failed, in_use, conflict, fk_violation,
bad_snapshot, bad_history, no_change_log, unsupported, no_key, bad_boundary, sqlite, internal,
unsupported_python (and no_result here).
"""

from __future__ import annotations

import base64
import functools
import json
import shlex
from pathlib import Path
from typing import Any, cast

from actions import agent_cache
from actions.errors import SqliteOpFailed
from actions.transport import ShellResult, Transport

#: Every operation the agent knows.
OPS = frozenset(
    {
        "integrity_check",
        "quick_check",
        "foreign_key_check",
        "record_counts",
        "query",
        "content_hash",
        "verify",
        "backup",
        "list_backups",
        "restore",
        "restrict_access",
        "restore_access",
        "selective_restore",
        "diff",
        "transaction_rollback",
        "governance_insert",
        "strategy_support",
        "change_points",
        "data_loss",
    }
)

#: Longest command put on one command line; longer params go through stdin instead
#: (Linux caps a single argv string at 128 KiB; the shell session refuses > 100,000 bytes).
MAX_COMMAND_BYTES = 90_000
#: How much of the agent's stderr an error carries.
STDERR_TAIL = 2000
#: How blob values are written in JSON, both ways.
BLOB_KEY = "$blob_b64"


class SqliteAgentError(SqliteOpFailed):
    """The agent refused or failed an operation, or gave no readable answer.

    ``kind`` is the agent's one-word reason (``bad_table``, ``integrity_failed``,
    ``in_use``, ``conflict``, ``exists``, ``not_found``, ``hash_mismatch``, ``sqlite``, ...;
    ``no_result`` when nothing readable came back, then ``outcome_unknown`` is True).
    """

    def __init__(
        self,
        message: str,
        *,
        op: str,
        detail: str = "",
        kind: str = "",
        details: Any = None,
        exit_status: int | None = None,
        stderr: str = "",
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(message, op=op, detail=detail)
        self.kind = kind
        self.details = details
        self.exit_status = exit_status
        self.stderr = stderr
        self.outcome_unknown = outcome_unknown


#: The agent's package, as it lies in this tree: every ``.py`` file of it goes to the target.
AGENT_DIR = Path(__file__).with_name("sqlite_agent")


@functools.cache
def agent_bundle() -> agent_cache.Bundle:
    """The agent's package as installed on the target (``actions.agent_cache``), files by name."""
    return tuple(
        (f"{agent_cache.PACKAGE}/{path.name}", path.read_bytes()) for path in sorted(AGENT_DIR.glob("*.py"))
    )


def agent_source() -> str:
    """The agent's source text: every file of its package, in the bundle's order."""
    return "".join(data.decode("utf-8") for _, data in agent_bundle())


@functools.cache
def agent_loader() -> str:
    """The ``-c`` program that carries the whole agent, for a target with no writable cache
    (``agent_cache.inline_source``: compressed, a third of its size, far below the command limit)."""
    return agent_cache.inline_source(agent_bundle())


def agent_sha256() -> str:
    """The agent's content address (``agent_cache.bundle_sha256``): names exactly which code ran."""
    return agent_cache.bundle_sha256(agent_bundle())


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {BLOB_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot send {type(value).__name__} to the SQLite agent")


def encode_params(params: dict[str, Any]) -> str:
    """Params as one line of ASCII JSON (NUL and every non-ASCII character escaped)."""
    return json.dumps(params, ensure_ascii=True, separators=(",", ":"), default=_json_default)


def build_command(
    op: str, params: dict[str, Any], *, python: str = "python3", agent_dir: str | None = None
) -> tuple[str, str | None]:
    """The shell command running ``op`` on the target, and the stdin to give it (or None).

    With ``agent_dir`` None the agent's whole source goes in the command; with a folder
    (``""``: the target's cache) the command runs the agent installed there.
    """
    if op not in OPS:
        raise ValueError(f"unknown SQLite operation {op!r}")
    if not python or "\0" in python:
        raise ValueError("python must name the target's Python 3 executable")
    payload = encode_params(params)
    code = agent_loader() if agent_dir is None else agent_cache.bootstrap(agent_bundle(), agent_dir)
    head = [shlex.quote(python), "-I", "-c", shlex.quote(code), shlex.quote(op)]
    inline = " ".join([*head, shlex.quote(payload)])
    if len(inline.encode("utf-8")) <= MAX_COMMAND_BYTES:
        return inline, None
    return " ".join([*head, "-"]), payload + "\n"


def _tail(text: str) -> str:
    return text[-STDERR_TAIL:]


def parse_result(op: str, result: ShellResult) -> dict[str, Any]:
    """The ``result`` object of the agent's JSON line, or ``SqliteAgentError``."""
    doc: dict[str, Any] | None = None
    for line in reversed(result.stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            candidate = json.loads(line)
        except ValueError:
            continue
        if isinstance(candidate, dict) and isinstance(candidate.get("ok"), bool):
            doc = candidate
            break
    stderr = _tail(result.stderr)
    if doc is None:
        raise SqliteAgentError(
            f"sqlite {op}: no result from the agent (exit status {result.exit_status})",
            op=op,
            detail=stderr or _tail(result.stdout),
            kind="no_result",
            exit_status=result.exit_status,
            stderr=stderr,
            outcome_unknown=True,
        )
    if doc["ok"] and result.exit_status == 0 and isinstance(doc.get("result"), dict):
        return cast(dict[str, Any], doc["result"])
    kind = str(doc.get("kind") or "failed")
    error = str(doc.get("error") or f"exit status {result.exit_status}")
    details = doc.get("details")
    detail = error
    if details is not None:
        detail += "\n" + json.dumps(details, ensure_ascii=False, default=str)[:STDERR_TAIL]
    if stderr:
        detail += "\n" + stderr
    raise SqliteAgentError(
        f"sqlite {op} failed ({kind}): {error}",
        op=op,
        detail=detail,
        kind=kind,
        details=details,
        exit_status=result.exit_status,
        stderr=stderr,
    )


async def sqlite_op(
    transport: Transport,
    op: str,
    params: dict[str, Any],
    *,
    timeout: float,
    python: str = "python3",
    cwd: str | None = None,
    agent_dir: str = agent_cache.DEFAULT_DIR,
) -> dict[str, Any]:
    """Run one agent operation on the target and return its result object.

    The agent runs from its install under ``agent_dir`` (default: the target's cache), sent
    there first when missing (``actions.agent_cache``). Relative paths in ``params`` are
    relative to ``cwd`` (the transport's default when None). Raises ``SqliteAgentError`` when
    the agent refuses or fails, and whatever the transport raises (``CommandTimeout``: the
    target-side timeout killed the agent; ``ConnectionLost``).
    """
    cached = build_command(op, params, python=python, agent_dir=agent_dir)
    result = await agent_cache.run_agent(
        transport, agent_bundle(), cached, lambda: build_command(op, params, python=python),
        python=python, agent_dir=agent_dir, timeout=timeout, cwd=cwd)
    return parse_result(op, result)
