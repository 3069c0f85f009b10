"""Benchmark: the bot under load, and a step fanned out to a host group.

1. **Scale**: ``--incidents`` (50) incidents at once, each on its own drill sandbox (a real
   SQLite database, backups, a small app under the ``procman`` process manager, ``--rows``
   rows). Each is opened the way a person opens it (``/rollback start``, the form, an
   approval click, all signed and dispatched through the real Bolt app against the Slack
   fake) and then runs the default runbook (backups, verification, the app's snapshot)
   until it waits for a person. All are opened first; then every approval is pressed at
   once, so all of them execute together (backups, checks, verification: steps that take
   time). While they run, signed ``/rollback start`` requests and Approve clicks are sent
   over HTTP on loopback to the bot's real ``/slack/events`` (``handlers.app.web_app``)
   from a client thread. Printed: how many incidents executed at once (the peak overlap of
   their executing intervals, from the step runs' times), the bot process's peak RSS
   (VmHWM; the sandboxes' apps are other processes), the ack p99 and the load average.
   Targets: all incidents at once, RSS < 250 MB, ack p99 < 100 ms.
2. **Fan-out**: one command step on a host group of ``--hosts`` (20) hosts, each its own
   ``SSHTransport`` connection to one local sshd, against the same step on one host, both
   through the engine on warm connections. Target: <= 1.5x.

    python bench/scale.py                     # ~2 min
    python bench/scale.py --incidents 10 --hosts 5

Loopback only; bounded by ``--timeout``; stops every sandbox and the sshd it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from ack import (  # noqa: E402
    CH,
    IC,
    NOBODY,
    REQ,
    Captured,
    _capturing,
    _measure,
    _open,
    _pct,
    _running,
    _secrets,
    _serve,
)
from common import load, run_bounded  # noqa: E402

from actions.transport import Transport  # noqa: E402
from bot.core.config import parse_config  # noqa: E402
from bot.core.engine import Engine, Target  # noqa: E402
from bot.core.lifecycle import Status  # noqa: E402
from bot.core.runbook import parse_runbook  # noqa: E402
from bot.core.targets import TargetSettings, open_transports  # noqa: E402
from bot.drill.sandbox import Sandbox, build_sandbox  # noqa: E402
from bot.drill.sshd import start_sshd  # noqa: E402
from bot.slack.client import make_client  # noqa: E402
from bot.slack.services import Services, build_services  # noqa: E402
from bot.state.store import Store  # noqa: E402
from handlers.app import create_app, web_app  # noqa: E402
from tests.slack_driver import SlackDriver, bolt_sender  # noqa: E402
from tests.slack_fake import SlackFake  # noqa: E402

LEAD, PO = "U0LEAD", "U0PRODOWNER"
#: The command of the fanned-out step: a short health probe, as a rollout's per-host check would be.
FAN_STEP = "sleep 0.2; uname -n >/dev/null; df -P . | tail -1; echo ok"


def _vm(field: str) -> float:
    """A /proc/self/status figure in MB (VmHWM: peak RSS; VmRSS: now)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _build(root: Path, n: int, rows: int) -> list[Sandbox]:
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(build_sandbox, root / f"t{i:02d}", process_manager="procman", rows=rows)
                   for i in range(n)]
        built: list[Sandbox] = []
        errors = []
        for f in futures:
            try:
                built.append(f.result())
            except Exception as exc:  # stop what was built, then report
                errors.append(exc)
        if errors:
            for s in built:
                s.stop()
            raise errors[0]
        return built


def _stop_all(sandboxes: list[Sandbox]) -> None:
    for s in sandboxes:
        s.stop()


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` intervals covering one instant."""
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda e: (e[0], e[1]))
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


async def executing(services: Services) -> dict[str, tuple[float, float]]:
    """Each incident's executing interval after its approval: first machine step start to last end."""
    out: dict[str, tuple[float, float]] = {}
    for inc in await services.store.incidents():
        spans = [(r.started_at.timestamp(), r.ended_at.timestamp())
                 for r in await services.store.step_runs(inc.id)
                 if r.step_id != "approval" and r.started_at is not None and r.ended_at is not None
                 and r.waiting is None]
        if spans:
            out[inc.id] = (min(a for a, _ in spans), max(b for _, b in spans))
    return out


async def bench_scale(tmp: Path, n: int, rows: int, requests: int, pause: float) -> tuple[bool, str]:
    """Part 1: the figure lines and whether the targets are met."""
    sandboxes = await asyncio.to_thread(_build, tmp / "targets", n, rows)
    try:
        users = {u: u.lower() for u in (REQ, LEAD, PO, IC, NOBODY)}
        async with SlackFake(users=users, trigger_ttl=None) as fake:
            fake.add_channel(CH, "incident-response")
            secrets = _secrets(fake)
            targets = [{"name": f"t{i:02d}", "transport": "local", **s.settings()} for i, s in enumerate(sandboxes)]
            config = parse_config({
                "slack": {"channels": [CH]},
                "roles": {"tech_lead": {"users": [LEAD]}, "product_owner": {"users": [PO]},
                          "incident_commander": {"users": [IC]}},
                "targets": targets, "state_db": str(tmp / "state.db"),
                "artifacts_dir": str(tmp / "artifacts"), "time_scale": 0.01,
                # Opening 50 incidents takes longer than an IMMEDIATE decision window at this scale.
                "clock": {"p1_approval_minutes": 24 * 60}})
            services = await build_services(config, make_client(secrets))
            runner = None
            try:
                app = create_app(secrets, services)
                await services.resume()
                driver = SlackDriver(fake, bolt_sender(app), default_user_id=REQ)
                # Every incident opened as a person opens it; each then waits for its approval.
                buttons = []
                for i in range(n):
                    thread_ts = await _open(fake, driver, services, f"t{i:02d}")
                    buttons.append(fake.find_button(CH, thread_ts, action_id="rb_approve"))
                # The measured requests: /rollback start (opens the modal) and an Approve click
                # by someone without the role (answered, no effect), signed now, sent later.
                captured: dict[str, list[Captured]] = {"start": [], "click": []}
                cap = SlackDriver(fake, _capturing(captured["start"]), default_user_id=REQ)
                for _ in range(requests):
                    await cap.slash_command(text="start t00 benchmark", channel_id=CH)
                cap = SlackDriver(fake, _capturing(captured["click"]), default_user_id=NOBODY)
                for _ in range(requests):
                    await cap.press(buttons[0], NOBODY)
                    await asyncio.sleep(0.000002)  # distinct action_ts per click
                runner, url = await _serve(web_app(app, services))
                # Acks are measured over HTTP while all the incidents run.
                measuring = asyncio.create_task(asyncio.to_thread(_measure, {"bot": url}, captured, pause))
                approved_at = time.time()
                # Every approval answered at once: all incidents start executing together.
                await asyncio.gather(*(driver.press(b, IC) for b in buttons))
                times = await measuring
                measured_running = await _running(services)
                acks = [t for kind in ("start", "click") for t in times[("bot", kind)]]
                with contextlib.suppress(TimeoutError):
                    await services.idle(timeout=600)  # the incidents reach their first wait for a person
                done_at = time.time()
                spans = await executing(services)
                states: dict[str, int] = {}
                for inc in await services.store.incidents():
                    states[inc.status.value] = states.get(inc.status.value, 0) + 1
                steps = 0
                for inc in await services.store.incidents():
                    steps += sum(1 for r in await services.store.step_runs(inc.id) if r.step_id != "approval")
                measured_load = load()
            finally:
                if runner is not None:
                    await runner.cleanup()
                await services.close()
    finally:
        await asyncio.to_thread(_stop_all, sandboxes)
    peak = _vm("VmHWM")
    p99 = _pct(acks, 0.99) * 1000
    overlap = peak_overlap(list(spans.values()))
    shortest = min((b - a for a, b in spans.values()), default=0.0)
    all_at_once = overlap == n and len(spans) == n
    ok = peak < 250 and p99 < 100 and states.get(Status.FAILED.value, 0) == 0 and all_at_once
    line = (f"scale: {n} incidents executing at once: peak overlap {overlap} of {n} "
            f"({'all at once' if all_at_once else 'NOT all at once'}), RSS peak {peak:.0f} MB (target < 250 MB), "
            f"ack p99 {p99:.0f} ms (target < 100 ms)")
    detail = (f"  all {n} approvals pressed at once; {steps} steps ran until each incident waited for a person "
              f"({done_at - approved_at:.1f} s; each incident executed {shortest:.1f} s at least); "
              f"{len(acks)} acks over HTTP meanwhile (p50 {_pct(acks, 0.5) * 1000:.1f} ms, "
              f"max {max(acks) * 1000:.0f} ms), {measured_running} incidents still running when they ended; "
              f"incidents afterwards: {states}; {n} procman sandboxes, {rows} rows each; {measured_load}")
    return ok, line + "\n" + detail


FAN_RUNBOOK = textwrap.dedent(f"""\
    name: fan
    phases:
      - id: check
        title: Check
        steps:
          - id: probe
            title: Probe every host
            kind: command
            idempotent: true
            run: "{FAN_STEP}"
    """)


async def _time_step(tmp: Path, name: str, target: Target, repeat: int) -> float:
    """Median seconds of the step over ``repeat`` incidents (the step's duration in the store)."""
    store = await Store.open(str(tmp / f"{name}.db"))
    engine = Engine(store, parse_runbook(FAN_RUNBOOK), {name: target}, artifacts_dir=tmp / f"art-{name}")
    try:
        durations = []
        for _ in range(repeat + 1):
            inc = await store.create_incident(target=name, runbook="fan")
            inc = await engine.run(inc.id)
            if inc.status is not Status.COMPLETED:
                raise RuntimeError(f"{name}: the probe ended {inc.status.value}")
            run = (await store.latest_runs(inc.id))["probe"]
            assert run.duration is not None
            durations.append(run.duration)
        return statistics.median(durations[1:])  # the first one warms the connections up
    finally:
        await engine.aclose()
        await store.close()


async def bench_fanout(tmp: Path, hosts: int, repeat: int) -> tuple[bool, str]:
    """Part 2: the figure line and whether the target is met."""
    with start_sshd(tmp / "sshd") as sshd:
        base = {"transport": "ssh", "host": sshd.host, "port": sshd.port, "user": sshd.username,
                "key_file": sshd.client_key_path, "known_hosts": sshd.known_hosts_path, "workdir": "/tmp"}
        one = TargetSettings.model_validate({"name": "one", **base})
        group = TargetSettings.model_validate({"name": "group", **base,
                                               "hosts": [{"name": f"h{i:02d}"} for i in range(hosts)]})
        single = Target.open(one)
        transports: dict[str, Transport] = open_transports(group)
        multi = Target(group, next(iter(transports.values())), transports)
        try:
            t_one = await _time_step(tmp, "one", single, repeat)
            t_group = await _time_step(tmp, "group", multi, repeat)
        finally:
            await single.close()
            await multi.close()
    ratio = t_group / t_one
    ok = ratio <= 1.5
    return ok, (f"fan-out: {hosts} hosts {t_group:.2f} s vs 1 host {t_one:.2f} s: {ratio:.2f}x (target <= 1.5x)\n"
                f"  step: {FAN_STEP!r}; {hosts} SSHTransport connections to one local sshd, warm; "
                f"median of {repeat}")


async def main_async(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    ok = True
    try:
        if not args.skip_scale:
            met, text = await bench_scale(tmp / "scale", args.incidents, args.rows, args.requests, args.pause)
            ok = ok and met
            print(text, flush=True)
        met, text = await bench_fanout(tmp / "fan", args.hosts, args.repeat)
        ok = ok and met
        print(text, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"bench/scale.py: {'all targets met' if ok else 'some targets NOT met'}")
    return 0 if ok or not args.strict else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=textwrap.dedent(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--incidents", type=int, default=50, help="concurrent incidents, one sandbox each")
    parser.add_argument("--rows", type=int, default=40, help="rows of each sandbox's database")
    parser.add_argument("--requests", type=int, default=300, help="measured acks per kind")
    parser.add_argument("--pause", type=float, default=0.005, help="seconds between two requests")
    parser.add_argument("--hosts", type=int, default=20, help="hosts of the fanned-out group")
    parser.add_argument("--repeat", type=int, default=5, help="fan-out repetitions (median)")
    parser.add_argument("--skip-scale", action="store_true", help="only the fan-out")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--timeout", type=float, default=600, help="give up after this many seconds")
    args = parser.parse_args()
    return run_bounded(main_async(args), args.timeout, "bench/scale.py")


if __name__ == "__main__":
    sys.exit(main())
