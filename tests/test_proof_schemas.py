"""Proof, generated schemas: strategies A, B and C against a model, on shapes never shipped.

Hypothesis builds the plan's six tables in random shapes: integer, text or composite keys,
extra and missing optional columns, NULLs, a foreign key or not, a change log with one of two
column layouts (with or without an operation column), filled by triggers for some tables and
by the app for the others. History: rows written before the backup, legitimate writes after
it, a bad deployment that inserts, updates and deletes (access levels too), legitimate writes
after the deployment. For each strategy the rollback runs as the runbook runs it (restrict
access, the strategy, lift the restriction) and the result is checked against a model of the
promise, row by row:

- C: every table equals the backup's (the change log keeps only rows the rollback wrote);
- A: the rows the deployment touched are the backup's, except a row written again after the
  deployment, kept as it is (a conflict); every other row as it was;
- B: the deployment's changes undone newest first, each only while the row still holds what
  it wrote (in the columns it changed), else kept with every older change of that row;
- a second run of A or B changes nothing;
- access levels: as the model says for ``user_permissions``, after the restriction is lifted;
- data loss, per table: rows changed, undone, lost, exactly as the model counts them.

Counted: examples, and the rows where the deployment and a later write met (conflicts).
Bounded for CI: a fixed number of examples, derandomized (``ROLLBACK_PROOF_SEED`` changes it).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from actions import sqlite_agent

if "data_loss" not in sqlite_agent.OPS:  # the change-log strategies are not in this agent
    pytest.skip("the SQLite agent has no change-log strategies (data_loss)", allow_module_level=True)

EXAMPLES = int(os.environ.get("ROLLBACK_PROOF_SCHEMAS", "30"))
SEED = int(os.environ.get("ROLLBACK_PROOF_SEED", "20261202"))
DATA = ("projects", "phases", "step_progress", "user_permissions")
TAG = "RB-20261202-0001"
EXEMPT = "superuser"
figures: dict[str, int] = {}

# ----------------------------------------------------------------------------- the shape


@dataclass(frozen=True)
class Layout:
    """The change log's column names; None: the log has no such column."""

    order: str
    table: str
    key: str
    old: str
    new: str
    operation: str | None
    marker: str | None

    def mapping(self) -> dict[str, Any]:
        """The target's ``change_log`` setting for this layout."""
        return {"table": "change_history", "table_column": self.table, "key_column": self.key,
                "old_column": self.old, "new_column": self.new, "operation_column": self.operation or "",
                "time_column": "changed_at", "marker_column": self.marker or "", "order_column": self.order}


LAYOUTS = (
    Layout("id", "table_name", "record_id", "old_values", "new_values", "operation", "deployment"),
    Layout("seq", "entity", "entity_key", "before_json", "after_json", None, None),
)


@dataclass(frozen=True)
class Shape:
    """One installation's shape of the plan's tables."""

    keys: dict[str, str]  # data table -> "int" | "text" | "composite"
    extras: dict[str, tuple[str, ...]]
    optional: dict[str, tuple[str, ...]]  # optional columns present
    foreign_key: bool
    triggers: frozenset[str]
    layout: Layout

    def key_columns(self, table: str) -> list[str]:
        return {"int": ["id"], "text": ["code"], "composite": ["grp", "n"]}[self.keys[table]]

    def value_columns(self, table: str) -> list[str]:
        base = {"projects": ["name"], "phases": ["name"], "step_progress": ["status"],
                "user_permissions": ["role", "access_level"]}[table]
        return base + list(self.optional[table]) + list(self.extras[table])

    def columns(self, table: str) -> list[str]:
        ref = ["project_ref"] if table == "phases" else []
        return self.key_columns(table) + ref + self.value_columns(table)


OPTIONAL = {"projects": ("status", "description"), "phases": ("position", "status"),
            "step_progress": ("note", "updated_at"), "user_permissions": ("granted_by",)}
EXTRA_NAMES = ("owner", "budget", "flags", "region")


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    keys = {t: draw(st.sampled_from(["int", "text", "composite"])) for t in DATA}
    keys["user_permissions"] = draw(st.sampled_from(["int", "text"]))  # the snapshot keys one column
    extras = {t: tuple(draw(st.lists(st.sampled_from(EXTRA_NAMES), max_size=2, unique=True))) for t in DATA}
    optional = {t: tuple(c for c in OPTIONAL[t] if draw(st.booleans())) for t in DATA}
    foreign_key = keys["projects"] != "composite" and draw(st.booleans())
    triggers = frozenset(t for t in DATA if draw(st.booleans()))
    return Shape(keys, extras, optional, foreign_key, triggers, draw(st.sampled_from(LAYOUTS)))


def _ddl(shape: Shape) -> str:
    out = []
    for t in DATA:
        cols = []
        key = shape.keys[t]
        if key == "int":
            cols.append("id INTEGER PRIMARY KEY")
        elif key == "text":
            cols.append("code TEXT PRIMARY KEY")
        else:
            cols += ["grp TEXT NOT NULL", "n INTEGER NOT NULL"]
        if t == "phases":
            ptype = "INTEGER" if shape.keys["projects"] == "int" else "TEXT"
            pkey = shape.key_columns("projects")[0]
            cols.append(f"project_ref {ptype}" + (f" REFERENCES projects({pkey})" if shape.foreign_key else ""))
        for c in shape.value_columns(t):
            cols.append(f"{c} {'INTEGER' if c in ('position', 'budget') else 'TEXT'}")
        if key == "composite":
            cols.append("PRIMARY KEY (grp, n)")
        out.append(f"CREATE TABLE {t} ({', '.join(cols)})")
    lay = shape.layout
    log = [f"{lay.order} INTEGER PRIMARY KEY AUTOINCREMENT", f"{lay.table} TEXT NOT NULL", f"{lay.key} TEXT",
           f"{lay.old} TEXT", f"{lay.new} TEXT", "changed_at TEXT NOT NULL", "governance_log_id INTEGER"]
    if lay.operation:
        log.append(f"{lay.operation} TEXT NOT NULL")
    if lay.marker:
        log.append(f"{lay.marker} TEXT")
    out.append(f"CREATE TABLE change_history ({', '.join(log)})")
    out.append("CREATE TABLE governance_logs (id INTEGER PRIMARY KEY, timestamp TEXT, event_type TEXT, user_id TEXT, "
               "user_role TEXT, resource_type TEXT, resource_id TEXT, action TEXT, success INTEGER, details TEXT, "
               "runtime_context TEXT)")
    for t in sorted(shape.triggers):
        out += _triggers(shape, t)
    return ";\n".join(out) + ";"


def _triggers(shape: Shape, t: str) -> list[str]:
    lay = shape.layout
    made = []
    for event, old, new, row in (("INSERT", None, "NEW", "NEW"), ("UPDATE", "OLD", "NEW", "NEW"),
                                 ("DELETE", "OLD", None, "OLD")):
        def obj(side: str | None) -> str:
            if side is None:
                return "NULL"
            return "json_object(" + ", ".join(f"'{c}', {side}.{c}" for c in shape.columns(t)) + ")"
        keys = shape.key_columns(t)
        key = f"{row}.{keys[0]}" if len(keys) == 1 else f"json_array({row}.grp, {row}.n)"
        cols = [lay.table, lay.key, lay.old, lay.new, "changed_at"]
        vals = [f"'{t}'", key, obj(old), obj(new), "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"]
        if lay.operation:
            cols.append(lay.operation)
            vals.append(f"'{event}'")
        made.append(f"CREATE TRIGGER {t}_{event.lower()}_log AFTER {event} ON {t} BEGIN "
                    f"INSERT INTO change_history ({', '.join(cols)}) VALUES ({', '.join(vals)}); END")
    return made


# ----------------------------------------------------------------------------- the history

Row = dict[str, Any]
Key = tuple[Any, ...]


@dataclass
class Change:
    """One logged change of one row."""

    phase: str  # "seed", "before" (the backup has them), "legit1", "deploy", "legit2"
    table: str
    key: Key
    op: str
    old: Row | None
    new: Row | None

    def changed(self) -> list[str]:
        if self.op != "UPDATE" or self.old is None or self.new is None:
            return list((self.new or self.old or {}).keys())
        return [c for c in self.new if self.new[c] != self.old.get(c)]


@dataclass
class World:
    """The target's database being written, with what the model needs to know."""

    shape: Shape
    conn: sqlite3.Connection
    changes: list[Change] = field(default_factory=list)
    counter: int = 0
    marker: str | None = None

    def rows(self, table: str) -> dict[Key, Row]:
        cols = self.shape.columns(table)
        keys = self.shape.key_columns(table)
        got = self.conn.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall()
        return {tuple(r[cols.index(k)] for k in keys): dict(zip(cols, r, strict=True)) for r in got}

    def snapshot(self) -> dict[str, dict[Key, Row]]:
        return {t: self.rows(t) for t in DATA}

    def new_key(self, table: str) -> Key:
        self.counter += 1
        kind = self.shape.keys[table]
        if kind == "int":
            return (1000 + self.counter,)
        if kind == "text":
            return (f"k{self.counter:03d}",)
        return (f"g{self.counter % 3}", self.counter)

    def write(self, phase: str, table: str, op: str, key: Key, values: Row) -> None:
        keys = self.shape.key_columns(table)
        where = " AND ".join(f"{k} = ?" for k in keys)
        old = self.rows(table).get(key)
        if op == "INSERT":
            row = {**dict(zip(keys, key, strict=True)), **values}
            self.conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                              list(row.values()))
        elif op == "UPDATE":
            self.conn.execute(f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in values)} WHERE {where}",
                              [*values.values(), *key])
        else:
            self.conn.execute(f"DELETE FROM {table} WHERE {where}", list(key))
        new = self.rows(table).get(key)
        self.changes.append(Change(phase, table, key, op, old, new))
        if table in self.shape.triggers:
            return
        lay = self.shape.layout
        row = {lay.table: table, lay.key: str(key[0]) if len(key) == 1 else json.dumps(list(key)),
               lay.old: None if old is None else json.dumps(old), lay.new: None if new is None else json.dumps(new),
               "changed_at": self.conn.execute("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')").fetchone()[0]}
        if lay.operation:
            row[lay.operation] = op
        if lay.marker:
            row[lay.marker] = self.marker
        self.conn.execute(f"INSERT INTO change_history ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                          list(row.values()))

    def log_max(self) -> int:
        return int(self.conn.execute(f"SELECT coalesce(max({self.shape.layout.order}), 0) FROM change_history"
                                     ).fetchone()[0])


VALUES = st.one_of(st.none(), st.sampled_from(["a", "b", "ü", "x'y", "0", ""]), st.integers(-3, 3))


@st.composite
def histories(draw: st.DrawFn, shape: Shape) -> list[tuple[str, str, str, int, dict[str, Any]]]:
    """(phase, table, op, row pick, values) writes: before the backup, then legit1, deploy, legit2."""
    out = []
    for phase, lo, hi in (("before", 3, 8), ("legit1", 0, 4), ("deploy", 2, 7), ("legit2", 0, 5)):
        for _ in range(draw(st.integers(lo, hi))):
            table = draw(st.sampled_from(DATA))
            op = "INSERT" if phase == "before" else draw(st.sampled_from(["INSERT", "UPDATE", "UPDATE", "DELETE"]))
            cols = shape.value_columns(table)
            picked = draw(st.lists(st.sampled_from(cols), min_size=1, max_size=2, unique=True))
            values = {c: draw(VALUES) for c in (cols if op == "INSERT" else picked)}
            if table == "user_permissions":
                if "access_level" in values or op == "INSERT":
                    values["access_level"] = draw(st.sampled_from(["read_only", "read_write", "admin"]))
                if op == "INSERT":
                    values["role"] = draw(st.sampled_from(["editor", "viewer", EXEMPT, None]))
            out.append((phase, table, op, draw(st.integers(0, 50)), values))
    return out


Write = tuple[str, str, str, int, dict[str, Any]]


def build(shape: Shape, writes: list[Write], root: Path) -> tuple[World, dict[str, Any]]:
    """The live database, its backup (after the "before" writes) and the deployment boundary."""
    live = root / "prod.db"
    conn = sqlite3.connect(live, isolation_level=None)
    conn.executescript(_ddl(shape))
    conn.execute("PRAGMA foreign_keys = ON")
    world = World(shape, conn)
    for t in DATA:  # rows every history starts from, so updates and deletes have something to hit
        for _ in range(2):
            _apply(world, "seed", t, "INSERT", 0, {c: "seed" for c in shape.value_columns(t)})
    boundary: dict[str, Any] = {}
    phase_now = "before"
    for phase, table, op, pick, values in writes:
        if phase != phase_now:
            if phase_now == "before":
                conn.execute("PRAGMA wal_checkpoint")
                src, dst = sqlite3.connect(live), sqlite3.connect(root / "backup.db")
                src.backup(dst)
                src.close()
                dst.close()
            if phase == "deploy":
                boundary["from_order"] = world.log_max()
                world.marker = "r9"
            if phase_now == "deploy":
                world.conn.execute("INSERT INTO governance_logs (timestamp, event_type, action, details) VALUES "
                                   "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'deployment_completed', 'deploy', "
                                   "'{\"version\": \"r9\"}')")
                boundary["to_order"] = world.log_max()
                world.marker = None
            phase_now = phase
        _apply(world, phase, table, op, pick, values)
    if "to_order" not in boundary:
        boundary["to_order"] = world.log_max()
    conn.close()
    return world, boundary


def _apply(world: World, phase: str, table: str, op: str, pick: int, values: dict[str, Any]) -> None:
    rows = world.rows(table)
    if table == "phases" and op == "INSERT":
        # only the seed projects, never deleted: no rollback has to break a reference
        projects = [k for k in sorted(world.rows("projects"), key=repr)
                    if any(c.table == "projects" and c.key == k and c.phase == "seed" for c in world.changes)]
        values = {**values, "project_ref": projects[pick % len(projects)][0]}
    if op == "INSERT":
        world.write(phase, table, op, world.new_key(table), values)
        return
    if not rows:
        return
    key = sorted(rows, key=repr)[pick % len(rows)]
    if op == "DELETE":
        seeded = any(c.table == table and c.key == key and c.phase == "seed" for c in world.changes)
        if not (table == "projects" and seeded):
            world.write(phase, table, op, key, {})
        return
    if all(rows[key].get(c) == v for c, v in values.items()):
        values = {c: f"{v}+" if isinstance(v, str) else ("z" if v is None else v + 10) for c, v in values.items()}
    world.write(phase, table, op, key, values)


# ----------------------------------------------------------------------------- the model

Tables = dict[str, dict[Key, Row]]


def _by_row(world: World, phases: tuple[str, ...]) -> dict[tuple[str, Key], list[Change]]:
    out: dict[tuple[str, Key], list[Change]] = {}
    for c in world.changes:
        if c.phase in phases:
            out.setdefault((c.table, c.key), []).append(c)
    return out


def _holds(row: Row | None, c: Change) -> bool:
    """The row still holds what ``c`` wrote (in the columns it changed)."""
    if c.op == "DELETE":
        return row is None
    assert c.new is not None
    return row is not None and all(row.get(col) == c.new[col] for col in c.changed())


def expected(strategy: str, world: World, backup: Tables, current: Tables) -> tuple[Tables, int]:
    """The data tables after ``strategy`` as the promise says, and how many rows were conflicts."""
    if strategy == "C":
        return backup, 0
    final = {t: dict(rows) for t, rows in current.items()}
    later = _by_row(world, ("legit2",))
    conflicts = 0
    for (table, key), changes in _by_row(world, ("deploy",)).items():
        if strategy == "A":
            if (table, key) in later:
                conflicts += 1
                continue
            if key in backup[table]:
                final[table][key] = backup[table][key]
            else:
                final[table].pop(key, None)
            continue
        state = final[table].get(key)
        for c in reversed(changes):
            if not _holds(state, c) or (c.op == "INSERT" and state is not None and state != c.new):
                conflicts += 1
                break
            if c.op == "INSERT":
                state = None
            elif c.op == "DELETE":
                state = c.old
            else:
                assert state is not None and c.old is not None
                state = {**state, **{col: c.old[col] for col in c.changed()}}
        if state is None:
            final[table].pop(key, None)
        else:
            final[table][key] = state
    return final, conflicts


def expected_loss(world: World, before: Tables, after: Tables) -> dict[str, tuple[int, int, int]]:
    """Per data table (changed, undone, lost), counted as the promise defines them."""
    touched = {k for k in _by_row(world, ("deploy",))}
    legit = {k: v[-1] for k, v in _by_row(world, ("legit1", "legit2")).items()}
    out = {}
    for t in DATA:
        diff = {k for k in set(before[t]) | set(after[t]) if before[t].get(k) != after[t].get(k)}
        undone = sum((t, k) in touched for k in diff)
        lost = sum(1 for k in diff if ((t, k) in legit and not _holds(after[t].get(k), legit[(t, k)]))
                   or ((t, k) not in legit and (t, k) not in touched))
        out[t] = (len(diff), undone, lost)
    return out


# ----------------------------------------------------------------------------- the rollback, as the runbook runs it


def run(op: str, **params: Any) -> dict[str, Any]:
    """One agent operation, in this process (the agent's own code) on real SQLite."""
    return sqlite_agent.run(op, params)


def rollback(strategy: str, world: World, root: Path, boundary: dict[str, Any]) -> Path:
    """Restrict access, run the strategy, lift the restriction; returns the database."""
    db = root / f"{strategy}.db"
    shutil.copy(root / "prod.db", db)
    mapping = world.shape.layout.mapping()
    common = {"db": str(db), "change_log": mapping}
    access = {"table": "user_permissions", "key": world.shape.key_columns("user_permissions")[0],
              "column": "access_level", "exempt_roles": [EXEMPT], "tag": TAG}
    snap = root / f"{strategy}-access.json"
    run("restrict_access", **common, **access, snapshot=str(snap))
    backup = str(root / "backup.db")
    if strategy == "C":
        run("restore", db=str(db), backup=backup)
        snap = root / f"{strategy}-access-restored.json"  # the restored point's own levels
        run("restrict_access", **common, **access, snapshot=str(snap))
    else:
        op = "selective_restore" if strategy == "A" else "transaction_rollback"
        extra = {"backup": backup} if strategy == "A" else {}
        first = run(op, **common, **extra, boundary=boundary, tag=TAG, access={"snapshot": str(snap)})
        after_first = _content(db)
        again = run(op, **common, **extra, boundary=boundary, tag=TAG, access={"snapshot": str(snap)})
        assert _content(db) == after_first, f"{strategy}: a second run changed the database"
        assert again.get("undone", 0) == 0 and again.get("restored", 0) == 0, again
        assert first is not None
    run("restore_access", **common, snapshot=str(snap))
    return db


def _content(db: Path) -> dict[str, str]:
    tables = sqlite_agent.content_hash(str(db))["tables"]
    return {t: h for t, h in tables.items() if t in DATA}


def _record(shape: Shape, db: Path) -> tuple[list[Any], list[Any]]:
    """The change log's rows in order and the governance rows."""
    conn = sqlite3.connect(db)
    try:
        order = shape.layout.order
        return (conn.execute(f"SELECT * FROM change_history ORDER BY {order}").fetchall(),
                conn.execute("SELECT * FROM governance_logs ORDER BY id").fetchall())
    finally:
        conn.close()


def _read(shape: Shape, db: Path) -> Tables:
    conn = sqlite3.connect(db)
    try:
        return World(shape, conn).snapshot()
    finally:
        conn.close()


# ----------------------------------------------------------------------------- the test


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Shape, list[tuple[str, str, str, int, dict[str, Any]]]]:
    shape = draw(shapes())
    return shape, draw(histories(shape))


@seed(SEED)
@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(case=worlds())
def test_strategies_against_the_model_on_generated_schemas(tmp_path: Path, case: tuple[Shape, Any]) -> None:
    shape, writes = case
    root = tmp_path / uuid.uuid4().hex[:8]
    root.mkdir()
    world, boundary = build(shape, writes, root)
    backup, current = _read(shape, root / "backup.db"), _read(shape, root / "prod.db")
    figures["examples"] = figures.get("examples", 0) + 1
    figures["deployment changes"] = figures.get("deployment changes", 0) + sum(
        c.phase == "deploy" for c in world.changes)
    for strategy in ("A", "B", "C"):
        want, conflicts = expected(strategy, world, backup, current)
        db = rollback(strategy, world, root, boundary)
        got = _read(shape, db)
        for t in DATA:
            assert got[t] == want[t], f"{strategy} {t}: got {got[t]}, the model says {want[t]}"
        log, gov = _record(shape, db)
        if strategy == "C":  # the backup's record, and only rows the rollback wrote after it
            backup_log, backup_gov = _record(shape, root / "backup.db")
            assert gov == backup_gov and log[:len(backup_log)] == backup_log, "C: the record is not the backup's"
        else:  # the record of what happened is kept: every log and governance row
            before_log, before_gov = _record(shape, root / "prod.db")
            assert gov == before_gov and log[:len(before_log)] == before_log, f"{strategy}: the record changed"
        figures[f"conflicts {strategy}"] = figures.get(f"conflicts {strategy}", 0) + conflicts
        loss = run("data_loss", db=str(db), before=str(root / "prod.db"), backup=str(root / "backup.db"),
                   change_log=shape.layout.mapping(), boundary=boundary)
        assert loss["known"], loss
        numbers = {t: (d["changed"], d["undone"], d["lost"]) for t, d in loss["tables"].items() if t in DATA}
        assert numbers == expected_loss(world, current, got), f"{strategy}: data loss {numbers}"
        figures[f"lost {strategy}"] = figures.get(f"lost {strategy}", 0) + sum(n[2] for n in numbers.values())


def test_schema_proof_figures(proof_report: Callable[[str], None]) -> None:
    """Runs last in this module: what the generated schemas exercised."""
    if not figures:
        pytest.skip("the generated-schema test did not run")
    proof_report(f"generated schemas: {figures.get('examples', 0)} shapes (seed {SEED}), "
                 f"{figures.get('deployment changes', 0)} deployment changes; conflicts kept "
                 f"A {figures.get('conflicts A', 0)}, B {figures.get('conflicts B', 0)}; legitimate writes lost "
                 f"A {figures.get('lost A', 0)}, B {figures.get('lost B', 0)}, C {figures.get('lost C', 0)}; "
                 "every result and data-loss figure as the model says")
    assert figures.get("examples", 0) >= EXAMPLES
    assert figures.get("conflicts A", 0) > 0 and figures.get("lost C", 0) > 0, figures
