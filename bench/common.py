"""What the benches share: the load line printed beside their figures, the python3 a target
really runs, and a run bounded by ``--timeout``."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Coroutine
from typing import Any


def load() -> str:
    """The load averages: other work on the machine moves every figure."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def real_python3() -> str:
    """The interpreter ``python3`` on PATH really runs (past launchers such as pyenv's shim,
    which cost ~100 ms a start here and would blur the figures); this one if there is none."""
    if shutil.which("python3") is None:
        return sys.executable
    out = subprocess.run(["python3", "-c", "import sys; print(sys.executable)"],
                         capture_output=True, text=True, timeout=30, check=False)
    path = out.stdout.strip()
    return path if out.returncode == 0 and path else "python3"


def run_bounded(main: Coroutine[Any, Any, int], timeout: float, name: str) -> int:
    """Run ``main`` for at most ``timeout`` seconds: its exit status, or 2 and a line on stderr."""
    try:
        return asyncio.run(asyncio.wait_for(main, timeout))
    except TimeoutError:
        print(f"{name}: gave up after {timeout:.0f} s", file=sys.stderr)
        return 2
