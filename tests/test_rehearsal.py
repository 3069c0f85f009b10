"""``rollback-bot rehearse`` against a staging target reached through a real sshd: the whole
plan, the drill's verdict, Last tested filled; a target not marked for rehearsal is refused."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.cli.main import main
from bot.core.runbook import default_runbook_text
from bot.drill.sandbox import Sandbox, build_sandbox
from bot.record.last_tested import last_tested, rehearsal_history
from bot.state.store import Store
from tests.sshd import SshdTarget

FAST = "0.002"


@pytest.fixture
def staging(tmp_path: Path) -> Iterator[Sandbox]:
    sandbox = build_sandbox(tmp_path / "staging")
    try:
        yield sandbox
    finally:
        sandbox.stop()


def _config(tmp_path: Path, sshd: SshdTarget, sandbox: Sandbox, prod: Path) -> Path:
    ssh = {"transport": "ssh", "host": sshd.host, "port": sshd.port, "user": sshd.username,
           "key_file": str(sshd.client_key_path), "known_hosts": str(sshd.known_hosts_path)}
    data: dict[str, Any] = {
        "slack": {"channels": ["C0INCIDENT1"]},
        "roles": {"incident_commander": {"users": ["U0IC"]}},
        "targets": [{"name": "staging", **ssh, **sandbox.settings(), "rehearsal": "allowed"},
                    {"name": "prod", **ssh, "workdir": str(prod)}],
        "state_db": str(tmp_path / "state" / "state.db"),
        "artifacts_dir": str(tmp_path / "artifacts"),
        "runbook": str(tmp_path / "runbook.yml"),
    }
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "runbook.yml").write_text(default_runbook_text())
    path = tmp_path / "bot.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _tree(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p).encode() + (p.read_bytes() if p.is_file() else b""))
    return h.hexdigest()


def test_rehearsal_on_sshd_staging_passes_and_fills_last_tested(tmp_path: Path, sshd_target: SshdTarget,
                                                                staging: Sandbox) -> None:
    prod = tmp_path / "prod"
    prod.mkdir()
    (prod / "production.db").write_bytes(b"not to be touched")
    config = _config(tmp_path, sshd_target, staging, prod)

    # A target not marked for rehearsal is refused with the reason, and nothing on it changes.
    before = _tree(prod)
    code, out, err = _run("rehearse", "--config", str(config), "--target", "prod", "--time-scale", FAST)
    assert code == 2 and out == "" and "not marked 'rehearsal: allowed'" in err, err
    assert _tree(prod) == before

    code, out, err = _run("rehearse", "--config", str(config), "--target", "staging", "--time-scale", FAST, "--json")
    result = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(result, indent=1))
    assert code == 0 and result["passed"], result
    names = {c["name"] for c in result["checks"] if c["ok"]}
    assert {"database content equals the chosen backup's", "access levels equal the originals",
            "maintenance mode off", "app healthy", "emergency backup verified",
            "governance row written"} <= names
    assert Path(result["backup"]).name == staging.backup_path.name
    # A full restore loses the people's writes the staging story made after the backup: measured, not zero.
    lost = sum(v[1] for v in staging.story.expected_loss("C").values())
    assert result["data_loss_records"] == lost > 0 and result["recovery_seconds"] > 0
    # The report and the governance record carry "Last tested" (none passed before this one).
    [report] = Path(result["root"]).glob("evidence/*/report.md")
    assert "Last tested: never" in report.read_text()
    [record] = Path(result["root"]).glob("evidence/*/governance_record.json")
    assert json.loads(record.read_text())["details"]["last_tested"]["text"].startswith("Last tested: never")

    async def tested(runbook_text: str) -> tuple[dict[str, Any], int]:
        store = await Store.open(str(tmp_path / "state" / "state.db"))
        try:
            sha = hashlib.sha256(runbook_text.encode()).hexdigest()
            return await last_tested(store, sha), len(await rehearsal_history(store))
        finally:
            await store.close()

    info, stored = asyncio.run(tested(default_runbook_text()))
    assert stored == 1 and info["this_runbook"] and info["target"] == "staging"
    assert info["text"].startswith("Last tested: ") and "on staging" in info["text"] and "recovery" in info["text"]
    other, _ = asyncio.run(tested(default_runbook_text() + "# edited\n"))
    assert "not tested with this runbook" in other["text"]

    # check shows it.
    code, out, _ = _run("check", "--config", str(config))
    assert ": Last tested: " in out and "on staging" in out
