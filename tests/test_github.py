"""The app rollback over the GitHub REST API, against a local fake GitHub (real HTTP)."""

from __future__ import annotations

import datetime as dt
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actions.github import GitHubClient, GitHubError, Release, WorkflowRun, WorkflowRunFailed, previous_release
from actions.local import LocalTransport
from bot.core.engine import Engine, Target
from bot.core.lifecycle import Status, StepStatus
from bot.core.runbook import parse_runbook
from bot.core.targets import TargetSettings
from bot.state.store import Store
from tests.github_fake import GitHubFake

TOKEN = "ghp_test_token"


@pytest.fixture
async def github() -> AsyncIterator[GitHubFake]:
    fake = GitHubFake(token=TOKEN)
    fake.add_release("v2.3.0", "2025-06-01T10:00:00Z")
    fake.add_release("v2.4.0", "2025-07-01T10:00:00Z")
    fake.add_release("v2.4.1-rc1", "2025-07-10T10:00:00Z", prerelease=True)
    fake.add_release("v2.4.1", "2025-07-15T10:00:00Z")
    fake.add_release("phase-3.0.0", "2025-07-30T10:00:00Z")
    await fake.start()
    yield fake
    await fake.stop()


def _client(fake: GitHubFake, token: str = TOKEN) -> GitHubClient:
    return GitHubClient(repo=fake.repo, token=token, api_url=fake.api_url)


def test_previous_release_is_the_last_matching_one_before_the_bad_one() -> None:
    rels = [Release(t, t, at, False, t.endswith("rc1"), "") for t, at in (
        ("v1.0.0", "2025-01-01"), ("v1.1.0", "2025-02-01"), ("v1.2.0-rc1", "2025-03-01"),
        ("v1.2.0", "2025-04-01"), ("hotfix-x", "2025-04-15"), ("v2.0.0", "2025-05-01"))]
    assert previous_release(rels, pattern=r"^v\d+\.\d+\.\d+$", bad="v2.0.0").tag == "v1.2.0"  # type: ignore[union-attr]
    assert previous_release(rels, pattern=r"^v\d+\.\d+\.\d+$", bad="v1.2.0").tag == "v1.1.0"  # type: ignore[union-attr]
    # The bad tag not listed: the newest matching release that is not it.
    assert previous_release(rels, pattern=r"^v1\.", bad="phase-3").tag == "v1.2.0"  # type: ignore[union-attr]
    assert previous_release(rels, pattern=r"^nothing$", bad="") is None


async def test_dispatch_find_and_watch_a_successful_run(github: GitHubFake) -> None:
    github.add_foreign_run("Deploy production (manual) [someone-else]")
    gh = _client(github)
    tags = [r.tag for r in await gh.releases(limit=3)]
    assert tags == ["phase-3.0.0", "v2.4.1", "v2.4.1-rc1"]
    since = dt.datetime.now(dt.UTC)
    await gh.dispatch(workflow="deploy-production.yml", ref="v2.4.1",
                      inputs={"environment": "production", "correlation_id": "RB-1-abc"})
    run = await gh.find_run(correlation_id="RB-1-abc", since=since, timeout=10, poll=0.01)
    assert "RB-1-abc" in run.title and run.head_branch == "v2.4.1"
    seen: list[str] = []

    async def on_update(r: WorkflowRun) -> None:
        seen.append(r.status)

    done = await gh.watch(run, timeout=10, poll=0.01, on_update=on_update)
    assert done.conclusion == "success" and done.html_url.endswith(f"/actions/runs/{run.id}")
    assert seen == ["queued", "in_progress", "completed"]
    # Found through the list (the lag made the first listing come back without it).
    assert sum(1 for c in github.calls if c.path == "/actions/runs") >= 2


async def test_failed_run_and_github_error_messages(github: GitHubFake) -> None:
    github.conclusion = "failure"
    gh = _client(github)
    since = dt.datetime.now(dt.UTC)
    await gh.dispatch(workflow="deploy-production.yml", ref="v2.4.1", inputs={"correlation_id": "c-2"})
    run = await gh.find_run(correlation_id="c-2", since=since, timeout=10, poll=0.01)
    with pytest.raises(WorkflowRunFailed, match="concluded failure") as failed:
        await gh.watch(run, timeout=10, poll=0.01)
    assert failed.value.url.endswith(str(run.id))

    with pytest.raises(GitHubError, match=r"422 .*Unexpected inputs provided: \['colour'\]") as exc:
        await gh.dispatch(workflow="deploy-production.yml", ref="v2.4.1", inputs={"colour": "red"})
    assert exc.value.status == 422
    with pytest.raises(GitHubError, match=r"No ref found for: v9\.9\.9"):
        await gh.dispatch(workflow="deploy-production.yml", ref="v9.9.9", inputs={})
    with pytest.raises(GitHubError, match=r"404 .*Not Found"):
        await gh.dispatch(workflow="nope.yml", ref="v2.4.1", inputs={})
    with pytest.raises(GitHubError, match=r"401 .*Bad credentials"):
        await _client(github, token="wrong").releases()
    with pytest.raises(GitHubError, match=r"no workflow run with 'never' in its run-name"):
        await gh.find_run(correlation_id="never", since=since, timeout=0.05, poll=0.01)


RUNBOOK = textwrap.dedent("""\
    name: app-rollback
    phases:
      - id: app_rollback
        title: "Phase 4: Application Version Rollback"
        steps:
          - id: release_tag
            title: Last stable version
            kind: choice
            when: "target.app_rollback == 'github'"
            prompt: Which release?
            options_from: {op: github_releases, params: {limit: 10}}
          - id: github_deploy
            title: GitHub Actions rollback deployment
            kind: github_workflow
            when: "target.app_rollback == 'github'"
            idempotent: false
            timeout: 30
            poll_seconds: 1
            ref: "{{ choices.release_tag }}"
            inputs:
              environment: "{{ target.deploy_environment }}"
              deployment_type: emergency_rollback
              rollback_reason: "{{ incident.reason }}"
          - id: app_version_rollback
            title: Plain command variant
            kind: command
            when: "target.app_rollback == 'command'"
            idempotent: true
            run: "{{ target.app_rollback_command | raw }}"
    """)


async def _engine(tmp_path: Path, github: GitHubFake, **target: str) -> tuple[Engine, Store, LocalTransport]:
    workdir = tmp_path / "app"
    workdir.mkdir(exist_ok=True)
    settings = TargetSettings.model_validate({
        "name": "t1", "transport": "local", "workdir": str(workdir), "github_repo": github.repo,
        "github_api_url": github.api_url, "deployed_version": "phase-3.0.0",
        "github_token_env": "RB_TEST_GITHUB_TOKEN", **target})
    store = await Store.open(str(tmp_path / "state.db"))
    transport = LocalTransport(name="t1")
    engine = Engine(store, parse_runbook(RUNBOOK), {"t1": Target(settings, transport)},
                    artifacts_dir=tmp_path / "artifacts", time_scale=0.01)
    return engine, store, transport


async def test_engine_offers_releases_dispatches_and_watches(
        tmp_path: Path, github: GitHubFake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RB_TEST_GITHUB_TOKEN", TOKEN)
    engine, store, transport = await _engine(tmp_path, github, app_rollback="github")
    try:
        reason = "it's \"broken\"; $(rm -rf /)"
        inc = await store.create_incident(target="t1", runbook="app-rollback", reason=reason)
        await engine.run(inc.id)
        w = await engine.waiting_for(inc.id)
        assert w is not None and w.step_id == "release_tag"
        assert [o["value"] for o in w.options][:2] == ["phase-3.0.0", "v2.4.1"]
        run = (await store.latest_runs(inc.id))["release_tag"]
        assert run.waiting is not None and run.waiting["default"] == "v2.4.1"  # pre-selected
        await engine.answer(inc.id, "release_tag", "v2.4.1", user="U0IC")
        inc = await engine.run(inc.id)
        assert inc.status is Status.COMPLETED
        deploy = (await store.latest_runs(inc.id))["github_deploy"]
        assert deploy.status is StepStatus.DONE
        assert deploy.captures["conclusion"] == "success"
        assert deploy.captures["html_url"].endswith(f"/actions/runs/{deploy.captures['run_id']}")
        (call,) = github.dispatches()
        assert call.body["ref"] == "v2.4.1"
        inputs = call.body["inputs"]
        assert inputs["environment"] == "production" and inputs["deployment_type"] == "emergency_rollback"
        assert inputs["rollback_reason"] == reason
        assert inputs["correlation_id"] == deploy.captures["correlation_id"]
        assert inputs["correlation_id"] in github.runs[-1].title
        kinds = [e.kind for e in await store.events(inc.id)]
        assert "github_dispatch" in kinds and kinds.count("github_run") >= 2
        skipped = (await store.latest_runs(inc.id))["app_version_rollback"]
        assert skipped.status is StepStatus.SKIPPED
    finally:
        await transport.close()
        await store.close()


async def test_engine_shows_githubs_error_and_a_failed_run(
        tmp_path: Path, github: GitHubFake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RB_TEST_GITHUB_TOKEN", TOKEN)
    github.declared_inputs = ("environment",)
    engine, store, transport = await _engine(tmp_path, github, app_rollback="github")
    try:
        inc = await store.create_incident(target="t1", runbook="app-rollback", reason="r")
        await engine.run(inc.id)
        await engine.answer(inc.id, "release_tag", "v2.4.1", user="U0IC")
        await engine.run(inc.id)
        w = await engine.waiting_for(inc.id)
        assert w is not None and w.kind == "failure" and w.step_id == "github_deploy"
        assert w.error is not None and "422" in w.error and "Unexpected inputs provided" in w.error
        # The workflow is fixed, the run itself fails: the failure carries the run's link.
        github.declared_inputs = ("environment", "deployment_type", "rollback_reason", "correlation_id")
        github.conclusion = "failure"
        await engine.answer(inc.id, "github_deploy", "retry", user="U0IC")
        await engine.run(inc.id)
        w = await engine.waiting_for(inc.id)
        assert w is not None and w.kind == "failure" and w.error is not None
        assert "concluded failure" in w.error and "/actions/runs/" in w.error
    finally:
        await transport.close()
        await store.close()


async def test_plain_command_variant_by_target_setting(tmp_path: Path, github: GitHubFake) -> None:
    engine, store, transport = await _engine(tmp_path, github, app_rollback_command="echo rolled-back > v.txt")
    try:
        inc = await store.create_incident(target="t1", runbook="app-rollback", reason="r")
        inc = await engine.run(inc.id)
        assert inc.status is Status.COMPLETED
        latest = await store.latest_runs(inc.id)
        assert latest["release_tag"].status is StepStatus.SKIPPED
        assert latest["github_deploy"].status is StepStatus.SKIPPED
        assert latest["app_version_rollback"].status is StepStatus.DONE
        assert (tmp_path / "app" / "v.txt").read_text() == "rolled-back\n"
        assert github.calls == []
    finally:
        await transport.close()
        await store.close()


def test_target_settings_choose_the_variant() -> None:
    base = {"name": "t", "transport": "local", "workdir": "/srv"}
    assert TargetSettings.model_validate(base).app_rollback == "none"
    assert TargetSettings.model_validate({**base, "app_rollback_command": "x"}).app_rollback == "command"
    with pytest.raises(ValueError, match="needs 'github_repo'"):
        TargetSettings.model_validate({**base, "app_rollback": "github"})
    with pytest.raises(ValueError, match="needs 'app_rollback_command'"):
        TargetSettings.model_validate({**base, "app_rollback": "command"})
