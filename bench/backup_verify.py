"""Benchmark: backup + verify of a large live SQLite database, ours vs the plan's by hand.

1. Generates a database of ``--size-mib`` MiB (default 1024) in WAL mode: documents (text),
   attachments (random blobs), events (small rows, two indexes) and a ``ticks`` table a
   writer appends to.
2. **By hand, idle** (the plan's sequence, nothing writing): ``sqlite3 db ".backup out.db"``,
   ``sqlite3 out.db "PRAGMA integrity_check;"``, ``sha256sum out.db``; each timed.
3. **Ours, under writes**: a writer process commits a small row every ``--write-interval-ms``
   (default 5 ms) to the live database while the agent's ``backup`` then ``verify`` ops run
   through the real code path (``actions.sqlite.sqlite_op`` over ``LocalTransport``, with
   the default runbook's params). Checks that both finished while the writer ran and kept
   committing, and that the verify passed.
4. **CLI .backup under the same writes**: given ``--cli-bound`` x the idle ``.backup`` time,
   then killed if it has not finished.

Steps 2 and 3 alternate ``--repeat`` times (default 3) and their medians are compared;
step 2 also times ``cp`` + ``sha256sum`` of the same file, the floor of any hashed copy.
All of it runs on two shapes of database (``--shapes``): blob-heavy and small rows only.
Prints, per shape, our backup against ``cp`` + ``sha256sum`` (target <= 1.1x), backup +
verify against the plan's by hand (target <= 0.8x), the load average, and, with
``--profile`` or when a target is missed, where our time goes (backup copy, integrity_check, content hash,
file sha256, each alone on the same backup). Everything lives in a temporary directory
under /tmp, removed at the end unless ``--keep``.

    python bench/backup_verify.py                    # 1 GiB
    python bench/backup_verify.py --size-mib 200     # quick
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import load, real_python3

from actions.local import LocalTransport
from actions.sqlite import sqlite_op
from actions.sqlite_agent import file_sha256

RATIO_TARGET = 0.8
#: Our backup (consistent snapshot, fsync, file sha256) against cp + sha256sum of the same file.
FLOOR_TARGET = 1.1
MIB = 1 << 20

SCHEMA = """
CREATE TABLE documents (
    id INTEGER PRIMARY KEY, project INTEGER NOT NULL, title TEXT NOT NULL,
    body TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE INDEX documents_project ON documents(project);
CREATE TABLE attachments (
    id INTEGER PRIMARY KEY, document_id INTEGER NOT NULL REFERENCES documents(id),
    name TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE events (
    id INTEGER PRIMARY KEY, document_id INTEGER NOT NULL REFERENCES documents(id),
    kind TEXT NOT NULL, at TEXT NOT NULL, detail TEXT NOT NULL);
CREATE INDEX events_document_at ON events(document_id, at);
CREATE TABLE ticks (id INTEGER PRIMARY KEY, at REAL NOT NULL, note TEXT NOT NULL);
"""

#: Rows per generation chunk (one transaction each); about 8.5 MiB of data.
CHUNK_DOCUMENTS = 2000
CHUNK_ATTACHMENTS = 500
CHUNK_EVENTS = 6000
BODY_CHARS = 1500
BLOB_BYTES = 8192
DETAIL_CHARS = 150
KINDS = ("created", "updated", "reviewed", "approved", "exported", "commented")

#: The writer: one small committed row every interval, until SIGTERM.
WRITER_SOURCE = r"""
import signal, sqlite3, sys, time
db, interval = sys.argv[1], float(sys.argv[2])
stop = False
def _stop(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, _stop)
conn = sqlite3.connect(db, timeout=30, isolation_level=None)
conn.execute("PRAGMA busy_timeout = 30000")
print("ready", flush=True)
n = 0
while not stop:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO ticks (at, note) VALUES (?, ?)", (time.time(), "tick %d" % n))
    conn.execute("COMMIT")
    n += 1
    time.sleep(interval)
conn.close()
print(n, flush=True)
"""


class BenchError(RuntimeError):
    """Something the figures depend on did not happen as it should."""


# ----------------------------------------------------------------------------- generation


@dataclass
class Generated:
    """The generated database."""

    path: Path
    bytes: int
    rows: int
    seconds: float


def _text(rng: random.Random, chars: int) -> str:
    return base64.b64encode(rng.randbytes(chars * 3 // 4 + 3)).decode("ascii")[:chars]


#: Database shapes: "blobs" (documents, 8 KiB attachments, events) or "rows" (small rows only:
#: short documents and many events, two indexes), where integrity_check costs the most.
SHAPES = ("blobs", "rows")
ROWS_BODY_CHARS = 80
ROWS_CHUNK_EVENTS = 40000
ROWS_DETAIL_CHARS = 40


def generate(path: Path, size_mib: int, seed: int, shape: str = "blobs") -> Generated:
    """A WAL-mode database of about ``size_mib`` MiB in ``shape``; one transaction per chunk."""
    if shape == "rows":
        return _generate(path, size_mib, seed, body_chars=ROWS_BODY_CHARS, attachments=0,
                         events=ROWS_CHUNK_EVENTS, detail_chars=ROWS_DETAIL_CHARS)
    return _generate(path, size_mib, seed, body_chars=BODY_CHARS, attachments=CHUNK_ATTACHMENTS,
                     events=CHUNK_EVENTS, detail_chars=DETAIL_CHARS)


def _generate(path: Path, size_mib: int, seed: int, *, body_chars: int, attachments: int, events: int,
              detail_chars: int) -> Generated:
    started = time.perf_counter()
    rng = random.Random(seed)
    target = size_mib * MIB
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")  # fast load; WAL is switched on at the end
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")
    conn.executescript(SCHEMA)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    doc_id = 0
    rows = 0
    while conn.execute("PRAGMA page_count").fetchone()[0] * page_size < target:
        first = doc_id + 1
        body = _text(rng, body_chars * CHUNK_DOCUMENTS)
        docs = [
            (first + i, rng.randrange(500), f"Document {first + i}",
             body[i * body_chars:(i + 1) * body_chars], f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:00Z")
            for i in range(CHUNK_DOCUMENTS)
        ]
        doc_id += CHUNK_DOCUMENTS
        blob = rng.randbytes(BLOB_BYTES * attachments)
        atts = [
            (rng.randint(first, doc_id), f"file-{i}.bin", blob[i * BLOB_BYTES:(i + 1) * BLOB_BYTES])
            for i in range(attachments)
        ]
        detail = _text(rng, detail_chars * events)
        evs = [
            (rng.randint(1, doc_id), KINDS[i % len(KINDS)], f"2025-06-{1 + i % 28:02d}T{i % 24:02d}:00:00Z",
             detail[i * detail_chars:(i + 1) * detail_chars])
            for i in range(events)
        ]
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?)", docs)
        conn.executemany("INSERT INTO attachments (document_id, name, data) VALUES (?, ?, ?)", atts)
        conn.executemany("INSERT INTO events (document_id, kind, at, detail) VALUES (?, ?, ?, ?)", evs)
        conn.execute("COMMIT")
        rows += len(docs) + len(atts) + len(evs)
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    conn.close()
    if mode != "wal":
        raise BenchError(f"could not switch {path} to WAL mode: {mode}")
    return Generated(path, path.stat().st_size, rows, time.perf_counter() - started)


# ----------------------------------------------------------------------------- the writer


class Writer:
    """A separate process committing one small row every ``interval`` seconds."""

    def __init__(self, db: Path, interval: float) -> None:
        self.db = db
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER_SOURCE, str(db), str(interval)],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.stop()
            raise BenchError("the writer did not start")
        # Let it settle into its rhythm.
        time.sleep(0.2)

    def commits(self) -> int:
        """Rows committed so far (read from the database, as any reader would)."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            return int(conn.execute("SELECT count(*) FROM ticks").fetchone()[0])
        finally:
            conn.close()

    @property
    def running(self) -> bool:
        """True while the writer process lives."""
        return self.proc.poll() is None

    def stop(self) -> int | None:
        """Stop it; returns how many rows it committed (None if it died)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return None
        last = out.strip().splitlines()[-1:] if out else []
        return int(last[0]) if last and last[0].isdigit() else None


# ----------------------------------------------------------------------------- by hand


def _timed(argv: list[str], timeout: float) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-500:]}")
    return seconds, proc.stdout


def by_hand(db: Path, out: Path, timeout: float) -> dict[str, float]:
    """The plan's .backup, integrity_check, sha256sum; each timed, with the total."""
    out.unlink(missing_ok=True)
    t_backup, _ = _timed(["sqlite3", str(db), f".backup '{out}'"], timeout)
    t_check, text = _timed(["sqlite3", str(out), "PRAGMA integrity_check;"], timeout)
    if text.strip() != "ok":
        raise BenchError(f"integrity_check of the by-hand backup: {text[:300]}")
    t_sha, _ = _timed(["sha256sum", str(out)], timeout)
    out.unlink(missing_ok=True)
    # The floor of any backup that is hashed: copy the file and hash the copy (idle, so the
    # copy is consistent here; on a live WAL database it would not be).
    t_cp, _ = _timed(["cp", str(db), str(out)], timeout)
    t_cp_sha, _ = _timed(["sha256sum", str(out)], timeout)
    out.unlink(missing_ok=True)
    return {"backup": t_backup, "integrity_check": t_check, "sha256sum": t_sha,
            "total": t_backup + t_check + t_sha, "cp": t_cp, "cp_sha256sum": t_cp_sha,
            "floor": t_cp + t_cp_sha}


def cli_backup_under_writes(db: Path, out: Path, bound: float) -> float | None:
    """``sqlite3 db .backup`` while the writer runs: its time, or None when killed at ``bound``."""
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    try:
        subprocess.run(["sqlite3", str(db), f".backup '{out}'"], capture_output=True, timeout=bound, check=True)
    except subprocess.TimeoutExpired:
        return None
    finally:
        for p in (out, Path(f"{out}-journal")):
            p.unlink(missing_ok=True)
    return time.perf_counter() - started


# ----------------------------------------------------------------------------- ours


@dataclass
class Ours:
    """Our backup + verify: wall times and what the agent reported."""

    backup_wall: float
    verify_wall: float
    backup: dict[str, Any]
    verify: dict[str, Any]
    commits_during: int = 0
    writer_alive: bool = True

    @property
    def total(self) -> float:
        """Backup plus verify, as the runbook runs them (two steps)."""
        return self.backup_wall + self.verify_wall


async def ours(transport: LocalTransport, db: Path, dest: Path, *, python: str, timeout: float,
               verify_params: dict[str, Any]) -> Ours:
    """The default runbook's emergency_backup and verify_backup ops, through sqlite_op."""
    await asyncio.to_thread(dest.unlink, missing_ok=True)
    started = time.perf_counter()
    backup = await sqlite_op(transport, "backup", {"db": str(db), "dest": str(dest), "if_exists": "keep"},
                             timeout=timeout, python=python)
    backup_wall = time.perf_counter() - started
    started = time.perf_counter()
    verify = await sqlite_op(transport, "verify", {"db": str(dest), **verify_params},
                             timeout=timeout, python=python)
    verify_wall = time.perf_counter() - started
    if not verify.get("ok"):
        raise BenchError(f"verify of our backup failed: {verify.get('integrity')} {verify.get('content_hash_error')}")
    return Ours(backup_wall, verify_wall, backup, verify)


async def profile(transport: LocalTransport, db: Path, dest: Path, *, python: str,
                  timeout: float) -> list[tuple[str, float]]:
    """Each part of ours alone, idle, on the same database and the backup it makes.

    Every line starts from a flushed page cache (``os.sync``), so one part's write-back
    does not land on the next.
    """
    parts: list[tuple[str, float]] = []

    async def timed_op(label: str, op: str, params: dict[str, Any]) -> dict[str, Any]:
        await asyncio.to_thread(os.sync)
        started = time.perf_counter()
        res = await sqlite_op(transport, op, params, timeout=timeout, python=python)
        parts.append((label, time.perf_counter() - started))
        return res

    async def timed_call(label: str, fn: Callable[[], object]) -> None:
        await asyncio.to_thread(os.sync)
        started = time.perf_counter()
        await asyncio.to_thread(fn)
        parts.append((label, time.perf_counter() - started))

    d = str(dest)
    await asyncio.to_thread(dest.unlink, missing_ok=True)
    await timed_op("agent start-up (query 'SELECT 1')", "query", {"db": str(db), "sql": "SELECT 1", "params": []})
    res = await timed_op("backup op (copy + fsync + file sha256)", "backup", {"db": str(db), "dest": d})
    parts.append(("  of which the copy (backup API + fsync), agent-timed", float(res["backup_seconds"])))
    await timed_call("file sha256, the agent's hashlib code alone", lambda: file_sha256(d))
    await timed_call("sha256sum (coreutils) alone", lambda: subprocess.run(
        ["sha256sum", d], capture_output=True, check=True, timeout=timeout))
    await timed_op("integrity_check op alone", "integrity_check", {"db": d})
    await timed_op("content_hash op alone", "content_hash", {"db": d})
    await timed_op("verify op, as the runbook runs it", "verify", {"db": d})
    await timed_op("verify op, immutable=true", "verify", {"db": d, "immutable": True})
    await timed_op("verify op, content_hash=false", "verify", {"db": d, "content_hash": False})
    await asyncio.to_thread(dest.unlink, missing_ok=True)
    res = await timed_op("backup op with verify=true (one op, one sha256 pass)", "backup",
                         {"db": str(db), "dest": d, "verify": True})
    if not res["verify"]["ok"]:
        raise BenchError("backup with verify=true did not verify")
    await asyncio.to_thread(dest.unlink, missing_ok=True)
    res = await timed_op("backup op with verify=true, content_hash=false", "backup",
                         {"db": str(db), "dest": d, "verify": True, "content_hash": False})
    await asyncio.to_thread(dest.unlink, missing_ok=True)
    return parts


# ----------------------------------------------------------------------------- main


async def ours_under_writes(transport: LocalTransport, db: Path, dest: Path, args: argparse.Namespace,
                            python: str, verify_params: dict[str, Any]) -> Ours:
    """Ours while a writer commits; refuses figures where the writer did not keep committing."""
    await asyncio.to_thread(os.sync)
    writer = Writer(db, args.write_interval_ms / 1000)
    try:
        before = writer.commits()
        result = await ours(transport, db, dest, python=python, timeout=args.timeout, verify_params=verify_params)
        result.writer_alive = writer.running
        result.commits_during = writer.commits() - before
    finally:
        writer.stop()
        await asyncio.to_thread(dest.unlink, missing_ok=True)
    if not result.writer_alive or result.commits_during <= 0:
        raise BenchError(f"the writer did not keep committing (alive {result.writer_alive}, "
                         f"{result.commits_during} commits)")
    return result


async def bench(args: argparse.Namespace, work: Path) -> int:
    """Run the measurements on each shape, then print the figures side by side."""
    python = args.python or real_python3()
    print(load())
    summaries: list[str] = []
    met = True
    for shape in args.shapes:
        shape_work = work / shape
        shape_work.mkdir()
        ok, summary = await bench_shape(args, shape_work, shape, python)
        met = met and ok
        summaries.append(summary)
        await asyncio.to_thread(shutil.rmtree, shape_work, True)
    print()
    print("summary (medians):")
    for summary in summaries:
        print(summary)
    print(load())
    return 0 if met or not args.strict else 1


async def bench_shape(args: argparse.Namespace, work: Path, shape: str, python: str) -> tuple[bool, str]:
    """One database shape: generate, measure, print; (targets met, summary lines)."""
    db = work / "production.db"
    print(f"\n[{shape}] generating a {args.size_mib} MiB WAL database in {work} ...", flush=True)
    gen = await asyncio.to_thread(generate, db, args.size_mib, args.seed, shape)
    print(f"[{shape}] generated {gen.bytes / MIB:.0f} MiB, {gen.rows:,} rows in {gen.seconds:.1f} s "
          f"(sqlite3 CLI {_cli_version()}, agent's python: {python})", flush=True)

    transport = LocalTransport(name="bench", root=str(work))
    verify_params: dict[str, Any] = {}
    if args.verify_immutable:
        verify_params["immutable"] = True
    if args.no_content_hash:
        verify_params["content_hash"] = False
    hands: list[dict[str, float]] = []
    results: list[Ours] = []
    try:
        for i in range(args.repeat):
            await asyncio.to_thread(os.sync)  # nothing earlier left to write back
            hand = await asyncio.to_thread(by_hand, db, work / "by_hand.db", args.timeout)
            hands.append(hand)
            print(f"[{shape} {i + 1}] by hand, idle: .backup {hand['backup']:.2f} s + integrity_check "
                  f"{hand['integrity_check']:.2f} s + sha256sum {hand['sha256sum']:.2f} s = {hand['total']:.2f} s; "
                  f"cp {hand['cp']:.2f} s + sha256sum {hand['cp_sha256sum']:.2f} s = {hand['floor']:.2f} s",
                  flush=True)
            result = await ours_under_writes(transport, db, work / "emergency_backup.db", args, python,
                                             verify_params)
            results.append(result)
            v = result.verify
            print(f"[{shape} {i + 1}] ours under writes: backup {result.backup_wall:.2f} s (copy "
                  f"{result.backup['backup_seconds']:.2f} s + file sha256) + verify {result.verify_wall:.2f} s "
                  f"(integrity_check + file sha256 || content hash: {'ok' if v['ok'] else 'FAILED'}) = "
                  f"{result.total:.2f} s; writer committed {result.commits_during} rows meanwhile", flush=True)

        hand_total = statistics.median(h["total"] for h in hands)
        hand_backup = statistics.median(h["backup"] for h in hands)
        floor = statistics.median(h["floor"] for h in hands)
        ours_total = statistics.median(r.total for r in results)
        ours_backup = statistics.median(r.backup_wall for r in results)
        commits = statistics.median(r.commits_during for r in results)
        ratio = ours_total / hand_total
        floor_ratio = ours_backup / floor
        label = "" if args.repeat == 1 else f" (medians of {args.repeat})"
        lines = [
            f"[{shape}] backup{label}: ours under writes {ours_backup:.2f} s (consistent snapshot + fsync + "
            f"file sha256) vs cp + sha256sum of the same file, idle, {floor:.2f} s: {floor_ratio:.2f}x "
            f"(target <= {FLOOR_TARGET}x)",
            f"[{shape}] backup+verify{label}: ours under writes {ours_total:.2f} s vs by-hand idle "
            f"{hand_total:.2f} s: {ratio:.2f}x (target <= {RATIO_TARGET}x); vs cp + sha256sum "
            f"{ours_total / floor:.2f}x; writer committed {commits:.0f} rows meanwhile; "
            f"{gen.bytes / MIB:.0f} MiB, {gen.rows:,} rows",
        ]
        for line in lines:
            print(line)

        bound = args.cli_bound * hand_backup
        await asyncio.to_thread(os.sync)
        writer = Writer(db, args.write_interval_ms / 1000)
        try:
            before = writer.commits()
            cli = await asyncio.to_thread(cli_backup_under_writes, db, work / "cli_backup.db", bound)
            cli_commits = writer.commits() - before
        finally:
            writer.stop()
        if cli is None:
            lines.append(f"[{shape}] cli .backup under writes: did not finish in {bound:.1f} s (killed; "
                         f"{args.cli_bound:g}x its idle time; writer committed {cli_commits} rows meanwhile)")
        else:
            lines.append(f"[{shape}] cli .backup under writes: finished in {cli:.2f} s ({cli / hand_backup:.1f}x "
                         f"its idle time; writer committed {cli_commits} rows meanwhile)")
        print(lines[-1])
        print(f"writer: one commit every {args.write_interval_ms:g} ms; {load()}")
        if args.profile or ratio > RATIO_TARGET or floor_ratio > FLOOR_TARGET:
            print(f"[{shape}] where our time goes (each part alone, idle, same database):", flush=True)
            parts = await profile(transport, db, work / "profile_backup.db", python=python, timeout=args.timeout)
            for name, seconds in parts:
                print(f"  {name:<58}{seconds:7.2f} s")
    finally:
        await transport.close()
    return ratio <= RATIO_TARGET and floor_ratio <= FLOOR_TARGET, "\n".join(lines)


def _cli_version() -> str:
    try:
        out = subprocess.run(["sqlite3", "--version"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "missing"
    return out.stdout.split()[0] if out.stdout else "?"


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run in a temporary directory, clean up."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="database size in MiB (default 1024)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="by-hand and ours are each run this many times; medians are compared (default 3)")
    parser.add_argument("--write-interval-ms", type=float, default=5.0,
                        help="the writer commits one row every this many ms (default 5)")
    parser.add_argument("--cli-bound", type=float, default=3.0,
                        help="CLI .backup under writes is killed after this many times its idle time (default 3)")
    parser.add_argument("--timeout", type=float, default=1800, help="limit on any single operation, s (default 1800)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the generated data")
    parser.add_argument("--profile", action="store_true",
                        help="always print where our time goes (done anyway when the target is missed)")
    parser.add_argument("--verify-immutable", action="store_true",
                        help="pass immutable=true to verify (the runbook does not)")
    parser.add_argument("--no-content-hash", action="store_true",
                        help="pass content_hash=false to verify (the runbook does not)")
    parser.add_argument("--shapes", type=lambda v: [x for x in v.split(",") if x], default=list(SHAPES),
                        help="database shapes, comma-separated: blobs (documents, 8 KiB attachments, events), "
                        "rows (small rows only) (default: both)")
    parser.add_argument("--python", help="the agent's interpreter (default: the one python3 on PATH runs)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp"), help="where the temporary directory goes")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    if args.size_mib < 1:
        parser.error("--size-mib must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    unknown = sorted(set(args.shapes) - set(SHAPES)) or ([] if args.shapes else ["(none)"])
    if unknown:
        parser.error(f"--shapes takes {', '.join(SHAPES)}; not {', '.join(unknown)}")
    for tool in ("sqlite3", "sha256sum", "cp"):
        if shutil.which(tool) is None:
            print(f"cannot run: {tool} is not installed (apt-get install sqlite3 coreutils)")
            return 2
    work = Path(tempfile.mkdtemp(prefix="rb-backup-bench-", dir=args.dir))
    try:
        return asyncio.run(bench(args, work))
    except BenchError as exc:
        print(f"FAILED: {exc}")
        return 2
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
