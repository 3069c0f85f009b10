"""The agent's shared ground: constants, the error every operation raises, parameters, values.

Every other module of the agent imports from here; this module imports none of them.
Values are always bound, never pasted into SQL; table and column names are quoted as
identifiers (``qi``). Blob values travel in JSON as {"$blob_b64": "<base64>"}, both ways.
"""

from __future__ import annotations

import base64
import os
import time
from typing import Any

AGENT_VERSION = "2"
HASH_FORMAT = "rbh1"
BLOB_KEY = "$blob_b64"
BUSY_TIMEOUT = 10.0
MMAP_SIZE = 2147418112  # SQLite caps it at its compile-time SQLITE_MAX_MMAP_SIZE anyway
READ_CHUNK = 1 << 20
JOURNAL_MODES = ("delete", "truncate", "persist", "memory", "wal", "off")
SNAPSHOT_FORMAT = "rollback-bot/access-snapshot/1"
HISTORY_COLUMNS = ("id", "table_name", "record_id", "operation", "old_values", "new_values")
Params = dict[str, Any]
Result = dict[str, Any]


class OpError(Exception):
    """An operation refused or failed; ``kind`` says why in one word, ``details`` shows it."""

    def __init__(self, message: str, kind: str = "bad_request", details: Any = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.details = details


def now_iso(t: float | None = None) -> str:
    """UTC time ``t`` (default now) as ISO 8601 text, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def utc_stamp() -> str:
    """The UTC time now as ``YYYYmmdd_HHMMSS``, for file names."""
    return time.strftime("%Y%m%d_%H%M%S", time.gmtime())


def qi(name: str) -> str:
    """Quote ``name`` as an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def path_param(p: Params, key: str, required: bool = True) -> str:
    """Parameter ``key`` as an absolute path ("" when it is absent and not ``required``)."""
    value = p.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value or "\0" in value:
        raise OpError(f"parameter {key!r} must be a non-empty path string")
    return os.path.abspath(value)


def str_param(p: Params, key: str, default: str | None = None) -> str:
    """Parameter ``key`` as a non-empty string (``default`` when absent)."""
    value = p.get(key, default)
    if not isinstance(value, str) or not value:
        raise OpError(f"parameter {key!r} must be a non-empty string")
    return value


def bool_param(p: Params, key: str, default: bool = False) -> bool:
    """Parameter ``key`` as true or false (``default`` when absent)."""
    value = p.get(key, default)
    if not isinstance(value, bool):
        raise OpError(f"parameter {key!r} must be true or false")
    return value


def int_param(p: Params, key: str, default: int, low: int = 0) -> int:
    """Parameter ``key`` as an integer >= ``low`` (``default`` when absent)."""
    value = p.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise OpError(f"parameter {key!r} must be an integer >= {low}")
    return value


def names_param(p: Params, key: str) -> list[str] | None:
    """Parameter ``key`` as a list of names, or None when absent."""
    value = p.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise OpError(f"parameter {key!r} must be a list of names or null")
    return list(value)


def from_json(value: Any, where: str = "value") -> Any:
    """A JSON value as an SQLite value: {"$blob_b64": ...} becomes bytes; no lists or objects."""
    if isinstance(value, dict):
        if set(value) == {BLOB_KEY} and isinstance(value[BLOB_KEY], str):
            try:
                return base64.b64decode(value[BLOB_KEY], validate=True)
            except ValueError as exc:
                raise OpError(f"{where}: bad base64 in {BLOB_KEY}") from exc
        raise OpError(f"{where}: objects are not SQL values (blobs are {{{BLOB_KEY!r}: ...}})")
    if isinstance(value, list):
        raise OpError(f"{where}: lists are not SQL values")
    return value


def to_json(value: Any) -> Any:
    """An SQLite value as JSON: bytes become {"$blob_b64": ...}."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {BLOB_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    return value


def json_default(value: Any) -> Any:
    """``json.dumps``'s fallback: bytes as {"$blob_b64": ...}."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return to_json(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def existing_file(path: str) -> str:
    """``path`` when it is a file, else ``OpError`` (kind ``not_found``)."""
    if not os.path.isfile(path):
        raise OpError(f"database not found: {path}", "not_found")
    return path


def key_of(value: Any) -> Any:
    """A value as a dict key: a blob tagged ("b", bytes), so it never equals text."""
    return ("b", bytes(value)) if isinstance(value, (bytes, bytearray)) else value
