"""Proof, secrets: a whole incident from Slack, then every trace it left scanned for secrets.

The default runbook runs from ``/rollback start`` to completion against the drill sandbox
through a real sshd, with the application rolled back through the GitHub fake. The
target's smoke test is made to print every secret the bot holds (bot token, app token,
signing secret, GitHub token, the SSH private key) and a ``DB_PASSWORD=…`` line, as a
careless script on a real server would. Then every recorded Slack call and upload, every
log line (DEBUG and up), the audit log, the report and evidence archive, the artifacts and
the state database (and its job store) are scanned: 0 hits. The redaction itself is
checked on the way: the smoke test's output is stored and posted with ``[REDACTED]`` in
place of each secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets as pysecrets
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.core.config import SlackSecrets, parse_config
from bot.core.lifecycle import Status
from bot.core.redaction import MASK, Redactor
from bot.drill.sandbox import build_sandbox
from bot.slack.client import make_client
from bot.slack.services import build_services
from tests.github_fake import GitHubFake
from tests.slack_fake import SlackFake
from tests.slack_player import Cast, default_answers, play_through_bolt
from tests.sshd import SshdTarget

CH = "C0INCIDENT1"
REQ, LEAD, PO, IC = "U0REQUESTER", "U0LEAD", "U0PRODOWNER", "U0COMMANDER"
CAST = Cast(requester=REQ, approvers=[LEAD, PO], answerer=IC)


def _secrets(key_file: Path) -> dict[str, str]:
    key_lines = [ln for ln in key_file.read_text().splitlines() if ln and not ln.startswith("-----")]
    return {
        "bot token": f"xoxb-{pysecrets.token_hex(12)}",
        "app token": f"xapp-1-{pysecrets.token_hex(12)}",
        "signing secret": pysecrets.token_hex(16),
        "github token": f"ghp_{pysecrets.token_hex(18)}",
        **{f"ssh private key line {i}": line for i, line in enumerate(key_lines)},
        "planted password": f"pw-{pysecrets.token_hex(10)}",
    }


def _scan(found: dict[str, list[str]], where: str, data: bytes | str, secrets: dict[str, str]) -> None:
    blob = data if isinstance(data, bytes) else data.encode("utf-8", "replace")
    for name, value in secrets.items():
        if value.encode() in blob:
            found.setdefault(name, []).append(where)


def _scan_files(found: dict[str, list[str]], root: Path, secrets: dict[str, str]) -> tuple[int, set[str]]:
    """Audit log, report, evidence archive, artifacts, state and job store (with WAL files):
    every file the bot wrote (the sandbox target itself is left out)."""
    n = 0
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.relative_to(root).parts[0] != "target":
            _scan(found, str(path.relative_to(root)), path.read_bytes(), secrets)
            n += 1
    return n, {p.name for p in root.rglob("*")}


def test_redactor_hides_patterns_and_values() -> None:
    r = Redactor(values=["0123456789abcdef0123"])
    text = ("token xoxb-1234567890-abcdef ghp_" + "a" * 36 + " DB_PASSWORD=hunter2 api_key: 'k-1' "
            "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY----- 0123456789abcdef0123")
    out = r(text)
    for secret in ("xoxb-1234567890", "ghp_aaaa", "hunter2", "k-1", "AAAA", "0123456789abcdef0123"):
        assert secret not in out, (secret, out)
    assert "DB_PASSWORD=" + MASK in out and "api_key: " + MASK in out
    assert r("backup verified: 12 tables, sha256 ab12") == "backup verified: 12 tables, sha256 ab12"


@pytest.mark.sshd
async def test_no_secret_in_any_trace_of_a_whole_incident(
    tmp_path: Path, sshd_target: SshdTarget, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    proof_report: Callable[[str], None],
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = _secrets(sshd_target.client_key_path)
    for env, name in (("SLACK_BOT_TOKEN", "bot token"), ("SLACK_APP_TOKEN", "app token"),
                      ("SLACK_SIGNING_SECRET", "signing secret"), ("GITHUB_TOKEN", "github token")):
        monkeypatch.setenv(env, secrets[name])
    sandbox = await asyncio.to_thread(build_sandbox, tmp_path / "target")
    answers = default_answers(strategy="C", backup=sandbox.backup_path.name, release="phase-2.4.1")
    github = await GitHubFake(token=secrets["github token"]).start()
    github.add_sandbox_releases()
    fake = SlackFake(users={u: u.lower() for u in (REQ, LEAD, PO, IC)}, usergroups={"S0PRODUCT": [PO]},
                     bot_token=secrets["bot token"], app_token=secrets["app token"],
                     signing_secret=secrets["signing secret"])
    fake.add_channel(CH, "incident-response")
    await fake.start()
    # A careless smoke test that prints what it should not (as scripts on servers do).
    q = shlex.quote
    leaky = (f"echo {q(secrets['bot token'])} {q(secrets['app token'])}; echo signing={q(secrets['signing secret'])}; "
             f"echo GITHUB={q(secrets['github token'])}; echo DB_PASSWORD={q(secrets['planted password'])}; "
             f"cat {q(str(sshd_target.client_key_path))}; seq 1 2000; {sandbox.smoke_test_command}")
    config = parse_config({
        "slack": {"channels": [CH], "update_interval_seconds": 0.2, "retry_max_seconds": 1},
        "roles": {"tech_lead": {"users": [LEAD]}, "product_owner": {"groups": ["S0PRODUCT"]},
                  "incident_commander": {"users": [IC]}},
        "targets": [{"name": "sandbox", "transport": "ssh", "host": sshd_target.host, "port": sshd_target.port,
                     "user": sshd_target.username, "key_file": str(sshd_target.client_key_path),
                     "known_hosts": str(sshd_target.known_hosts_path), **sandbox.settings(),
                     "smoke_test_command": leaky, "app_rollback": "github", "github_repo": github.repo,
                     "github_api_url": github.api_url, "release_tag_pattern": r"^phase-\d+\.\d+\.\d+$"}],
        "state_db": str(tmp_path / "state.db"),
        "artifacts_dir": str(tmp_path / "artifacts"),
        "time_scale": 0.002,
        # Latency limits a busy CI machine cannot hit (test_stability judges latency).
        "stability": {"max_latency_ms": 10000, "baseline_floor_ms": 10000},
        "records": {"evidence_root": str(tmp_path / "evidence"), "audit_log": str(tmp_path / "audit.jsonl")},
    })
    slack_secrets = SlackSecrets()  # from the environment, as `serve` reads them
    slack_secrets.slack_api_url = fake.base_url
    services = await build_services(config, make_client(slack_secrets))
    try:
        inc = await play_through_bolt(fake=fake, services=services, secrets=slack_secrets, channel=CH,
                                      target="sandbox", cast=CAST, answers=answers)
        assert inc.status is Status.COMPLETED, inc.status
        # The smoke test's output was kept, redacted.
        smoke = (await services.store.latest_runs(inc.id))["smoke_test"]
        artifact = next(a for a in await services.store.artifacts(inc.id) if a.step_id == "smoke_test")
        kept = await asyncio.to_thread(Path(artifact.path).read_text)
        assert kept.count(MASK) >= 6 and "DB_PASSWORD=" + MASK in kept and "2000" in kept
        assert "DB_PASSWORD=" + MASK in smoke.output_tail or len(kept) > len(smoke.output_tail)
    finally:
        await services.close()
        await fake.stop()
        await github.stop()
        await asyncio.to_thread(sandbox.stop)

    found: dict[str, list[str]] = {}
    scanned = {"slack calls": 0, "uploads": 0, "log lines": 0, "files": 0}
    for call in fake.calls:
        _scan(found, f"slack {call.method}", json.dumps(call.params, default=str), secrets)
        scanned["slack calls"] += 1
    for f in fake.files:
        _scan(found, f"upload {f.filename}", f.content or b"", secrets)
        scanned["uploads"] += 1
    for m in fake.messages(CH):
        _scan(found, "message", json.dumps(m.to_slack(), default=str), secrets)
    for e in fake.ephemerals:
        _scan(found, "ephemeral", e.text + json.dumps(e.blocks, default=str), secrets)
    for rec in caplog.records:
        text = rec.getMessage() + (logging.Formatter().formatException(rec.exc_info) if rec.exc_info else "")
        _scan(found, f"log {rec.name}", text, secrets)
        scanned["log lines"] += 1
    scanned["files"], names = await asyncio.to_thread(_scan_files, found, tmp_path, secrets)
    assert "audit.jsonl" in names and "report.md" in names and "state.db" in names
    assert scanned["log lines"] > 100 and scanned["files"] > 20
    hits = sum(len(v) for v in found.values())
    proof_report(f"secrets: {hits} hits for {len(secrets)} secrets in {scanned['slack calls']} Slack calls, "
                 f"{scanned['uploads']} uploads, {scanned['log lines']} log lines, {scanned['files']} files "
                 "(audit log, report, evidence archive, artifacts, state DB); planted output redacted")
    assert not found, found
