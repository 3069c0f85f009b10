"""The agent's entry point: the table of operations, parameter checks, one JSON line out."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from .access import op_restore_access, op_restrict_access
from .backup import op_backup, op_list_backups
from .base import AGENT_VERSION, OpError, Params, Result, json_default
from .checks import op_foreign_key_check, op_integrity_check, op_quick_check, op_record_counts
from .diff import op_diff
from .governance import op_governance_insert
from .hashing import op_content_hash, op_verify
from .loss import op_data_loss
from .query import op_query
from .report import op_change_points, op_strategy_support
from .restore import op_restore
from .selective import op_selective_restore
from .strategies import op_transaction_rollback
from .tx import note_finished

OPS: dict[str, tuple[Callable[[Params], Result], frozenset[str]]] = {
    "integrity_check": (op_integrity_check, frozenset({"db", "max_errors", "immutable"})),
    "quick_check": (op_quick_check, frozenset({"db", "max_errors", "immutable"})),
    "foreign_key_check": (op_foreign_key_check, frozenset({"db", "max_rows"})),
    "record_counts": (op_record_counts, frozenset({"db", "tables"})),
    "query": (op_query, frozenset({"db", "sql", "params", "max_rows", "write"})),
    "content_hash": (op_content_hash, frozenset({"db", "tables", "immutable"})),
    "verify": (op_verify, frozenset({"db", "immutable", "check", "content_hash"})),
    "backup": (op_backup, frozenset({"db", "dest", "verify", "content_hash", "if_exists"})),
    "list_backups": (op_list_backups, frozenset({"dir", "pattern", "limit"})),
    "restore": (
        op_restore,
        frozenset(
            {"db", "backup", "corrupted_dir", "expect_content_hash", "journal_mode", "verify_copy"}
        ),
    ),
    "restrict_access": (
        op_restrict_access,
        frozenset(
            {
                "db", "table", "key", "column", "level", "exempt_roles", "role_column",
                "snapshot", "tag", "change_log",
            }
        ),
    ),
    "restore_access": (
        op_restore_access,
        frozenset({"db", "table", "key", "column", "snapshot", "prefer_snapshot", "change_log"}),
    ),
    "selective_restore": (
        op_selective_restore,
        frozenset(
            {
                "db", "backup", "tables", "keys", "key_columns", "allow_fk_violations",
                "change_log", "boundary", "take", "access", "tag",
            }
        ),
    ),
    "diff": (op_diff, frozenset({"db", "other", "tables", "key_columns", "sample"})),
    "transaction_rollback": (
        op_transaction_rollback,
        frozenset(
            {
                "db", "since_id", "since_time", "history_table", "deployment",
                "ignore_drift", "allow_fk_violations", "change_log", "boundary", "key_columns",
                "take", "on_conflict", "access", "tag",
            }
        ),
    ),
    "strategy_support": (
        op_strategy_support,
        frozenset({"db", "change_log", "boundary", "key_columns"}),
    ),
    "change_points": (
        op_change_points,
        frozenset(
            {
                "db", "change_log", "boundary", "key_columns", "limit", "gap_minutes",
                "suggest_marker", "allow_unknown",
            }
        ),
    ),
    "data_loss": (
        op_data_loss,
        frozenset({"db", "before", "backup", "change_log", "boundary", "key_columns", "access"}),
    ),
    "governance_insert": (op_governance_insert, frozenset({"db", "record", "table", "if_absent"})),
}


def run(op: str, params: Any) -> Result:
    """Run one operation on already-decoded params (raises OpError / sqlite3.Error)."""
    if op not in OPS:
        raise OpError(f"unknown operation {op!r} (known: {', '.join(sorted(OPS))})", "bad_op")
    if not isinstance(params, dict):
        raise OpError("params must be a JSON object")
    fn, allowed = OPS[op]
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise OpError(f"unknown parameter(s) for {op}: {', '.join(unknown)}")
    return fn(params)


def main(argv: list[str]) -> int:
    """Entry point: ``<op> <json|->``; prints one JSON line; exit 0 ok, 2 refused/failed."""
    op = argv[0] if argv else ""
    started = time.monotonic()
    try:
        if len(argv) != 2:
            raise OpError("usage: python3 -c <agent> OP PARAMS_JSON|-", "bad_op")
        raw = sys.stdin.read() if argv[1] == "-" else argv[1]
        try:
            params = json.loads(raw)
        except ValueError as exc:
            raise OpError(f"params are not valid JSON: {exc}") from None
        doc: Result = {"ok": True, "op": op, "result": run(op, params)}
        code = 0
    except OpError as exc:
        doc = {"ok": False, "op": op, "error": str(exc), "kind": exc.kind, "details": exc.details}
        code = 2
    except sqlite3.Error as exc:
        doc = {"ok": False, "op": op, "error": f"{type(exc).__name__}: {exc}", "kind": "sqlite"}
        code = 2
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        doc = {"ok": False, "op": op, "error": f"{type(exc).__name__}: {exc}", "kind": "internal"}
        code = 2
    doc["agent_version"] = AGENT_VERSION
    doc["seconds"] = round(time.monotonic() - started, 3)
    note_finished(op)
    sys.stdout.write(json.dumps(doc, ensure_ascii=True, default=json_default) + "\n")
    sys.stdout.flush()
    return code
