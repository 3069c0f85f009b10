"""A bot process for the proof suite's crash test: one drill incident, resumable.

    python -m tests.proof_runner ROOT

``ROOT/runner.json`` names the target (TargetSettings), the strategy, the backup to
choose and the time scale; the incident state lives in ``ROOT/state.db`` (jobs in
``ROOT/state.jobs.db``). The runner opens the incident (or finds the one it opened
before), runs it with the engine and answers as the drill's simulated people do:
approvals, the strategy, the backup, manual items, a failed stability series. It never
answers a failed step or a ``resume`` question: it prints what it waits for and exits,
so the test sees it. The test kills this process with SIGKILL and starts it again.

Prints one JSON line: the incident id, its status and what it waits for, if anything.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
from pathlib import Path
from typing import Any

from bot.core.engine import Engine, Target
from bot.core.runbook import default_runbook
from bot.core.targets import TargetSettings, open_transport
from bot.drill.clock import DrillClock
from bot.drill.person import DRILL_APPROVERS, DRILL_COMMANDER, DRILL_REQUESTER, Commander, play
from bot.record.records import Records, RecordsConfig
from bot.state.store import Store

TARGET = "sandbox"


async def _main(root: Path) -> dict[str, Any]:
    config = json.loads((root / "runner.json").read_text())
    settings = TargetSettings.model_validate(config["settings"])
    time_scale = float(config["time_scale"])
    rb = default_runbook()
    store = await Store.open(str(root / "state.db"))
    transport = open_transport(settings)
    records = Records.open(RecordsConfig.model_validate(
        {"audit_log": root / "logs" / "governance.jsonl", "evidence_root": root / "evidence"}))
    engine = Engine(store, rb, {TARGET: Target(settings, transport)}, artifacts_dir=root / "artifacts",
                    time_scale=time_scale, records=records)
    clock = await DrillClock.start(engine, root, time_scale=time_scale, out=io.StringIO())
    try:
        found = await store.incidents()
        inc = found[0] if found else await store.create_incident(
            target=TARGET, runbook=rb.name, severity="P1", decision="IMMEDIATE",
            inputs={"triggers": ["data_corruption"], "impact": "High", "business_risk": "Critical",
                    "description": "Crash proof"},
            requester=DRILL_REQUESTER, reason=f"Crash proof, strategy {config['strategy']}")
        ending = await play(engine, clock, inc.id, approvers=DRILL_APPROVERS,
                            answer=Commander(str(config["strategy"]), str(config["backup_path"])),
                            answerer=DRILL_COMMANDER, scheduled_timeout=120)
        inc, w = ending.incident, ending.waiting
        if ending.ended:
            return {"incident": inc.id, "status": inc.status.value, "waiting": None}
        if w is None:
            return {"incident": inc.id, "status": inc.status.value, "waiting": "nothing"}
        return {"incident": inc.id, "status": inc.status.value, "waiting": w.kind, "step": w.step_id,
                "error": w.error or w.prompt}
    finally:
        await clock.close()
        await transport.close()
        await store.close()


def main() -> None:
    """Run the incident as far as it goes and print its state as one JSON line."""
    print(json.dumps(asyncio.run(_main(Path(sys.argv[1])))), flush=True)


if __name__ == "__main__":
    main()
