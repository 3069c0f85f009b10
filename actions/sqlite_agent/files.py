"""The agent's file steps: fsync, no-clobber publish, atomic JSON, file sha256, access snapshots."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from typing import Any

from .base import READ_CHUNK, SNAPSHOT_FORMAT, OpError, Result, json_default


def has_wal(path: str) -> bool:
    """True when ``path`` has a non-empty ``-wal`` file beside it."""
    try:
        return os.path.getsize(path + "-wal") > 0
    except OSError:
        return False


def fsync_file(path: str) -> None:
    """fsync ``path``'s content to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """fsync the directory ``path`` (a rename in it is then durable); best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def unlink_if_present(path: str) -> bool:
    """Remove ``path``; False when it was not there."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def publish(partial: str, dest: str) -> None:
    """Move ``partial`` to ``dest`` atomically, never replacing an existing ``dest``."""
    try:
        os.link(partial, dest)
    except FileExistsError:
        raise OpError(f"refusing to overwrite existing file: {dest}", "exists") from None
    except OSError:  # no hard links here: check, then rename
        if os.path.exists(dest):
            raise OpError(f"refusing to overwrite existing file: {dest}", "exists") from None
        os.rename(partial, dest)
    else:
        os.unlink(partial)
    fsync_dir(os.path.dirname(dest))


def write_json_atomic(path: str, doc: Any) -> None:
    """Write ``doc`` as JSON to ``path`` through a temporary file, fsynced, then renamed."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1, default=json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def file_sha256(path: str) -> tuple[str, int]:
    """sha256 hex digest and size of a file (hashlib releases the GIL on each chunk)."""
    digest = hashlib.sha256()
    size = 0
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            digest.update(view[:n])
            size += n
    return digest.hexdigest(), size


def load_snapshot(path: str) -> Result:
    """The access snapshot at ``path``, checked (kind ``bad_snapshot`` when it is not one)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise OpError(f"snapshot not found: {path}", "not_found") from None
    except ValueError as exc:
        raise OpError(f"snapshot {path} is not valid JSON: {exc}", "bad_snapshot") from None
    if not isinstance(doc, dict) or doc.get("format") != SNAPSHOT_FORMAT:
        raise OpError(f"{path} is not an access snapshot ({SNAPSHOT_FORMAT})", "bad_snapshot")
    rows = doc.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == 2 for r in rows):
        raise OpError(f"snapshot {path}: 'rows' must be [[key, level], ...]", "bad_snapshot")
    return doc


class Background:
    """Runs ``fn(*args)`` in a thread; ``get()`` returns its result or raises its error."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._result = fn(*args)
        except BaseException as exc:
            self._error = exc

    def get(self) -> Any:
        """Wait for the thread; its result, or raise its error."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result
