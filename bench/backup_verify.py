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

Steps 2 and 3 alternate ``--repeat`` times (default 3) and their medians are compared.
Prints the times, the ratio ours / by-hand (target <= 0.8x) and, with ``--profile`` or when
the target is missed, where our time goes (backup copy, integrity_check, content hash,
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

from actions.local import LocalTransport
from actions.sqlite import sqlite_op
from actions.sqlite_agent import file_sha256

RATIO_TARGET = 0.8
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


def generate(path: Path, size_mib: int, seed: int) -> Generated:
    """A WAL-mode database of about ``size_mib`` MiB; one transaction per chunk."""
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
        body = _text(rng, BODY_CHARS * CHUNK_DOCUMENTS)
        docs = [
            (first + i, rng.randrange(500), f"Document {first + i}",
             body[i * BODY_CHARS:(i + 1) * BODY_CHARS], f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:00Z")
            for i in range(CHUNK_DOCUMENTS)
        ]
        doc_id += CHUNK_DOCUMENTS
        blob = rng.randbytes(BLOB_BYTES * CHUNK_ATTACHMENTS)
        atts = [
            (rng.randint(first, doc_id), f"file-{i}.bin", blob[i * BLOB_BYTES:(i + 1) * BLOB_BYTES])
            for i in range(CHUNK_ATTACHMENTS)
        ]
        detail = _text(rng, DETAIL_CHARS * CHUNK_EVENTS)
        events = [
            (rng.randint(1, doc_id), KINDS[i % len(KINDS)], f"2025-06-{1 + i % 28:02d}T{i % 24:02d}:00:00Z",
             detail[i * DETAIL_CHARS:(i + 1) * DETAIL_CHARS])
            for i in range(CHUNK_EVENTS)
        ]
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?)", docs)
        conn.executemany("INSERT INTO attachments (document_id, name, data) VALUES (?, ?, ?)", atts)
        conn.executemany("INSERT INTO events (document_id, kind, at, detail) VALUES (?, ?, ?, ?)", events)
        conn.execute("COMMIT")
        rows += len(docs) + len(atts) + len(events)
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
    return {"backup": t_backup, "integrity_check": t_check, "sha256sum": t_sha,
            "total": t_backup + t_check + t_sha}


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


def real_python3() -> str:
    """The interpreter ``python3`` on PATH really runs (past launchers such as pyenv's shim,
    which cost ~100 ms a start here and would blur the figures); this one if there is none."""
    if shutil.which("python3") is None:
        return sys.executable
    out = subprocess.run(["python3", "-c", "import sys; print(sys.executable)"],
                         capture_output=True, text=True, timeout=30, check=False)
    path = out.stdout.strip()
    return path if out.returncode == 0 and path else "python3"


def load() -> str:
    """The load averages, as a reminder that other work on the machine skews the figures."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


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
    """Run the measurements and print the figures."""
    db = work / "production.db"
    python = args.python or real_python3()
    print(load())
    print(f"generating a {args.size_mib} MiB WAL database in {work} ...", flush=True)
    gen = await asyncio.to_thread(generate, db, args.size_mib, args.seed)
    print(f"generated {gen.bytes / MIB:.0f} MiB, {gen.rows:,} rows in {gen.seconds:.1f} s "
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
            print(f"[{i + 1}] by hand, idle: .backup {hand['backup']:.2f} s + integrity_check "
                  f"{hand['integrity_check']:.2f} s + sha256sum {hand['sha256sum']:.2f} s = {hand['total']:.2f} s",
                  flush=True)
            result = await ours_under_writes(transport, db, work / "emergency_backup.db", args, python,
                                             verify_params)
            results.append(result)
            v = result.verify
            print(f"[{i + 1}] ours under writes: backup {result.backup_wall:.2f} s (copy "
                  f"{result.backup['backup_seconds']:.2f} s + file sha256) + verify {result.verify_wall:.2f} s "
                  f"(integrity_check + file sha256 || content hash: {'ok' if v['ok'] else 'FAILED'}) = "
                  f"{result.total:.2f} s; writer committed {result.commits_during} rows meanwhile", flush=True)

        hand_total = statistics.median(h["total"] for h in hands)
        hand_backup = statistics.median(h["backup"] for h in hands)
        ours_total = statistics.median(r.total for r in results)
        commits = statistics.median(r.commits_during for r in results)
        ratio = ours_total / hand_total
        label = "" if args.repeat == 1 else f" (medians of {args.repeat})"
        print(f"backup+verify{label}: ours under writes {ours_total:.2f} s vs by-hand idle {hand_total:.2f} s: "
              f"{ratio:.2f}x (target <= {RATIO_TARGET}x); writer committed {commits:.0f} rows meanwhile")

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
            print(f"cli .backup under writes: did not finish in {bound:.1f} s (killed; {args.cli_bound:g}x its "
                  f"idle time; writer committed {cli_commits} rows meanwhile)")
        else:
            print(f"cli .backup under writes: finished in {cli:.2f} s ({cli / hand_backup:.1f}x its idle time; "
                  f"writer committed {cli_commits} rows meanwhile)")
        print(f"writer: one commit every {args.write_interval_ms:g} ms; {load()}")
        if args.profile or ratio > RATIO_TARGET:
            print("where our time goes (each part alone, idle, same database):", flush=True)
            parts = await profile(transport, db, work / "profile_backup.db", python=python, timeout=args.timeout)
            for name, seconds in parts:
                print(f"  {name:<58}{seconds:7.2f} s")
    finally:
        await transport.close()
    return 0 if ratio <= RATIO_TARGET or not args.strict else 1


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
    parser.add_argument("--python", help="the agent's interpreter (default: the one python3 on PATH runs)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp"), help="where the temporary directory goes")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    if args.size_mib < 1:
        parser.error("--size-mib must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    for tool in ("sqlite3", "sha256sum"):
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
