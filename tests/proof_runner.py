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

from bot.core.engine import Engine, Target, Waiting
from bot.core.lifecycle import FINAL
from bot.core.runbook import default_runbook
from bot.core.targets import TargetSettings, open_transport
from bot.drill.clock import DrillClock
from bot.drill.run import DRILL_APPROVERS, DRILL_REQUESTER
from bot.record.records import Records, RecordsConfig
from bot.state.store import Store

TARGET = "sandbox"
PERSON = "U0DRILLIC"


def _answer(w: Waiting, config: dict[str, Any]) -> str | None:
    """What a person answers, or None when only a person who looked could say."""
    values = [o["value"] for o in w.options]
    if w.kind == "choice" and w.step_id == "strategy":
        return str(config["strategy"])
    if w.kind == "choice" and w.step_id == "restore_backup":
        wanted = Path(config["backup_path"]).name
        return next((v for v in values if Path(v).name == wanted), None)
    if w.kind == "choice":
        return next((o["value"] for o in w.options if o.get("suggested")), values[0] if values else None)
    if w.kind == "manual":
        return "done"
    return None


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
        idle = 0
        while True:
            clock.before_run()
            inc = await engine.run(inc.id)
            if inc.status in FINAL:
                return {"incident": inc.id, "status": inc.status.value, "waiting": None}
            w = await engine.waiting_for(inc.id)
            if w is None and idle < 3:
                idle += 1  # a scheduled job settled the wait after ``run`` returned: run again
                continue
            idle = 0
            if w is None:
                return {"incident": inc.id, "status": inc.status.value, "waiting": "nothing"}
            if await clock.handle(engine, inc.id, w, timeout=120):
                continue
            if w.kind == "approval":
                done = {a.user_id for a in await store.approvals(inc.id) if a.counted}
                for user, roles in DRILL_APPROVERS:
                    if user not in done:
                        await engine.approve(inc.id, user_id=user, roles=roles, decision="approve")
                continue
            answer = _answer(w, config)
            if answer is None:
                return {"incident": inc.id, "status": inc.status.value, "waiting": w.kind, "step": w.step_id,
                        "error": w.error or w.prompt}
            await engine.answer(inc.id, w.step_id, answer, user=PERSON)
    finally:
        await clock.close()
        await transport.close()
        await store.close()


def main() -> None:
    """Run the incident as far as it goes and print its state as one JSON line."""
    print(json.dumps(asyncio.run(_main(Path(sys.argv[1])))), flush=True)


if __name__ == "__main__":
    main()
