"""Proof, crash: incidents 11-20 of the 30 (see ``tests/proof_crash.py``), beside the others
on another pytest-xdist worker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.proof_crash import run_slice
from tests.sshd import SshdTarget


@pytest.mark.sshd
async def test_crash_points_11_to_20(sshd_target: SshdTarget, tmp_path: Path,
                                     proof_report: Callable[[str], None]) -> None:
    await run_slice(1, sshd_target, tmp_path, proof_report)
