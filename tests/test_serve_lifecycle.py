"""``rollback-bot serve`` as a process: refused tokens and unusable paths stop the start with one
line; SIGTERM and SIGINT stop it in both modes, journaling the running step as interrupted."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.core.lifecycle import Status, StepStatus
from bot.state.store import Store
from tests.slack_fake import SlackFake

CH = "C0INCIDENT1"
LEAD, IC = "U0LEAD", "U0COMMANDER"
ROOT = Path(__file__).resolve().parent.parent

RUNBOOK = textwrap.dedent("""\
    name: lifecycle
    phases:
      - id: work
        title: Work
        steps:
          - {id: long, title: "A long command", kind: command, idempotent: false, timeout: 600,
             run: "echo $$ > started; sleep 300"}
          - {id: after, title: "The next step", kind: command, idempotent: true, run: "touch after"}
    """)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp_path: Path, workdir: Path, **extra: Any) -> Path:
    """A config file for a local target running ``RUNBOOK``; ``extra`` overrides top-level keys."""
    (tmp_path / "runbook.yml").write_text(RUNBOOK)
    data: dict[str, Any] = {
        "slack": {"channels": [CH], "update_interval_seconds": 0.05, "retry_max_seconds": 0.5, "health_port": 0},
        "roles": {"tech_lead": {"users": [LEAD]}, "incident_commander": {"users": [IC]}},
        "targets": [{"name": "t1", "transport": "local", "workdir": str(workdir)}],
        "runbook": "runbook.yml",
        "state_db": str(tmp_path / "state.db"),
        "time_scale": 0.01,
    }
    data.update(extra)
    path = tmp_path / "bot.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def serve_env(fake: SlackFake, **env: str) -> dict[str, str]:
    """The process environment for ``serve`` against the fake (nothing of the test's own Slack vars)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ROLLBACK_BOT_"))}
    return {**base, "SLACK_BOT_TOKEN": fake.bot_token, "SLACK_API_URL": fake.base_url, **env}


async def start_serve(config: Path, env: dict[str, str], *, user: list[str] | None = None
                      ) -> asyncio.subprocess.Process:
    """``rollback-bot serve --config FILE`` as a child process (``user``: a command prefix to run it as)."""
    return await asyncio.create_subprocess_exec(
        *(user or []), sys.executable, "-m", "handlers.app", "serve", "--config", str(config), cwd=str(ROOT), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def until(predicate: Any, what: str, proc: asyncio.subprocess.Process | None = None) -> None:
    """Wait for progress (a file, a call); fail at once if ``proc`` ends first."""
    deadline = time.monotonic() + 120  # a safety net, not a margin: progress ends the wait
    while not predicate():
        if proc is not None and proc.returncode is not None:
            err = (await proc.stderr.read()).decode() if proc.stderr else ""
            raise AssertionError(f"serve ended ({proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def _running_incident(state_db: str) -> str:
    store = await Store.open(state_db)
    try:
        inc = await store.create_incident(target="t1", runbook="lifecycle", severity="P1",
                                          decision="Immediate", requester="U0REQUESTER", reason="test")
        await store.update_incident(inc.id, channel=CH)
        from bot.core.lifecycle import Event

        await store.apply(inc.id, Event.START)
        return inc.id
    finally:
        await store.close()


async def test_a_refused_app_token_stops_the_start_with_one_line(tmp_path: Path) -> None:
    workdir = tmp_path / "app"
    workdir.mkdir()
    config = write_config(tmp_path, workdir)
    async with SlackFake() as fake:
        began = time.monotonic()
        proc = await start_serve(config, serve_env(fake, SLACK_APP_TOKEN="xapp-1-wrong"))
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        ended = time.monotonic()
        lines = err.decode().strip().splitlines()
        calls = fake.calls_to("apps.connections.open")
        print(f"refused app token: exit {proc.returncode} {ended - began:.1f} s after the start "
              f"(imports included), {ended - calls[0].at:.2f} s after the refusal; "
              f"apps.connections.open called {len(calls)} time(s)")
        assert proc.returncode == 1
        assert lines == ["rollback-bot serve: SLACK_APP_TOKEN: apps.connections.open refused it (invalid_auth)"]
        # Checked once and refused: no retry loop, and no wait after the answer.
        assert len(calls) == 1
        assert ended - calls[0].at < 15


async def test_a_refused_bot_token_and_unusable_paths(tmp_path: Path) -> None:
    workdir = tmp_path / "app"
    workdir.mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    async with SlackFake() as fake:
        proc = await start_serve(write_config(tmp_path, workdir), serve_env(fake, SLACK_BOT_TOKEN="xoxb-wrong",
                                                                            SLACK_SIGNING_SECRET="s"))
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 1
        assert err.decode().strip() == "rollback-bot serve: SLACK_BOT_TOKEN: auth.test refused it (invalid_auth)"

        bad = write_config(tmp_path, workdir, state_db=str(blocker / "state.db"),
                           records={"evidence_root": str(blocker / "evidence")},
                           targets=[{"name": "t1", "workdir": str(workdir), "key_file": str(tmp_path / "no-key"),
                                     "known_hosts": str(tmp_path / "no-known-hosts")}])
        proc = await start_serve(bad, serve_env(fake, SLACK_SIGNING_SECRET="s"))
        _, err = await asyncio.wait_for(proc.communicate(), 120)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2, lines
    assert all(line.startswith("rollback-bot serve: ") for line in lines), lines
    text = "\n".join(lines)
    assert f"state_db: {blocker / 'state.db'} cannot be created: {blocker} is not a folder" in text
    assert "records.evidence_root: " in text and "Traceback" not in text
    assert f"targets[0] (t1).key_file: {tmp_path / 'no-key'} does not exist" in text
    assert f"targets[0] (t1).known_hosts: {tmp_path / 'no-known-hosts'} does not exist; pin the host key" in text
    assert not fake.calls_to("auth.test") or len(fake.calls_to("auth.test")) == 1  # paths are checked first


@pytest.mark.parametrize(("mode", "sig"), [("http", signal.SIGTERM), ("socket", signal.SIGINT),
                                           ("socket", signal.SIGTERM)])
async def test_a_signal_stops_serve_and_journals_the_running_step(tmp_path: Path, mode: str,
                                                                  sig: signal.Signals) -> None:
    workdir = tmp_path / "app"
    workdir.mkdir()
    port = free_port()
    slack = {"channels": [CH], "update_interval_seconds": 0.05, "retry_max_seconds": 0.5,
             "http_port": port, "health_port": 0}
    config = write_config(tmp_path, workdir, slack=slack)
    incident_id = await _running_incident(str(tmp_path / "state.db"))
    async with SlackFake() as fake:
        fake.add_channel(CH, "incident-response")
        env = serve_env(fake, **({"SLACK_APP_TOKEN": fake.app_token} if mode == "socket"
                                 else {"SLACK_SIGNING_SECRET": fake.signing_secret}))
        proc = await start_serve(config, env)
        try:
            await until(lambda: (workdir / "started").exists(), "the long step started", proc)
            if mode == "socket":
                await fake.wait_socket_connections(1, timeout=120)
            began = time.monotonic()
            proc.send_signal(sig)
            _, err = await asyncio.wait_for(proc.communicate(), 120)
            elapsed = time.monotonic() - began
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    print(f"{mode} {sig.name}: exit {proc.returncode} {elapsed:.2f} s after the signal")
    assert proc.returncode == 0, err.decode()[-3000:]
    assert elapsed < 10
    assert "Traceback" not in err.decode(), err.decode()[-4000:]
    assert not (workdir / "after").exists()  # no new step started
    store = await Store.open(str(tmp_path / "state.db"))
    try:
        runs = await store.latest_runs(incident_id)
        inc = await store.incident(incident_id)
    finally:
        await store.close()
    long = runs["long"]
    assert long.status is StepStatus.INTERRUPTED
    assert long.error is not None and f"bot stopped ({sig.name})" in long.error
    # Not idempotent: it asks, as after a crash.
    assert long.waiting is not None and long.waiting["kind"] == "resume"
    assert inc.status is Status.WAITING
    assert "after" not in runs
