"""The bot's config: YAML + environment, every problem named by its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.core.approvals import DEFAULT_POLICY
from bot.core.config import ConfigError, load_settings, parse_config

GOOD = {
    "slack": {"channels": ["C0INCIDENT1"]},
    "roles": {"tech_lead": {"users": ["U0LEAD"]}, "product_owner": {"groups": ["S0PRODUCT"]},
              "incident_commander": {"users": ["U0IC"]}},
    "targets": [{"name": "prod", "transport": "local", "workdir": "/srv/app"}],
}
ENV = {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "s3cret"}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bot.yml"
    path.write_text(text)
    return path


def test_minimal_config_defaults_to_the_plan(tmp_path: Path) -> None:
    cfg = parse_config(GOOD, base=tmp_path)
    assert cfg.policy.policy() == DEFAULT_POLICY
    assert cfg.state_db == str(tmp_path / "rollback-bot.db")
    assert cfg.artifacts_dir == tmp_path / "artifacts"
    assert cfg.runbook is None
    assert cfg.target("prod") is not None


def test_emergency_requester_may_approve_is_configurable() -> None:
    cfg = parse_config({**GOOD, "policy": {"emergency_requester_may_approve": True}})
    paths = {p.name: p for p in cfg.policy.policy().paths}
    assert paths["emergency"].requester_may_approve is True
    assert paths["standard"].requester_may_approve is False


def test_every_problem_is_named_by_its_key() -> None:
    bad = {
        "slack": {"channels": [], "colour": "red"},
        "roles": {"tech_lead": {"users": ["alice"]}},
        "targets": [{"name": "prod", "workdir": "/srv", "transport": "ssh", "bogus": 1}],
    }
    with pytest.raises(ConfigError) as exc:
        parse_config(bad)
    text = "\n".join(exc.value.problems)
    assert "slack.channels:" in text
    assert "slack.colour: unknown key" in text
    assert "roles.tech_lead.users:" in text and "'alice' is not a Slack user id" in text
    assert "targets[0].bogus: unknown key" in text


def test_unknown_role_and_duplicate_target() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({**GOOD, "roles": {"tech-lead": {"users": ["U0LEAD"]}}})
    assert "roles: unknown role(s) tech-lead" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        parse_config({**GOOD, "targets": GOOD["targets"] * 2})
    assert "targets: duplicate name(s) prod" in str(exc.value)


def test_ssh_target_needs_host_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({**GOOD, "targets": [{"name": "prod", "workdir": "/srv"}]})
    assert "known_hosts" in str(exc.value)


def test_load_settings_reads_file_and_secrets(tmp_path: Path) -> None:
    import yaml

    path = _write(tmp_path, yaml.safe_dump(GOOD))
    s = load_settings(None, {**ENV, "ROLLBACK_BOT_CONFIG": str(path), "SLACK_API_URL": "http://127.0.0.1:9/api"})
    assert s.config.slack.channels == ["C0INCIDENT1"]
    assert s.secrets.api_url == "http://127.0.0.1:9/api/"
    assert not s.secrets.socket_mode
    assert "s3cret" not in repr(s.secrets) and "xoxb-1" not in str(s.secrets)


def test_missing_everything_lists_every_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(None, {})
    text = str(exc.value)
    assert "ROLLBACK_BOT_CONFIG" in text
    assert "SLACK_BOT_TOKEN: not set" in text
    assert "SLACK_SIGNING_SECRET" in text


def test_socket_mode_needs_no_signing_secret(tmp_path: Path) -> None:
    import yaml

    path = _write(tmp_path, yaml.safe_dump(GOOD))
    s = load_settings(str(path), {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "xapp-1"})
    assert s.secrets.socket_mode


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "slack:\n  channels: [C1\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(str(path), ENV)
    assert f"{path}:" in str(exc.value) and "not valid YAML" in str(exc.value)


def test_file_problems_carry_the_file_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "slack: {channels: [C1]}\ntargets: []\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(str(path), ENV)
    assert f"{path}: targets:" in str(exc.value)


def test_written_paths_resolve_under_the_state_directory(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    cfg_file = _write(etc, "slack: {channels: [C0INCIDENT1]}\n"
                           "roles: {tech_lead: {users: [U0LEAD]}}\n"
                           "targets: [{name: prod, transport: local, workdir: /srv/app}]\n"
                           "runbook: my-runbook.yml\n")
    state = tmp_path / "state"
    # The container layout: the config folder is read-only, the state directory comes from the environment.
    settings = load_settings(str(cfg_file), {**ENV, "ROLLBACK_BOT_STATE_DIR": str(state)})
    cfg = settings.config
    assert cfg.state_dir == state
    assert cfg.state_db == str(state / "rollback-bot.db")
    assert cfg.artifacts_dir == state / "artifacts"
    assert cfg.records.audit_log == state / "logs" / "governance.jsonl"
    assert cfg.records.evidence_root == state / "evidence"
    assert cfg.runbook == etc / "my-runbook.yml"  # an input: beside the config

    # Without the variable: the folder of an absolute state_db (the README's layout).
    cfg = parse_config({**GOOD, "state_db": str(state / "db" / "state.db")}, base=etc)
    assert cfg.records.audit_log == state / "db" / "logs" / "governance.jsonl"
    assert cfg.artifacts_dir == state / "db" / "artifacts"
    # An explicit state_dir wins, relative to the config's folder.
    cfg = parse_config({**GOOD, "state_dir": "var", "state_db": str(state / "state.db")}, base=etc)
    assert cfg.records.evidence_root == etc / "var" / "evidence" and cfg.state_db == str(state / "state.db")


def test_path_problems_name_the_key(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = parse_config({**GOOD, "state_dir": str(tmp_path / "ok"), "artifacts_dir": str(blocker / "a"),
                        "records": {"audit_log": str(tmp_path)}, "jobs_db": "postgresql://db/jobs"})
    assert cfg.path_problems() == [
        f"artifacts_dir: {blocker / 'a'} cannot be created: {blocker} is not a folder",
        f"records.audit_log: {tmp_path} is a folder, not a file",
    ]  # a server database (jobs_db) is not a path, and state_db can be created
