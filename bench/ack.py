"""Benchmark: how fast the bot acks Slack, and how many Web API calls an incident costs.

1. **Ack latency** with 20 incidents running (each runs a runbook of many short shell
   steps on its own local target, so the engine, the store and the thread publisher are
   busy the whole time). The same signed requests (``/rollback start`` that opens the
   modal, and a click on an Approve button) are sent over HTTP on loopback to the bot's
   real ``/slack/events`` (``handlers.app.web_app``) and to a bare Bolt ``AsyncApp`` that
   only acks, served the same way (aiohttp) but in a process of its own, so it does not
   share the bot's interpreter or event loop; alternating A/B so both see the same machine
   load. The client runs in its own thread with keep-alive connections. Printed: p50/p99
   per app and request kind, the ratio bot/bare and the load average.
   Targets: p99 < 100 ms, bot p99 <= 1.5x bare Bolt's.
2. **Web API calls** of one full default-runbook incident (``/rollback start`` to
   completion against the drill sandbox, pressing only the buttons the bot posted),
   counted on the Slack fake, per method. Target: <= 80.

    python bench/ack.py                    # 200 requests per kind and app
    python bench/ack.py --requests 500 --skip-incident

Loopback only; bounded by ``--timeout`` (default 300 s).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from aiohttp import web  # noqa: E402
from common import load, run_bounded  # noqa: E402
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request  # noqa: E402
from slack_bolt.async_app import AsyncAck, AsyncApp  # noqa: E402
from slack_sdk.web.async_client import AsyncWebClient  # noqa: E402

from bot.core.config import BotConfig, SlackSecrets, parse_config  # noqa: E402
from bot.core.lifecycle import Status  # noqa: E402
from bot.slack.client import make_client  # noqa: E402
from bot.slack.services import Services, build_services  # noqa: E402
from handlers.app import create_app, web_app  # noqa: E402
from tests.slack_driver import SlackDriver, bolt_sender  # noqa: E402
from tests.slack_fake import SlackFake  # noqa: E402
from tests.slack_player import Cast, default_answers, play_incident  # noqa: E402

CH = "C0INCIDENT1"
REQ, LEAD, PO, IC, NOBODY = "U0REQUESTER", "U0LEAD", "U0PRODOWNER", "U0COMMANDER", "U0RANDOM"
RUNNING = 20
#: The incident's waits (and the plan's two-hour watch) compressed by this factor.
INCIDENT_TIME_SCALE = 0.002


def _busy_runbook(phases: int = 10, steps: int = 30, sleep: float = 0.1) -> str:
    """Approval, then ``phases`` x ``steps`` short shell steps (about phases*steps*sleep seconds)."""
    out = ["name: bench-busy", "phases:", "  - id: authorization", "    title: Authorization", "    steps:",
           "      - {id: approval, title: Approval, kind: approval, policy: default}"]
    for p in range(phases):
        out += [f"  - id: work{p}", f"    title: Work {p}", "    steps:"]
        out += [f"      - {{id: s{p}_{s}, title: 'Step {p}.{s}', kind: command, idempotent: true, "
                f"run: 'sleep {sleep}; echo step {p}.{s}'}}" for s in range(steps)]
    return "\n".join(out) + "\n"


def _config(tmp: Path, targets: list[dict[str, Any]], runbook: Path | None, *, time_scale: float = 0.01,
            **slack: Any) -> BotConfig:
    return parse_config({
        "slack": {"channels": [CH], **slack},
        "roles": {"tech_lead": {"users": [LEAD]}, "product_owner": {"users": [PO]},
                  "incident_commander": {"users": [IC]}},
        "targets": targets,
        "runbook": str(runbook) if runbook else None,
        "state_db": str(tmp / "state.db"),
        "artifacts_dir": str(tmp / "artifacts"),
        "time_scale": time_scale,
    })


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/slack/events"


def _bare_bolt(token: str, base_url: str, signing_secret: str) -> web.Application:
    """A Bolt app that acks the same requests and does nothing else, served like the bot."""
    app = AsyncApp(client=AsyncWebClient(token=token, base_url=base_url), signing_secret=signing_secret)

    async def just_ack(ack: AsyncAck) -> None:
        await ack()

    app.command("/rollback")(just_ack)
    app.action("rb_approve")(just_ack)

    async def events(request: web.Request) -> web.Response:
        return await to_aiohttp_response(await app.async_dispatch(await to_bolt_request(request)))

    wa = web.Application()
    wa.add_routes([web.post("/slack/events", events)])
    return wa


async def _serve_bare(token: str, base_url: str, signing_secret: str) -> None:
    """The bare Bolt app's own process: print its URL, serve until stdin closes."""
    runner, url = await _serve(_bare_bolt(token, base_url, signing_secret))
    print(url, flush=True)
    try:
        await asyncio.to_thread(sys.stdin.read)
    finally:
        await runner.cleanup()


class BareBolt:
    """The bare Bolt app in a process of its own (its own interpreter and event loop), like a
    second service on the same machine; stopped by closing its stdin."""

    def __init__(self, fake: SlackFake) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-bare"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "BARE_BOLT_TOKEN": fake.bot_token, "BARE_BOLT_API_URL": fake.base_url,
                 "BARE_BOLT_SIGNING_SECRET": fake.signing_secret})
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.close()
            raise RuntimeError("the bare Bolt process did not start")

    def close(self) -> None:
        """Stop the process."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Captured:
    """A signed request as Slack would send it."""

    body: str
    headers: dict[str, str]


def _capturing(into: list[Captured]) -> Callable[[str, dict[str, str]], Awaitable[tuple[int, str]]]:
    async def send(body: str, headers: dict[str, str]) -> tuple[int, str]:
        into.append(Captured(body, dict(headers)))
        return 200, ""

    return send


def _measure(urls: dict[str, str], requests: dict[str, list[Captured]],
             pause: float) -> dict[tuple[str, str], list[float]]:
    """Send every request to every app, alternating the order; seconds per (app, kind)."""
    out: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    with httpx.Client(timeout=10) as http:
        for kind, reqs in requests.items():
            for i, req in enumerate(reqs):
                order = list(urls) if i % 2 == 0 else list(reversed(urls))
                for name in order:
                    started = time.perf_counter()
                    resp = http.post(urls[name], content=req.body.encode(), headers=req.headers)
                    elapsed = time.perf_counter() - started
                    if resp.status_code != 200:
                        raise RuntimeError(f"{name} answered {resp.status_code} to {kind}: {resp.text[:200]}")
                    out[(name, kind)].append(elapsed)
                    time.sleep(pause)
    return out


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)


async def _open(fake: SlackFake, driver: SlackDriver, services: Services, target: str) -> str:
    """``/rollback start`` and the form on ``target``; the thread's ts once the approval request is up.

    (Not ``services.idle``: the other incidents keep running.)"""
    views = len(fake.views_opened)
    await driver.slash_command(text=f"start {target} benchmark", channel_id=CH)

    async def opened() -> bool:
        return len(fake.views_opened) > views

    await _until(opened, f"{target}: the modal opened")
    await driver.view_submission("rb_start", user_id=REQ, view_id=fake.views_opened[-1].id, values={
        "target": target, "triggers": ["data_corruption"], "severity": "P1", "impact": "High",
        "business_risk": "Critical", "reason": "benchmark"})
    found: list[str] = []

    async def asks_approval() -> bool:
        inc = await services.store.active_incident(target)
        if inc is None or not inc.thread_ts:
            return False
        found[:] = [inc.thread_ts]
        return any(b.action_id == "rb_approve" for b in fake.buttons(CH, inc.thread_ts))

    await _until(asks_approval, f"{target}: the approval request was posted")
    return found[0]


def _secrets(fake: SlackFake) -> SlackSecrets:
    """The bot's Slack secrets for the fake: its token, signing secret and Web API address."""
    return SlackSecrets.model_validate({"slack_bot_token": fake.bot_token, "slack_signing_secret": fake.signing_secret,
                                       "slack_api_url": fake.base_url})


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _running(services: Services) -> int:
    return len([i for i in await services.store.incidents(active_only=True) if i.status is Status.RUNNING])


def _prepare(tmp: Path) -> tuple[Path, list[dict[str, Any]]]:
    """The busy runbook's file and a working directory per target."""
    tmp.mkdir(parents=True)
    runbook = tmp / "busy.yml"
    runbook.write_text(_busy_runbook())
    targets = []
    for i in range(RUNNING + 2):
        (tmp / f"t{i:02d}").mkdir()
        targets.append({"name": f"t{i:02d}", "transport": "local", "workdir": str(tmp / f"t{i:02d}")})
    return runbook, targets


async def bench_ack(tmp: Path, n: int, warmup: int, pause: float) -> bool:
    """Part 1; True when the targets are met."""
    runbook, targets = await asyncio.to_thread(_prepare, tmp)
    users = {u: u.lower() for u in (REQ, LEAD, PO, IC, NOBODY)}
    async with SlackFake(users=users, trigger_ttl=None) as fake:
        fake.add_channel(CH, "incident-response")
        secrets = _secrets(fake)
        services = await build_services(_config(tmp, targets, runbook), make_client(secrets))
        runners: list[web.AppRunner] = []
        try:
            app = create_app(secrets, services)
            await services.resume()
            driver = SlackDriver(fake, bolt_sender(app), default_user_id=REQ)
            # 20 incidents approved by the incident commander: they run while we measure.
            for i in range(RUNNING):
                thread_ts = await _open(fake, driver, services, f"t{i:02d}")
                await driver.press(fake.find_button(CH, thread_ts, action_id="rb_approve"), IC)
            # One more waits for approval: its Approve button is the one clicked in the benchmark.
            thread_ts = await _open(fake, driver, services, f"t{RUNNING:02d}")
            click = fake.find_button(CH, thread_ts, action_id="rb_approve")
            free_target = f"t{RUNNING + 1:02d}"

            captured: dict[str, list[Captured]] = {"start": [], "click": []}
            cap = SlackDriver(fake, _capturing(captured["start"]), default_user_id=REQ)
            for _ in range(n + warmup):
                await cap.slash_command(text=f"start {free_target} benchmark", channel_id=CH)
            cap = SlackDriver(fake, _capturing(captured["click"]), default_user_id=NOBODY)
            for _ in range(n + warmup):
                await cap.press(click, NOBODY)
                await asyncio.sleep(0.000002)  # distinct action_ts per click

            bot_runner, bot_url = await _serve(web_app(app, services))
            runners.append(bot_runner)
            bare = await asyncio.to_thread(BareBolt, fake)
            running_before = await _running(services)
            calls_before = len(fake.calls)
            started = time.monotonic()
            try:
                times = await asyncio.to_thread(_measure, {"bot": bot_url, "bare Bolt": bare.url}, captured, pause)
            finally:
                await asyncio.to_thread(bare.close)
            took = time.monotonic() - started
            running_after = await _running(services)
            api_calls = len(fake.calls) - calls_before
            measured_load = load()
        finally:
            for r in runners:
                await r.cleanup()
            await services.close()

    print(f"Ack latency over HTTP on loopback, {n} requests per kind and app (+{warmup} warm-up, dropped), "
          f"{running_before} incidents running at the start and {running_after} at the end; "
          f"{took:.1f} s, {api_calls} Web API calls by the bot meanwhile, {threading.active_count()} threads; "
          f"the bare Bolt app runs in its own process (pid {bare.proc.pid}), the bot in this one; "
          f"{measured_load}")
    print(f"  {'request':<22} {'app':<10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    ok = True
    for kind, label in (("start", "/rollback start"), ("click", "button click (Approve)")):
        p99 = {}
        for name in ("bot", "bare Bolt"):
            values = times[(name, kind)][warmup:]
            p99[name] = _pct(values, 0.99) * 1000
            print(f"  {label:<22} {name:<10} {_pct(values, 0.5) * 1000:8.2f} {p99[name]:8.2f} "
                  f"{max(values) * 1000:8.2f}")
        ratio = p99["bot"] / p99["bare Bolt"] if p99["bare Bolt"] else float("inf")
        met = p99["bot"] < 100 and ratio <= 1.5
        ok = ok and met
        print(f"  {label:<22} bot p99 / bare p99 = {ratio:.2f}x  (target: p99 < 100 ms and <= 1.5x) "
              f"{'MET' if met else 'NOT MET'}")
    return ok


async def bench_calls(tmp: Path) -> bool:
    """Part 2; True when the incident stays within 80 Web API calls."""
    from bot.drill.sandbox import build_sandbox

    await asyncio.to_thread(tmp.mkdir, parents=True)
    sandbox = await asyncio.to_thread(build_sandbox, tmp / "target")
    try:
        users = {u: u.lower() for u in (REQ, LEAD, PO, IC)}
        async with SlackFake(users=users) as fake:
            fake.add_channel(CH, "incident-response")
            secrets = _secrets(fake)
            config = _config(tmp, [{"name": "sandbox", "transport": "local", **sandbox.settings()}], None,
                             time_scale=INCIDENT_TIME_SCALE)
            services = await build_services(config, make_client(secrets))
            try:
                app = create_app(secrets, services)
                await services.resume()
                driver = SlackDriver(fake, bolt_sender(app), default_user_id=REQ)
                started = time.monotonic()
                played = await play_incident(
                    fake=fake, driver=driver, services=services, channel=CH, target="sandbox",
                    cast=Cast(requester=REQ, approvers=[LEAD, PO], answerer=IC),
                    answers=default_answers(strategy="C", backup=sandbox.backup_path.name))
                took = time.monotonic() - started
            finally:
                await services.close()
            by_method = collections.Counter(c.method for c in fake.calls)
            presses = len(played.pressed)
    finally:
        await asyncio.to_thread(sandbox.stop)
    total = sum(by_method.values())
    print(f"\nWeb API calls of one full default-runbook incident (strategy C, {presses} buttons pressed, "
          f"{played.incident.status.value} in {took:.1f} s with time_scale {INCIDENT_TIME_SCALE} and "
          f"update_interval_seconds {config.slack.update_interval_seconds}):")
    for method, count in by_method.most_common():
        print(f"  {method:<32} {count:4d}")
    print(f"  {'total':<32} {total:4d}  (target <= 80) {'MET' if total <= 80 else 'NOT MET'}")
    return total <= 80 and played.incident.status is Status.COMPLETED


async def main_async(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-ack-"))
    try:
        ok = await bench_ack(tmp / "ack", args.requests, args.warmup, args.pause)
        if not args.skip_incident:
            ok = await bench_calls(tmp / "incident") and ok
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nbench/ack.py: {'all targets met' if ok else 'some targets NOT met'}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=textwrap.dedent(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="measured requests per kind and app")
    parser.add_argument("--warmup", type=int, default=10, help="requests per kind and app not counted")
    parser.add_argument("--pause", type=float, default=0.005, help="seconds between two requests")
    parser.add_argument("--skip-incident", action="store_true", help="skip the Web API call count")
    parser.add_argument("--timeout", type=float, default=300, help="give up after this many seconds")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:  # the baseline's own process (see BareBolt)
        asyncio.run(_serve_bare(os.environ["BARE_BOLT_TOKEN"], os.environ["BARE_BOLT_API_URL"],
                                os.environ["BARE_BOLT_SIGNING_SECRET"]))
        return 0
    print(load(), flush=True)
    return run_bounded(main_async(args), args.timeout, "bench/ack.py")


if __name__ == "__main__":
    sys.exit(main())
