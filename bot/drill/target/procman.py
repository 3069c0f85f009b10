#!/usr/bin/env python3
"""A minimal process manager for the drill target, with pm2's command shape.

Stdlib only; it is copied onto the sandbox target and run there::

    python3 procman.py --home DIR start NAME [--cwd DIR] [--ready-file F] -- CMD...
    python3 procman.py --home DIR start|stop|restart|delete NAME
    python3 procman.py --home DIR status NAME     # JSON list of one entry, like jlist
    python3 procman.py --home DIR jlist           # JSON like `pm2 jlist`
    python3 procman.py --home DIR kill            # stop everything (like `pm2 kill`)

The first ``start`` with a command registers the app; later ones reuse it. Commands are
idempotent: starting a running app or stopping a stopped one exits 0. An unknown name
exits 1 with a message, as pm2 does. Apps run in their own session (setsid) with output
in ``DIR/logs``, so they outlive the shell or SSH channel that started them.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from bot.drill.target.processes import Running, is_alive, proc_starttime, rss_bytes
else:  # a script in the target's bin/, beside processes.py
    from processes import Running, is_alive, proc_starttime, rss_bytes

REGISTRY = "procman.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class ProcmanError(Exception):
    """A command could not be carried out; the message is printed and the exit status is 1."""


class Procman:
    """Registry and process control under one home directory."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.pids = home / "pids"
        self.logs = home / "logs"
        for d in (self.home, self.pids, self.logs):
            d.mkdir(parents=True, exist_ok=True)

    # -- persistence -------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialize procman invocations on this home."""
        with open(self.home / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def load(self) -> dict[str, dict[str, Any]]:
        """The registered apps by name."""
        path = self.home / REGISTRY
        if not path.exists():
            return {}
        apps: dict[str, dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["apps"]
        return apps

    def save(self, apps: dict[str, dict[str, Any]]) -> None:
        """Write the registry atomically."""
        path = self.home / REGISTRY
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"apps": apps}, indent=2, sort_keys=True), encoding="utf-8")
        tmp.replace(path)

    def pid_file(self, name: str) -> Path:
        """Where the running process of ``name`` is recorded."""
        return self.pids / f"{name}.json"

    def out_log(self, name: str) -> Path:
        """The app's stdout log."""
        return self.logs / f"{name}-out.log"

    def err_log(self, name: str) -> Path:
        """The app's stderr log."""
        return self.logs / f"{name}-error.log"

    def running(self, name: str) -> Running | None:
        """The recorded process of ``name`` (alive or not), or None."""
        path = self.pid_file(name)
        if not path.exists():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        return Running(int(data["pid"]), data.get("starttime"), int(data["started_at_ms"]))

    def get(self, apps: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
        """The registration of ``name``; raises for an unknown name, as pm2 does."""
        if name not in apps:
            raise ProcmanError(f"[procman] Process or Namespace {name} not found")
        return apps[name]

    # -- actions -----------------------------------------------------------------------

    def start(
        self,
        name: str,
        command: list[str] | None,
        *,
        cwd: str | None,
        ready_file: str | None,
        ready_timeout: float,
    ) -> str:
        """Register (when a command is given) and start ``name``; no-op when online."""
        apps = self.load()
        if command:
            previous = apps.get(name, {})
            apps[name] = {
                "pm_id": previous.get("pm_id", max((a["pm_id"] for a in apps.values()), default=-1) + 1),
                "command": command,
                "cwd": str(Path(cwd or os.getcwd()).resolve()),
                "ready_file": ready_file,
                "ready_timeout": ready_timeout,
                "restart_time": previous.get("restart_time", 0),
                "created_at": previous.get("created_at", int(time.time() * 1000)),
            }
            self.save(apps)
        app = self.get(apps, name)
        current = self.running(name)
        if current is not None and is_alive(current):
            return f"[procman] {name} already online (pid {current.pid})"
        pid = self._spawn(name, app)
        return f"[procman] {name} online (pid {pid})"

    def _spawn(self, name: str, app: dict[str, Any]) -> int:
        ready = Path(app["cwd"], app["ready_file"]) if app.get("ready_file") else None
        if ready is not None:
            ready.unlink(missing_ok=True)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with open(self.out_log(name), "ab") as out, open(self.err_log(name), "ab") as err:
            err.write(f"--- {stamp} procman start {name}\n".encode())
            err.flush()
            proc = subprocess.Popen(
                app["command"],
                cwd=app["cwd"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                close_fds=True,
                start_new_session=True,
            )
        running = Running(proc.pid, proc_starttime(proc.pid), int(time.time() * 1000))
        self.pid_file(name).write_text(
            json.dumps(
                {
                    "pid": running.pid,
                    "starttime": running.starttime,
                    "started_at_ms": running.started_at_ms,
                }
            ),
            encoding="utf-8",
        )
        deadline = time.monotonic() + float(app.get("ready_timeout") or 10.0)
        settle = time.monotonic() + 0.3
        while True:
            if proc.poll() is not None:
                raise ProcmanError(
                    f"[procman] {name} exited with status {proc.returncode} during start\n"
                    + self.tail(self.err_log(name))
                )
            now = time.monotonic()
            if ready is None and now >= settle:
                break
            if ready is not None and ready.exists():
                break
            if now >= deadline:
                self._terminate(running, grace=2.0)
                raise ProcmanError(
                    f"[procman] {name} not ready after {app.get('ready_timeout')} s\n" + self.tail(self.err_log(name))
                )
            time.sleep(0.05)
        # The child is deliberately left running: it is a daemon in its own session.
        proc.returncode = 0
        return proc.pid

    @staticmethod
    def tail(path: Path, lines: int = 20) -> str:
        """The last lines of a log file."""
        try:
            return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @staticmethod
    def _signal(running: Running, sig: int) -> None:
        try:
            os.killpg(running.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(running.pid, sig)

    def _terminate(self, running: Running, *, grace: float) -> None:
        """SIGTERM to the app's process group, SIGKILL after ``grace`` seconds."""
        if not is_alive(running):
            return
        self._signal(running, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not is_alive(running):
                return
            time.sleep(0.05)
        self._signal(running, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and is_alive(running):
            time.sleep(0.05)
        if is_alive(running):
            raise ProcmanError(f"[procman] pid {running.pid} survived SIGKILL")

    def stop(self, name: str, *, grace: float) -> str:
        """Stop ``name``; no-op when already stopped."""
        self.get(self.load(), name)
        current = self.running(name)
        if current is None or not is_alive(current):
            self.pid_file(name).unlink(missing_ok=True)
            return f"[procman] {name} already stopped"
        self._terminate(current, grace=grace)
        self.pid_file(name).unlink(missing_ok=True)
        return f"[procman] {name} stopped (was pid {current.pid})"

    def restart(self, name: str, *, grace: float) -> str:
        """Stop then start ``name`` (starts it when it was stopped)."""
        apps = self.load()
        app = self.get(apps, name)
        self.stop(name, grace=grace)
        app["restart_time"] = int(app.get("restart_time", 0)) + 1
        self.save(apps)
        pid = self._spawn(name, app)
        return f"[procman] {name} restarted (pid {pid})"

    def delete(self, name: str, *, grace: float) -> str:
        """Stop ``name`` and forget it."""
        self.stop(name, grace=grace)
        apps = self.load()
        apps.pop(name, None)
        self.save(apps)
        return f"[procman] {name} deleted"

    def kill(self, *, grace: float) -> str:
        """Stop every app (the registry is kept)."""
        for name in self.load():
            self.stop(name, grace=grace)
        return "[procman] all apps stopped"

    def describe(self, name: str, app: dict[str, Any]) -> dict[str, Any]:
        """One entry in the shape of ``pm2 jlist``."""
        current = self.running(name)
        alive = current is not None and is_alive(current)
        if alive:
            status = "online"
        elif current is not None:
            status = "errored"  # recorded as running but gone: it crashed
        else:
            status = "stopped"
        pid = current.pid if alive and current is not None else 0
        return {
            "pid": pid,
            "name": name,
            "pm_id": app["pm_id"],
            "monit": {"memory": rss_bytes(pid) if pid else 0, "cpu": 0},
            "pm2_env": {
                "name": name,
                "status": status,
                "pm_uptime": current.started_at_ms if current is not None else app["created_at"],
                "created_at": app["created_at"],
                "restart_time": app.get("restart_time", 0),
                "unstable_restarts": 0,
                "pm_cwd": app["cwd"],
                "pm_exec_path": app["command"][0],
                "args": app["command"][1:],
                "pm_out_log_path": str(self.out_log(name)),
                "pm_err_log_path": str(self.err_log(name)),
            },
        }

    def jlist(self, only: str | None = None) -> list[dict[str, Any]]:
        """Every app (or just ``only``) in the shape of ``pm2 jlist``."""
        apps = self.load()
        if only is not None:
            return [self.describe(only, self.get(apps, only))]
        return [self.describe(n, a) for n, a in sorted(apps.items(), key=lambda i: i[1]["pm_id"])]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split ``-- CMD...`` off, then parse the procman options."""
    command: list[str] = []
    if "--" in argv:
        idx = argv.index("--")
        argv, command = argv[:idx], argv[idx + 1 :]
    parser = argparse.ArgumentParser(prog="procman", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--home",
        type=Path,
        default=Path(os.environ.get("PROCMAN_HOME", Path.home() / ".procman")),
    )
    parser.add_argument("--grace", type=float, default=5.0, help="SIGTERM to SIGKILL seconds")
    sub = parser.add_subparsers(dest="action", required=True)
    start = sub.add_parser("start")
    start.add_argument("name")
    start.add_argument("--cwd", default=None)
    start.add_argument("--ready-file", default=None, help="relative to cwd; waited for")
    start.add_argument("--ready-timeout", type=float, default=10.0)
    for action in ("stop", "restart", "status", "delete"):
        sub.add_parser(action).add_argument("name")
    sub.add_parser("jlist")
    sub.add_parser("kill")
    args = parser.parse_args(argv)
    if command and args.action != "start":
        parser.error("a command after -- is only accepted by start")
    name = getattr(args, "name", None)
    if name is not None and not NAME_RE.match(name):
        parser.error(f"invalid app name {name!r}")
    return args, command


def main(argv: list[str] | None = None) -> int:
    """Run one procman command; print its outcome; return the exit status."""
    args, command = parse_args(sys.argv[1:] if argv is None else argv)
    pm = Procman(args.home)
    try:
        with pm.locked():
            if args.action == "start":
                message = pm.start(
                    args.name,
                    command,
                    cwd=args.cwd,
                    ready_file=args.ready_file,
                    ready_timeout=args.ready_timeout,
                )
            elif args.action == "stop":
                message = pm.stop(args.name, grace=args.grace)
            elif args.action == "restart":
                message = pm.restart(args.name, grace=args.grace)
            elif args.action == "delete":
                message = pm.delete(args.name, grace=args.grace)
            elif args.action == "kill":
                message = pm.kill(grace=args.grace)
            elif args.action == "status":
                message = json.dumps(pm.jlist(args.name))
            else:
                message = json.dumps(pm.jlist())
    except ProcmanError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILED
    print(message)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
