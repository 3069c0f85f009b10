"""Strategies A, B and C and the data-loss figures on a schema the project never shipped.

The target: text and composite keys, NULLs, a change log named ``audit_trail`` with columns
of its own (``entity``, ``entity_key``, ``before_json``, ``after_json``, ``at``, ``release``,
no operation column), filled by the app for two tables and by triggers for
``user_permissions``. Between the backup and the incident: legitimate writes before the bad
deployment and after it, one of them on a row the deployment changed (a conflict). Each
strategy's result is checked row by row, and its data-loss numbers exactly.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from actions import sqlite_agent
from actions.local import LocalTransport
from actions.sqlite_ops import SqliteOps

MAPPING = {"table": "audit_trail", "key_column": "entity_key", "old_column": "before_json",
           "new_column": "after_json", "time_column": "at", "marker_column": "release"}
ACCESS = {"table": "user_permissions", "key": "login", "column": "access_level"}

SCHEMA = """
CREATE TABLE projects (code TEXT PRIMARY KEY, title TEXT NOT NULL, status TEXT, budget REAL);
CREATE TABLE tasks (project_code TEXT NOT NULL REFERENCES projects(code), n INTEGER NOT NULL,
                    state TEXT, owner TEXT, PRIMARY KEY (project_code, n));
CREATE TABLE user_permissions (login TEXT PRIMARY KEY, role TEXT, access_level TEXT,
                               touched TEXT NOT NULL DEFAULT '2026-01-01T00:00:00Z');
CREATE TABLE scratch (note TEXT);
CREATE TABLE governance_logs (id INTEGER PRIMARY KEY, timestamp TEXT, event_type TEXT, user_id TEXT,
                              user_role TEXT, resource_type TEXT, resource_id TEXT, action TEXT,
                              success INTEGER, details TEXT, runtime_context TEXT);
CREATE TABLE audit_trail (seq INTEGER PRIMARY KEY AUTOINCREMENT, entity TEXT NOT NULL,
                          entity_key TEXT, before_json TEXT, after_json TEXT, at TEXT NOT NULL,
                          release TEXT, governance_log_id INTEGER);
CREATE TRIGGER perm_upd AFTER UPDATE ON user_permissions BEGIN
  INSERT INTO audit_trail (entity, entity_key, before_json, after_json, at)
  VALUES ('user_permissions', NEW.login,
          json_object('login', OLD.login, 'role', OLD.role, 'access_level', OLD.access_level),
          json_object('login', NEW.login, 'role', NEW.role, 'access_level', NEW.access_level),
          NEW.touched);
END;
"""


class App:
    """Writes rows and their audit_trail entries as the target's app does."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.release: str | None = None
        self.at = "2026-03-01T10:00:00Z"

    def _row(self, table: str, where: str, args: tuple[Any, ...]) -> dict[str, Any] | None:
        cur = self.conn.execute(f"SELECT * FROM {table} WHERE {where}", args)
        got = cur.fetchone()
        return None if got is None else {d[0]: v for d, v in zip(cur.description, got, strict=True)}

    def write(self, table: str, key: tuple[Any, ...], sql: str, args: tuple[Any, ...]) -> None:
        """Run one write on ``table``'s row ``key`` and log it (no operation column: inferred)."""
        cols = {"projects": ("code",), "tasks": ("project_code", "n")}[table]
        where = " AND ".join(f"{c} = ?" for c in cols)
        old = self._row(table, where, key)
        self.conn.execute(sql, args)
        new = self._row(table, where, key)
        text = key[0] if len(key) == 1 else json.dumps(list(key))
        self.conn.execute(
            "INSERT INTO audit_trail (entity, entity_key, before_json, after_json, at, release) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (table, text, None if old is None else json.dumps(old), None if new is None else json.dumps(new),
             self.at, self.release))

    def grant(self, login: str, level: str) -> None:
        """A permission change; the trigger logs it (with no release)."""
        self.conn.execute("UPDATE user_permissions SET access_level = ?, touched = ? WHERE login = ?",
                          (level, self.at, login))


def build(tmp: Path) -> dict[str, Path]:
    """Live db, pre-deployment backup; returns their paths."""
    live, backup = tmp / "prod.db", tmp / "backup.db"
    conn = sqlite3.connect(live, isolation_level=None)
    conn.executescript(SCHEMA)
    conn.execute("PRAGMA journal_mode = WAL")
    app = App(conn)
    for i in range(1, 7):
        app.write("projects", (f"P{i}",), "INSERT INTO projects VALUES (?, ?, 'active', ?)",
                  (f"P{i}", f"Project {i}", None if i % 2 else 1000.0 * i))
        for n in (1, 2, 3):
            app.write("tasks", (f"P{i}", n), "INSERT INTO tasks VALUES (?, ?, 'open', NULL)", (f"P{i}", n))
    for login, role, level in (("root", "superuser", "admin"), ("ana", "editor", "read_write"),
                               ("bo", "viewer", "read_only"), ("cy", "editor", "read_write"),
                               ("di", None, "read_only")):
        conn.execute("INSERT INTO user_permissions (login, role, access_level) VALUES (?, ?, ?)",
                     (login, role, level))
    conn.execute("INSERT INTO scratch VALUES ('kept')")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    src = sqlite3.connect(live)
    dst = sqlite3.connect(backup)
    src.backup(dst)
    src.close()
    dst.close()

    app.at = "2026-03-01T11:00:00Z"  # legitimate, after the backup, before the deployment
    app.write("tasks", ("P1", 1), "UPDATE tasks SET owner = 'ana' WHERE project_code = 'P1' AND n = 1", ())
    app.write("projects", ("P7",), "INSERT INTO projects VALUES ('P7', 'Seven', 'active', NULL)", ())

    app.release = "r9"  # the bad deployment
    for i, stamp in enumerate(("12:00:01", "12:00:02", "12:00:03", "12:00:04", "12:00:05", "12:00:06")):
        app.at = f"2026-03-01T{stamp}Z"
        if i == 0:
            app.write("projects", ("P2",), "UPDATE projects SET status = 'archived' WHERE code = 'P2'", ())
        elif i == 1:
            app.write("projects", ("P3",), "UPDATE projects SET status = 'archived', budget = 0 WHERE code = 'P3'",
                      ())
        elif i == 2:
            app.grant("bo", "admin")  # a privilege change, logged by the trigger (no release)
        elif i == 3:
            app.write("tasks", ("P4", 9), "INSERT INTO tasks VALUES ('P4', 9, 'new', 'deploy')", ())
        elif i == 4:
            app.write("tasks", ("P5", 2), "DELETE FROM tasks WHERE project_code = 'P5' AND n = 2", ())
        else:
            app.write("tasks", ("P1", 1), "UPDATE tasks SET state = 'reset' WHERE project_code = 'P1' AND n = 1",
                      ())
    conn.execute("INSERT INTO governance_logs (timestamp, event_type, action, details) VALUES "
                 "('2026-03-01T12:00:06Z', 'deployment_completed', 'deploy', '{\"version\": \"r9\"}')")
    app.release = None

    app.at = "2026-03-01T13:00:00Z"  # legitimate, after the deployment
    app.write("projects", ("P2",), "UPDATE projects SET title = 'Two (renamed)' WHERE code = 'P2'", ())
    app.write("projects", ("P3",), "UPDATE projects SET budget = 50 WHERE code = 'P3'", ())
    app.write("tasks", ("P6", 3), "UPDATE tasks SET state = 'done' WHERE project_code = 'P6' AND n = 3", ())
    app.grant("cy", "admin")
    conn.execute("INSERT INTO scratch VALUES ('after')")  # a table no log covers
    conn.close()
    return {"live": live, "backup": backup}


def q(path: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of one query, read with the test's own sqlite3."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def run(op: str, **params: Any) -> dict[str, Any]:
    """One agent operation, run in this process on real SQLite."""
    return sqlite_agent.run(op, params)


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    paths = build(tmp_path)
    paths["before"] = tmp_path / "before.db"  # the emergency backup: the state before the rollback
    run("backup", db=str(paths["live"]), dest=str(paths["before"]))
    return paths


def loss(world: dict[str, Path], boundary: Any, *, backup: bool = True, **extra: Any) -> dict[str, Any]:
    return run("data_loss", db=str(world["live"]), before=str(world["before"]),
               backup=str(world["backup"]) if backup else None, change_log=MAPPING, boundary=boundary, **extra)


def figures(result: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{table: (undone, lost)} for tables with anything to say."""
    return {t: (d["undone"], d["lost"]) for t, d in result["tables"].items() if d["changed"]}


# ---------------------------------------------------------------------------- the contract


def test_support_report_names_what_is_missing_then_accepts_the_mapping(world: dict[str, Path]) -> None:
    bare = run("strategy_support", db=str(world["live"]))
    assert not bare["strategies"]["A"]["ok"] and "change_log.table" in bare["strategies"]["A"]["why"]
    assert bare["strategies"]["C"]["ok"]
    assert [i.get("disabled") is not None for i in bare["items"]] == [True, True, False]

    guessed = run("strategy_support", db=str(world["live"]), change_log={"table": "audit_trail"})
    assert "change_log.table_column: entity" in guessed["guessed"]  # said, never used silently
    assert "change_log.new_column" in guessed["strategies"]["B"]["why"]

    full = run("strategy_support", db=str(world["live"]), change_log=MAPPING, boundary={"marker": "r9"})
    assert all(s["ok"] for s in full["strategies"].values()), full["strategies"]
    assert full["tables"]["tasks"] == {"key": ["project_code", "n"]}
    assert full["boundary"]["counts"] == {"projects": {"UPDATE": 2}, "tasks": {"UPDATE": 1, "INSERT": 1, "DELETE": 1},
                                          "user_permissions": {"UPDATE": 1}}

    with sqlite3.connect(world["live"]) as conn:  # a logged table with no key: A is refused by name
        conn.execute("INSERT INTO audit_trail (entity, entity_key, after_json, at) VALUES "
                     "('scratch', '1', '{\"note\": \"x\"}', '2026-01-01')")
    keyless = run("strategy_support", db=str(world["live"]), change_log=MAPPING)
    assert "key_columns.scratch" in keyless["strategies"]["A"]["why"]


def test_point_picker_lists_what_each_point_would_undo(world: dict[str, Path]) -> None:
    points = run("change_points", db=str(world["live"]), change_log=MAPPING, suggest_marker="r9")["items"]
    assert [json.loads(p["value"]) for p in points] == [{"marker": "r9"}]
    assert points[0]["suggested"] == "yes" and points[0]["changes"] == 6
    assert "user_permissions U1" in points[0]["description"]  # the trigger's NULL-marker row is inside

    by_time = run("change_points", db=str(world["live"]),
                  change_log={**MAPPING, "marker_column": ""}, gap_minutes=30)
    windows = [json.loads(p["value"]) for p in by_time["items"]]
    assert {"from": "2026-03-01T12:00:01Z", "to": "2026-03-01T12:00:06Z"} in windows


# ---------------------------------------------------------------------------- B


def test_transaction_rollback_keeps_conflicts_and_never_undoes_twice(world: dict[str, Path]) -> None:
    live = world["live"]
    first = run("transaction_rollback", db=str(live), change_log=MAPPING, boundary={"marker": "r9"}, tag="RB-1")
    assert first["undone"] == 5 and first["recorded_by_triggers"] == 1  # the undo of bo's grant
    assert [c["key"] for c in first["conflicts"]] == [["P3"]]  # its budget was set again since
    # P2 was renamed since, but the deployment's status change is still there: undone alone.
    assert q(live, "SELECT title, status FROM projects WHERE code = 'P2'") == [("Two (renamed)", "active")]
    assert q(live, "SELECT status, budget FROM projects WHERE code = 'P3'") == [("archived", 50.0)]
    assert q(live, "SELECT state, owner FROM tasks WHERE project_code = 'P1' AND n = 1") == [("open", "ana")]
    assert q(live, "SELECT count(*) FROM tasks WHERE project_code = 'P4' AND n = 9") == [(0,)]
    assert q(live, "SELECT state FROM tasks WHERE project_code = 'P5' AND n = 2") == [("open",)]
    assert q(live, "SELECT login, access_level FROM user_permissions WHERE login IN ('bo', 'cy') ORDER BY 1") == [
        ("bo", "read_only"), ("cy", "admin")]
    again = run("transaction_rollback", db=str(live), change_log=MAPPING, boundary={"marker": "r9"}, tag="RB-1")
    assert again["undone"] == 0 and again["already_undone"] == 5
    assert q(live, "SELECT access_level FROM user_permissions WHERE login = 'bo'") == [("read_only",)]

    result = loss(world, {"marker": "r9"}, backup=False)
    assert figures(result)["projects"] == (1, 0) and figures(result)["tasks"] == (3, 0)
    assert figures(result)["user_permissions"] == (1, 0)
    assert result["total"]["lost"] == 0 and result["known"]


# ---------------------------------------------------------------------------- A


def test_selective_restore_takes_touched_rows_from_the_backup(world: dict[str, Path]) -> None:
    live = world["live"]
    out = run("selective_restore", db=str(live), backup=str(world["backup"]), change_log=MAPPING,
              boundary={"marker": "r9"}, tag="RB-2")
    assert sorted(c["key"] for c in out["conflicts"]) == [["P2"], ["P3"]] and out["restored"] == 4
    assert q(live, "SELECT state, owner FROM tasks WHERE project_code = 'P1' AND n = 1") == [("open", None)]
    assert q(live, "SELECT state FROM tasks WHERE project_code = 'P6' AND n = 3") == [("done",)]  # legit, kept
    assert q(live, "SELECT count(*) FROM projects WHERE code = 'P7'") == [(1,)]  # legit insert, kept
    assert q(live, "SELECT access_level FROM user_permissions WHERE login = 'cy'") == [("admin",)]
    again = run("selective_restore", db=str(live), backup=str(world["backup"]), change_log=MAPPING,
                boundary={"marker": "r9"}, tag="RB-2")
    assert again["restored"] == 0 and again["conflicts"] == out["conflicts"]
    result = loss(world, {"marker": "r9"})
    # tasks P1/1: the deployment's reset undone, and ana's assignment before it lost with it.
    assert figures(result) == {"tasks": (3, 1), "user_permissions": (1, 0)}
    assert result["total"]["lost"] == 1 and result["known"]

    taken = run("selective_restore", db=str(live), backup=str(world["backup"]), change_log=MAPPING,
                boundary={"marker": "r9"}, take=[["projects", "P2"]], tag="RB-2")
    assert taken["restored"] == 1
    assert q(live, "SELECT title, status FROM projects WHERE code = 'P2'") == [("Project 2", "active")]


# ---------------------------------------------------------------------------- C


def test_full_restore_loses_every_legitimate_write_and_says_so(world: dict[str, Path]) -> None:
    run("restore", db=str(world["live"]), backup=str(world["backup"]))
    result = loss(world, {"marker": "r9"})
    got = figures(result)
    assert got["projects"] == (2, 3)  # P2, P3 undone; P7 (new), P2's rename and P3's budget lost
    assert got["tasks"] == (3, 2)  # P1/1 (ana's assignment lost too), P4/9, P5/2; P6/3 lost
    assert got["user_permissions"] == (1, 1)  # bo's grant undone, cy's grant lost
    assert got["audit_trail"] == (6, 6) and got["governance_logs"] == (1, 0)
    assert result["tables"]["scratch"]["lost"] == 1 and result["tables"]["scratch"]["unexplained"] == 1

    unknown = loss(world, None)
    assert unknown["known"] is False and unknown["total"]["lost"] is None
    assert unknown["total"]["changed"] == result["total"]["changed"]


# ---------------------------------------------------------------------------- access levels


def test_strategies_under_the_restriction_put_back_the_chosen_points_levels(world: dict[str, Path],
                                                                             tmp_path: Path) -> None:
    live, snap = world["live"], tmp_path / "access.json"
    restrict = {**ACCESS, "db": str(live), "snapshot": str(snap), "tag": "RB-3", "change_log": MAPPING}
    run("restrict_access", **restrict)
    assert q(live, "SELECT access_level FROM user_permissions WHERE login = 'bo'") == [("read_only",)]
    access = {"snapshot": str(snap)}
    out = run("transaction_rollback", db=str(live), change_log=MAPPING, boundary={"marker": "r9"}, tag="RB-3",
              access=access)
    assert out["undone"] == 5 and not [c for c in out["conflicts"] if c["table"] == "user_permissions"]
    assert q(live, "SELECT count(*) FROM user_permissions WHERE access_level != 'read_only' AND role != 'superuser'"
             ) == [(0,)]  # still restricted
    run("restore_access", db=str(live), snapshot=str(snap), change_log=MAPPING)
    assert dict(q(live, "SELECT login, access_level FROM user_permissions")) == {
        "root": "admin", "ana": "read_write", "bo": "read_only", "cy": "admin", "di": "read_only"}


def test_full_restore_then_restriction_snapshot_of_the_restored_levels(world: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    live = world["live"]
    run("restrict_access", **ACCESS, db=str(live), snapshot=str(tmp_path / "a.json"), tag="RB-4")
    run("restore", db=str(live), backup=str(world["backup"]))
    again = tmp_path / "a_restored.json"
    run("restrict_access", **ACCESS, db=str(live), snapshot=str(again), tag="RB-4")
    run("restore_access", db=str(live), snapshot=str(again))
    assert dict(q(live, "SELECT login, access_level FROM user_permissions")) == dict(
        q(world["backup"], "SELECT login, access_level FROM user_permissions"))


async def test_strategies_run_through_the_sent_agent(world: dict[str, Path], local_transport: LocalTransport,
                                                     tmp_path: Path) -> None:
    ops = SqliteOps(local_transport, timeout=120)
    copy = tmp_path / "copy.db"
    shutil.copy(world["before"], copy)
    support = await ops.call("strategy_support", {"db": str(copy), "change_log": MAPPING})
    assert [i["value"] for i in support["items"]] == ["A", "B", "C"]
    out = await ops.call("transaction_rollback", {"db": str(copy), "change_log": MAPPING,
                                                  "boundary": json.dumps({"marker": "r9"})})
    assert out["undone"] == 5


def test_agent_parts_define_no_name_twice() -> None:
    import ast

    seen: dict[str, str] = {}
    for path in sorted(Path(sqlite_agent.__file__).parent.glob("*.py")):
        part = path.stem
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            names = [node.name] if isinstance(node, ast.FunctionDef | ast.ClassDef) else [
                t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
            for name in names:
                assert name not in seen or seen[name] == part, f"{name} in {seen[name]} and {part}"
                seen[name] = part
