"""The incident's record end to end: governance row on the target (reason stored verbatim),
the audit chain, the evidence archive's manifest, the report's timeline and metrics against
the journal; over a real sshd in the drill, and from Slack with the GitHub rollback."""

from __future__ import annotations

import asyncio
import io
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bot.core.config import SlackSecrets, parse_config
from bot.core.lifecycle import Status
from bot.core.runbook import default_runbook
from bot.drill.run import print_result, run_drill
from bot.drill.sandbox import build_sandbox
from bot.drill.sshd import SshdUnavailable
from bot.drill.verdict import check_verdict
from bot.record.audit import verify_chain
from bot.record.evidence import verify_archive
from bot.record.metrics import gather, metrics_table, success_metrics
from bot.record.records import MetricTargets
from bot.record.report import stamp
from bot.slack.client import make_client
from bot.slack.services import build_services
from bot.state.store import Store
from tests.github_fake import GitHubFake
from tests.slack_fake import SlackFake
from tests.slack_player import Cast, default_answers, play_through_bolt

EVIL = "it's \"broken\"; $(touch pwned) `touch pwned2`\nsecond line\n'); DROP TABLE governance_logs; --"


def _governance_rows(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT id, event_type, user_role, success, details, runtime_context FROM governance_logs "
                            "WHERE event_type = 'emergency_rollback'").fetchall()
    finally:
        conn.close()


def _timeline(report: str) -> list[tuple[int, str]]:
    section = report.split("## Timeline", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| ([^|]+) \|", section, re.MULTILINE)
    return [(int(n), t.strip()) for n, t in rows]


async def test_drill_over_sshd_keeps_the_whole_record(tmp_path: Path) -> None:
    root = tmp_path / "drill"
    root.mkdir()
    with (root / "terminal.txt").open("w") as terminal:
        try:
            result = await run_drill(strategy="C", use_ssh=True, keep=True, root=root, reason=EVIL, out=terminal)
        except SshdUnavailable as exc:
            pytest.skip(f"sshd not available: {exc}")
    failed = [(c.name, c.detail) for c in result.verdict.checks if not c.ok]
    assert result.verdict.passed and result.status is Status.COMPLETED, failed
    workdir = root / "target" / "app"
    assert not (workdir / "pwned").exists() and not (workdir / "pwned2").exists()

    # The reason, quotes, $(…), backticks and newlines included, is stored verbatim.
    (row,) = _governance_rows(workdir / "databases" / "production.db")
    details, context = json.loads(row[4]), json.loads(row[5])
    assert details["rollback_reason"] == EVIL and row[1:4] == ("emergency_rollback", "incident_commander", 1)
    assert details["rollback_method"] == "full_database_restore"
    assert details["database_restoration"]["integrity_verified"] is True
    assert context["incident_id"] == result.incident_id

    # The local chain holds and carries the same record.
    (chain_path,) = (root / "logs").glob("governance.jsonl")
    assert verify_chain(chain_path).ok
    entries = [json.loads(line) for line in chain_path.read_text().splitlines()]
    gov = [e for e in entries if e["type"] == "governance_record"]
    assert len(gov) == 1 and gov[0]["row_id"] == row[0] and gov[0]["record"]["details"] == details

    # The archive: every manifest hash holds; the backup came over SFTP with the verified sha256.
    (folder,) = (root / "evidence").iterdir()
    assert folder.name == context["memoryplugin_anchor"]
    assert re.fullmatch(r"of-bev-phase3-rollback-\d{8}_\d{6}", folder.name)
    assert verify_archive(folder) == []
    manifest = json.loads((folder / "manifest.json").read_text())
    names = {f["name"] for f in manifest["files"]}
    assert json.loads((folder / "governance_record.json").read_text())["details"] == details
    store = await Store.open(str(root / "state.db"))
    try:
        runs = await store.latest_runs(result.incident_id)
        (backup,) = [n for n in names if n.startswith("emergency_backup/")]
        assert next(f["sha256"] for f in manifest["files"] if f["name"] == backup) == \
            runs["verify_backup"].captures["file_sha256"]
        # Tracked as made: every file of the manifest is in the store's artifacts table.
        tracked = {a.path for a in await store.artifacts(result.incident_id)}
        assert all(str(folder / n) in tracked for n in names)
        # A file changed after the fact is caught.
        (folder / "record_counts.json").write_text("{}")
        assert verify_archive(folder) == ["record_counts.json: sha256 differs from the manifest"]

        # The report's timeline is the journal, line by line with its times, up to the report.
        report = (folder / "report.md").read_text()
        events = await store.events(result.incident_id)
        rows = _timeline(report)
        report_started = next(i for i, e in enumerate(events, 1) if e.step_id == "report" and e.kind == "step_running")
        assert len(rows) >= report_started
        assert rows == [(i, stamp(e.at)) for i, e in enumerate(events[: len(rows)], 1)]
        assert any(e.kind == "approval_approve" for e in events[: len(rows)])
        # Its metrics are what the journal gives now.
        facts = await gather(store, default_runbook(), result.incident_id)
        metrics = success_metrics(facts, MetricTargets.model_validate({}))
        assert metrics_table(metrics) in report
        # A full restore loses the people's writes made since the backup: Data Loss is not met.
        assert [m.ok for m in metrics][:4] == [True, False, True, True]
        assert metrics[1].actual.startswith("16 records lost")
        assert "| Data Loss | None | 16 records lost" in report
        assert runs["report"].captures["overall"] == "PARTIAL SUCCESS"
        assert "## Phase 7" in report and "- [ ] Root Cause Identification" in report

        # An accurate record: a drill is recorded as one; the person who acted as incident
        # commander (not the requester), people by name with their ids; the app rollback that
        # ran; skipped steps with the reason in words; phases in the plan's order.
        assert context["environment"] == "drill" and "- **Environment:** drill" in report
        assert context["incident_commander"] == "U0DRILLIC"
        assert "- **Incident commander:** Incident commander (simulated) (U0DRILLIC)" in report
        assert "- **Requested by:** Drill requester (simulated) (U0DRILLREQ)" in report
        assert "- **Method:** command on the target (done, exit status 0" in report
        assert details["application_rollback"]["method"] == "command"
        assert runs["notify_initiated"].status.value == "skipped"
        phases = report.split("## Phases", 1)[1].split("\n## ", 1)[0]
        assert "Selective rollback: restore the rows the deployment touched from the backup — skipped: " \
               "runs only when the strategy choice is 'A'; it is 'C'" in phases
        assert "Stakeholder notification: rollback initiated — skipped: no stakeholder webhook" in phases
        assert "error:" not in "".join(line for line in report.splitlines() if "step skipped" in line)
        assert phases.index("Phase 5:") < phases.index("Phase 6:")
        assert "Phase 5: Governance & Audit Documentation — running (runs after Phase 6: System Stabilization" \
               in phases  # rendered by its own report step
        # One recovery time everywhere: the drill's printed figure, the report, the governance record.
        secs = result.recovery_seconds
        assert secs is not None and secs > 0
        out = io.StringIO()
        print_result(result, out, kept=True)
        assert f"Recovery time: {secs:.1f} s (start of run to service restored)" in out.getvalue()
        assert f"- **Recovery time (start of the run to service restored):** {secs:.1f} s" in report
        assert details["recovery_time_seconds"] == round(secs, 1)
        assert f"({secs:.1f} s)" in metrics_table(metrics)
        print(f"record: recovery time {secs:.1f} s in the drill's output, the report and the governance record")
    finally:
        await store.close()


CH = "C0INCIDENT1"
REQ, LEAD, PO, IC = "U0REQUESTER", "U0LEAD", "U0PRODOWNER", "U0COMMANDER"
CAST = Cast(requester=REQ, approvers=[LEAD, PO], answerer=IC)


async def test_slack_incident_with_github_rollback_ends_with_the_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox = await asyncio.to_thread(build_sandbox, tmp_path / "target")
    answers = default_answers(strategy="C", backup=sandbox.backup_path.name, release="phase-2.4.1")
    github = await GitHubFake(token="ghp_e2e").start()
    github.add_sandbox_releases()
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_e2e")
    fake = SlackFake(users={u: u.lower() for u in (REQ, LEAD, PO, IC)}, usergroups={"S0PRODUCT": [PO]})
    fake.add_channel(CH, "incident-response")
    await fake.start()
    config = parse_config({
        "slack": {"channels": [CH], "update_interval_seconds": 0.2, "retry_max_seconds": 1},
        "roles": {"tech_lead": {"users": [LEAD]}, "product_owner": {"groups": ["S0PRODUCT"]},
                  "incident_commander": {"users": [IC]}},
        "targets": [{"name": "sandbox", "transport": "local", **sandbox.settings(), "app_rollback": "github",
                     "github_repo": github.repo, "github_api_url": github.api_url,
                     "release_tag_pattern": r"^phase-\d+\.\d+\.\d+$"}],
        "state_db": str(tmp_path / "state.db"),
        "artifacts_dir": str(tmp_path / "artifacts"),
        "time_scale": 0.002,
        "stability": {"watch_seconds": 300, "watch_interval_seconds": 60, "baseline_floor_ms": 1000},
        "records": {"evidence_root": str(tmp_path / "DriveMemory" / "Rollbacks"), "backup_copy": "leave",
                    "anchor_prefix": "drill-rollback"},
    })
    secrets = SlackSecrets(slack_bot_token=fake.bot_token, slack_signing_secret=fake.signing_secret,
                           slack_api_url=fake.base_url)
    services = await build_services(config, make_client(secrets))
    try:
        inc = await play_through_bolt(fake=fake, services=services, secrets=secrets, channel=CH,
                                      target="sandbox", cast=CAST, answers=answers)
        assert inc.status is Status.COMPLETED, inc.status
        t = services.targets["sandbox"]
        verdict = await check_verdict(store=services.store, incident=inc, transport=t.transport,
                                      settings=t.settings, sandbox=sandbox, strategy="C")
        assert verdict.passed, [(c.name, c.detail) for c in verdict.checks if not c.ok]

        # The app went back through a watched workflow run, to the suggested release.
        runs = await services.store.latest_runs(inc.id)
        assert runs["release_tag"].waiting is not None and runs["release_tag"].waiting["default"] == "phase-2.4.1"
        assert runs["github_deploy"].captures["conclusion"] == "success"
        (dispatch,) = github.dispatches()
        assert dispatch.body["ref"] == "phase-2.4.1"
        assert dispatch.body["inputs"]["deployment_type"] == "emergency_rollback"

        (row,) = _governance_rows(sandbox.db_path)
        details = json.loads(row[4])
        assert details["application_rollback"]["to_version"] == "phase-2.4.1"
        assert details["application_rollback"]["from_version"] == "phase-3.0.0"
        assert details["application_rollback"]["workflow_run"] == runs["github_deploy"].captures["html_url"]
        assert verify_chain(services.engine.records.log.path).ok
        folder = tmp_path / "DriveMemory" / "Rollbacks" / f"drill-rollback-{inc.stamp}"
        assert verify_archive(folder) == []
        manifest = json.loads((folder / "manifest.json").read_text())
        # The backup was left on the target, with its path and hashes.
        assert manifest["remote"]["emergency_backup"]["file_sha256"] == runs["verify_backup"].captures["file_sha256"]

        # The report is in the thread; the closing message shows the metrics table.
        root = next(m for m in fake.messages(CH) if not m.is_reply)
        reports = [f for f in fake.files if f.completed and f.filename == "report.md"]
        assert len(reports) == 1 and reports[0].thread_ts == root.ts
        closing = [m for m in fake.thread(CH, root.ts) if "Success metrics" in str(m.blocks)]
        assert len(closing) == 1 and closing[0].reply_broadcast
        for name in ("Rollback Duration", "Data Loss", "Service Availability", "Error Rate", "User Impact"):
            assert name in str(closing[0].blocks)

        # The incident commander is who acted as one; people by name (users.info), ids kept;
        # the app rollback that ran is the workflow.
        context = json.loads(row[5])
        assert context["incident_commander"] == IC and context["environment"] == "production"
        report = reports[0].text
        assert f"- **Incident commander:** u0commander ({IC})" in report
        assert f"- **Requested by:** u0requester ({REQ})" in report
        assert "- **Method:** GitHub Actions workflow (done)" in report
        assert {c.params.get("user") for c in fake.calls_to("users.info")} >= {REQ, IC, LEAD, PO}
    finally:
        await services.close()
        await fake.stop()
        await github.stop()
        await asyncio.to_thread(sandbox.stop)
