"""The Docker image's first start, without a Docker engine.

``serve`` runs as a real unprivileged user (``nobody``, by ``setpriv``) in the README's docker
layout: the code copied to an image folder, a root-owned read-only config folder, a state
directory owned by the user (``ROLLBACK_BOT_STATE_DIR``, as the Dockerfile sets it), and the SSH
key given to the user by ownership (0400). It must reach ``/healthz`` against the Slack fake,
answer the image's HEALTHCHECK (``rollback-bot health``), reach the target over SSH with that
key (``check``), and stop on SIGTERM; a key left root-owned 0600 is named in one line.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import site
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.slack_fake import SlackFake
from tests.sshd import SshdTarget
from tests.test_serve_lifecycle import free_port, until

ROOT = Path(__file__).resolve().parent.parent
USER = "nobody"
CH = "C0INCIDENT1"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root and setpriv to run serve as an unprivileged user")


@dataclass
class Image:
    """The stand-in for the image and its mounts, all under one temporary root."""

    root: Path
    app: Path
    etc: Path
    state: Path
    secrets: Path
    uid: int
    gid: int
    python: list[str]
    pythonpath: str

    def as_user(self) -> list[str]:
        """The command prefix that runs as the image's user."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--"]

    def env(self, fake: SlackFake, **extra: str) -> dict[str, str]:
        """The container's environment: the Dockerfile's ENV and what ``docker run -e`` passes."""
        keep = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ") if k in os.environ}
        return {**keep, "HOME": str(self.state), "PYTHONPATH": self.pythonpath,
                "ROLLBACK_BOT_CONFIG": str(self.etc / "bot.yml"), "ROLLBACK_BOT_STATE_DIR": str(self.state),
                "SLACK_BOT_TOKEN": fake.bot_token, "SLACK_API_URL": fake.base_url, **extra}

    def command(self, *args: str) -> list[str]:
        """``rollback-bot ARGS`` inside the image, as its user."""
        return [*self.as_user(), *self.python, "-m", "handlers.app", *args]


def _runnable(prefix: list[str], python: list[str], pythonpath: str) -> bool:
    try:
        done = subprocess.run([*prefix, *python, "-c", "import handlers.app"], cwd="/", capture_output=True,
                              timeout=300, env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": pythonpath})
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture
def image() -> Iterator[Image]:
    """The image folder (code, config, state volume, secrets) with the README's ownership and modes."""
    user = pwd.getpwnam(USER)
    root = Path(tempfile.mkdtemp(prefix="rollback-image-"))
    try:
        root.chmod(0o755)
        app = root / "app"
        for package in ("bot", "actions", "handlers"):
            shutil.copytree(ROOT / package, app / package, ignore=shutil.ignore_patterns("__pycache__"))
        etc = root / "etc" / "rollback-bot"
        etc.mkdir(parents=True)
        state = root / "var" / "lib" / "rollback-bot"
        state.mkdir(parents=True)
        os.chown(state, user.pw_uid, user.pw_gid)
        state.chmod(0o700)
        secrets = root / "secrets"
        secrets.mkdir()
        for folder in (app, *app.rglob("*")):
            if folder.is_dir():
                folder.chmod(0o755)
        pythonpath = os.pathsep.join([str(app), *site.getsitepackages()])
        prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]
        # The test's own interpreter if the user may run it; else the system's of the same version
        # with this environment's packages (a pyenv under /root is out of the user's reach).
        candidates = [[sys.executable], [f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"]]
        python = next((c for c in candidates if _runnable(prefix, c, pythonpath)), None)
        if python is None:
            # The packages live where the user cannot read them (a clone under /root): copy them
            # into the image, as the Dockerfile's pip install puts them there.
            packages = root / "site-packages"
            for source in site.getsitepackages():
                shutil.copytree(source, packages, dirs_exist_ok=True, symlinks=True,
                                ignore=shutil.ignore_patterns("__pycache__", "mypy", "mypyc", "ruff*", "hypothesis"))
            for folder in (packages, *packages.rglob("*")):
                if folder.is_dir():
                    folder.chmod(0o755)
            pythonpath = os.pathsep.join([str(app), str(packages)])
            python = next((c for c in candidates if _runnable(prefix, c, pythonpath)), None)
        if python is None:
            reason = f"no Python that {USER} can run with this environment's packages"
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
        yield Image(root, app, etc, state, secrets, user.pw_uid, user.pw_gid, python, pythonpath)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _write_config(image: Image, sshd_target: SshdTarget, port: int) -> None:
    # The README's config: no state_db, artifacts_dir or records paths; they default under the state volume.
    config = {
        "slack": {"channels": [CH], "http_port": port, "update_interval_seconds": 0.05},
        "roles": {"tech_lead": {"users": ["U0LEAD"]}, "incident_commander": {"users": ["U0IC"]}},
        "targets": [{"name": "production", "host": sshd_target.host, "port": sshd_target.port,
                     "user": sshd_target.username, "key_file": str(image.secrets / "id_ed25519"),
                     "known_hosts": str(image.secrets / "known_hosts"), "workdir": str(sshd_target.workdir)}],
    }
    (image.etc / "bot.yml").write_text(yaml.safe_dump(config))
    (image.etc / "bot.yml").chmod(0o644)
    shutil.copy(sshd_target.known_hosts_path, image.secrets / "known_hosts")
    (image.secrets / "known_hosts").chmod(0o644)
    key = image.secrets / "id_ed25519"
    shutil.copy(sshd_target.client_key_path, key)


def _tree(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_mode) for p in folder.rglob("*"))


async def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, cwd=str(cwd), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.sshd
async def test_serve_starts_the_first_time_as_the_images_user(image: Image, sshd_target: SshdTarget) -> None:
    port = free_port()
    _write_config(image, sshd_target, port)
    key = image.secrets / "id_ed25519"
    etc_before = _tree(image.etc)
    async with SlackFake() as fake:
        fake.add_channel(CH, "incident-response")
        env = image.env(fake, SLACK_SIGNING_SECRET=fake.signing_secret)

        # As documented: a key mounted root-owned 0600 cannot be read by the image's user.
        os.chown(key, 0, 0)
        key.chmod(0o600)
        code, _, err = await _run(image.command("serve"), env, image.state)
        assert code == 2, err
        assert err == (f"rollback-bot serve: targets[0] (production).key_file: {key} is not readable by "
                       f"uid {image.uid} (owner uid 0, mode 0600)\n")

        # The README's fix: give the key to the image's user.
        os.chown(key, image.uid, image.gid)
        key.chmod(0o400)
        proc = await asyncio.create_subprocess_exec(*image.command("serve"), env=env, cwd=str(image.state),
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            await until(lambda: bool(fake.calls_to("auth.test")), "serve checked its token", proc)

            async def healthy() -> tuple[int, str, str]:
                return await _run(image.command("health"), env, image.state)

            # The image's HEALTHCHECK, as the image's user: no curl, the port from the config.
            for _ in range(600):
                code, out, err = await healthy()
                if code == 0 or proc.returncode is not None:
                    break
                await asyncio.sleep(0.2)
            assert code == 0, err
            assert out.strip() == f"http://127.0.0.1:{port}/healthz: ok, 0 active incident(s)"

            # check, as the same user: the key really opens the SSH connection.
            code, out, _ = await _run(image.command("check"), env, image.state)
            assert "preflight ssh" not in out and "preflight workdir" not in out and "key_file" not in out, out
            assert "targets[0] (production): preflight env_file: .env.production does not exist" in out
        finally:
            if proc.returncode is None:
                proc.terminate()
            _, err_bytes = await asyncio.wait_for(proc.communicate(), 120)
    serve_err = err_bytes.decode()
    assert proc.returncode == 0, serve_err[-3000:]
    assert "Traceback" not in serve_err
    written = {p.name for p in image.state.rglob("*")}
    assert {"rollback-bot.db", "rollback-bot.jobs.db", "artifacts"} <= written, written
    assert all(p.stat().st_uid == image.uid for p in image.state.rglob("*"))
    assert _tree(image.etc) == etc_before  # nothing written beside the config
    assert stat.S_IMODE(key.stat().st_mode) == 0o400
