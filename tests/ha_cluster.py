"""Several ``rollback-bot serve`` replicas as separate processes on one PostgreSQL, for HA tests and bench/ha.py.

Each replica is the real command (``python -m handlers.app serve``) with the configuration
the README's compose file uses (one ``state_db`` URL, the password in
``ROLLBACK_BOT_DB_PASSWORD``, the Slack fake as ``SLACK_API_URL``). The test plays Slack.
In HTTP mode each replica listens on its own port and signed requests go to whichever
replica the test chooses (a load balancer). In Socket Mode (``socket_mode=True``:
``SLACK_APP_TOKEN`` set, /healthz on ``slack.health_port``) each replica opens its own
connection to the fake, which hands each envelope to one of them at random, as Slack does;
``socket_replicas()`` tells which replica holds which connection. ``kill``/``signal``
send SIGKILL, SIGSTOP or SIGCONT to one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import yaml
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bot.state.schema import leases
from bot.state.store import state_url
from tests.pg import free_port
from tests.slack_driver import Sender, SlackDriver, socket_sender
from tests.slack_fake import SlackFake

ROOT = Path(__file__).resolve().parent.parent
CH = "C0INCIDENT1"
REQ, LEAD, PO, IC = "U0REQUESTER", "U0LEAD", "U0PRODOWNER", "U0COMMANDER"


@dataclass
class Replica:
    """One serve process."""

    index: int
    port: int
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its /slack/events URL."""
        return f"http://127.0.0.1:{self.port}/slack/events"

    @property
    def alive(self) -> bool:
        """Running (possibly paused)."""
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        """The end of its log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Cluster:
    """Replicas of one configuration against one database and one Slack fake."""

    root: Path
    fake: SlackFake
    db_url: str
    db_password: str
    config: dict[str, Any]
    replicas: list[Replica] = field(default_factory=list)
    socket_mode: bool = False
    _turn: itertools.count[int] = field(default_factory=itertools.count)
    _socket_owner: dict[int, int] = field(default_factory=dict)
    _db: AsyncEngine | None = None

    @classmethod
    def make(cls, root: Path, fake: SlackFake, db_url: str, db_password: str, *, runbook: str, workdir: Path,
             target: dict[str, Any], n: int = 3, lease_seconds: float = 3.0, time_scale: float = 0.01,
             extra: dict[str, Any] | None = None, targets: list[dict[str, Any]] | None = None,
             socket_mode: bool = False) -> Cluster:
        """Write the shared configuration and one file per replica (only the port differs)."""
        root.mkdir(parents=True, exist_ok=True)
        (root / "runbook.yml").write_text(runbook)
        config: dict[str, Any] = {
            "slack": {"channels": [CH], "update_interval_seconds": 0.1},
            "roles": {"tech_lead": {"users": [LEAD]}, "product_owner": {"users": [PO]},
                      "incident_commander": {"users": [IC]}},
            "targets": targets or [{"name": "db1", "workdir": str(workdir), **target}],
            "runbook": str(root / "runbook.yml"),
            "state_db": db_url,
            "replicas": {"lease_seconds": lease_seconds, "poll_seconds": min(0.2, lease_seconds / 4)},
            "time_scale": time_scale,
            **(extra or {}),
        }
        cluster = cls(root, fake, db_url, db_password, config, socket_mode=socket_mode)
        for i in range(n):
            folder = root / f"replica{i}"
            folder.mkdir(parents=True, exist_ok=True)
            port = free_port()
            own = {**config, "slack": {**config["slack"], ("health_port" if socket_mode else "http_port"): port},
                   "artifacts_dir": str(folder / "artifacts")}
            path = folder / "bot.yml"
            path.write_text(yaml.safe_dump(own))
            cluster.replicas.append(Replica(i, port, path, folder / "serve.log"))
        return cluster

    def env(self) -> dict[str, str]:
        """The environment of every replica: Slack fake, signing secret or app token, database password."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ROLLBACK_BOT_"))}
        env.update(SLACK_BOT_TOKEN=self.fake.bot_token, SLACK_API_URL=self.fake.base_url,
                   ROLLBACK_BOT_DB_PASSWORD=self.db_password, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        if self.socket_mode:
            env.update(SLACK_APP_TOKEN=self.fake.app_token)
        else:
            env.update(SLACK_SIGNING_SECRET=self.fake.signing_secret)
        return env

    async def start(self, *which: int) -> None:
        """Start replicas (all by default) and wait until each answers /healthz (and has its socket open)."""
        todo = [self.replicas[i] for i in which] if which else self.replicas
        for r in todo:
            self._spawn(r)
        await asyncio.gather(*(self.wait_healthy(r.index) for r in todo))
        if self.socket_mode:
            wanted = {r.index for r in todo}
            await until(lambda: wanted <= set(self.socket_replicas().values()),
                        "every replica opened its Socket Mode connection", cluster=self)

    def _spawn(self, r: Replica) -> None:
        with r.log.open("ab") as log:
            r.proc = subprocess.Popen([sys.executable, "-m", "handlers.app", "serve", "--config", str(r.config)],
                                      cwd=str(r.config.parent), env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    async def wait_healthy(self, i: int, timeout: float = 90.0) -> None:
        """Wait until replica ``i`` answers /healthz (it has opened the store and started)."""
        r = self.replicas[i]
        deadline = asyncio.get_running_loop().time() + timeout
        async with httpx.AsyncClient() as client:
            while True:
                if not r.alive:
                    raise AssertionError(f"replica {i} exited:\n{r.tail()}")
                try:
                    if (await client.get(f"http://127.0.0.1:{r.port}/healthz", timeout=2)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"replica {i} never became healthy:\n{r.tail()}")
                await asyncio.sleep(0.1)

    def signal(self, i: int, sig: signal.Signals) -> None:
        """Send a signal to replica ``i``."""
        proc = self.replicas[i].proc
        assert proc is not None
        os.kill(proc.pid, sig)

    def kill(self, i: int) -> None:
        """SIGKILL replica ``i`` and reap it."""
        self.signal(i, signal.SIGKILL)
        proc = self.replicas[i].proc
        assert proc is not None
        proc.wait(timeout=30)

    async def stop_all(self) -> None:
        """SIGCONT then SIGTERM every replica; SIGKILL what does not stop."""
        for r in self.replicas:
            if r.alive and r.proc is not None:
                os.kill(r.proc.pid, signal.SIGCONT)
                r.proc.terminate()
        for r in self.replicas:
            if r.proc is not None:
                try:
                    await asyncio.to_thread(r.proc.wait, 5)
                except subprocess.TimeoutExpired:
                    r.proc.kill()
                    await asyncio.to_thread(r.proc.wait, 30)
        if self._db is not None:
            await self._db.dispose()

    # ------------------------------------------------------------ playing Slack

    def sender(self, pick: Callable[[], int] | None = None) -> Sender:
        """A sender that spreads requests over the live replicas, like a load balancer (round robin) or,
        in Socket Mode, like Slack (one open connection at random); ``pick`` chooses the replica instead."""
        if self.socket_mode:
            async def envelope(body: str, headers: dict[str, str]) -> tuple[int, str]:
                connection = None
                if pick is not None:
                    i = pick()
                    connection = next(n for n, r in self.socket_replicas().items()
                                      if r == i and n in self.fake.socket_connections)
                return await socket_sender(self.fake, 30.0, connection)(body, headers)

            return envelope
        client = httpx.AsyncClient(timeout=30)

        async def send(body: str, headers: dict[str, str]) -> tuple[int, str]:
            live = [r for r in self.replicas if r.alive]
            r = self.replicas[pick()] if pick else live[next(self._turn) % len(live)]
            resp = await client.post(r.url, content=body, headers=headers)
            return resp.status_code, resp.text

        return send

    def driver(self, pick: Callable[[], int] | None = None) -> SlackDriver:
        """A Slack driver whose requests the cluster's load balancer spreads."""
        return SlackDriver(self.fake, self.sender(pick), default_user_id=REQ, default_channel_id=CH)

    def socket_replicas(self) -> dict[int, int]:
        """Which replica made each Socket Mode connection of the fake: {connection number: replica index}.

        Found by the connection's client port among the live replicas' sockets, while it is open.
        """
        open_now = set(self.fake.socket_connections)
        ports = {port: r.index for r in self.replicas if r.alive and r.proc for port in _tcp_ports(r.proc.pid)}
        for n, (_host, port) in self.fake.socket_peers.items():
            if n in open_now and n not in self._socket_owner and port in ports:
                self._socket_owner[n] = ports[port]
        return dict(self._socket_owner)

    # ------------------------------------------------------------ looking at the leases

    @property
    def db(self) -> AsyncEngine:
        """An engine on the shared database (the test's own connection)."""
        if self._db is None:
            self._db = create_async_engine(state_url(self.db_url, {"ROLLBACK_BOT_DB_PASSWORD": self.db_password}))
        return self._db

    async def holder(self, lease: str) -> int | None:
        """The index of the replica that holds a lease (by its pid in the holder name), if any is live."""
        async with self.db.connect() as conn:
            row = (await conn.execute(sa.select(leases.c.holder, leases.c.expires_at, sa.func.clock_timestamp())
                                      .where(leases.c.name == lease))).first()
        if row is None or row.holder is None or row.expires_at < row[2]:
            return None
        pid = int(row.holder.rsplit("-", 2)[1])
        return next((r.index for r in self.replicas if r.proc is not None and r.proc.pid == pid), None)

    async def token(self, lease: str) -> int:
        """The lease's current fencing token (0: never taken)."""
        async with self.db.connect() as conn:
            value = (await conn.execute(sa.select(leases.c.token).where(leases.c.name == lease))).scalar()
        return int(value or 0)


def _tcp_ports(pid: int) -> set[int]:
    """The local ports of a process's TCP sockets (Linux: its socket inodes in /proc/net/tcp*)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def _ready(value: Any) -> bool:
    """Progress: anything but None, False or an empty collection (a replica index 0 counts)."""
    if value is None or value is False:
        return False
    return len(value) > 0 if isinstance(value, list | tuple | dict | set | str) else True


async def until(predicate: Callable[[], Any], what: str, timeout: float = 60.0, cluster: Cluster | None = None,
                every: float = 0.05) -> Any:
    """Wait for progress (a predicate, sync or async, turning ready); the replicas' logs on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if _ready(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            logs = "\n".join(f"--- replica {r.index}\n{r.tail()}" for r in (cluster.replicas if cluster else []))
            raise TimeoutError(f"{what}\n{logs}")
        await asyncio.sleep(every)
