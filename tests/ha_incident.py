"""An incident on the replicas of tests/ha_cluster.py: its runbooks, its sshd target, opening it,
clicking in its thread, and what the journal, the thread and the target's command log say."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from bot.drill.sshd import SshdTarget
from bot.state.store import Store
from tests.ha_cluster import CH, IC, LEAD, PO, REQ, Cluster, until
from tests.runbooks import runbook
from tests.slack_fake import Control, SlackFake

RUNBOOK = runbook("ha", """\
    - id: work
      title: Work
      steps:
        - {id: first, title: First, kind: command, idempotent: false, run: "echo first >> cmdlog"}
        - id: slow
          title: Slow and not idempotent
          kind: command
          idempotent: false
          timeout: 120
          run: "echo slow-start >> cmdlog; sleep {slow}; echo slow-end >> cmdlog"
        - id: idem
          title: Slow and idempotent
          kind: command
          idempotent: true
          timeout: 120
          run: "echo idem-start >> cmdlog; sleep {idem}; echo idem-end >> cmdlog"
        - id: pick
          title: Pick
          kind: choice
          prompt: "Which way?"
          options:
            - {value: a, label: "Way A"}
            - {value: b, label: "Way B"}
        - {id: after, title: After, kind: command, idempotent: false, run: "echo after >> cmdlog"}
        - {id: confirm, title: Confirm, kind: manual}
    """)



def incident_runbook(slow: float = 1, idem: float = 1) -> str:
    """Approval, then commands that log on the target (``slow`` not idempotent, ``idem`` idempotent), a choice
    (Way A or B), a command and a manual item."""
    return RUNBOOK.replace("{slow}", str(slow)).replace("{idem}", str(idem))


def cluster_fake(**kwargs: Any) -> SlackFake:
    """The Slack fake with the incident channel and the cluster's people."""
    return SlackFake(channels={CH: "incident-response"}, users={u: u.lower() for u in (REQ, LEAD, PO, IC)}, **kwargs)


def ssh_target(sshd: SshdTarget, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A workdir of its own on the sshd target and the target's settings."""
    workdir = sshd.workdir / tmp_path.name
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir, {"transport": "ssh", "host": sshd.host, "port": sshd.port, "user": sshd.username,
                     "key_file": str(sshd.client_key_path), "known_hosts": str(sshd.known_hosts_path)}


def cmd_log(workdir: Path) -> Counter[str]:
    """How many times each line was written to the target's command log."""
    path = workdir / "cmdlog"
    return Counter(path.read_text().split()) if path.exists() else Counter()


async def open_incident(cluster: Cluster, *, reason: str = "bad deploy") -> tuple[str, str, Control]:
    """/rollback start and the form, each on any replica; (incident id, root ts, the Approve button)."""
    driver = cluster.driver()
    fake = cluster.fake
    await driver.slash_command(text=f"start db1 {reason}", channel_id=CH)
    await until(lambda: fake.views_opened, "the start modal opened", cluster=cluster)
    r = await driver.view_submission("rb_start", values={
        "target": "db1", "triggers": ["data_corruption"], "severity": "P1", "impact": "High",
        "business_risk": "Critical", "reason": reason})
    assert r.status == 200, r.body
    root = await until(lambda: next((m for m in fake.messages(CH) if not m.is_reply and "RB-" in m.text), None),
                       "the root message was posted", cluster=cluster)
    button = await until(lambda: next((b for b in fake.buttons(CH, root.ts) if b.action_id == "rb_approve"), None),
                         "the approval request was posted", cluster=cluster)
    return root.text.split(":", 1)[0], root.ts, button


async def press(cluster: Cluster, root_ts: str, text: str, user: str = IC) -> float:
    """Click the button labelled ``text`` once it is posted; returns when it was clicked (monotonic)."""
    fake = cluster.fake
    button = await until(lambda: next((b for b in fake.buttons(CH, root_ts) if b.text == text), None),
                         f"the {text!r} button was posted", cluster=cluster)
    at = time.monotonic()
    r = await cluster.driver().press(button, user)
    assert r.status == 200
    return at


async def journal(cluster: Cluster, iid: str) -> list[tuple[str, str | None, dict[str, Any]]]:
    """The incident's journal: (kind, step id, data) per entry."""
    store = await Store.open(cluster.db_url, {"ROLLBACK_BOT_DB_PASSWORD": cluster.db_password})
    try:
        return [(e.kind, e.step_id, e.data) for e in await store.events(iid)]
    finally:
        await store.close()


def thread_keys(fake: SlackFake, root_ts: str) -> list[str]:
    """The key of each message of the thread (a key twice: a message posted twice)."""
    return [str(((m.metadata or {}).get("event_payload") or {}).get("key")) for m in fake.thread(CH, root_ts)]


def completed(fake: SlackFake, root_ts: str) -> bool:
    """The root message says the incident completed."""
    root = fake.message(CH, root_ts)
    return root is not None and "completed" in root.text
