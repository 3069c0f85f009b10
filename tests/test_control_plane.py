"""The control plane outside Slack: ``rollback-bot incidents`` / ``incident show|answer|abort``
against a real ``serve`` process (HTTP mode, the Slack fake, the sshd target), while it
runs and while it is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bot.core.config import parse_config
from bot.state.control import ControlRefused, acting_as, local_identity
from tests.runbooks import runbook
from tests.slack_driver import SlackDriver, http_sender
from tests.slack_fake import Message, SlackFake
from tests.sshd import SshdTarget

CH = "C0INCIDENT1"
REQ, LEAD, IC, NOBODY = "U0REQUESTER", "U0LEAD", "U0COMMANDER", "U0NOROLE"
ROOT = Path(__file__).resolve().parent.parent

RUNBOOK = runbook("control", """\
    - id: work
      title: Work
      steps:
        - {id: hello, title: "Say hello on the target", kind: command, idempotent: true,
           run: "echo hello > hello.txt"}
        - id: pick
          title: "Pick a variant"
          kind: choice
          prompt: "Which variant?"
          options:
            - {value: "A", label: "Variant A", description: "the first"}
            - {value: "B", label: "Variant B", description: "the second"}
        - {id: write, title: "Write the variant", kind: command, idempotent: true,
           run: "echo {{ choices.pick }} > variant.txt"}
        - {id: confirm, title: "Confirm the result", kind: manual}
    """)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _in_thread(config: list[str], args: list[str]) -> tuple[int, str, str]:
    from bot.cli.main import main

    # --config goes after the subcommand words (each subparser takes it).
    words = [a for a in args if not a.startswith("-")]
    depth = 2 if words and words[0] in ("incident", "audit") else 1
    argv = [*args[:depth], *config, *args[depth:]] if args[0] != "audit" else args
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _text(m: Message | None) -> str:
    return json.dumps(m.blocks) + m.text if m is not None else ""


async def _until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)


class Bot:
    """``rollback-bot serve`` as its own process, and the CLI as more processes."""

    def __init__(self, tmp: Path, fake: SlackFake, sshd: SshdTarget) -> None:
        self.tmp = tmp
        self.fake = fake
        self.port = _free_port()
        self.workdir = tmp / "app"
        for name in ("t1", "t2"):
            (self.workdir / name).mkdir(parents=True)
        (tmp / "runbook.yml").write_text(RUNBOOK)
        account, _ = local_identity()
        self.config = tmp / "bot.yml"
        self.config.write_text(yaml.safe_dump({
            "slack": {"channels": [CH], "update_interval_seconds": 0.05, "http_port": self.port},
            "roles": {"tech_lead": {"users": [LEAD]}, "incident_commander": {"users": [IC]}},
            "operators": {account: [IC, NOBODY]},
            "targets": [{"name": name, "transport": "ssh", "host": sshd.host, "port": sshd.port,
                         "user": sshd.username, "key_file": str(sshd.client_key_path),
                         "known_hosts": str(sshd.known_hosts_path), "workdir": str(self.workdir / name)}
                        for name in ("t1", "t2")],
            "records": {"audit_log": str(tmp / "logs" / "governance.jsonl")},
            "runbook": "runbook.yml", "state_db": "state.db", "artifacts_dir": "artifacts", "time_scale": 0.01,
        }))
        self.env = {**os.environ, "SLACK_BOT_TOKEN": fake.bot_token, "SLACK_SIGNING_SECRET": fake.signing_secret,
                    "SLACK_API_URL": fake.base_url, "ROLLBACK_BOT_CONFIG": str(self.config)}
        self.env.pop("SLACK_APP_TOKEN", None)
        self.proc: asyncio.subprocess.Process | None = None
        self.driver = SlackDriver(fake, http_sender(f"http://127.0.0.1:{self.port}/slack/events"),
                                  default_user_id=REQ)

    async def start(self) -> None:
        log = await asyncio.to_thread(open, self.tmp / "serve.log", "ab")
        with log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "handlers.app", "serve", cwd=ROOT, env=self.env,
                stdout=log, stderr=asyncio.subprocess.STDOUT)
        async with httpx.AsyncClient() as http:
            deadline = time.monotonic() + 60
            while True:
                assert self.proc.returncode is None, (self.tmp / "serve.log").read_text()[-3000:]
                try:
                    if (await http.get(f"http://127.0.0.1:{self.port}/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("serve did not answer /healthz")
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(self.proc.wait(), 60) == 0
        self.proc = None

    async def cli(self, *args: str, process: bool = False) -> tuple[int, str, str]:
        """The command line: as its own process, or (cheaper on a loaded machine) in a thread."""
        if process:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "handlers.app", *args, cwd=ROOT, env=self.env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert proc.returncode is not None
            return proc.returncode, out.decode(), err.decode()
        return await asyncio.to_thread(_in_thread, ["--config", str(self.config)], list(args))

    async def open_incident(self, target: str, reason: str) -> tuple[str, str]:
        """/rollback start through serve, approved by the incident commander; (incident id, root ts)."""
        before = {m.ts for m in self.fake.messages(CH) if not m.is_reply}
        await self.driver.slash_command(text=f"start {target} {reason}", channel_id=CH)
        await _until(lambda: any(v.callback_id == "rb_start" for v in self.fake.views_opened), "modal")
        await self.driver.view_submission("rb_start", values={
            "target": target, "triggers": ["data_corruption"], "severity": "P1", "impact": "High",
            "business_risk": "Critical", "reason": reason})
        self.fake.views_opened.clear()

        def root() -> Message | None:
            return next((m for m in self.fake.messages(CH) if not m.is_reply and m.ts not in before), None)

        await _until(lambda: root() is not None and any(
            b.action_id == "rb_approve" for b in self.fake.buttons(CH, root().ts)), "approval request")  # type: ignore[union-attr]
        r = root()
        assert r is not None
        await self.driver.press(self.fake.find_button(CH, r.ts, action_id="rb_approve"), IC)
        incident_id = r.text.split(":")[0]
        return incident_id, r.ts

    def question(self, root_ts: str, prompt: str) -> Message | None:
        return next((m for m in self.fake.thread(CH, root_ts) if prompt in m.text), None)

    async def show(self, incident_id: str) -> dict[str, Any]:
        code, out, err = await self.cli("incident", "show", incident_id, "--json")
        assert code == 0, err
        return dict(json.loads(out))


def test_acting_as_follows_the_config() -> None:
    cfg = parse_config({"slack": {"channels": [CH]}, "targets": [{"name": "t", "transport": "local", "workdir": "/"}],
                        "operators": {"alice": "U0AAAA", "oncall": ["U0BBBB", "U0CCCC"]}})
    assert acting_as(cfg, "alice", None) == "U0AAAA"
    assert acting_as(cfg, "oncall", "U0CCCC") == "U0CCCC"
    with pytest.raises(ControlRefused, match="allows acting as U0BBBB, U0CCCC only"):
        acting_as(cfg, "oncall", "U0AAAA")
    with pytest.raises(ControlRefused, match="not in the config's operators"):
        acting_as(cfg, "mallory", None)


async def test_control_plane_with_serve_running_and_stopped(tmp_path: Path, sshd_target: SshdTarget) -> None:
    async with SlackFake(users={REQ: "req", LEAD: "lead", IC: "ic", NOBODY: "nobody"}) as fake:
        fake.add_channel(CH, "incident-response")
        bot = Bot(tmp_path, fake, sshd_target)
        await bot.start()
        try:
            # ---- serve running: list, show, answer a choice, abort
            inc1, root1 = await bot.open_incident("t1", "first: the deploy broke")
            inc2, root2 = await bot.open_incident("t2", "second: the deploy broke too")
            await _until(lambda: bot.question(root1, "Which variant?") is not None, "the choice was asked")
            code, out, err = await bot.cli("incidents", "--json", process=True)
            assert code == 0, err
            listed = {r["id"]: r for r in json.loads(out)}
            assert listed[inc1]["status"] == "waiting" and listed[inc1]["waiting"] == "choice at pick"
            code, out, _ = await bot.cli("incidents")
            assert inc1 in out and "waiting for choice at pick" in out

            detail = await bot.show(inc1)
            assert detail["waiting"]["step"] == "pick"
            assert [o["value"] for o in detail["waiting"]["options"]] == ["A", "B"]
            work = next(p for p in detail["phases"] if p["id"] == "work")
            assert [s["status"] for s in work["steps"]][:2] == ["done", "waiting"]
            code, text, _ = await bot.cli("incident", "show", inc1)
            assert f"rollback-bot incident answer {inc1} pick OPTION" in text

            # Someone without a role is refused, and the refusal is recorded.
            code, _, err = await bot.cli("incident", "answer", inc1, "pick", "B", "--as", NOBODY)
            assert code == 1 and "not an approver or incident commander" in err
            code, _, err = await bot.cli("incident", "answer", inc1, "pick", "Z")
            assert code == 1 and "was not offered" in err

            started = time.monotonic()
            code, out, err = await bot.cli("incident", "answer", inc1, "pick", "Variant B", process=True)
            answered = time.monotonic()
            assert code == 0, err
            assert "carried out by serve:" in out
            await _until(lambda: "Answered *Variant B*" in _text(bot.question(root1, "Which variant?")),
                         "the thread shows the answer")
            shown = time.monotonic()
            print(f"control plane (serve running): CLI answer {answered - started:.2f} s end to end "
                  f"(a new process); thread updated {shown - answered:.2f} s after the command returned")
            await _until(lambda: bot.question(root1, "Confirm the result") is not None, "the run went on")
            assert (bot.workdir / "t1" / "variant.txt").read_text() == "B\n"

            code, out, err = await bot.cli("incident", "abort", inc1, "--reason", "stop it <!channel>")
            assert code == 0 and "carried out by serve:" in out, err
            returned = time.monotonic()
            await _until(lambda: "aborted" in (fake.message(CH, root1) or Message(CH, "", "", [])).text,
                         "the root message shows the abort")
            print(f"control plane (serve running): root message shows the abort "
                  f"{time.monotonic() - returned:.2f} s after the command returned")
            assert "&lt;!channel&gt;" in _text(fake.message(CH, root1))
            detail = await bot.show(inc1)
            assert detail["status"] == "aborted"
            online = [r for r in detail["requests"] if r["status"] == "done"]
            assert [r["action"] for r in online] == ["answer", "abort"]
            assert all(r["claimed_by"].startswith("serve:") for r in online)
            print("control plane (serve running): request to carried out: "
                  + ", ".join(f"{r['action']} {r['latency_s']:.2f} s" for r in online))

            # ---- serve stopped: an answer and an abort are applied to the store
            inc3, root3 = await bot.open_incident("t1", "third: once more")
            await _until(lambda: bot.question(root2, "Which variant?") is not None, "the choice was asked")
            await _until(lambda: bot.question(root3, "Which variant?") is not None, "the choice was asked")
            await bot.stop()
            code, out, err = await bot.cli("incident", "answer", inc2, "pick", "A")
            assert code == 0 and "no bot was serving: applied to the state store" in out, err
            code, out, err = await bot.cli("incident", "abort", inc3, "--reason", "stopped while the bot was down")
            assert code == 0 and "applied to the state store" in out, err
            detail = await bot.show(inc2)
            assert detail["waiting"] is None
            assert any(r["status"] == "applied" and r["value"] == "A" for r in detail["requests"])
            assert (await bot.show(inc3))["abort_reason"] == "stopped while the bot was down"
            await bot.start()
            await _until(lambda: "Answered *Variant A*" in _text(bot.question(root2, "Which variant?")),
                         "the bot resumed from the answer")
            await _until(lambda: bot.question(root2, "Confirm the result") is not None, "the run went on")
            assert (bot.workdir / "t2" / "variant.txt").read_text() == "A\n"
            await _until(lambda: "aborted" in (fake.message(CH, root3) or Message(CH, "", "", [])).text,
                         "the bot carried the abort out at its start")
            await bot.stop()

            # Every action is in the audit chain with the operator's local identity.
            _, operator = local_identity()
            code, out, err = await bot.cli("audit", "verify", str(tmp_path / "logs" / "governance.jsonl"))
            assert code == 0, err
            entries = [json.loads(line) for line in (tmp_path / "logs" / "governance.jsonl").read_text().splitlines()]
            control = [e for e in entries if e.get("kind") in ("control_request", "control_refused")]
            assert {(e["incident"], e["data"]["action"], e["data"]["mode"]) for e in control
                    if e["kind"] == "control_request"} >= {
                (inc1, "answer", "online"), (inc1, "abort", "online"),
                (inc2, "answer", "offline"), (inc3, "abort", "offline")}
            assert all(e["data"]["operator"] == operator for e in control)
            assert any(e["kind"] == "control_refused" and e["actor"] == NOBODY for e in control)
            print(f"control plane: {len(control)} control events in the audit chain, operator {operator}")
        finally:
            if bot.proc is not None:
                bot.proc.kill()
                await bot.proc.wait()


async def test_each_request_is_carried_out_once_among_several_pollers(tmp_path: Path) -> None:
    from bot.core.approvals import DEFAULT_POLICY
    from bot.state.control import ControlPoller, Executor
    from bot.state.control_queue import list_requests, submit
    from bot.state.store import Store

    store = await Store.open(str(tmp_path / "state.db"))
    try:
        inc = await store.create_incident(target="t", runbook="r")
        carried: list[tuple[str, int]] = []

        class Counting(Executor):
            async def execute(self, req: Any) -> tuple[str, str]:
                carried.append((self.kick.__name__ if self.kick else "", req.id))  # type: ignore[union-attr]
                await asyncio.sleep(0)  # let the other pollers try the same rows meanwhile
                return "done", "ok"

        def named(name: str) -> Any:
            def kick(_: str) -> None:
                return None
            kick.__name__ = name
            return kick

        pollers = [ControlPoller(Counting(store, None, DEFAULT_POLICY, _no_roles, online=True,  # type: ignore[arg-type]
                                          kick=named(f"replica{i}")), name=f"replica{i}") for i in range(3)]
        ids = [await submit(store, incident_id=inc.id, action="abort", actor=IC, operator="test@host", reason="r")
               for _ in range(20)]
        for _ in range(3):
            await asyncio.gather(*(p.once() for p in pollers))
        assert sorted(i for _, i in carried) == ids  # each exactly once
        assert {r.status for r in await list_requests(store)} == {"done"}
        print(f"control plane: {len(ids)} requests, 3 pollers, {len(carried)} executions, "
              f"{len({who for who, _ in carried})} pollers took some")
    finally:
        await store.close()


async def _no_roles(_: str) -> list[str]:
    return []
