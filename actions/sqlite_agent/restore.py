"""The full restore: verify the backup, keep the live database's copy, copy, swap (see ``op_restore``)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from typing import Any

from .backup import snapshot_to
from .base import JOURNAL_MODES, OpError, Params, Result, path_param, str_param, utc_stamp
from .checks import check_messages
from .db import connect
from .files import Background, file_sha256, fsync_dir, fsync_file, has_wal, publish, unlink_if_present
from .hashing import content_hash, verify_file
from .schema import fk_violations
from .tx import kill_point


def holders(path: str) -> list[dict[str, Any]]:
    """Other processes that have ``path`` (or its -wal) open, from /proc (Linux; else [])."""
    wanted = set()
    for candidate in (path, path + "-wal"):
        if os.path.exists(candidate):
            wanted.add(os.path.realpath(candidate))
    if not wanted or not os.path.isdir("/proc"):
        return []
    me = os.getpid()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            links = [os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)]
        except OSError:
            continue
        if wanted.intersection(links):
            try:
                with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
                    comm = f.read().strip()
            except OSError:
                comm = "?"
            found.append({"pid": int(pid), "comm": comm})
    return found


def _refuse_if_held(db: str) -> None:
    held = holders(db)
    if held:
        who = ", ".join(f"pid {h['pid']} ({h['comm']})" for h in held)
        raise OpError(
            f"database {db} is open in another process: {who}; stop it before a full restore",
            "in_use",
            held,
        )


def _live_state(db: str) -> Result:
    state: Result = {"journal_mode": None, "content_hash": None}
    try:
        conn = connect(db, "ro")
        try:
            state["journal_mode"] = conn.execute("PRAGMA journal_mode").fetchone()[0].lower()
        finally:
            conn.close()
        state["content_hash"] = content_hash(db)["total"]
    except (sqlite3.DatabaseError, OpError) as exc:
        state["error"] = f"{type(exc).__name__}: {exc}"
    return state


def _unique_path(folder: str, stem: str, suffix: str) -> str:
    path = os.path.join(folder, stem + suffix)
    n = 1
    while os.path.lexists(path) or os.path.lexists(path + ".partial"):
        path = os.path.join(folder, f"{stem}_{n}{suffix}")
        n += 1
    return path


def _copy_live(db: str, folder: str) -> Result:
    """Checkpoint the live db and keep a consistent copy of it as <stem>_corrupted_<UTC>.db."""
    stem = os.path.splitext(os.path.basename(db))[0]
    dest = _unique_path(folder, f"{stem}_corrupted_{utc_stamp()}", ".db")
    out: Result = {"path": dest}
    conn = connect(db, "rw")
    try:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                out["checkpoint"] = list(
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                )
            snapshot_to(conn, dest + ".partial")
            kill_point("restore:live_copy_partial")
            publish(dest + ".partial", dest)
            out["method"] = "backup_api"
        except sqlite3.DatabaseError as exc:  # too damaged to read: keep the raw files
            unlink_if_present(dest + ".partial")
            out["backup_api_error"] = f"{type(exc).__name__}: {exc}"
            shutil.copyfile(db, dest + ".partial")
            fsync_file(dest + ".partial")
            publish(dest + ".partial", dest)
            if has_wal(db):
                shutil.copyfile(db + "-wal", dest + "-wal")
                fsync_file(dest + "-wal")
            out["method"] = "raw_copy"
    finally:
        conn.close()
    out["file_sha256"], out["bytes"] = file_sha256(dest)
    return out


def _prepare_temp(backup: str, tmp: str, expected: Result, full: bool) -> Result:
    """Copy the verified backup to ``tmp`` and prove the copy equals it."""
    unlink_if_present(tmp)
    if has_wal(backup):  # committed pages still in its WAL: copy through SQLite
        src = connect(backup, "ro")
        try:
            snapshot_to(src, tmp)
        finally:
            src.close()
        full = True
    else:
        shutil.copyfile(backup, tmp)
        fsync_file(tmp)
    kill_point("restore:temp_copy")
    if full:
        checked = verify_file(tmp, immutable=True)
        if not checked["ok"] or checked["content_hash"] != expected["content_hash"]:
            raise OpError(
                "the copy of the backup does not verify", "copy_failed", checked["integrity"]
            )
        return {"method": "full", "file_sha256": checked["file_sha256"]}
    sha, _size = file_sha256(tmp)
    if sha != expected["file_sha256"]:
        raise OpError("the copy of the backup differs from the backup", "copy_failed")
    quick = check_messages(tmp, "quick_check", 10, True)
    if quick != ["ok"]:
        raise OpError("the copy of the backup fails quick_check", "copy_failed", quick)
    return {"method": "sha256", "file_sha256": sha}


def _release_live(db: str) -> str | None:
    """Prove no other connection holds the live db; return the mode to put back on failure.

    Leaving WAL mode needs every other connection gone (an idle one too); a rollback-journal
    database only shows readers inside a transaction, hence the /proc look as well. A file
    too damaged to open is left to the /proc look alone.
    """
    conn = connect(db, "rw", timeout=2.0)
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0].lower()
        if mode == "wal":
            now = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0].lower()
            if now != "delete":
                raise sqlite3.OperationalError("database is locked")
            return "wal"
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("ROLLBACK")
        return None
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            return None
        raise OpError(
            f"database {db} is in use by another connection ({exc}); stop it first", "in_use"
        ) from None
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()


def _set_journal_mode(db: str, mode: str) -> str:
    conn = connect(db, "rw")
    try:
        return str(conn.execute(f"PRAGMA journal_mode = {mode}").fetchone()[0]).lower()
    finally:
        conn.close()


def _journal_mode_param(p: Params) -> str | None:
    mode = p.get("journal_mode")
    if mode is None:
        return None
    if not isinstance(mode, str) or mode.lower() not in JOURNAL_MODES:
        raise OpError(f"parameter 'journal_mode' must be one of {', '.join(JOURNAL_MODES)}")
    return mode.lower()


def op_restore(p: Params) -> Result:
    """Full restore of db from backup: verify, keep a copy of the live db, copy, swap.

    (1) The backup must pass integrity_check (and equal expect_content_hash) before anything
    is touched. (2) The live db is checkpointed and copied with the backup API to
    <stem>_corrupted_<UTC>.db (raw files if it is too damaged to read): the plan's `mv` would
    move it away before a verified copy exists. (3) The backup is copied to a temp file beside
    the live db and proven equal (file sha256 equal to the verified backup's + quick_check,
    or a full verify when verify_copy="full" or the backup has a -wal). (4) Nothing else may
    hold the live db (/proc, and leaving WAL mode); stale -wal/-shm/-journal go; os.replace.
    (5) The journal mode is set (the live db's, or the one asked for).
    Re-run safe: when the live content hash already equals the backup's, only the journal
    mode is set and already_restored is true; after a crash before the swap the live db is
    unchanged (a second corrupted copy may be kept), after it the content already matches.
    """
    started = time.monotonic()
    db = path_param(p, "db")
    backup = path_param(p, "backup")
    folder = path_param(p, "corrupted_dir", required=False) or os.path.dirname(db)
    expect = p.get("expect_content_hash")
    if expect is not None and not isinstance(expect, str):
        raise OpError("parameter 'expect_content_hash' must be a hex string or null")
    wanted_mode = _journal_mode_param(p)
    verify_copy = str_param(p, "verify_copy", "sha256")
    if verify_copy not in ("sha256", "full"):
        raise OpError("parameter 'verify_copy' must be 'sha256' or 'full'")
    if not os.path.isfile(backup):
        raise OpError(f"backup not found: {backup}", "not_found")
    live_exists = os.path.exists(db)
    if live_exists and os.path.samefile(db, backup):
        raise OpError("backup and db are the same file")
    if not os.path.isdir(folder):
        raise OpError(f"corrupted_dir does not exist: {folder}", "not_found")
    if not os.path.isdir(os.path.dirname(db)) or (live_exists and not os.path.isfile(db)):
        raise OpError(f"{db} is not a database file in an existing directory", "not_found")
    if live_exists:
        _refuse_if_held(db)

    # (1) verify the backup before touching anything; meanwhile read the live db's state.
    live_job = Background(_live_state, db) if live_exists else None
    checked = verify_file(backup, immutable=not has_wal(backup))
    live = live_job.get() if live_job else {"journal_mode": None, "content_hash": None}
    if not checked["ok"]:
        raise OpError(
            f"backup {backup} fails verification; nothing was changed",
            "integrity_failed",
            {"integrity": checked["integrity"][:20], "error": checked.get("content_hash_error")},
        )
    if expect is not None and expect != checked["content_hash"]:
        raise OpError(
            f"backup content hash {checked['content_hash']} is not the expected {expect}; "
            "nothing was changed",
            "hash_mismatch",
        )
    mode = wanted_mode or (live["journal_mode"] if live["journal_mode"] in JOURNAL_MODES else "wal")
    out: Result = {
        "restored_from": backup,
        "db": db,
        "content_hash": checked["content_hash"],
        "backup_file_sha256": checked["file_sha256"],
        "counts": checked["counts"],
        "live_before": live,
    }

    # Re-run after completion: the live db already holds the backup's content.
    if live["content_hash"] == checked["content_hash"]:
        out.update(
            already_restored=True,
            corrupted_copy=None,
            journal_mode=_set_journal_mode(db, mode),
            file_sha256=file_sha256(db)[0],
            duration=round(time.monotonic() - started, 3),
        )
        return out

    # (2) keep a consistent copy of the live db, while (3) copying + checking the backup.
    tmp = os.path.join(os.path.dirname(db), f".{os.path.basename(db)}.restore-{os.getpid()}.tmp")
    for stale in os.listdir(os.path.dirname(db)):
        if stale.startswith(f".{os.path.basename(db)}.restore-") and stale.endswith(".tmp"):
            unlink_if_present(os.path.join(os.path.dirname(db), stale))
    copy_job = Background(_copy_live, db, folder) if live_exists else None
    try:
        try:
            out["copy"] = _prepare_temp(backup, tmp, checked, verify_copy == "full")
        finally:
            corrupted = copy_job.get() if copy_job else None
        out["corrupted_copy"] = corrupted["path"] if corrupted else None
        out["corrupted"] = corrupted
        kill_point("restore:copied")

        # (4) nobody else may hold the live db; then drop its stale files and swap.
        put_back = _release_live(db) if live_exists else None
        kill_point("restore:released")
        try:
            if live_exists:
                _refuse_if_held(db)
            removed = []
            for suffix in ("-wal", "-shm", "-journal"):
                if unlink_if_present(db + suffix):
                    removed.append(suffix)
                    kill_point("restore:removed" + suffix)
            os.replace(tmp, db)
            kill_point("restore:replaced")
        except BaseException:
            if put_back and os.path.exists(db):
                _set_journal_mode(db, put_back)  # the live db is as it was
            raise
        fsync_dir(os.path.dirname(db))
    except BaseException:
        unlink_if_present(tmp)
        raise
    out["removed"] = [db + s for s in removed]

    # (5) the journal mode the app expects; a last cheap look at the result.
    conn = connect(db, "rw")
    try:
        out["journal_mode"] = str(
            conn.execute(f"PRAGMA journal_mode = {mode}").fetchone()[0]
        ).lower()
        kill_point("restore:journal_mode")
        out["quick_check"] = [r[0] for r in conn.execute("PRAGMA quick_check(10)")]
        out["foreign_key_violations"] = len(fk_violations(conn))
    finally:
        conn.close()
    out.update(
        already_restored=False,
        file_sha256=file_sha256(db)[0],
        duration=round(time.monotonic() - started, 3),
    )
    return out
