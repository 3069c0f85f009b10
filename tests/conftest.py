"""Shared fixtures: a real sshd on loopback, transports to run commands through, a health endpoint."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from actions.local import LocalTransport
from actions.ssh import SSHTransport
from tests.health_server import HealthServer
from tests.pg import PgCluster, PostgresUnavailable, start_cluster
from tests.sshd import SshdTarget, SshdUnavailable, make_ssh_transport, start_sshd

#: Figure lines of the proof suite (``tests/test_proof_*.py``), printed at the end of the run.
PROOF_LINES: list[str] = []


#: The longest files, longest first: with ``--dist loadfile`` the workers take files in collection
#: order (``--no-loadscope-reorder`` in pyproject.toml: xdist would otherwise put the files with the
#: most tests first), so these start at once instead of ending the run on one worker.
LONGEST_FIRST = ("test_proof_crash.py", "test_proof_crash_2.py", "test_proof_crash_3.py", "test_drill.py",
                 "test_proof_guardrails.py", "test_slack_default_runbook.py", "test_records.py",
                 "test_proof_abuse.py", "test_proof_secrets.py", "test_ha_replicas.py", "test_rehearsal_channel.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first, each file's tests in their written order."""
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def proof_report() -> Callable[[str], None]:
    """Register one figure line (e.g. ``crash: 30/30``) for the end-of-session summary."""
    return PROOF_LINES.append


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On a pytest-xdist worker: hand this worker's figure lines to the controller."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["proof_lines"] = list(PROOF_LINES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """On the pytest-xdist controller: collect a finished worker's figure lines."""
    PROOF_LINES.extend(getattr(node, "workeroutput", {}).get("proof_lines", []))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the proof suite's figures, one line each, whatever pytest captured."""
    if PROOF_LINES:
        terminalreporter.section("proof figures")
        for line in PROOF_LINES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def sshd_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdTarget]:
    """A real OpenSSH sshd on 127.0.0.1 for the whole session; skipped without sshd, failed in CI."""
    try:
        with start_sshd(tmp_path_factory.mktemp("sshd")) as target:
            yield target
    except SshdUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"sshd is required in CI: {exc}")
        pytest.skip(f"sshd not available: {exc}")


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    """A real PostgreSQL cluster for the whole session; skipped without its binaries, failed in CI."""
    try:
        with start_cluster() as cluster:
            yield cluster
    except (PostgresUnavailable, OSError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {exc}")
        pytest.skip(f"PostgreSQL not available: {exc}")


_DATABASES = iter(range(1, 10_000))


@pytest.fixture
def pg_url(pg_cluster: PgCluster, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty database of the session's cluster (its password in the environment)."""
    url = pg_cluster.create_database(f"t{next(_DATABASES)}_{os.getpid()}")
    monkeypatch.setenv("ROLLBACK_BOT_DB_PASSWORD", pg_cluster.password)
    return url


@pytest.fixture
async def ssh_transport(sshd_target: SshdTarget) -> AsyncIterator[SSHTransport]:
    """An ``SSHTransport`` to the test sshd, closed after the test."""
    transport = make_ssh_transport(sshd_target)
    yield transport
    await transport.close()


@pytest.fixture
async def local_transport(tmp_path: Path) -> AsyncIterator[LocalTransport]:
    """A ``LocalTransport`` rooted in the test's tmp dir, closed after the test."""
    transport = LocalTransport(root=str(tmp_path))
    yield transport
    await transport.close()


@pytest.fixture(params=["local", "ssh"])
async def transport(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LocalTransport | SSHTransport]:
    """Each transport in turn, for tests that hold for both."""
    made: LocalTransport | SSHTransport
    if request.param == "ssh":
        made = make_ssh_transport(request.getfixturevalue("sshd_target"))
    else:
        made = LocalTransport(root=str(tmp_path))
    yield made
    await made.close()


@pytest.fixture
async def health() -> AsyncIterator[HealthServer]:
    """A real health endpoint on 127.0.0.1 (``tests/health_server.py``), stopped after the test."""
    async with HealthServer() as hs:
        yield hs
