"""Proof, abuse: hostile requests change nothing, hostile text never reaches a shell or SQL unquoted.

Requests (through the real Bolt stack, signed as Slack signs them): replayed bodies, forged
signatures and stale timestamps on every kind of request, double clicks, clicks by people
without the role, button values the bot never offered. Each has 0 effects on the incident
state and the target, is answered clearly (401, or an ephemeral that says why) and is
recorded (the journal, the approvals table, or the bot's log). Forged, stale, Slack-retry
and self-approval basics live in ``test_slack_e2e``; this covers the rest.

Values (hypothesis): quotes, ``$(…)``, backticks, newlines, NUL, SQL, very long text and
Unicode tricks, in every free-text field and command argument: the start modal's reason and
description, ``/rollback start|status|abort`` arguments, target names, and the incident
reason where it reaches a shell command, SQL parameters and the governance record. A canary
file that any unquoted ``$(touch …)`` would create never appears; what reaches the target
comes back byte for byte; nothing crashes.

Counted only where it matters: the shell boundary (every command a transport is given, the
SQLite agent's params decoded from it) and the SQL boundary (every statement's parameters on
the bot's own database, and the agent's bound values) are watched, and a value counts once
it was seen crossing one of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import sqlite3
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actions.local import LocalTransport
from actions.sqlite import sqlite_op
from actions.sqlite_schema import apply_schema
from bot.core.engine import Engine, Target
from bot.core.lifecycle import Status
from bot.core.runbook import load_runbook
from bot.core.targets import TargetSettings
from bot.core.templating import TemplateError, render_shell
from bot.slack.view import ANSWER, answer_value
from bot.state.store import Store
from tests import test_slack_e2e as e2e

CANARY = Path("/tmp") / f"rollback-bot-canary-{uuid.uuid4().hex}"
#: Pieces an attacker would try; combined with arbitrary text by the strategy below.
PIECES = [
    "'", '"', "\\", "`", "$", "$(touch {c})", "`touch {c}`", "; touch {c}", "&& touch {c}", "| touch {c}",
    "\ntouch {c}\n", "'$(touch {c})'", "\"$(touch {c})\"", "${{IFS}}touch${{IFS}}{c}", "$HOME", "\r\n", "\x00",
    "'; DROP TABLE incidents; --", "' OR '1'='1", "\"); DELETE FROM governance_logs; --", "?1", ":name",
    "\u202e", "\u200b", "\ufeff", "ﬁ", "Ａ", "e\u0301", "\U0001f525", "<!channel>", "<@U0LEAD>", "*bold*",
    "%s%n", "{{ target.pm_stop | raw }}", "{{ target.db_path }}", "-rf /", "--help", "RB-20261125-0001",
    "|", "\t", "\x1b[31m", "😀" * 3,
]
PIECES = [p.format(c=CANARY) for p in PIECES]
hostile = st.one_of(
    st.sampled_from(PIECES),
    st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=8)), min_size=1, max_size=6).map("".join),
    st.text(max_size=40),
    st.builds(lambda a, n: a * n, st.sampled_from(["A", "'", "$(x)", "é", "\n"]), st.integers(300, 6000)),
)
FAST = settings(max_examples=140, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
counted: dict[str, int] = {}
#: Hostile values seen crossing the boundary, per field: [shell, SQL, either].
reached: dict[str, list[int]] = {}


def create_schema(path: str) -> None:
    """The plan's tables in a new SQLite file."""
    with sqlite3.connect(path) as conn:
        apply_schema(conn)


# ----------------------------------------------------------------------------- the boundary, watched


class Boundary:
    """What crossed into a shell (commands given to a transport) and into SQL (statement
    parameters on the bot's database; the SQLite agent's bound values, decoded from its command)."""

    def __init__(self) -> None:
        self.shell: list[list[str]] = []
        self.agent: list[Any] = []
        self.sql: list[Any] = []

    def clear(self) -> None:
        self.shell.clear()
        self.agent.clear()
        self.sql.clear()

    def command(self, command: str, stdin: str | None) -> None:
        try:
            argv = shlex.split(command)
        except ValueError:
            argv = [command]
        self.shell.append(argv)
        if len(argv) == 6 and argv[1:3] == ["-I", "-c"]:  # the SQLite agent: SOURCE OP PARAMS|-
            try:
                params = json.loads((stdin if argv[5] == "-" else argv[5]) or "null")
            except ValueError:
                return
            if isinstance(params, dict):
                self.agent.append(params)
                self.sql.append(params.get("params"))  # query: bound parameters
                self.sql.append(params.get("record"))  # governance_insert: bound values

    def statement(self, _conn: Any, _cursor: Any, _sql: str, parameters: Any, _context: Any,
                  _executemany: bool) -> None:
        self.sql.append(parameters)

    def crossed(self, value: str) -> tuple[bool, bool]:
        """(reached a shell, reached SQL) for one hostile value."""
        wanted = {value, value.strip()}
        shell = any(token in wanted for argv in self.shell for token in argv)
        shell = shell or any(s in wanted for params in self.agent for s in _strings(params))
        encoded = {json.dumps(v, ensure_ascii=a) for v in wanted for a in (True, False)}
        sql = any(_holds(p, wanted, encoded) for p in self.sql)
        return shell, sql


def _strings(doc: Any) -> list[str]:
    if isinstance(doc, str):
        return [doc]
    if isinstance(doc, dict):
        return [s for v in doc.values() for s in _strings(v)]
    if isinstance(doc, (list, tuple)):
        return [s for v in doc for s in _strings(v)]
    return []


def _holds(params: Any, wanted: set[str], encoded: set[str]) -> bool:
    return any(s in wanted or any(e in s for e in encoded) for s in _strings(params))


BOUNDARY = Boundary()


@pytest.fixture(autouse=True)
def watched(monkeypatch: pytest.MonkeyPatch) -> Iterator[Boundary]:
    """Every command a local transport runs and every statement on a SQLAlchemy engine, recorded."""
    run = LocalTransport.run

    async def recording(self: LocalTransport, command: str, **kw: Any) -> Any:
        BOUNDARY.command(command, kw.get("stdin"))
        return await run(self, command, **kw)

    monkeypatch.setattr(LocalTransport, "run", recording)
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", BOUNDARY.statement)
    try:
        yield BOUNDARY
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", BOUNDARY.statement)


def _count(field: str, value: str | None = None) -> None:
    """One hostile value tried in ``field``; with ``value``, whether it crossed the boundary."""
    counted[field] = counted.get(field, 0) + 1
    if value is None:
        return
    shell, sql = BOUNDARY.crossed(value)
    seen = reached.setdefault(field, [0, 0, 0])
    seen[0] += shell
    seen[1] += sql
    seen[2] += shell or sql


def _no_canary() -> None:
    assert not CANARY.exists(), f"a hostile value reached a shell unquoted: {CANARY} was created"


# ----------------------------------------------------------------------------- the Slack side


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[e2e.Harness]:
    async with e2e.running(tmp_path) as h:
        yield h


async def _effects(h: e2e.Harness) -> dict[str, Any]:
    """Everything a request could change: incidents, counted approvals, step runs and answers,
    the target's files, the modals opened."""
    store = h.services.store
    incs = await store.incidents()
    out: dict[str, Any] = {"incidents": [(i.id, i.status.value, i.abort_reason) for i in incs]}
    for inc in incs:
        out[inc.id] = {
            "approvals": [(a.user_id, a.decision) for a in await store.approvals(inc.id) if a.counted],
            "runs": [(r.step_id, r.attempt, r.status.value, json.dumps(r.answer))
                     for r in await store.step_runs(inc.id)],
        }
    out["target"] = sorted((p.name, p.read_bytes()) for p in h.workdir.iterdir() if p.is_file())
    out["views"] = len(h.fake.views_opened)
    return out


def _last_ephemeral(h: e2e.Harness, user: str) -> str:
    texts = [e.text for e in h.fake.ephemerals if e.user == user]
    return texts[-1] if texts else ""


async def test_hostile_requests_change_nothing_and_are_answered(
    harness: e2e.Harness, caplog: pytest.LogCaptureFixture, proof_report: Callable[[str], None],
) -> None:
    h = harness
    caplog.set_level(logging.INFO)
    # Bolt's loggers took the root level when the app was made; `serve` logs at INFO.
    caplog.set_level(logging.INFO, logger="slack_bolt.RequestVerification")
    await e2e._open_incident(h)
    inc = await h.incident()
    cases: list[tuple[str, str]] = []  # (case, how it was answered)

    async def refused(case: str, send: Any, user: str, expect: str | None = None, status: int = 200) -> None:
        before = await _effects(h)
        n_eph = len(h.fake.ephemerals)
        r = await send()
        await h.idle()
        assert r.status == status, (case, r.status, r.body)
        assert await _effects(h) == before, f"{case} changed something"
        if status == 401:
            answer = "401"
        else:
            new = [e.text for e in h.fake.ephemerals[n_eph:] if e.user == user]
            if expect is None:
                assert not new, (case, new)  # a duplicate: silently the same, nothing twice
                answer = "ignored as a duplicate"
            else:
                assert new and expect in new[-1], (case, new)
                assert "Something went wrong" not in new[-1]
                answer = new[-1]
        cases.append((case, answer))

    approve = h.fake.find_button(e2e.CH, h.thread_ts(), action_id="rb_approve")
    # A real click by the lead, then its body replayed as is (no retry header): counted once.
    await h.driver.press(approve, e2e.LEAD)
    await h.idle()
    await refused("replayed approve body", lambda: h.driver.replay(), e2e.LEAD)
    # Stale and forged variants of every kind of request.
    for kind, send in {
        "approve click": lambda **d: h.driver.press(approve, e2e.PO, **d),
        "abort command": lambda **d: h.driver.slash_command(text=f"abort {inc.id} because", user_id=e2e.IC,
                                                             channel_id=e2e.CH, **d),
        "start submission": lambda **d: h.driver.view_submission("rb_start", values={
            "target": "t1", "triggers": ["data_corruption"], "severity": "P1", "impact": "High",
            "business_risk": "Critical", "reason": "again"}, user_id=e2e.REQ, **d),
    }.items():
        for how in ("forged", "stale"):
            await refused(f"{how} {kind}", lambda send=send, how=how: send(**{how: True}), e2e.IC, status=401)
    # Reject by someone without any approving role: recorded, not counted, told why.
    await refused("reject by a user without the role",
                  lambda: h.driver.press(h.fake.find_button(e2e.CH, h.thread_ts(), action_id="rb_reject"),
                                         e2e.NOBODY), e2e.NOBODY, "none of the approving roles")
    # Approve values that name no incident, or another one.
    for value in ("RB-29991231-9999", "x' OR 1=1 --", ""):
        await refused(f"approve value {value!r} never offered",
                      lambda value=value: h.driver.block_action("rb_approve", value=value, user_id=e2e.PO,
                                                                channel_id=e2e.CH, message_ts=h.thread_ts()),
                      e2e.PO, "There is no incident")
    # The second approval: the strategy question is asked.
    await h.driver.press(h.fake.find_button(e2e.CH, h.thread_ts(), action_id="rb_approve"), e2e.PO)
    await h.idle()
    run = (await h.services.store.latest_runs(inc.id))["strategy"]
    offered = len(run.waiting["options"]) if run.waiting else 0
    never = {
        "an index past the options": (answer_value(inc.id, run.id, offered), "not offered"),
        "a negative index": (answer_value(inc.id, run.id, -1), "not offered"),
        "a run that does not exist": (answer_value(inc.id, run.id + 999, 0), "does not exist"),
        "a run of another step": (answer_value(inc.id, run.id - 1, 0), "not offered"),
        "another incident": (answer_value("RB-29991231-9999", run.id, 0), "There is no incident"),
        "not an answer value": ("C", "not one this bot posted"),
        "SQL in the value": (f"{inc.id}|1 OR 1=1|0", "not one this bot posted"),
    }
    for case, (value, expect) in never.items():
        await refused(f"answer with {case}", lambda value=value: h.driver.block_action(
            f"{ANSWER}_0", value=value, user_id=e2e.IC, channel_id=e2e.CH, message_ts=h.thread_ts()),
            e2e.IC, expect)
    choice = h.fake.find_button(e2e.CH, h.thread_ts(), text="C: Full database restore")
    await refused("answer by a user without the role", lambda: h.driver.press(choice, e2e.NOBODY), e2e.NOBODY,
                  "Only approvers and incident commanders")
    # A double click by two people at once: one answer, the other told it was answered.
    await asyncio.gather(h.driver.press(choice, e2e.IC), h.driver.press(choice, e2e.LEAD, allow_stale=True))
    await h.idle()
    answered = [r for r in await h.services.store.step_runs(inc.id) if r.step_id == "strategy"]
    assert len(answered) == 1 and answered[0].answer is not None
    assert (h.workdir / "marker.txt").read_text() == "C\n"
    loser = e2e.LEAD if answered[0].answer["user"] == e2e.IC else e2e.IC
    assert "answered" in _last_ephemeral(h, loser) or "superseded" in _last_ephemeral(h, loser) \
        or "not waiting" in _last_ephemeral(h, loser)
    cases.append(("double click by two people", _last_ephemeral(h, loser)))
    await refused("replayed choice click", lambda: h.driver.replay(), loser)
    await refused("stale choice click", lambda: h.driver.press(choice, e2e.IC, allow_stale=True, stale=True),
                  e2e.IC, status=401)
    # Abort: by a user without the role; a replayed abort command.
    await refused("abort by a user without the role", lambda: h.driver.slash_command(
        text=f"abort {inc.id} let me", user_id=e2e.NOBODY, channel_id=e2e.CH), e2e.NOBODY,
        "Only approvers and incident commanders may abort")

    # Each refusal is recorded: signature failures by Bolt, the rest by the bot.
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert logged.count("Invalid request signature") == sum(a == "401" for _, a in cases)
    for case, answer in cases:
        # an uncounted click is recorded in the approvals table and the journal (checked below)
        if answer not in ("401", "ignored as a duplicate") and "recorded but not counted" not in answer:
            assert answer[:60] in logged, f"{case}: refusal not in the log"
    clicks = await h.services.store.approvals(inc.id)
    assert (e2e.NOBODY, "reject", False) in [(c.user_id, c.decision, c.counted) for c in clicks]
    assert any(e.kind == "approval_reject" and e.actor == e2e.NOBODY for e in await h.services.store.events(inc.id))
    proof_report(f"abuse: {len(cases)} hostile requests, 0 effects, each answered "
                 f"({sum(a == '401' for _, a in cases)} x 401, "
                 f"{sum(a not in ('401', 'ignored as a duplicate') for _, a in cases)} x a clear ephemeral, "
                 f"{sum(a == 'ignored as a duplicate' for _, a in cases)} duplicates ignored) and recorded")


# ----------------------------------------------------------------------------- hostile values via Slack


def _plain(value: str) -> dict[str, Any]:
    return {"type": "plain_text_input", "value": value}


def _select(value: str) -> dict[str, Any]:
    return {"type": "static_select", "selected_option": {"value": value}}


@FAST
@given(reason=hostile, description=hostile)
async def test_hostile_modal_text_is_stored_verbatim_or_refused(harness: e2e.Harness, reason: str,
                                                              description: str) -> None:
    h = harness
    BOUNDARY.clear()
    n_inc = len(await h.services.store.incidents())
    state = {"target": {"target": _select("t1")},
             "triggers": {"triggers": {"type": "checkboxes", "selected_options": [{"value": "data_corruption"}]}},
             "severity": {"severity": _select("P4")}, "impact": {"impact": _select("Minimal")},
             "business_risk": {"business_risk": _select("Low")},
             "reason": {"reason": _plain(reason)}, "description": {"description": _plain(description)}}
    r = await h.driver.view_submission("rb_start", state, require_opened=False, view_id=f"V{uuid.uuid4().hex}",
                                       private_metadata=json.dumps({"channel": e2e.CH}), user_id=e2e.REQ)
    await h.idle()
    assert r.status == 200
    incs = await h.services.store.incidents()
    if r.body:  # refused with a reason per field
        assert r.json()["response_action"] == "errors"
        assert len(incs) == n_inc
        assert set(r.json()["errors"]) <= {"reason", "description"}
    else:  # P4: recorded and closed at once, the text exactly as typed (trimmed)
        assert len(incs) == n_inc + 1
        inc = incs[0]
        assert inc.reason == reason.strip() and inc.inputs["description"] == description.strip()
        assert inc.status is Status.CLOSED
    assert not [e for e in h.fake.ephemerals if "Something went wrong" in e.text]
    _no_canary()
    _count("start modal reason", reason)
    _count("start modal description", description)


@FAST
@given(sub=st.sampled_from(["start", "status", "abort", "start t1", "abort RB-20261125-0001", ""]), arg=hostile)
async def test_hostile_command_arguments_are_answered(harness: e2e.Harness, sub: str, arg: str) -> None:
    h = harness
    before = await _effects(h)
    BOUNDARY.clear()
    r = await h.driver.slash_command(text=f"{sub} {arg}", user_id=e2e.NOBODY, channel_id=e2e.CH)
    await h.idle()
    assert r.status == 200
    after = await _effects(h)
    after["views"] = before["views"]  # `start` opens the modal with the text as its reason: no effect yet
    assert after == before
    assert not [e for e in h.fake.ephemerals if "Something went wrong" in e.text]
    _no_canary()
    _count("/rollback arguments and target names", arg)


# ----------------------------------------------------------------------------- hostile values at the target


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[LocalTransport]:
    t = LocalTransport(root=str(tmp_path))
    yield t
    await t.close()


@settings(FAST, max_examples=120)
@given(values=st.lists(hostile, min_size=1, max_size=12))
async def test_hostile_values_in_shell_commands_arrive_verbatim(target: LocalTransport, values: list[str]) -> None:
    BOUNDARY.clear()
    ctx = {"incident": {"reason": ""}, "inputs": {"v": values}}
    template = "printf '%s\\0' " + " ".join(f"{{{{ inputs.v.{i} }}}}" for i in range(len(values)))
    if any("\0" in v for v in values):
        # bash cannot carry a NUL in an argument: refused before anything is sent
        with pytest.raises(TemplateError, match="NUL"):
            render_shell(template, ctx)
        for v in values:
            _count("template values in shell commands", v)
        return
    res = await target.run(render_shell(template, ctx), timeout=30)
    assert res.exit_status == 0, res.stderr
    assert res.stdout.split("\0")[:-1] == values
    _no_canary()
    for v in values:
        _count("template values in shell commands", v)


@settings(FAST, max_examples=25)
@given(values=st.lists(hostile, min_size=10, max_size=30))
async def test_hostile_values_in_sql_are_bound_parameters(target: LocalTransport, tmp_path: Path,
                                                         values: list[str]) -> None:
    BOUNDARY.clear()
    db = tmp_path / "t.db"
    if not db.exists():
        create_schema(str(db))
    # The governance record as the governance step writes it: values bound, objects as JSON.
    record = {"event_type": "emergency_rollback", "user_id": values[0], "action": "rollback",
              "details": {"values": values}, "success": True}
    ins = await sqlite_op(target, "governance_insert", {"db": str(db), "record": record}, timeout=60)
    n = len(values)
    marks = ", ".join(f"?{i + 1}" for i in range(n))
    sql = (f"SELECT {marks}, (SELECT user_id FROM governance_logs WHERE id = ?{n + 1}), "
           f"(SELECT details FROM governance_logs WHERE id = ?{n + 1}), "
           "(SELECT count(*) FROM sqlite_master WHERE name = 'governance_logs')")
    res = await sqlite_op(target, "query", {"db": str(db), "sql": sql, "params": [*values, ins["id"]]}, timeout=60)
    row = res["rows"][0]
    assert row[:n] == values
    assert row[n] == values[0] and json.loads(row[n + 1])["values"] == values
    assert row[n + 2] == 1  # nothing dropped
    _no_canary()
    for v in values:
        _count("SQL parameters and governance records", v)


ENGINE_RUNBOOK = textwrap.dedent("""\
    name: hostile
    phases:
      - id: p
        title: P
        steps:
          - id: echo
            title: The reason through a shell command
            kind: command
            idempotent: true
            run: "printf '%s' {{ incident.reason }} > reason.txt; printf '%s' {{ inputs.description }} > d.txt"
          - id: store
            title: The reason as a bound SQL parameter
            kind: sqlite
            op: query
            idempotent: false
            db: "t.db"
            params:
              sql: "INSERT INTO governance_logs (timestamp, event_type, user_id, action, details, success)
                    VALUES ('now', 'test', ?, 'hostile', ?, 1)"
              params: ["{{ incident.reason }}", "{{ inputs.description }}"]
              write: true
    """)


@settings(FAST, max_examples=30)
@given(reason=hostile, description=hostile)
async def test_hostile_incident_reason_through_the_engine(tmp_path: Path, reason: str, description: str) -> None:
    BOUNDARY.clear()
    work = tmp_path / f"w{uuid.uuid4().hex[:8]}"
    work.mkdir()
    create_schema(str(work / "t.db"))
    (work / "rb.yml").write_text(ENGINE_RUNBOOK)
    transport = LocalTransport(root=str(work))
    store = await Store.open(str(work / "state.db"))
    try:
        settings_ = TargetSettings.model_validate({"name": "t", "transport": "local", "workdir": str(work)})
        engine = Engine(store, load_runbook(work / "rb.yml"), {"t": Target(settings_, transport)},
                        artifacts_dir=work / "art")
        inc = await store.create_incident(target="t", runbook="hostile", reason=reason,
                                          inputs={"description": description})
        inc = await engine.run(inc.id)
        assert (await store.incident(inc.id)).reason == reason  # stored verbatim (bound parameters)
        if "\0" in reason or "\0" in description:
            w = await engine.waiting_for(inc.id)
            assert inc.status is Status.WAITING and w is not None and w.kind == "failure"
            assert "NUL" in (w.error or "")
            _count("incident reason and description through runbook templates", reason)
            _count("incident reason and description through runbook templates", description)
            return
        assert inc.status is Status.COMPLETED, await engine.waiting_for(inc.id)
        assert (work / "reason.txt").read_bytes() == reason.encode()
        assert (work / "d.txt").read_bytes() == description.encode()
        rows = await sqlite_op(transport, "query", {"db": "t.db", "sql": "SELECT user_id, details FROM "
                               "governance_logs WHERE action = 'hostile'", "params": []}, timeout=60, cwd=str(work))
        assert rows["rows"] == [[reason, description]]
    finally:
        await transport.close()
        await store.close()
    _no_canary()
    _count("incident reason and description through runbook templates", reason)
    _count("incident reason and description through runbook templates", description)


#: Hostile values that must be seen crossing into a shell or SQL for the figure to mean something.
MIN_REACHED = 900


def test_hostile_value_figures(proof_report: Callable[[str], None]) -> None:
    """Runs last in this module: hostile values tried, and those seen crossing the boundary, per field."""
    total = sum(counted.values())
    if not total:
        pytest.skip("the hostile value tests did not run")
    _no_canary()
    crossed = sum(r[2] for r in reached.values())
    fields = ", ".join(f"{k} {reached.get(k, [0, 0, 0])[2]}/{v} (shell {reached.get(k, [0, 0, 0])[0]}, "
                       f"SQL {reached.get(k, [0, 0, 0])[1]})" for k, v in sorted(counted.items()))
    proof_report(f"abuse: {crossed} of {total} hostile values crossed into a shell or SQL ({fields}), "
                 "every one quoted or bound: canary never created, each came back verbatim, 0 crashes")
    assert crossed >= MIN_REACHED, f"only {crossed} hostile values reached a shell or SQL"
