"""Benchmark: several replicas on one PostgreSQL (``serve`` processes, the Slack fake, loopback only).

1. **Failover**: ``--kills`` (10) times, the replica running an incident is killed with
   SIGKILL in the middle of a step; measured from the kill to the next step started by
   a standby (the interrupted idempotent step re-run), from the journal. The killed
   replica is started again, so the cluster keeps its size. Printed: median and max.
   Target: resumed within 10 s.
2. **Load**: ``--incidents`` (50) incidents over ``--replicas`` (3) replicas: each opened
   with ``/rollback start``, the form and an approval click, every request signed and
   spread round robin over the replicas like a load balancer would. Printed: the ack
   p99 of those requests and how many incidents completed, in how long.

    python bench/ha.py                       # ~4 min on 2 cores
    python bench/ha.py --kills 3 --incidents 10

Starts its own PostgreSQL cluster (tests/pg.py: PostgreSQL's server binaries are needed)
and removes it at the end; every wait is bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bot.state.replicas import INCIDENT  # noqa: E402
from bot.state.store import Store  # noqa: E402
from tests.ha_cluster import CH, IC, Cluster, until  # noqa: E402
from tests.ha_incident import runbook  # noqa: E402
from tests.pg import start_cluster  # noqa: E402
from tests.slack_fake import SlackFake  # noqa: E402


def _failover_runbook(steps: int) -> str:
    lines = ["- id: work", "  title: Work", "  steps:"]
    lines += [f"    - {{id: s{i}, title: 'Step {i}', kind: command, idempotent: true, timeout: 60, "
              f"run: 'echo s{i} >> cmdlog; sleep 1.5'}}" for i in range(steps)]
    return runbook("bench-failover", "\n".join(lines) + "\n")


LOAD_RUNBOOK = runbook("bench-load", """\
    - id: work
      title: Work
      steps:
        - {id: one, title: One, kind: command, idempotent: true, run: "echo one >> cmdlog"}
        - {id: two, title: Two, kind: command, idempotent: true, run: "sleep 0.2; echo two >> cmdlog"}
        - {id: three, title: Three, kind: command, idempotent: true, run: "echo three >> cmdlog"}
    """)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _open(cluster: Cluster, target: str, acks: list[float]) -> tuple[str, str]:
    """Start, submit and approve one incident; (incident id, root ts)."""
    fake = cluster.fake
    driver = cluster.driver()
    before = len(fake.views_opened)
    r = await driver.slash_command(text=f"start {target} bench", channel_id=CH)
    acks.append(r.elapsed)
    view = await until(lambda: len(fake.views_opened) > before and fake.views_opened[-1], "modal", cluster=cluster)
    r = await driver.view_submission("rb_start", view_id=view.id, values={
        "target": target, "triggers": ["data_corruption"], "severity": "P1", "impact": "High",
        "business_risk": "Critical", "reason": "bench"})
    acks.append(r.elapsed)
    root = await until(lambda: next((m for m in fake.messages(CH) if not m.is_reply
                                     and f"rollback of {target} " in m.text), None), "root", cluster=cluster)
    button = await until(lambda: next((b for b in fake.buttons(CH, root.ts) if b.action_id == "rb_approve"), None),
                         "approval", cluster=cluster)
    r = await driver.press(button, IC)
    acks.append(r.elapsed)
    return root.text.split(":", 1)[0], root.ts


async def failover(root: Path, pg: Any, kills: int, lease: float, timeout: float) -> list[float]:
    """Kill the runner ``kills`` times mid-step; seconds from each kill to the next step started."""
    async with SlackFake(users={u: u.lower() for u in ("U0REQUESTER", IC)}) as fake:
        fake.add_channel(CH, "incident-response")
        workdir = root / "failover-target"
        workdir.mkdir()
        cluster = Cluster.make(root / "failover", fake, pg.create_database("failover"), pg.password,
                               runbook=_failover_runbook(kills * 8 + 4), workdir=workdir,
                               target={"transport": "local"}, n=3, lease_seconds=lease)
        store = await Store.open(cluster.db_url, {"ROLLBACK_BOT_DB_PASSWORD": pg.password})
        times: list[float] = []
        try:
            await cluster.start()
            iid, _ts = await _open(cluster, "db1", [])
            for k in range(kills):
                runs = await until(lambda: _running(store, iid), "a step running", timeout=timeout, cluster=cluster)
                runner = await until(lambda: cluster.holder(INCIDENT + iid), "a holder", timeout=timeout,
                                     cluster=cluster)
                seen = len(await store.events(iid))
                killed = time.monotonic()
                cluster.kill(runner)

                async def resumed(s: int = seen) -> bool:
                    return any(e.kind == "step_running" for e in (await store.events(iid))[s:])

                await until(resumed, "the standby's next step", timeout=timeout, cluster=cluster, every=0.02)
                times.append(time.monotonic() - killed)
                print(f"  kill {k + 1}: replica {runner} in {runs}, next step after {times[-1]:.2f} s", flush=True)
                await cluster.start(runner)
        finally:
            await store.close()
            await cluster.stop_all()
    return times


async def _running(store: Store, iid: str) -> str | None:
    runs = [r for r in (await store.latest_runs(iid)).values() if r.status.value == "running"]
    return runs[0].step_id if runs else None


async def load(root: Path, pg: Any, incidents: int, replicas: int, timeout: float) -> tuple[list[float], int, float]:
    """Open ``incidents`` incidents over the replicas; (ack seconds, completed, seconds to complete all)."""
    async with SlackFake(users={u: u.lower() for u in ("U0REQUESTER", IC)}) as fake:
        fake.add_channel(CH, "incident-response")
        targets = []
        for i in range(incidents):
            wd = root / "load-targets" / f"t{i}"
            wd.mkdir(parents=True)
            targets.append({"name": f"t{i}", "transport": "local", "workdir": str(wd)})
        cluster = Cluster.make(root / "load", fake, pg.create_database("load"), pg.password, runbook=LOAD_RUNBOOK,
                               workdir=root, target={}, n=replicas, targets=targets, lease_seconds=6.0)
        store = await Store.open(cluster.db_url, {"ROLLBACK_BOT_DB_PASSWORD": pg.password})
        acks: list[float] = []
        try:
            await cluster.start()
            started = time.monotonic()
            ids = [(await _open(cluster, f"t{i}", acks))[0] for i in range(incidents)]

            async def completed() -> int:
                return sum(1 for i in await store.incidents() if i.status.value == "completed")

            try:
                await until(lambda: _all(completed, len(ids)), "every incident completed", timeout=timeout,
                            cluster=cluster, every=0.2)
            except TimeoutError:
                pass
            took = time.monotonic() - started
            done = await completed()
        finally:
            await store.close()
            await cluster.stop_all()
    return acks, done, took


async def _all(count: Any, n: int) -> bool:
    return int(await count()) >= n


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="rb-bench-ha-") as tmp, start_cluster() as pg:
        root = Path(tmp)
        print(f"failover: {args.kills} kills of the runner mid-step, lease {args.lease:g} s, 3 replicas", flush=True)
        times = await failover(root, pg, args.kills, args.lease, args.timeout)
        print(f"failover (kill to next step started): median {statistics.median(times):.2f} s, "
              f"max {max(times):.2f} s over {len(times)} kills (target < 10 s)")
        print(f"load: {args.incidents} incidents over {args.replicas} replicas", flush=True)
        acks, done, took = await load(root, pg, args.incidents, args.replicas, args.timeout)
        print(f"load: ack p50 {_pct(acks, 0.5) * 1000:.0f} ms, p99 {_pct(acks, 0.99) * 1000:.0f} ms over "
              f"{len(acks)} requests; {done}/{args.incidents} incidents completed in {took:.1f} s")
        return 0 if max(times) < 10 and done == args.incidents else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--lease", type=float, default=6.0, help="lease_seconds of the replicas (default as in config)")
    p.add_argument("--incidents", type=int, default=50)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--timeout", type=float, default=180.0)
    sys.exit(asyncio.run(main(p.parse_args())))
