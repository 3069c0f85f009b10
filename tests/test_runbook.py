"""The runbook models and loader: good runbooks load, bad ones name file, line and reason."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bot.cli.main import main
from bot.core.runbook import Condition, RunbookError, default_runbook, default_runbook_text, load_runbook, parse_runbook


def _mini(steps: str) -> str:
    return textwrap.dedent("""\
        name: mini
        phases:
          - id: one
            title: One
            steps:
        """) + textwrap.indent(textwrap.dedent(steps), "      ")


def _problems(text: str) -> list[str]:
    with pytest.raises(RunbookError) as exc:
        parse_runbook(text, "runbook.yml")
    return exc.value.problems


def test_default_runbook_has_the_plans_phases() -> None:
    rb = default_runbook()
    titles = [p.title for p in rb.phases]
    for n in (1, 2, 3, 4, 6, 7):
        assert any(t.startswith(f"Phase {n}:") for t in titles), titles
    ids = [s.id for _, s in rb.steps()]
    assert len(ids) == len(set(ids))
    for must in ("maintenance_on", "restrict_access", "emergency_backup", "verify_backup", "strategy",
                 "selective_restore", "transaction_rollback", "full_restore", "maintenance_off", "restore_access"):
        assert must in ids
    # every step with a side effect states whether it is idempotent
    for _, step in rb.steps():
        if step.has_side_effect:
            assert step.idempotent is not None, step.id


def test_unknown_field_is_reported_with_line() -> None:
    text = _mini("""\
        - id: backup
          title: Backup
          kind: command
          idempotent: true
          run: "true"
          timout: 30
        """)
    problems = _problems(text)
    assert problems == ["runbook.yml:11: step 'backup': unknown field 'timout'"]


def test_idempotent_required_for_side_effects() -> None:
    text = _mini("""\
        - id: stop
          title: Stop
          kind: command
          run: "pm2 stop app"
        """)
    [p] = _problems(text)
    assert p.startswith("runbook.yml:6: step 'stop':") and "'idempotent' is required" in p


def test_read_only_steps_need_no_idempotent_flag() -> None:
    rb = parse_runbook(_mini("""\
        - id: counts
          title: Counts
          kind: sqlite
          op: record_counts
        - id: health
          title: Health
          kind: http
          url: http://127.0.0.1/health
        """))
    assert all(s.is_idempotent for _, s in rb.steps())


def test_bad_references_are_reported() -> None:
    text = _mini("""\
        - id: first
          title: First
          kind: command
          idempotent: true
          run: "echo {{ captures.later.path }}"
        - id: later
          title: Later
          kind: sqlite
          op: backup
          idempotent: true
          params: {dest: x.db}
          captures: {path: path}
        - id: uses
          title: Uses
          kind: command
          idempotent: true
          when: "choices.nothing == 'A'"
          run: "echo {{ captures.later.pth }} {{ target.nope }} {{ incident.reason | raw }}"
        """)
    problems = _problems(text)
    assert "runbook.yml:6: step 'first': bad reference 'captures.later.path': no earlier step captures it" in problems
    joined = "\n".join(problems)
    assert "step 'later' captures no 'pth'" in joined
    assert "'target.nope': not a target setting" in joined
    assert "'choices.nothing': no earlier choice step has this id" in joined
    assert "'| raw' is only allowed on target settings" in joined
    assert all(p.startswith("runbook.yml:") for p in problems)


def test_unknown_kind_and_sqlite_op() -> None:
    problems = _problems(_mini("""\
        - id: a
          title: A
          kind: teleport
        - id: b
          title: B
          kind: sqlite
          op: drop_everything
        """))
    assert any(p.startswith("runbook.yml:6: step 'a': unknown kind 'teleport'") for p in problems)
    assert any(
        p.startswith("runbook.yml:12: step 'b'") and "unknown sqlite op 'drop_everything'" in p for p in problems
    )


def test_not_yaml() -> None:
    [p] = _problems("name: x\nphases: [\n")
    assert p.startswith("runbook.yml:") and "not valid YAML" in p


def test_conditions() -> None:
    assert Condition.parse("choices.strategy == 'C'").holds("C")
    assert not Condition.parse("choices.strategy == 'C'").holds("A")
    assert Condition.parse("choices.strategy in ['A', 'C']").holds("A")
    assert Condition.parse("target.x != ''").holds("cmd")
    with pytest.raises(ValueError):
        Condition.parse("choices.strategy ~ 'C'")


def test_cli_runbook_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runbook", "check"]) == 0
    assert "Phase 3: Database Restoration" in capsys.readouterr().out
    bad = tmp_path / "runbook.yml"
    bad.write_text(default_runbook_text().replace("    timeout: 1800\n    params:\n      dest:",
                                                  "    timout: 1800\n    params:\n      dest:"))
    text = default_runbook_text()
    i = text.index("      - id: emergency_backup")
    j = text.index("timeout: 1800", i)
    bad.write_text(text[:j] + "timout: 1800" + text[j + len("timeout: 1800"):])
    assert main(["runbook", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    line = text[:j].count("\n") + 1
    assert f"runbook.yml:{line}: step 'emergency_backup': unknown field 'timout'" in err
    with pytest.raises(RunbookError):
        load_runbook(tmp_path / "missing.yml")


def test_user_typed_values_only_where_quoted_or_bound(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = textwrap.dedent("""\
        name: typed
        phases:
          - id: p
            title: P
            steps:
              - id: q
                title: Query
                kind: sqlite
                op: query
                params:
                  sql: "SELECT * FROM t WHERE name = '{{ incident.reason }}' AND x = ?"
                  params: ["{{ incident.reason }}"]
              - {id: h, title: Call, kind: http, url: "http://x/{{ inputs.impact }}",
                 json: {why: "{{ incident.reason }}"}}
              - {id: c, title: Cmd, kind: command, idempotent: true, run: "echo {{ incident.reason }}"}
              - id: b
                title: Backup
                kind: sqlite
                op: backup
                idempotent: true
                params:
                  dest: "/tmp/{{ incident.description }}.db"
              - {id: n, title: Tell, kind: notify, text: "{{ incident.reason }}"}
        """)
    path = tmp_path / "typed.yml"
    path.write_text(text)
    assert main(["runbook", "check", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    # The SQL text, the URL and the path are refused, each with its line; the bound parameter,
    # the JSON body, the shell-quoted command and the notify text are not.
    assert [line.split(": step ")[0].rsplit(":", 1)[1] for line in err] == ["11", "13", "22"]
    assert "'params.sql'" in err[0] and "'url'" in err[1] and "'params.dest'" in err[2]
    assert all("typed by a person" in line for line in err)
    # The shipped runbook puts the reason only where it is safe.
    assert main(["runbook", "check"]) == 0
