"""Backups: a consistent snapshot through the backup API, published without clobbering; listing."""

from __future__ import annotations

import fnmatch
import os
import sqlite3
import stat
import time

from .base import MMAP_SIZE, OpError, Params, Result, bool_param, int_param, now_iso, path_param, str_param
from .db import connect
from .files import file_sha256, fsync_file, has_wal, publish, unlink_if_present
from .hashing import verify_file
from .tx import kill_point


def snapshot_to(src: sqlite3.Connection, partial: str) -> None:
    """A consistent copy of ``src`` at ``partial`` (rollback-journal mode, fsynced)."""
    for stale in (partial, partial + "-journal", partial + "-wal", partial + "-shm"):
        unlink_if_present(stale)
    dst = sqlite3.connect(partial, isolation_level=None)
    try:
        dst.execute("PRAGMA journal_mode = OFF")
        dst.execute("PRAGMA synchronous = OFF")
        src.backup(dst, pages=-1)  # one step: one read transaction, so it ends under writers
        dst.execute("PRAGMA journal_mode = DELETE")  # archives are single self-contained files
    finally:
        dst.close()
    fsync_file(partial)


def op_backup(p: Params) -> Result:
    """Consistent snapshot via the backup API to dest (.partial, fsync, no-clobber rename)."""
    db = path_param(p, "db")
    dest = path_param(p, "dest")
    verify = bool_param(p, "verify")
    hashed = bool_param(p, "content_hash", True)
    if_exists = str_param(p, "if_exists", "fail")
    if if_exists not in ("fail", "keep"):
        raise OpError("parameter 'if_exists' is 'fail' or 'keep'")
    if os.path.lexists(dest):
        if if_exists == "fail":
            raise OpError(f"refusing to overwrite existing file: {dest}", "exists")
        # Only a finished backup is ever published under dest (.partial, then a no-clobber
        # link), so an existing dest is a whole earlier run of this same step: keep it.
        out_kept: Result = {"path": dest, "existing": True, "backup_seconds": 0.0}
        out_kept["file_sha256"], out_kept["bytes"] = file_sha256(dest)
        out_kept["duration"] = 0.0
        return out_kept
    if not os.path.isdir(os.path.dirname(dest)):
        raise OpError(f"destination directory does not exist: {os.path.dirname(dest)}", "not_found")
    started = time.monotonic()
    src = connect(db, "rw")
    try:
        src.execute("PRAGMA query_only = 1")
        src.execute(f"PRAGMA mmap_size={MMAP_SIZE}")
        partial = dest + ".partial"
        try:
            snapshot_to(src, partial)
            kill_point("backup:partial")
            publish(partial, dest)
        except BaseException:
            unlink_if_present(partial)
            raise
    finally:
        src.close()
    copied = time.monotonic() - started
    out: Result = {"path": dest, "backup_seconds": round(copied, 3)}
    if verify:
        checked = verify_file(dest, immutable=True, hashed=hashed)
        out.update(verify=checked, file_sha256=checked["file_sha256"], bytes=checked["bytes"])
    else:
        out["file_sha256"], out["bytes"] = file_sha256(dest)
    out["duration"] = round(time.monotonic() - started, 3)
    return out


def op_list_backups(p: Params) -> Result:
    """Backup files in dir matching pattern, newest first: {backups: [{path, name, ...}]}."""
    folder = path_param(p, "dir")
    pattern = str_param(p, "pattern", "*.db")
    limit = int_param(p, "limit", 100, 1)
    if "/" in pattern:
        raise OpError("parameter 'pattern' is a file name pattern, without '/'")
    if not os.path.isdir(folder):
        raise OpError(f"no such directory: {folder}", "not_found")
    found = []
    for name in os.listdir(folder):
        if not fnmatch.fnmatchcase(name, pattern) or name.endswith(
            ("-wal", "-shm", "-journal", ".partial", ".tmp")
        ):
            continue
        path = os.path.join(folder, name)
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):  # never open a FIFO or a device
                continue
            with open(path, "rb") as f:
                header = f.read(16)
        except OSError:
            continue
        found.append(
            {
                "path": path,
                "name": name,
                "bytes": st.st_size,
                "mtime": st.st_mtime,
                "mtime_iso": now_iso(st.st_mtime),
                "sqlite": header == b"SQLite format 3\x00",
                "has_wal": has_wal(path),
            }
        )
    found.sort(key=lambda b: (b["mtime"], b["name"]), reverse=True)
    return {"backups": found[:limit], "total": len(found), "dir": folder}
