"""The engine's bookkeeping: each side effect starts after its step's start is on disk, and the
audit log, copied in the background, ends with every journal event and nothing unsynced."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from actions.local import LocalTransport
from bot.core.engine import Engine, Target
from bot.core.lifecycle import Status
from bot.core.runbook import parse_runbook
from bot.core.targets import TargetSettings
from bot.record.audit import verify_chain
from bot.state.store import Store, journal

STEPS = 12
RUNBOOK = textwrap.dedent("""\
    name: bookkeeping
    phases:
      - id: work
        title: Work
        steps:
    """) + "".join(
    f"      - {{id: s{i}, title: 'Step {i}', kind: command, idempotent: true, run: 'echo {i} >> log.txt'}}\n"
    for i in range(STEPS))


async def _max_event(store: Store) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.max(journal.c.id)))).scalar() or 0)


async def test_side_effects_follow_a_synced_start_and_the_audit_log_gets_every_event(
    tmp_path: Path, proof_report: Callable[[str], None],
) -> None:
    workdir = tmp_path / "app"
    workdir.mkdir()
    store = await Store.open(str(tmp_path / "state.db"))
    transport = LocalTransport(name="t1")
    settings = TargetSettings(name="t1", transport="local", workdir=str(workdir))
    engine = Engine(store, parse_runbook(RUNBOOK), {"t1": Target(settings, transport)},
                    artifacts_dir=tmp_path / "art")
    seen: list[tuple[int | None, int]] = []
    run = transport.run

    async def observed(command: str, **kwargs: Any) -> Any:
        # At the moment the side effect starts: how far the store is synced, and its newest event.
        seen.append((store.durable_event_id, await _max_event(store)))
        return await run(command, **kwargs)

    transport.run = observed  # type: ignore[method-assign]
    try:
        inc = await store.create_incident(target="t1", runbook="bookkeeping")
        inc = await engine.run(inc.id)
        assert inc.status is Status.COMPLETED
        # Every side effect started with everything journaled before it already synced.
        synced = [d is not None and d >= newest for d, newest in seen]
        assert len(seen) == STEPS and all(synced), seen
        # The audit log, copied in the background and settled at the end of the run, holds every
        # journal event once, in order, and its chain verifies.
        entries = [e for e in await engine.audit.log.entries(inc.id) if e.get("type") == "event"]
        events = await store.events(inc.id)
        assert [e["event_id"] for e in entries] == [e.id for e in events]
        assert verify_chain(engine.records.log.path).ok
        proof_report(f"bookkeeping: {sum(synced)}/{len(seen)} side effects started after their step's start was "
                     f"synced; audit log holds {len(entries)}/{len(events)} journal events")
    finally:
        await engine.aclose()
        await transport.close()
        await store.close()
