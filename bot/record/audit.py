"""The local audit log: an append-only JSONL hash chain.

Each line is one JSON object carrying ``seq`` (its 1-based line number), ``prev`` (the
sha256 of the line before, as written, without its newline; 64 zeros on the first
line) and ``sha256`` (of the line's own canonical JSON without that field). Editing a
line breaks its own ``sha256``; rewriting a line with a matching ``sha256`` breaks the
next line's ``prev``; removing or reordering lines breaks ``seq`` and ``prev``.
``verify_chain`` names the first line that does not hold.

``AuditSink`` copies the store's event journal (every approval click, answer, choice,
step start and end, lifecycle move) into the chain as it happens, by a cursor: the
highest journal id already in the file. It runs from the engine's change hook, which
is off Slack's ack path, and catches up after a restart from the file itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bot.state.store import Store, journal, utcnow

GENESIS = "0" * 64


def canonical(obj: dict[str, Any]) -> str:
    """The canonical JSON text of an entry (sorted keys, no spaces, UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def line_hash(line: str) -> str:
    """sha256 of a written line (without its newline)."""
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


def seal(body: dict[str, Any], *, seq: int, prev: str) -> str:
    """The text of a chained line for ``body`` (``seq``, ``prev``, ``sha256`` added)."""
    entry = {k: v for k, v in body.items() if k not in ("seq", "prev", "sha256")}
    entry["seq"] = seq
    entry["prev"] = prev
    entry["sha256"] = hashlib.sha256(canonical(entry).encode("utf-8")).hexdigest()
    return canonical(entry)


@dataclass(frozen=True)
class ChainCheck:
    """The result of verifying a chain: ``first_bad`` is a 1-based line number or None."""

    lines: int
    first_bad: int | None
    reason: str
    head: str

    @property
    def ok(self) -> bool:
        """True when every line holds."""
        return self.first_bad is None


def verify_lines(lines: Iterable[str]) -> ChainCheck:
    """Check a chain given as its lines (without newlines)."""
    prev = GENESIS
    n = 0
    for n, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            return ChainCheck(n, n, "not valid JSON (torn or edited line)", prev)
        if not isinstance(entry, dict):
            return ChainCheck(n, n, "not a JSON object", prev)
        if entry.get("seq") != n:
            return ChainCheck(n, n, f"seq is {entry.get('seq')!r}, expected {n} (a line removed or moved)", prev)
        if entry.get("prev") != prev:
            return ChainCheck(n, n, f"prev does not match the sha256 of line {n - 1} "
                                    f"(line {n - 1} altered, or lines removed)" if n > 1
                              else "prev of the first line is not the genesis value", prev)
        body = {k: v for k, v in entry.items() if k != "sha256"}
        if entry.get("sha256") != hashlib.sha256(canonical(body).encode("utf-8")).hexdigest():
            return ChainCheck(n, n, "its content does not match its sha256 (line altered)", prev)
        prev = line_hash(line)
    return ChainCheck(n, None, "ok", prev)


def verify_chain(path: Path) -> ChainCheck:
    """Check the chain in a file; a missing final newline marks a torn last line."""
    data = path.read_bytes().decode("utf-8", "replace")
    if not data:
        return ChainCheck(0, None, "empty", GENESIS)
    lines = data.split("\n")
    torn = lines[-1] != ""
    if not torn:
        lines = lines[:-1]
    check = verify_lines(lines)
    if check.ok and torn:
        return ChainCheck(check.lines, check.lines, "the last line has no newline (torn write)", check.head)
    return check


class AuditLog:
    """An append-only chained JSONL file; one writer per file (this process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()
        self._loaded = False
        self._seq = 0
        self._prev = GENESIS
        self._last_event_id = 0

    def _load(self) -> None:
        if self._loaded:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if not line:
                    continue
                self._seq += 1
                self._prev = line_hash(line)
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and entry.get("type") == "event":
                    self._last_event_id = max(self._last_event_id, int(entry.get("event_id") or 0))
        self._loaded = True

    def _write(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self._load()
        out, texts = [], []
        seq, prev = self._seq, self._prev
        for body in bodies:
            seq += 1
            text = seal(body, seq=seq, prev=prev)
            prev = line_hash(text)
            texts.append(text)
            out.append(json.loads(text))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, ("\n".join(texts) + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        self._seq, self._prev = seq, prev
        for body in bodies:
            if body.get("type") == "event":
                self._last_event_id = max(self._last_event_id, int(body.get("event_id") or 0))
        return out

    async def append(self, body: dict[str, Any]) -> dict[str, Any]:
        """Append one entry; returns it as written (with seq, prev, sha256)."""
        return (await self.append_many([body]))[0]

    async def append_many(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append entries in order, in one write and one fsync."""
        if not bodies:
            return []
        async with self._lock:
            return await asyncio.to_thread(self._write, bodies)

    async def last_event_id(self) -> int:
        """The highest journal id already copied into the file."""
        async with self._lock:
            if not self._loaded:
                await asyncio.to_thread(self._load)
            return self._last_event_id

    async def head(self) -> tuple[int, str]:
        """(number of lines, sha256 of the last line)."""
        async with self._lock:
            await asyncio.to_thread(self._load)
            return self._seq, self._prev

    async def entries(self, incident_id: str | None = None) -> list[dict[str, Any]]:
        """Every entry (of one incident when given), as written."""
        async with self._lock:
            if not self.path.exists():
                return []
            text = await asyncio.to_thread(self.path.read_text, encoding="utf-8")
        out = []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and (incident_id is None or entry.get("incident") == incident_id):
                out.append(entry)
        return out


class AuditSink:
    """Copies new journal events from the store into the audit log."""

    def __init__(self, store: Store, log: AuditLog, *, batch: int = 500) -> None:
        self.store = store
        self.log = log
        self.batch = batch
        self._lock = asyncio.Lock()

    async def flush(self, *, sync: bool = True) -> int:
        """Copy journal events not yet in the log; returns how many were copied.

        Only events already on disk in the store are copied (a power loss must not take back
        an event the log holds): with ``sync`` the store is synced first and every event goes,
        without it the copy stops at the store's last sync (the engine's copies between steps).
        """
        copied = 0
        async with self._lock:
            upto = await self.store.sync() if sync else self.store.durable_event_id
            after = await self.log.last_event_id()
            while True:
                query = sa.select(journal).where(journal.c.id > after)
                if upto is not None:
                    query = query.where(journal.c.id <= upto)
                async with self.store.engine.connect() as conn:
                    rows = (await conn.execute(query.order_by(journal.c.id).limit(self.batch))).all()
                if not rows:
                    return copied
                bodies = []
                for r in rows:
                    at = r.at.isoformat() if r.at is not None else utcnow().isoformat()
                    if r.at is not None and r.at.tzinfo is None:
                        at += "+00:00"
                    bodies.append({"type": "event", "event_id": r.id, "incident": r.incident_id, "at": at,
                                   "kind": r.kind, "actor": r.actor, "step": r.step_id, "data": r.data or {}})
                await self.log.append_many(bodies)
                copied += len(bodies)
                after = rows[-1].id
