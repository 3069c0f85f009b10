"""The SQLite agent crosses the wire once: installed under a content-addressed path, re-sent when changed."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from actions import agent_cache, sqlite
from actions.local import LocalTransport
from actions.sqlite import MAX_COMMAND_BYTES, agent_loader, agent_source, build_command, sqlite_op
from actions.transport import Transport
from bot.drill.sshd import SshdTarget
from tests.sshd import make_ssh_transport
from tests.tcp_proxy import TcpProxy

OPS_PER_CONNECTION = 6


def _db(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t (v) VALUES ('a'), ('b');")
    conn.close()
    return path


def _installs(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("agent-")) if cache.exists() else []


async def _ops(transport: Transport, db: Path, cache: Path, n: int) -> None:
    for _ in range(n):
        res = await sqlite_op(transport, "record_counts", {"db": str(db)}, timeout=60, agent_dir=str(cache))
        assert res == {"counts": {"t": 2}}


@pytest.mark.sshd
async def test_agent_crosses_the_wire_once_per_connection_and_again_when_it_changes(
    sshd_target: SshdTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proof_report: Callable[[str], None],
) -> None:
    db = _db(tmp_path / "t.db")
    cache = tmp_path / "cache"
    proxy = await TcpProxy(sshd_target.host, sshd_target.port).start()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{proxy.port} {sshd_target.host_key_line}\n")
    source_bytes = len(agent_source().encode())

    async def connection() -> tuple[int, agent_cache.Shipping]:
        """OPS_PER_CONNECTION operations on one new connection: (bytes up the wire, what was sent)."""
        transport = make_ssh_transport(sshd_target, port=proxy.port, known_hosts=str(known))
        before = proxy.bytes_up
        try:
            await _ops(transport, db, cache, OPS_PER_CONNECTION)
            assert transport.connections_opened == 1
            return proxy.bytes_up - before, agent_cache.shipping(transport)
        finally:
            await transport.close()

    try:
        # First connection: the target has no install; the bundle goes once, then 5 short commands.
        first_bytes, first = await connection()
        assert first.uploads == 1 and first.operations == OPS_PER_CONNECTION and not first.inline
        assert len(_installs(cache)) == 1
        # The source inline would cost OPS_PER_CONNECTION x its size; the wire saw about one copy.
        assert first_bytes < 1.6 * source_bytes + OPS_PER_CONNECTION * 8_000, first_bytes
        # Second connection: installed and checked by sha256 on the target, nothing re-sent.
        second_bytes, second = await connection()
        assert second.uploads == 0 and second_bytes < OPS_PER_CONNECTION * 8_000 + 20_000, second_bytes

        # A changed file on the target (same path, other bytes) fails the check: sent again.
        (install,) = _installs(cache)
        init = cache / install / agent_cache.PACKAGE / "__init__.py"
        init.write_bytes(init.read_bytes().replace(b"AGENT_VERSION", b"AGENT_VERSION_X", 1))
        _, tampered = await connection()
        assert tampered.uploads == 1 and _installs(cache) == [install]

        # A changed agent (a new release of the bot) has a new address: sent once more.
        changed = tuple((name, data + b"\n# changed\n") for name, data in sqlite.agent_bundle())
        monkeypatch.setattr(sqlite, "agent_bundle", lambda: changed)
        _, third = await connection()
        assert third.uploads == 1 and len(_installs(cache)) == 2
        fourth_bytes, fourth = await connection()
        assert fourth.uploads == 0
        uploads = [s.uploads for s in (first, second, tampered, third, fourth)]
        proof_report(f"agent shipping: 5 connections x {OPS_PER_CONNECTION} ops over sshd; bundle sent "
                     f"{uploads} times; bytes up the wire {first_bytes} (first, with the bundle), "
                     f"{second_bytes} and {fourth_bytes} (warm), agent source {source_bytes} bytes")
        assert uploads == [1, 0, 1, 1, 0]
    finally:
        await proxy.close()


async def test_install_refuses_a_folder_others_may_write_and_falls_back_when_nothing_installs(
    local_transport: LocalTransport, tmp_path: Path,
) -> None:
    db = _db(tmp_path / "t.db")
    cache = tmp_path / "cache"
    await _ops(local_transport, db, cache, 2)
    (install,) = _installs(cache)
    assert agent_cache.shipping(local_transport).uploads == 1
    os.chmod(cache / install, 0o777)  # another user could swap the code: not trusted, installed afresh
    await _ops(local_transport, db, cache, 1)
    assert agent_cache.shipping(local_transport).uploads == 2
    assert (cache / install).stat().st_mode & 0o077 == 0

    # Nowhere to install: every operation carries the source, as before, and still works.
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    other = LocalTransport(root=str(tmp_path))
    try:
        await _ops(other, db, blocked / "cache", 3)
        sent = agent_cache.shipping(other)
        assert sent.inline and sent.uploads == 1 and sent.bytes_sent > 3 * len(agent_loader().encode())
    finally:
        await other.close()


def test_bootstrap_is_small_and_names_its_content_address() -> None:
    files = sqlite.agent_bundle()
    sha = agent_cache.bundle_sha256(files)
    command, stdin = build_command("verify", {"db": "x"}, agent_dir="")
    assert stdin is None and sha in command and len(command.encode()) < 3_000
    assert len(build_command("verify", {"db": "x"})[0].encode()) > 20 * len(command.encode())
    big = {"db": "a.db", "record": {"details": "x" * MAX_COMMAND_BYTES}}
    assert build_command("governance_insert", big, agent_dir="")[0].endswith(" governance_insert -")
