"""The schema contract as an operator meets it: ``rollback-bot check`` on a target whose
tables the project never shipped, and the strategy choice in an incident (an unsupported
strategy shown with its reason, never picked), before and after a ``change_log`` mapping."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from actions.local import LocalTransport
from bot.cli.check import run_checks
from bot.core.config import Settings, SlackSecrets, parse_config
from bot.core.engine import AnswerRefused, Engine, Target
from bot.core.lifecycle import Status
from bot.core.runbook import default_runbook, parse_runbook
from bot.core.targets import TargetSettings
from bot.slack.questions import render_question
from bot.state.store import Store
from tests.test_strategies import MAPPING, build


def _config(workdir: Path, **target: Any) -> Settings:
    data = {"slack": {"channels": ["#incident-response"]}, "roles": {"tech_lead": {"users": ["U0LEAD1"]}},
            "targets": [{"name": "prod", "transport": "local", "workdir": str(workdir),
                         "db_path": "prod.db", **target}]}
    return Settings(parse_config(data), SlackSecrets.model_validate({}))


async def test_check_names_the_strategies_and_the_settings_to_add(tmp_path: Path) -> None:
    build(tmp_path)
    notes: list[str] = []
    problems = await run_checks(_config(tmp_path), slack=False, notes=notes)
    # The bare database has no app, env file or backups: the preflight says so; the schema is still read.
    assert [p for p in problems if ": preflight " not in p] == []
    text = "\n".join(notes)
    assert "C full restore: supported" in text
    assert "A selective: NOT supported: no change log: table 'change_history' does not exist " \
           "(set change_log.table)" in text

    notes = []
    await run_checks(_config(tmp_path, change_log={"table": "audit_trail"}), slack=False, notes=notes)
    text = "\n".join(notes)
    assert "change_log.table_column: guessed 'entity'" in text
    assert "B transaction rollback: NOT supported" in text and "change_log.new_column" in text

    notes = []
    await run_checks(_config(tmp_path, change_log=MAPPING), slack=False, notes=notes)
    text = "\n".join(notes)
    for line in ("A selective: supported", "B transaction rollback: supported", "C full restore: supported"):
        assert line in text, text
    assert "undoes only what the change log recorded" in text

    notes = []
    problems = await run_checks(_config(tmp_path, db_path="missing.db"), slack=False, notes=notes)
    # The preflight names the missing database; its schema is then not read.
    assert any("preflight database" in p and "missing.db" in p for p in problems), problems


def test_contract_settings_are_checked_with_their_key() -> None:
    base = {"name": "prod", "transport": "local", "workdir": "/srv"}
    with pytest.raises(ValueError, match=r"coloumn_x"):
        TargetSettings.model_validate({**base, "change_log": {"coloumn_x": "a"}})
    with pytest.raises(ValueError, match="deployed_until needs deployed_at"):
        TargetSettings.model_validate({**base, "boundary": {"deployed_until": "2026-01-01"}})
    values = TargetSettings.model_validate({**base, "boundary": {"governance": {"details.version": "r9"}},
                                            "key_columns": {"scratch": ["note"]}}).template_values()
    assert values["boundary"] == {"governance": {"details.version": "r9"}}
    assert values["change_log"] == {"table": "change_history"} and values["key_columns"] == {"scratch": ["note"]}


STRATEGY_ONLY = textwrap.dedent("""\
    name: t
    phases:
      - id: restoration
        title: Restoration
        steps:
    """)


@pytest.mark.parametrize("mapped", [False, True])
async def test_the_strategy_choice_offers_only_what_the_target_supports(tmp_path: Path, mapped: bool) -> None:
    build(tmp_path)
    full = default_runbook()
    step = next(s for _, s in full.steps() if s.id == "strategy")
    body = yaml.safe_dump([step.model_dump(exclude_none=True, exclude_defaults=True) | {"kind": "choice"}])
    rb = parse_runbook(STRATEGY_ONLY + textwrap.indent(body, "          "))
    settings = TargetSettings.model_validate({"name": "t1", "transport": "local", "workdir": str(tmp_path),
                                              "db_path": "prod.db", **({"change_log": MAPPING} if mapped else {})})
    store = await Store.open(str(tmp_path / "state.db"))
    transport = LocalTransport(name="t1")
    try:
        engine = Engine(store, rb, {"t1": Target(settings, transport)}, artifacts_dir=tmp_path / "art")
        inc = await store.create_incident(target="t1", runbook="t", requester="U9", reason="drill")
        assert (await engine.run(inc.id)).status is Status.WAITING
        w = await engine.waiting_for(inc.id)
        assert w is not None and [o["value"] for o in w.options] == ["A", "B", "C"]
        disabled = {o["value"]: o.get("disabled") for o in w.options}
        if mapped:
            assert not any(disabled.values())
        else:
            assert disabled["A"] and "change_log.table" in disabled["A"] and disabled["B"] and not disabled["C"]
            with pytest.raises(AnswerRefused, match="cannot be chosen here: no change log"):
                await engine.answer(inc.id, "strategy", "B", user="U1")
            run = (await store.latest_runs(inc.id))["strategy"]
            shown = render_question(inc, run, title="Strategy", guidance="", current=True, destructive=[],
                                    uploaded=False)
            blocks = [b.to_dict() for b in shown.blocks]
            buttons = [e["text"]["text"] for b in blocks if b["type"] == "actions" for e in b["elements"]]
            assert buttons == ["C: Full database restore"]
            assert "unavailable: no change log" in str(blocks)
        await engine.answer(inc.id, "strategy", "C", user="U1")
        assert (await engine.run(inc.id)).status is Status.COMPLETED
    finally:
        await transport.close()
        await store.close()
