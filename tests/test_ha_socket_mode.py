"""Several ``serve`` replicas in Socket Mode on one real PostgreSQL: one connection each.

Slack hands each envelope of a Socket Mode app to one of the app's open connections at
random; the Slack fake does the same (seeded), and records which connection got each
envelope. A whole incident is driven that way, and a retried click is sent to another
replica than the first delivery, as Slack may do.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bot.drill.sshd import SshdTarget
from bot.state.replicas import INCIDENT
from tests import ha_incident as ha
from tests.ha_cluster import CH, LEAD, PO, Cluster, until
from tests.pg import PgCluster

pytestmark = pytest.mark.sshd

#: The fake's choice of connection; the same seed, the same spread.
SEED = 12


async def test_a_whole_incident_over_three_socket_mode_replicas_and_a_retry_at_another_replica(
        tmp_path: Path, pg_cluster: PgCluster, pg_url: str, sshd_target: SshdTarget, proof_report: Any) -> None:
    workdir, target = ha.ssh_target(sshd_target, tmp_path)
    async with ha.cluster_fake(socket_seed=SEED) as fake:
        cluster = Cluster.make(tmp_path, fake, pg_url, pg_cluster.password, runbook=ha.incident_runbook(0.1, 0.1),
                               workdir=workdir, target=target, n=3, socket_mode=True)
        try:
            await cluster.start()
            iid, root_ts, approve = await ha.open_incident(cluster)
            driver = cluster.driver()

            # The tech lead approves; Slack retries that envelope on another replica's connection.
            lead = await driver.press(approve, LEAD)
            first = cluster.socket_replicas()[fake.socket_deliveries[-1].connection]
            other = (first + 1) % 3
            retry = await cluster.driver(pick=lambda: other).replay(lead.request, retry_num=1)
            assert lead.status == retry.status == 200
            await ha.press(cluster, root_ts, "Approve", PO)

            # /rollback status, answered by whichever replica gets it, from the shared state.
            await until(lambda: any(b.text == "Way B" for b in fake.buttons(CH, root_ts)), "the choice was asked",
                        cluster=cluster)
            runner = await cluster.holder(INCIDENT + iid)
            await driver.slash_command(text=f"status {iid}", channel_id=CH)
            await until(lambda: any(iid in e.text and "waiting for choice" in e.text for e in fake.ephemerals),
                        "the status answered", cluster=cluster)
            await ha.press(cluster, root_ts, "Way B")
            await ha.press(cluster, root_ts, "Done")
            await until(lambda: ha.completed(fake, root_ts), "the incident completed", timeout=90, cluster=cluster)
            await driver.slash_command(text="status", channel_id=CH)
            await until(lambda: any("No active rollback incidents" in e.text for e in fake.ephemerals),
                        "the status after the end answered", cluster=cluster)

            owners = cluster.socket_replicas()
            deliveries = fake.socket_deliveries
            retried = next(d for d in deliveries if d.retry_attempt == 1)
            # The envelopes the fake routed at random (the retry was aimed), by the replica that got each.
            by_replica = Counter(owners.get(d.connection) for d in deliveries if d is not retried)
            acks = Counter(a.envelope_id for a in fake.socket_acks)
            events = await ha.journal(cluster, iid)
            approvals = sum(1 for k, _s, _d in events if k == "approval_approve")
            started = Counter(s for k, s, _d in events if k == "step_running")
            log = ha.cmd_log(workdir)
            keys = ha.thread_keys(fake, root_ts)
            line = (f"Socket Mode over 3 replicas (seed {SEED}): {len(deliveries)} envelopes, those routed at random "
                    f"by replica {dict(sorted(by_replica.items(), key=str))}, runner replica {runner}; the retried "
                    f"click went to replica {owners.get(retried.connection)} after replica {first}: {approvals} "
                    f"approvals recorded of 3 deliveries; {len(keys)} thread messages")
            print(line)
            proof_report(line)
            assert None not in by_replica, f"a connection no replica holds: {owners}"
            assert len(by_replica) == 3, "a replica got no envelope"  # so clicks reached non-runners too
            assert owners[retried.connection] == other != first
            assert sorted(acks) == sorted(d.envelope_id for d in deliveries) and set(acks.values()) == {1}
            assert approvals == 2  # the lead's retry was dropped on the other replica
            assert log == Counter({"first": 1, "slow-start": 1, "slow-end": 1, "idem-start": 1, "idem-end": 1,
                                   "after": 1})
            assert set(started.values()) == {1}, f"a step ran twice: {started}"
            assert len(keys) == len(set(keys)), f"a thread message was posted twice: {keys}"
        finally:
            await cluster.stop_all()
