"""The command line: help with defaults and environment, --version, known errors in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from handlers.app import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_texts_show_defaults_and_environment(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--help")
    assert code == 0 and "The ``rollback-bot`` command line" not in out  # no raw docstring
    for command in ("drill", "runbook", "serve", "check", "health", "audit"):
        assert f"    {command} " in out
    code, out, _ = _run(capsys, "drill", "--help")
    assert "(default: C)" in out and "(default: 0.01)" in out and "ROLLBACK_BOT_SSHD" in out
    code, out, _ = _run(capsys, "serve", "--help")
    for var in ("ROLLBACK_BOT_CONFIG", "ROLLBACK_BOT_STATE_DIR", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN",
                "SLACK_SIGNING_SECRET", "SLACK_API_URL", "ROLLBACK_STAKEHOLDER_WEBHOOK"):
        assert var in out
    code, out, _ = _run(capsys, "health", "--help")
    assert "(default: 5.0)" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and out.startswith("rollback-bot ") and out.strip() != "rollback-bot"


@pytest.mark.parametrize("value", ["-1", "0", "2", "fast"])
def test_a_bad_time_scale_is_one_line(capsys: pytest.CaptureFixture[str], value: str) -> None:
    code, _, err = _run(capsys, "drill", f"--time-scale={value}")
    assert code == 2
    assert err.splitlines()[-1].startswith("rollback-bot drill: error: argument --time-scale: ")
    assert "Traceback" not in err


def test_drill_ssh_without_sshd(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLBACK_BOT_SSHD", "/nonexistent/sbin/sshd")
    code, out, err = _run(capsys, "drill", "--ssh")
    assert code == 3 and not out
    assert err == ("rollback-bot drill: --ssh needs OpenSSH's sshd on this machine: "
                   "/nonexistent/sbin/sshd not found: apt-get install openssh-server\n")


def test_serve_names_a_missing_key_file(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    (tmp_path / "bot.yml").write_text(
        "slack: {channels: [C0INCIDENT1]}\nroles: {tech_lead: {users: [U0LEAD]}}\n"
        f"targets: [{{name: prod, workdir: /srv/app, key_file: {tmp_path / 'id_ed25519'}, "
        f"known_hosts: {tmp_path / 'known_hosts'}}}]\n")
    (tmp_path / "known_hosts").write_text("")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "s")
    monkeypatch.setenv("SLACK_API_URL", "http://127.0.0.1:9/api/")
    monkeypatch.delenv("SLACK_APP_TOKEN", raising=False)
    code, _, err = _run(capsys, "serve", "--config", str(tmp_path / "bot.yml"))
    assert code == 2
    assert err == f"rollback-bot serve: targets[0] (prod).key_file: {tmp_path / 'id_ed25519'} does not exist\n"


def test_health_of_nothing_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "health", "--url", "http://127.0.0.1:9/healthz", "--timeout", "2")
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("rollback-bot health: http://127.0.0.1:9/")


def test_runbook_check_of_a_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _run(capsys, "runbook", "check", str(tmp_path / "nope.yml"))
    assert code in (1, 2) and len(err.strip().splitlines()) == 1 and "Traceback" not in err
