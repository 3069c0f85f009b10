"""Proof, network: the SSH link cut mid-step, and Slack unreachable mid-incident.

The link: a TCP proxy (``tests.tcp_proxy``) sits between the bot and a real sshd. While a
step runs, the proxy resets the connection (RST) or stalls it (no FIN, no data). The step
is shown failed within 30 s as a lost link with an unknown outcome, nothing runs it again
until a person presses Retry, and Retry runs it once more: the target's own log has one run
per journaled attempt.

Slack: the Slack fake refuses every connection for five plan minutes (compressed) while the
incident runs on; afterwards the thread is exactly what the state calls for, every
message once.
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from actions.errors import ConnectionLost
from bot.core.engine import Engine, Target
from bot.core.lifecycle import Status, StepStatus
from bot.core.runbook import load_runbook
from bot.core.targets import TargetSettings, open_transport
from bot.state.store import Store
from tests.runbooks import runbook
from tests.sshd import SshdTarget
from tests.tcp_proxy import TcpProxy

#: The bound the product promises for showing a lost link (keepalive 5 s x 3).
DETECT_WITHIN = 30.0

RUNBOOK = textwrap.dedent("""\
    name: net
    phases:
      - id: p
        title: P
        steps:
          - id: before
            title: Before the cut
            kind: command
            idempotent: true
            run: "echo before >> net.log"
          - id: long
            title: Step cut mid-way
            kind: command
            idempotent: false
            timeout: 60
            run: "echo start >> net.log; sleep 3; echo end >> net.log"
          - id: after
            title: After the cut
            kind: command
            idempotent: true
            run: "echo after >> net.log"
    """)


@pytest.fixture
async def proxy(sshd_target: SshdTarget) -> AsyncIterator[TcpProxy]:
    p = await TcpProxy(sshd_target.host, sshd_target.port).start()
    yield p
    await p.close()


async def _until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


def _count(log: Path, word: str) -> int:
    return log.read_text().split().count(word) if log.exists() else 0


@pytest.mark.sshd
@pytest.mark.parametrize("cut", ["drop", "stall"])
async def test_link_cut_mid_step_fails_visibly_and_retry_runs_once_more(
    cut: str, sshd_target: SshdTarget, proxy: TcpProxy, tmp_path: Path, proof_report: Callable[[str], None],
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    log = work / "net.log"
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{proxy.port} {sshd_target.host_key_line}\n")
    (tmp_path / "rb.yml").write_text(RUNBOOK)
    settings = TargetSettings.model_validate({
        "name": "t", "transport": "ssh", "host": "127.0.0.1", "port": proxy.port, "user": sshd_target.username,
        "key_file": str(sshd_target.client_key_path), "known_hosts": str(known), "workdir": str(work)})
    transport = open_transport(settings)
    store = await Store.open(str(tmp_path / "state.db"))
    engine = Engine(store, load_runbook(tmp_path / "rb.yml"), {"t": Target(settings, transport)},
                    artifacts_dir=tmp_path / "art")
    try:
        inc = await store.create_incident(target="t", runbook="net")
        running = asyncio.create_task(engine.run(inc.id))
        await _until(lambda: _count(log, "start") == 1)
        assert (proxy.drop() if cut == "drop" else proxy.stall()) >= 1
        cut_at = time.monotonic()
        inc = await asyncio.wait_for(running, DETECT_WITHIN + 30)
        shown_after = time.monotonic() - cut_at

        # Shown failed, within the bound, as a lost link whose outcome is unknown.
        assert shown_after <= DETECT_WITHIN, f"failure shown after {shown_after:.1f} s"
        assert inc.status is Status.WAITING
        w = await engine.waiting_for(inc.id)
        assert w is not None and (w.kind, w.step_id) == ("failure", "long")
        assert ConnectionLost.__name__ in (w.error or "") and "outcome unknown" in (w.error or "")
        assert [o["value"] for o in w.options] == ["retry", "skip", "abort"]

        # Nothing runs it again on its own: the command on the target ends once, alone.
        await _until(lambda: _count(log, "end") == 1, timeout=20)
        await asyncio.sleep(1.0)
        assert _count(log, "start") == 1 and _count(log, "after") == 0
        runs = [r for r in await store.step_runs(inc.id) if r.step_id == "long"]
        assert [(r.attempt, r.status) for r in runs] == [(1, StepStatus.FAILED)]

        # Retry (the link is back): one more run, and the incident goes on.
        proxy.heal()
        await engine.answer(inc.id, "long", "retry", user="U0LEAD")
        inc = await asyncio.wait_for(engine.run(inc.id), 60)
        assert inc.status is Status.COMPLETED
        runs = [r for r in await store.step_runs(inc.id) if r.step_id == "long"]
        assert [(r.attempt, r.status) for r in runs] == [(1, StepStatus.FAILED), (2, StepStatus.DONE)]
        assert _count(log, "start") == len(runs) == 2  # once per attempt, as the journal says
        assert _count(log, "before") == 1 and _count(log, "after") == 1
        proof_report(f"network: ssh link {cut} mid-step shown failed after {shown_after:.1f} s "
                     f"(bound {DETECT_WITHIN:.0f} s), retried once, 0 silent re-runs")
    finally:
        await transport.close()
        await store.close()


# ----------------------------------------------------------------------------- Slack unreachable

SLACK_RUNBOOK = runbook("outage", """\
    - id: work
      title: "Phase 3: Work"
      steps:
        - {id: one, title: "Step one", kind: command, idempotent: true, run: "echo one >> work.log"}
        - {id: pause, title: "Five minutes of work", kind: wait, seconds: 300}
        - {id: two, title: "Step two", kind: command, idempotent: true, run: "echo two >> work.log; seq 1 3000"}
        - {id: three, title: "Step three", kind: command, idempotent: true, run: "echo three >> work.log"}
    """)


async def test_slack_unreachable_for_five_minutes_mid_incident(
    tmp_path: Path, proof_report: Callable[[str], None],
) -> None:
    from bot.core.config import parse_config
    from tests import test_slack_e2e as e2e
    from tests.slack_fake import SlackFake

    workdir = tmp_path / "app"
    workdir.mkdir()
    (tmp_path / "runbook.yml").write_text(SLACK_RUNBOOK)
    time_scale = 0.01
    config = parse_config({
        "slack": {"channels": [e2e.CH], "update_interval_seconds": 0.05, "retry_max_seconds": 0.5,
                  "upload_over_bytes": 3500},
        "roles": {"tech_lead": {"users": [e2e.LEAD]}, "product_owner": {"users": [e2e.PO]},
                  "incident_commander": {"users": [e2e.IC]}},
        "targets": [{"name": "t1", "transport": "local", "workdir": str(workdir)}],
        "runbook": str(tmp_path / "runbook.yml"),
        "state_db": str(tmp_path / "state.db"),
        "artifacts_dir": str(tmp_path / "artifacts"),
        "time_scale": time_scale,
    })
    users = {u: u.lower() for u in (e2e.REQ, e2e.LEAD, e2e.PO, e2e.IC)}
    async with SlackFake(users=users) as fake:
        fake.add_channel(e2e.CH, "incident-response")
        h = await e2e._start(fake, config, workdir)
        try:
            await e2e._open_incident(h)
            inc = await h.incident()
            await h.driver.press(fake.find_button(e2e.CH, h.thread_ts(), action_id="rb_approve"), e2e.LEAD)
            await h.idle()
            posted_before = len([c for c in fake.calls if c.ok])
            # Slack refuses every connection for 5 plan minutes (3 s); the second approval
            # arrives just before (Slack delivered it), the incident runs through the outage.
            outage = 300 * time_scale
            await h.driver.press(fake.find_button(e2e.CH, h.thread_ts(), action_id="rb_approve"), e2e.PO)
            fake.down(outage, mode="refuse")
            down_at = time.monotonic()

            async def progressed() -> bool:
                latest = await h.services.store.latest_runs(inc.id)
                return "one" in latest and latest["one"].status is StepStatus.DONE

            for _ in range(500):
                if await progressed():
                    break
                await asyncio.sleep(0.01)
            assert await progressed() and fake.is_down, "the incident did not go on while Slack was down"
            await fake.wait_up()
            await h.idle()
            assert time.monotonic() - down_at >= outage
            inc = await h.incident()
            assert inc.status is Status.COMPLETED
            assert (workdir / "work.log").read_text().split() == ["one", "two", "three"]
            # The thread caught up: every message the state calls for, once; nothing else.
            e2e._assert_thread_matches_state(h, await e2e._state_messages(h))
            assert len([m for m in fake.messages(e2e.CH) if not m.is_reply]) == 1
            done = [f.filename for f in fake.files if f.completed]
            assert len(done) == len(set(done)) == 2  # the rendered plan and the long output, once each
            caught_up = len([c for c in fake.calls if c.ok]) - posted_before
            proof_report(f"network: Slack unreachable 5 plan minutes mid-incident: incident completed, "
                         f"thread caught up ({caught_up} Slack calls once it was back), 0 lost, 0 doubled")
        finally:
            await h.services.close()
