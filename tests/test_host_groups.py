"""Host groups: a command step fans out to every host at once and succeeds only if all do."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from actions.fanout import run_on_hosts
from actions.local import LocalTransport
from actions.transport import Transport
from bot.core.engine import Engine, Target
from bot.core.lifecycle import Status, StepStatus
from bot.core.runbook import parse_runbook
from bot.core.targets import TargetSettings, open_transports
from bot.drill.sshd import SshdTarget
from bot.state.store import Incident, Store
from tests.sshd import make_ssh_transport

RUNBOOK = textwrap.dedent("""\
    name: g
    phases:
      - id: work
        title: Work
        steps:
          - id: deploy
            title: Deploy on every host
            kind: command
            idempotent: false
            run: "echo ran >> runs.txt; test ! -f fail.flag || { echo broken >&2; exit 3; }; echo done-here"
    """)


def _group(names: list[str], workdir: str = ".", **extra: object) -> TargetSettings:
    return TargetSettings.model_validate({"name": "web", "transport": "local", "workdir": workdir,
                                          "hosts": [{"name": n} for n in names], **extra})


def test_host_group_settings() -> None:
    settings = TargetSettings.model_validate({
        "name": "web", "host": "10.0.0.1", "port": 2222, "key_file": "/k", "known_hosts": "/kh",
        "workdir": "/srv/app", "hosts": [{"name": "a"}, {"name": "b", "host": "10.0.0.2", "port": 22}]})
    assert settings.is_group
    a, b = settings.host_settings()
    assert (a.host, a.port, a.workdir, a.hosts) == ("10.0.0.1", 2222, "/srv/app", [])
    assert (b.host, b.port, str(b.key_file)) == ("10.0.0.2", 22, "/k")
    assert settings.template_values()["hosts"] == ["a", "b"]
    assert "10.0.0.2" not in str(settings.template_values())
    with pytest.raises(ValidationError, match="unique"):
        _group(["a", "a"])
    assert list(open_transports(_group(["x", "y"]))) == ["x", "y"]


#: All hosts meet in ``meet/``: each waits there until the four are in at once (run one after
#: another, the first would wait alone until its timeout); no clock is read.
MEET = ("mkdir -p meet; touch meet/$BASHPID; until [ $(ls meet | wc -l) -ge 4 ]; do sleep 0.02; done; "
        "ls meet | wc -l > met.$BASHPID; echo $((6*7))")
#: Each host notes how many are in ``run/`` while it is, waiting (a while) for company.
COUNT = ("mkdir -p run; touch run/$BASHPID; i=0; until [ $(ls run | wc -l) -ge 2 ] || [ $i -ge 500 ]; "
         "do sleep 0.02; i=$((i+1)); done; ls run | wc -l > seen.$BASHPID; sleep 0.05; rm run/$BASHPID")


def _counts(folder: Path, pattern: str) -> list[int]:
    return sorted(int(p.read_text()) for p in folder.glob(pattern))


async def test_run_on_hosts_is_concurrent_and_bounded(tmp_path: Path) -> None:
    hosts: dict[str, Transport] = {f"h{i}": LocalTransport(name=f"h{i}", root=str(tmp_path)) for i in range(4)}
    try:
        results = await run_on_hosts(hosts, MEET, timeout=120)
        assert [(r.host, r.exit_status, r.stdout) for r in results] == [(f"h{i}", 0, "42\n") for i in range(4)]
        assert _counts(tmp_path, "met.*") == [4, 4, 4, 4]  # all four at once
        results = await run_on_hosts(hosts, COUNT, timeout=120, concurrency=2)
        assert all(r.exit_status == 0 for r in results), results
        seen = _counts(tmp_path, "seen.*")
        assert len(seen) == 4 and max(seen) == 2  # two at once, never three
    finally:
        for t in hosts.values():
            await t.close()


async def _engine(tmp_path: Path, target: Target) -> tuple[Store, Engine]:
    store = await Store.open(str(tmp_path / "state.db"))
    engine = Engine(store, parse_runbook(RUNBOOK), {"web": target}, artifacts_dir=tmp_path / "art")
    return store, engine


async def _failed_deploy(store: Store, engine: Engine) -> tuple[Incident, str]:
    """A new incident on the group, run until the deploy fails on some host: the incident and the error shown."""
    inc = await store.create_incident(target="web", runbook="g")
    inc = await engine.run(inc.id)
    w = await engine.waiting_for(inc.id)
    assert w is not None and w.kind == "failure" and w.error is not None
    return inc, w.error


async def test_local_group_fails_on_some_hosts_and_retry_reruns_only_those(tmp_path: Path) -> None:
    names = ["h1", "h2", "h3", "h4"]
    for n in names:
        (tmp_path / n).mkdir()
    (tmp_path / "h2" / "fail.flag").touch()
    (tmp_path / "h4" / "fail.flag").touch()
    settings = _group(names)
    target = Target(settings, LocalTransport(name="h1", root=str(tmp_path / "h1")),
                    {n: LocalTransport(name=n, root=str(tmp_path / n)) for n in names})
    target.transport = target.hosts["h1"]
    store, engine = await _engine(tmp_path, target)
    try:
        inc, error = await _failed_deploy(store, engine)
        assert "failed on 2 of 4 hosts: h2 (exit 3), h4 (exit 3)" in error
        run = (await store.latest_runs(inc.id))["deploy"]
        assert run.status is StepStatus.FAILED
        assert run.captures["failed_hosts"] == ["h2", "h4"]
        by_host = {h["host"]: h for h in run.captures["hosts"]}
        assert by_host["h1"]["ok"] and by_host["h1"]["exit_status"] == 0 and "done-here" in by_host["h1"]["tail"]
        assert not by_host["h2"]["ok"] and by_host["h2"]["exit_status"] == 3 and "broken" in by_host["h2"]["tail"]
        assert "2/4 hosts ok; failed: h2 (exit 3), h4 (exit 3)" in run.output_tail
        for n in names:
            assert (tmp_path / n / "runs.txt").read_text() == "ran\n"

        (tmp_path / "h2" / "fail.flag").unlink()
        (tmp_path / "h4" / "fail.flag").unlink()
        await engine.answer(inc.id, "deploy", "retry", user="U1")
        inc = await engine.run(inc.id)
        assert inc.status is Status.COMPLETED
        run = (await store.latest_runs(inc.id))["deploy"]
        assert run.status is StepStatus.DONE and run.attempt == 2
        assert [(h["host"], h["ok"], h["attempt"]) for h in run.captures["hosts"]] == [
            ("h1", True, 1), ("h2", True, 2), ("h3", True, 1), ("h4", True, 2)]
        assert run.captures["failed_hosts"] == []
        # the command is not assumed idempotent: hosts that had succeeded did not run it again
        for n, times in (("h1", 1), ("h2", 2), ("h3", 1), ("h4", 2)):
            assert (tmp_path / n / "runs.txt").read_text() == "ran\n" * times
        assert "4/4 hosts ok (2 kept from an earlier attempt)" in run.output_tail
    finally:
        await target.close()
        await engine.aclose()
        await store.close()


async def test_ssh_group_of_connections_to_one_sshd(sshd_target: SshdTarget, tmp_path: Path) -> None:
    """Several SSHTransport connections to the test sshd count as hosts; one host is down."""
    work = tmp_path / "app"
    work.mkdir()
    hosts: dict[str, Transport] = {f"s{i}": make_ssh_transport(sshd_target, name=f"s{i}") for i in range(5)}
    down = make_ssh_transport(sshd_target, name="s3", port=1, connect_timeout=3)  # nothing listens there
    up = hosts["s3"]
    hosts["s3"] = down
    settings = TargetSettings.model_validate({
        "name": "web", "host": sshd_target.host, "port": sshd_target.port, "user": sshd_target.username,
        "key_file": sshd_target.client_key_path, "known_hosts": sshd_target.known_hosts_path,
        "workdir": str(work), "hosts": [{"name": n} for n in hosts]})
    target = Target(settings, hosts["s0"], hosts)
    store, engine = await _engine(tmp_path, target)
    try:
        inc, error = await _failed_deploy(store, engine)
        assert "failed on 1 of 5 hosts: s3 (ConnectError" in error
        run = (await store.latest_runs(inc.id))["deploy"]
        s3 = next(h for h in run.captures["hosts"] if h["host"] == "s3")
        assert s3["exit_status"] is None and s3["error"].startswith("ConnectError")
        assert (work / "runs.txt").read_text() == "ran\n" * 4  # one shared disk: four hosts ran

        target.hosts["s3"] = up  # the host is back
        await engine.answer(inc.id, "deploy", "retry", user="U1")
        inc = await engine.run(inc.id)
        assert inc.status is Status.COMPLETED
        run = (await store.latest_runs(inc.id))["deploy"]
        assert all(h["ok"] for h in run.captures["hosts"])
        assert (work / "runs.txt").read_text() == "ran\n" * 5  # only s3 ran again
    finally:
        await down.close()
        await target.close()
        await engine.aclose()
        await store.close()




def test_view_shows_each_failed_host() -> None:
    from bot.record.viewmodel import _facts
    from bot.state.store import StepRun

    run = StepRun.__new__(StepRun)
    object.__setattr__(run, "captures", {"hosts": [
        {"host": "a", "ok": True, "exit_status": 0},
        {"host": "b", "ok": False, "exit_status": 3},
        {"host": "c", "ok": False, "exit_status": None, "error": "ConnectionLost: link dropped"}]})
    assert _facts(run)["hosts"] == "1/3 ok; failed b (exit 3), c (ConnectionLost: link dropped)"
