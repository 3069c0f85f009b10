"""The sandbox app's side: its env file, the target scripts in ``bin/``, the process manager
it runs under (pm2 when installed, else ``procman``), ports and processes."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bot.drill.sandbox.names import APP_NAME, DB_RELATIVE, DEPLOYMENT_VERSION, ENV_FILE, ProcessManager, SandboxError

#: Unix socket paths are limited to 107 bytes; pm2 puts its sockets in PM2_HOME.
MAX_PM2_HOME = 80
#: The stdlib-only scripts the target runs from its ``bin/``, side by side.
TARGET_SCRIPTS = Path(__file__).resolve().parent.parent / "target"


def install_scripts(bin_dir: Path) -> None:
    """Copy the target's scripts (``bot/drill/target``) into ``bin_dir``, executable."""
    for script in sorted(TARGET_SCRIPTS.glob("*.py")):
        if script.name != "__init__.py":
            shutil.copy2(script, bin_dir / script.name)
            (bin_dir / script.name).chmod(0o755)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_pm2() -> str | None:
    """pm2 from ``$ROLLBACK_BOT_PM2`` (the binary, or a dir with node_modules/.bin/pm2),
    else from PATH."""
    hint = os.environ.get("ROLLBACK_BOT_PM2")
    if hint:
        base = Path(hint)
        for candidate in (base, base / "node_modules" / ".bin" / "pm2", base / "bin" / "pm2"):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return shutil.which("pm2")


def target_python() -> str:
    """The target's ``python3``, by the path it resolves to.

    Version managers put a shell-script shim first on the PATH (pyenv's costs ~80 ms a
    start); the sandbox names the interpreter behind it, as an operator would configure a
    real server's ``python`` setting.
    """
    if not shutil.which("python3"):
        return sys.executable
    try:
        found = subprocess.run(["python3", "-c", "import sys; print(sys.executable)"],
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "python3"
    return found or "python3"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] not in ("Z", "X")


def run_command(
    argv: list[str], *, timeout: float, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise SandboxError(f"{shlex.join(argv)} timed out after {timeout} s") from exc
    if check and proc.returncode != 0:
        raise SandboxError(f"{shlex.join(argv)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout}")
    return proc


def wait_http(url: str, *, timeout: float) -> int:
    """Wait until ``url`` answers at all; return its status."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError) as exc:
            last = exc
            time.sleep(0.1)
    raise SandboxError(f"{url} did not answer within {timeout} s: {last}")


def wait_port_closed(port: int, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return True
        time.sleep(0.1)
    return False


def write_env_file(workdir: Path, *, port: int) -> Path:
    """The app's .env.production as the deployment left it (no MAINTENANCE lines)."""
    path = workdir / ENV_FILE
    path.write_text(
        "# orbis-forge-admin production environment\n"
        "NODE_ENV=production\n"
        f"APP_NAME={APP_NAME}\n"
        f"APP_VERSION={DEPLOYMENT_VERSION}\n"
        "HOST=127.0.0.1\n"
        f"PORT={port}\n"
        f"DATABASE_PATH={DB_RELATIVE}\n"
        "FEATURE_INLINE_EDITING=true\n"
        "FEATURE_JSON_OPERATIONS=true\n"
        "LOG_LEVEL=info\n",
        encoding="utf-8",
    )
    return path


@dataclass(frozen=True)
class Manager:
    """The process manager the app runs under: which one, its home, how to call it."""

    kind: Literal["pm2", "procman"]
    home: Path
    python: str
    bin_dir: Path
    pm2_path: str | None = None

    def base_argv(self) -> list[str]:
        """The manager's command line up to the action."""
        if self.kind == "pm2":
            assert self.pm2_path is not None
            return [self.pm2_path]
        return [self.python, str(self.bin_dir / "procman.py"), "--home", str(self.home)]

    def env(self) -> dict[str, str] | None:
        """pm2's daemon and the app inherit this environment and ``pm2 jlist`` prints it:
        keep it small (no tokens of the bot). procman needs nothing special."""
        if self.kind != "pm2":
            return None
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env["PM2_HOME"] = str(self.home)
        return env

    def commands(self, health_url: str) -> dict[str, str]:
        """pm_start / pm_stop / pm_restart / pm_status as shell command strings."""
        q = shlex.quote
        if self.kind == "pm2":
            assert self.pm2_path is not None
            base = f"PM2_HOME={q(str(self.home))} {q(self.pm2_path)}"
            # pm2 returns before a non-Node app listens: wait for it, as a deploy script does.
            wait = f"{q(self.python)} {q(str(self.bin_dir / 'app.py'))} --wait-http {q(health_url)}"
            return {
                "pm_start": f"{base} start {APP_NAME} && {wait}",
                "pm_stop": f"{base} stop {APP_NAME}",
                "pm_restart": f"{base} restart {APP_NAME} && {wait}",
                "pm_status": f"{base} jlist",
            }
        base = shlex.join(self.base_argv())
        return {
            "pm_start": f"{base} start {APP_NAME}",
            "pm_stop": f"{base} stop {APP_NAME}",
            "pm_restart": f"{base} restart {APP_NAME}",
            "pm_status": f"{base} status {APP_NAME}",
        }

    def start(self, *, workdir: Path, port: int, pid_file: Path) -> None:
        """Register and start the app; wait until it writes its pid file and answers HTTP."""
        script = str(self.bin_dir / "app.py")
        app_args = ["--workdir", str(workdir), "--port", str(port), "--pid-file", str(pid_file)]
        if self.kind == "pm2":
            argv = ["start", script, "--name", APP_NAME, "--interpreter", self.python, "--cwd", str(workdir)]
            argv += ["--", *app_args]
        else:
            argv = ["start", APP_NAME, "--cwd", str(workdir), "--ready-file", str(pid_file)]
            argv += ["--", self.python, script, *app_args]
        run_command([*self.base_argv(), *argv], timeout=90, env=self.env())
        deadline = time.monotonic() + 30
        while not pid_file.exists():
            if time.monotonic() > deadline:
                raise SandboxError(f"{APP_NAME} did not write {pid_file} within 30 s")
            time.sleep(0.05)
        wait_http(f"http://127.0.0.1:{port}/health", timeout=30)

    def kill(self) -> None:
        """Stop every app and, for pm2, its daemon."""
        run_command([*self.base_argv(), "kill"], timeout=60, check=False, env=self.env())


def choose_manager(choice: ProcessManager) -> tuple[Literal["pm2", "procman"], str | None]:
    if choice not in ("auto", "pm2", "procman"):
        raise SandboxError(f"process_manager must be auto, pm2 or procman, not {choice!r}")
    pm2 = None if choice == "procman" else find_pm2()
    if pm2 is not None:
        return "pm2", pm2
    if choice == "pm2":
        raise SandboxError("process_manager='pm2' but pm2 is not installed (PATH or $ROLLBACK_BOT_PM2)")
    return "procman", None


def pm2_home(root: Path) -> tuple[Path, Path | None]:
    """PM2_HOME inside the sandbox, or a short temp dir when that path is too long for
    pm2's unix sockets (then also returned second, to remove at stop)."""
    home = root / "pm2"
    if len(str(home)) <= MAX_PM2_HOME:
        home.mkdir(parents=True, exist_ok=True)
        return home, None
    short = Path(tempfile.mkdtemp(prefix="rb-pm2-"))
    (root / "pm2.home").write_text(f"{short}\n", encoding="utf-8")
    return short, short
