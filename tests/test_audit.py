"""The local audit log: a hash chain that names the first broken line, fed from the journal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actions.local import LocalTransport
from bot.cli.main import main
from bot.core.engine import Engine, Target
from bot.core.lifecycle import Status
from bot.core.runbook import parse_runbook
from bot.core.targets import TargetSettings
from bot.record.audit import AuditLog, AuditSink, seal, verify_chain
from bot.state.store import Store
from tests.runbooks import gated


async def _chain(path: Path, n: int) -> None:
    log = AuditLog(path)
    for i in range(n):
        await log.append({"type": "note", "i": i, "text": f"entry {i}"})


async def test_chain_appends_and_verifies_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "governance.jsonl"
    await _chain(path, 3)
    log = AuditLog(path)  # a restart: the chain goes on from the file
    entry = await log.append({"type": "note", "i": 3})
    assert entry["seq"] == 4
    check = verify_chain(path)
    assert check.ok and check.lines == 4
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["prev"] == "0" * 64
    assert (await log.head()) == (4, check.head)


@pytest.mark.parametrize("how", ["edit", "edit_and_reseal", "delete", "swap", "torn"])
async def test_tampering_in_the_middle_is_caught_at_the_first_broken_line(tmp_path: Path, how: str) -> None:
    path = tmp_path / "audit.jsonl"
    await _chain(path, 9)
    lines = path.read_text().splitlines()
    entry = json.loads(lines[4])  # line 5
    expected = 5
    if how == "edit":
        lines[4] = lines[4].replace("entry 4", "entry 4 (approved by nobody)")
    elif how == "edit_and_reseal":
        entry["text"] = "forged"
        lines[4] = seal(entry, seq=entry["seq"], prev=entry["prev"])
        expected = 6  # its own hash holds; the next line's prev does not
    elif how == "delete":
        del lines[4]
    elif how == "swap":
        lines[4], lines[5] = lines[5], lines[4]
    path.write_text("\n".join(lines) + ("" if how == "torn" else "\n"))
    check = verify_chain(path)
    if how == "torn":
        assert check.first_bad == 9 and "torn" in check.reason
        return
    assert not check.ok and check.first_bad == expected, check


def test_cli_audit_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    path = tmp_path / "audit.jsonl"
    asyncio.run(_chain(path, 6))
    assert main(["audit", "verify", str(path)]) == 0
    assert "6 lines, chain intact" in capsys.readouterr().out
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"i":2', '"i":20')
    path.write_text("\n".join(lines) + "\n")
    assert main(["audit", "verify", str(path)]) == 1
    assert f"{path}:3: broken" in capsys.readouterr().err
    assert main(["audit", "verify", str(tmp_path / "missing.jsonl")]) == 2


RUNBOOK = gated("t", """\
    - id: pick
      title: Pick
      kind: choice
      prompt: Which?
      options: [{value: "A", label: "A"}, {value: "B", label: "B"}]
    - {id: write, title: Write, kind: command, idempotent: true, run: "echo {{ choices.pick }} > out.txt"}
    - {id: confirm, title: Confirm, kind: manual}
    """)


async def test_every_click_choice_and_step_reaches_the_chain_as_it_happens(tmp_path: Path) -> None:
    workdir = tmp_path / "app"
    workdir.mkdir()
    store = await Store.open(str(tmp_path / "state.db"))
    transport = LocalTransport(name="t1")
    engine = Engine(store, parse_runbook(RUNBOOK),
                    {"t1": Target(TargetSettings(name="t1", transport="local", workdir=str(workdir)), transport)},
                    artifacts_dir=tmp_path / "art")
    log = engine.records.log
    try:
        inc = await store.create_incident(target="t1", runbook="t", reason="r", requester="U0REQ")
        await engine.run(inc.id)
        await engine.approve(inc.id, user_id="U0NOBODY", roles=[], decision="approve")
        # The refused click is in the chain before anything else happens.
        kinds = [(e["kind"], e["actor"]) for e in await log.entries(inc.id)]
        assert ("approval_approve", "U0NOBODY") in kinds
        await engine.approve(inc.id, user_id="U0LEAD", roles=["tech_lead"], decision="approve")
        await engine.approve(inc.id, user_id="U0PO", roles=["product_owner"], decision="approve")
        await engine.run(inc.id)
        await engine.answer(inc.id, "pick", "B", user="U0IC")
        await engine.run(inc.id)
        await engine.answer(inc.id, "confirm", "done", user="U0IC")
        inc = await engine.run(inc.id)
        assert inc.status is Status.COMPLETED
        entries = await log.entries(inc.id)
        journal = await store.events(inc.id)
        assert [e["event_id"] for e in entries] == [e.id for e in journal]
        assert [(e["kind"], e["step"], e["actor"]) for e in entries] == \
            [(e.kind, e.step_id, e.actor) for e in journal]
        assert ("step_running", "write") in [(e["kind"], e["step"]) for e in entries]
        assert ("step_done", "write") in [(e["kind"], e["step"]) for e in entries]
        answers = [e for e in entries if e["data"].get("answer")]
        assert [(a["step"], a["data"]["answer"]["value"], a["actor"]) for a in answers] == \
            [("pick", "B", "U0IC"), ("confirm", "done", "U0IC")]
        assert verify_chain(log.path).ok
        # A second sink on the same file (a restart) copies nothing twice.
        assert await AuditSink(store, AuditLog(log.path)).flush() == 0
    finally:
        await transport.close()
        await store.close()
