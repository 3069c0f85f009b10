"""The evidence archive of an incident: one folder named by its anchor.

Every file is written through ``EvidenceArchive``, which tracks it in the store's
artifacts table at the moment it is made; the manifest lists exactly the tracked files
with their sha256, never what a glob of the folder happens to find (the plan's
``cp /tmp/*_${TIMESTAMP}.*`` misses files captured at an earlier second). Files stay
on the target when they are too big or not wanted here; the manifest then records
their path and hashes as ``remote``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.state.store import Store, utcnow

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
#: The step id under which archive files are tracked in the store.
TRACK_STEP = "evidence_archive"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe_name(name: str) -> str:
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts:
        raise ValueError(f"archive file name {name!r} must be a relative path inside the archive")
    return "/".join(parts)


@dataclass(frozen=True)
class ArchiveFile:
    """One file of the archive."""

    name: str
    sha256: str
    bytes: int


class EvidenceArchive:
    """Writes and tracks the files of one incident's archive folder."""

    def __init__(self, store: Store, incident_id: str, folder: Path, *, anchor: str) -> None:
        self.store = store
        self.incident_id = incident_id
        self.folder = folder
        self.anchor = anchor
        self.files: dict[str, ArchiveFile] = {}
        self.remote: dict[str, dict[str, Any]] = {}

    async def load(self) -> EvidenceArchive:
        """Pick up the files tracked for this folder so far (a second pass adds to them)."""
        prefix = str(self.folder) + os.sep
        for art in await self.store.artifacts(self.incident_id):
            if art.step_id == TRACK_STEP and art.path.startswith(prefix):
                name = art.path[len(prefix):]
                if name not in (MANIFEST, SUMS):
                    self.files[name] = ArchiveFile(name, art.sha256, art.bytes)
        return self

    async def _track(self, name: str, path: Path, sha: str, size: int) -> ArchiveFile:
        have = self.files.get(name)
        if have is None or have.sha256 != sha:
            await self.store.add_artifact(self.incident_id, step_id=TRACK_STEP, name=name, path=str(path),
                                          sha256=sha, size=size)
        self.files[name] = ArchiveFile(name, sha, size)
        return self.files[name]

    async def add_bytes(self, name: str, data: bytes) -> ArchiveFile:
        """Write a file (atomically) and track it."""
        name = _safe_name(name)
        path = self.folder / name

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".part")
            tmp.write_bytes(data)
            tmp.replace(path)

        await asyncio.to_thread(write)
        return await self._track(name, path, hashlib.sha256(data).hexdigest(), len(data))

    async def add_text(self, name: str, text: str) -> ArchiveFile:
        """Write a UTF-8 text file and track it."""
        return await self.add_bytes(name, text.encode("utf-8"))

    async def add_json(self, name: str, obj: Any) -> ArchiveFile:
        """Write pretty JSON and track it."""
        return await self.add_text(name, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False,
                                                    default=str) + "\n")

    async def add_copy(self, name: str, source: Path) -> ArchiveFile:
        """Copy a local file in and track it."""
        name = _safe_name(name)
        path = self.folder / name

        def copy() -> tuple[str, int]:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".part")
            shutil.copyfile(source, tmp)
            tmp.replace(path)
            return _sha256_file(path), path.stat().st_size

        sha, size = await asyncio.to_thread(copy)
        return await self._track(name, path, sha, size)

    async def adopt(self, name: str, expect_sha256: str | None = None) -> ArchiveFile:
        """Track a file already placed in the folder (a download); checks its sha256."""
        name = _safe_name(name)
        path = self.folder / name
        sha = await asyncio.to_thread(_sha256_file, path)
        if expect_sha256 and sha != expect_sha256:
            raise ValueError(f"{name}: sha256 {sha} differs from the expected {expect_sha256}")
        return await self._track(name, path, sha, path.stat().st_size)

    def note_remote(self, what: str, **facts: Any) -> None:
        """Record a file left on the target: its path and hashes."""
        self.remote[what] = facts

    async def write_manifest(self, **extra: Any) -> str:
        """Write manifest.json and SHA256SUMS for the tracked files; returns the manifest's sha256."""
        files = [{"name": f.name, "sha256": f.sha256, "bytes": f.bytes}
                 for f in sorted(self.files.values(), key=lambda f: f.name)]
        manifest = {"anchor": self.anchor, "incident": self.incident_id, "written_at": utcnow().isoformat(),
                    "files": files, "remote": self.remote, **extra}
        sums = "".join(f"{f['sha256']}  {f['name']}\n" for f in files)
        text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"

        def write() -> None:
            for name, body in ((SUMS, sums), (MANIFEST, text)):
                tmp = self.folder / (name + ".part")
                tmp.write_text(body, encoding="utf-8")
                tmp.replace(self.folder / name)

        await asyncio.to_thread(write)
        data = text.encode("utf-8")
        sha = hashlib.sha256(data).hexdigest()
        await self.store.add_artifact(self.incident_id, step_id=TRACK_STEP, name=MANIFEST,
                                      path=str(self.folder / MANIFEST), sha256=sha, size=len(data))
        return sha


def verify_archive(folder: Path) -> list[str]:
    """Problems with an archive: files of the manifest missing or with another sha256."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{MANIFEST}: cannot read ({exc})"]
    problems = []
    for f in manifest.get("files", []):
        path = folder / f["name"]
        if not path.is_file():
            problems.append(f"{f['name']}: missing")
        elif _sha256_file(path) != f["sha256"]:
            problems.append(f"{f['name']}: sha256 differs from the manifest")
    return problems
