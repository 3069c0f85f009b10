"""A bot process for the crash-resume test: runs one incident of a runbook with the engine.

    python -m tests.crash_runner STATE_DB WORKDIR RUNBOOK [--answer STEP=VALUE] [--abort REASON]

Prints one JSON line with the incident's status and what it waits for. The test kills
this process with SIGKILL in the middle of a step and starts it again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from actions.local import LocalTransport
from bot.core.engine import Engine, Target
from bot.core.runbook import load_runbook
from bot.core.targets import TargetSettings
from bot.state.store import Store


async def _main(args: argparse.Namespace) -> dict[str, object]:
    store = await Store.open(args.state_db)
    rb = load_runbook(args.runbook)
    settings = TargetSettings(name="t", transport="local", workdir=args.workdir)
    transport = LocalTransport(name="t")
    engine = Engine(store, rb, {"t": Target(settings, transport)}, artifacts_dir=Path(args.workdir) / "art")
    try:
        incidents = await store.incidents()
        inc = incidents[0] if incidents else await store.create_incident(target="t", runbook=rb.name)
        if args.answer:
            step, value = args.answer.split("=", 1)
            await engine.answer(inc.id, step, value, user="U1")
        if args.abort:
            await engine.request_abort(inc.id, user="U1", reason=args.abort)
        inc = await engine.run(inc.id)
        w = await engine.waiting_for(inc.id)
        return {"status": inc.status.value, "waiting": w.kind if w else None, "step": w.step_id if w else None}
    finally:
        await transport.close()
        await store.close()


def main() -> None:
    """Run the incident as far as it goes and print its state."""
    p = argparse.ArgumentParser()
    p.add_argument("state_db")
    p.add_argument("workdir")
    p.add_argument("runbook")
    p.add_argument("--answer")
    p.add_argument("--abort")
    print(json.dumps(asyncio.run(_main(p.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
