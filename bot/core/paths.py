"""Where the bot keeps what it writes, and the start-up check of every path setting.

Inputs (the runbook) are taken relative to the config file's folder; everything the bot
writes (state, jobs, artifacts, audit log, evidence) relative to the state directory:
``state_dir`` in the config, else ``$ROLLBACK_BOT_STATE_DIR``, else the folder of an
absolute ``state_db`` file, else the config file's folder.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

STATE_DIR_ENV = "ROLLBACK_BOT_STATE_DIR"


class _Records(Protocol):
    @property
    def audit_log(self) -> Path: ...
    @property
    def evidence_root(self) -> Path: ...


class _Target(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def transport(self) -> str: ...
    @property
    def key_file(self) -> Path | None: ...
    @property
    def known_hosts(self) -> Path | None: ...


def sqlite_file(url: str) -> Path | None:
    """The file behind a state/jobs setting (a plain path or a ``sqlite`` URL); None for a server database."""
    if "://" not in url:
        return Path(url)
    scheme, rest = url.split("://", 1)
    if scheme.split("+", 1)[0] != "sqlite":
        return None
    path = rest.split("?", 1)[0]
    path = path[1:] if path.startswith("/") else path  # sqlite:///rel, sqlite:////abs
    if not path or path == ":memory:":
        return None
    return Path(path)


def state_dir_for(explicit: Path | None, env_value: str | None, state_db: str, base: Path | None) -> Path | None:
    """The state directory by the rule in the module docstring (None: nothing to resolve against)."""
    if explicit is not None:
        return explicit if explicit.is_absolute() or base is None else base / explicit
    if env_value:
        return Path(env_value)
    db = sqlite_file(state_db)
    if db is not None and db.is_absolute():
        return db.parent
    return base


def _who() -> str:
    return f"uid {os.geteuid()}" if hasattr(os, "geteuid") else "this user"


def _owner(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return ""
    return f" (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def writable_dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as a folder the bot writes in (it may not exist yet), or None."""
    if path.exists():
        if not path.is_dir():
            return f"{path} exists and is not a folder"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{path} is not writable by {_who()}{_owner(path)}"
        return None
    return _creatable(path)


def _creatable(path: Path) -> str | None:
    anchor = _nearest_existing(path)
    if not anchor.is_dir():
        return f"{path} cannot be created: {anchor} is not a folder"
    if not os.access(anchor, os.W_OK | os.X_OK):
        return f"{path} cannot be created: {anchor} is not writable by {_who()}{_owner(anchor)}"
    return None


def writable_file_problem(path: Path) -> str | None:
    """Why the bot could not create or append to the file ``path``, or None."""
    if path.exists():
        if path.is_dir():
            return f"{path} is a folder, not a file"
        if not os.access(path, os.R_OK | os.W_OK):
            return f"{path} is not writable by {_who()}{_owner(path)}"
        return None
    if path.parent.is_dir():
        if not os.access(path.parent, os.W_OK | os.X_OK):
            return f"{path} cannot be created: {path.parent} is not writable by {_who()}{_owner(path.parent)}"
        return None
    return _creatable(path)


def readable_file_problem(path: Path) -> str | None:
    """Why the file ``path`` cannot be read, or None."""
    if not path.exists():
        return f"{path} does not exist"
    if path.is_dir():
        return f"{path} is a folder, not a file"
    if not os.access(path, os.R_OK):
        return f"{path} is not readable by {_who()}{_owner(path)}"
    return None


def target_key_problems(index: int, target: _Target, hosts: Sequence[_Target] | None = None) -> Iterator[str]:
    """``key_file`` and ``known_hosts`` of an SSH target (and of each host of a group), one line each."""
    if target.transport != "ssh":
        return
    seen: set[tuple[str, Path]] = set()
    for host in hosts or [target]:
        for key in ("key_file", "known_hosts"):
            value: Path | None = getattr(host, key)
            if value is None or (key, value) in seen:
                continue
            seen.add((key, value))
            problem = readable_file_problem(value)
            if problem:
                hint = ("; pin the host key: ssh-keyscan HOST >> " + str(value)) if key == "known_hosts" \
                    and not value.exists() else ""
                yield f"targets[{index}] ({target.name}).{key}: {problem}{hint}"


def path_problems(*, state_db: str, jobs_db: str | None, artifacts_dir: Path, records: _Records,
                  runbook: Path | None) -> list[str]:
    """Every path setting that cannot be used, one ``key: reason`` line each (server databases are skipped)."""
    out: list[str] = []
    for key, url in (("state_db", state_db), ("jobs_db", jobs_db)):
        file = sqlite_file(url) if url else None
        if file is not None:
            problem = writable_file_problem(file.absolute())
            if problem:
                out.append(f"{key}: {problem}")
    for key, folder in (("artifacts_dir", artifacts_dir), ("records.evidence_root", records.evidence_root)):
        problem = writable_dir_problem(folder.absolute())
        if problem:
            out.append(f"{key}: {problem}")
    problem = writable_file_problem(records.audit_log.absolute())
    if problem:
        out.append(f"records.audit_log: {problem}")
    if runbook is not None:
        problem = readable_file_problem(runbook)
        if problem:
            out.append(f"runbook: {problem}")
    return out

