"""Opening databases: existing files only, read-only recovery of a killed writer, ATTACH."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from .base import BUSY_TIMEOUT, MMAP_SIZE, OpError, existing_file, qi
from .files import has_wal


def _uri(path: str, mode: str, immutable: bool) -> str:
    uri = Path(path).as_uri() + "?mode=" + mode
    return uri + "&immutable=1" if immutable else uri


def connect(
    path: str, mode: str = "ro", *, immutable: bool = False, timeout: float = BUSY_TIMEOUT
) -> sqlite3.Connection:
    """Open an existing database (never creates one); ``mode`` is "ro" or "rw".

    A read-only open of a database a killed writer left with a hot journal or WAL fails
    with "attempt to write a readonly database" (recovery writes): recover it first.
    """
    existing_file(path)
    conn = sqlite3.connect(
        _uri(path, mode, immutable), uri=True, timeout=timeout, isolation_level=None
    )
    if mode == "ro" and not immutable:
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc):
                return conn  # the caller's first statement says what is wrong, as before
            conn.close()
            _recover(path, timeout, exc)
            conn = sqlite3.connect(
                _uri(path, mode, False), uri=True, timeout=timeout, isolation_level=None
            )
        except sqlite3.DatabaseError:
            return conn
    if mode == "ro" or immutable:
        conn.execute(f"PRAGMA mmap_size={MMAP_SIZE}")
    return conn


def _recover(path: str, timeout: float, why: Exception) -> None:
    """Roll back a hot journal (or rebuild a WAL's index) with a read-write open."""
    try:
        rw = sqlite3.connect(_uri(path, "rw", False), uri=True, timeout=timeout)
        try:
            rw.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            rw.close()
    except sqlite3.Error as exc:
        raise OpError(
            f"database {path} was left mid-write by a killed writer and needs recovery, "
            f"which needs write access: {exc} (read-only open: {why})",
            "needs_recovery",
        ) from None


def attach(conn: sqlite3.Connection, path: str, alias: str = "other") -> None:
    """Attach ``path`` read-only as schema ``alias`` (a hot journal rolled back first)."""
    if not os.path.isfile(path):
        raise OpError(f"database not found: {path}", "not_found")
    if os.path.exists(path + "-journal"):  # maybe hot: roll it back before reading
        connect(path, "ro").close()
    quiet = not has_wal(path) and not os.path.exists(path + "-journal")
    conn.execute(f"ATTACH DATABASE ? AS {qi(alias)}", (_uri(path, "ro", quiet),))
