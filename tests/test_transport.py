"""Transports against real shells: ``LocalTransport`` here and ``SSHTransport`` to a real sshd.

Timing bounds are generous on purpose (a busy 2-core machine); what is asserted is
behaviour: what the command saw, what was killed, what error came back.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from actions.errors import CommandTimeout, ConnectError, ConnectionLost, HostKeyError
from actions.local import LocalTransport
from actions.shellsession import ShellSession, build_script
from actions.ssh import SSHTransport
from tests.sshd import SshdTarget, keygen, make_ssh_transport

AnyTransport = LocalTransport | SSHTransport


def _pids(pattern: str) -> list[int]:
    """Pids whose command line matches the regex ``pattern`` (``pgrep -f``)."""
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def _unique_sleep(seconds: int) -> str:
    """``sleep N.<random digits>``: a sleep whose own argv can be found with pgrep."""
    return f"sleep {seconds}.{secrets.randbelow(10**9):09d}"


async def _wait_for(predicate: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


# --- both transports ---------------------------------------------------------------------


async def test_output_exit_status_and_streams_apart(transport: AnyTransport) -> None:
    result = await transport.run("echo out; echo err >&2; printf 'no newline'; exit 3", timeout=20)
    assert result.exit_status == 3
    assert result.stdout == "out\nno newline"
    assert result.stderr == "err\n"
    assert result.duration >= 0


async def test_output_keeps_blank_lines_and_trailing_newlines(transport: AnyTransport) -> None:
    result = await transport.run("printf '\\n\\na\\n\\n'; printf 'e\\n\\n' >&2", timeout=20)
    assert (result.stdout, result.stderr) == ("\n\na\n\n", "e\n\n")
    empty = await transport.run("true", timeout=20)
    assert (empty.exit_status, empty.stdout, empty.stderr) == (0, "", "")


async def test_command_text_is_passed_verbatim(transport: AnyTransport) -> None:
    tricky = "a \"b\" 'c' $(echo no) `echo no` \\ $HOME ; | & \n second line\t* ?"
    quoted = tricky.replace("'", "'\"'\"'")
    result = await transport.run(f"x='{quoted}'\nprintf '%s' \"$x\"", timeout=20)
    assert result.stdout == tricky
    # And shell syntax in the command works as written: substitutions, multi-line blocks.
    script = 'v=$(echo sub); w=`echo tick`\nif [ "$v" = sub ]; then\n  echo "$v $w"\nfi # done'
    result = await transport.run(script, timeout=20)
    assert (result.exit_status, result.stdout) == (0, "sub tick\n")


async def test_stdin_is_fed_verbatim(transport: AnyTransport) -> None:
    texts = [
        "line one\nEOF\n'EOF'\n$HOME `id` $(id) \\\n__STDIN_0123\n\ttabs ünïcode\r\nlast",
        "ends with newline\nEOF\n",
        "",
        "EOF",
    ]
    for text in texts:
        result = await transport.run("cat", timeout=20, stdin=text)
        assert (result.exit_status, result.stdout) == (0, text)
    counted = await transport.run("wc -c", timeout=20, stdin="abc")
    assert counted.stdout.strip() == "3"


async def test_no_stdin_means_end_of_file_not_a_hang(transport: AnyTransport) -> None:
    result = await transport.run("cat; echo done", timeout=20)
    assert result.stdout == "done\n"


async def test_cwd_with_spaces_and_quotes(transport: AnyTransport, tmp_path: Path) -> None:
    odd = tmp_path / "dir with spaces 'and' quotes"
    odd.mkdir()
    result = await transport.run("pwd; ls", timeout=20, cwd=str(odd))
    assert result.stdout == f"{odd}\n"
    missing = await transport.run("pwd", timeout=20, cwd=str(tmp_path / "missing"))
    assert missing.exit_status != 0
    assert "missing" in missing.stderr


async def test_no_state_leaks_between_commands(transport: AnyTransport) -> None:
    first = await transport.run("cd /; export LEAK=1; x=2; ulimit -n 64; umask 077", timeout=20)
    assert first.exit_status == 0
    after = await transport.run('echo "[$LEAK$x]"; pwd; umask', timeout=20)
    assert after.stdout.splitlines()[0] == "[]"
    assert after.stdout.splitlines()[1] != "/"
    assert after.stdout.splitlines()[2] != "0077"


async def test_exit_124_that_is_not_a_timeout_is_a_result(transport: AnyTransport) -> None:
    result = await transport.run("exit 124", timeout=20)
    assert result.exit_status == 124


async def test_timeout_kills_the_command_on_the_target(transport: AnyTransport, tmp_path: Path) -> None:
    sleep = _unique_sleep(3)
    marker = tmp_path / "should-not-exist"
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as caught:
        await transport.run(f"echo started; {sleep}; touch '{marker}'", timeout=1)
    assert caught.value.timeout == 1
    assert caught.value.stdout == "started\n"
    assert await _wait_for(lambda: not _pids(sleep), within=5), "sleep survived the timeout"
    # Had the command lived on, `touch` would have run ~3 s after the start.
    await asyncio.sleep(max(0.0, started + 6 - time.monotonic()))
    assert not marker.exists()
    after = await transport.run("echo still works", timeout=20)
    assert after.stdout == "still works\n"


async def test_timeout_kills_a_command_that_ignores_term(transport: AnyTransport, tmp_path: Path) -> None:
    sleep = _unique_sleep(9)
    marker = tmp_path / "should-not-exist"
    with pytest.raises(CommandTimeout) as caught:
        await transport.run(f"trap '' TERM; {sleep}; touch '{marker}'", timeout=1)
    assert "137" in str(caught.value)  # `timeout -k` had to send KILL
    assert await _wait_for(lambda: not _pids(sleep), within=5), "sleep survived SIGKILL"
    assert not marker.exists()
    assert (await transport.run("echo ok", timeout=20)).stdout == "ok\n"


async def test_cancelled_run_is_still_bounded_by_its_timeout(transport: AnyTransport) -> None:
    sleep = _unique_sleep(30)
    step = asyncio.create_task(transport.run(sleep, timeout=2))
    assert await _wait_for(lambda: bool(_pids(f"^{sleep}")), within=10)
    step.cancel()
    with pytest.raises(asyncio.CancelledError):
        await step
    assert (await transport.run("echo after", timeout=20)).stdout == "after\n"
    # Nobody waits for it any more, but the target-side timeout still kills it.
    assert await _wait_for(lambda: not _pids(sleep), within=15), "cancelled command outlived its timeout"


async def test_output_is_streamed_as_it_arrives(transport: AnyTransport) -> None:
    chunks: list[tuple[str, str]] = []
    first_seen = asyncio.Event()

    async def sink(channel: str, text: str) -> None:
        chunks.append((channel, text))
        if "first" in "".join(t for c, t in chunks if c == "stdout"):
            first_seen.set()

    run = asyncio.create_task(
        transport.run("echo first; echo warn >&2; sleep 5; printf second", timeout=20, on_output=sink)
    )
    await asyncio.wait_for(first_seen.wait(), timeout=4.5)
    assert not run.done(), "output arrived only at the end"
    result = await run
    assert "".join(t for c, t in chunks if c == "stdout") == result.stdout == "first\nsecond"
    assert "".join(t for c, t in chunks if c == "stderr") == result.stderr == "warn\n"
    assert "__ROLLBACK_BOT_END_" not in "".join(t for _, t in chunks)


async def test_sync_sink_and_big_interleaved_output(transport: AnyTransport) -> None:
    seen: dict[str, list[str]] = {"stdout": [], "stderr": []}
    command = "for i in $(seq 1 20000); do echo out$i; echo err$i >&2; done"
    result = await transport.run(command, timeout=60, on_output=lambda channel, text: seen[channel].append(text))
    expected_out = "".join(f"out{i}\n" for i in range(1, 20001))
    assert result.stdout == expected_out == "".join(seen["stdout"])
    assert result.stderr == expected_out.replace("out", "err") == "".join(seen["stderr"])


async def test_long_line_and_undecodable_bytes(transport: AnyTransport) -> None:
    long_line = await transport.run("head -c 300000 /dev/zero | tr '\\0' a", timeout=30)
    assert long_line.stdout == "a" * 300000
    binary = await transport.run("printf 'ok \\377\\376 \\303\\251'", timeout=20)
    assert binary.stdout == "ok \ufffd\ufffd é"


async def test_concurrent_runs_share_a_bounded_pool(transport: AnyTransport) -> None:
    results = await asyncio.gather(*(transport.run(f"sleep 0.3; echo {i}", timeout=30) for i in range(20)))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(20)]
    assert 2 <= transport.pool.peak_in_use <= 8


async def test_get_file(transport: AnyTransport, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 1000
    source = tmp_path / "remote file.bin"
    source.write_bytes(payload)
    copy = tmp_path / "copy.bin"
    await transport.get_file(str(source), copy)
    assert copy.read_bytes() == payload
    with pytest.raises(FileNotFoundError):
        await transport.get_file(str(tmp_path / "missing"), tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()
    assert not (tmp_path / "nothing.part").exists()


# --- the shell protocol on its own ------------------------------------------------------


async def _session_over(*argv: str, client_grace: float) -> tuple[ShellSession, asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin and proc.stdout and proc.stderr

    async def close() -> None:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()

    session = ShellSession(
        name="fake",
        stdin=proc.stdin,
        stdout=proc.stdout,
        stderr=proc.stderr,
        close=close,
        is_alive=lambda: proc.returncode is None,
        client_grace=client_grace,
    )
    return session, proc


async def test_no_end_marker_in_time_breaks_the_session() -> None:
    # A "shell" that keeps its output open and never answers.
    session, proc = await _session_over("sleep", "600", client_grace=0.5)
    with pytest.raises(CommandTimeout, match="no end of command"):
        await session.run("true", timeout=0.5)
    assert session.broken and not session.usable
    assert proc.returncode is not None
    with pytest.raises(RuntimeError):
        await session.run("true", timeout=1)


async def test_end_of_stream_before_the_marker_is_connection_lost() -> None:
    # A "shell" that prints something plausible and exits: never a success.
    session, _ = await _session_over("sh", "-c", "echo 'looks fine'; read -r line; exit 0", client_grace=5)
    with pytest.raises(ConnectionLost):
        await session.run("true", timeout=5)
    assert session.broken


async def test_forged_marker_without_the_token_is_just_output(transport: AnyTransport) -> None:
    result = await transport.run("printf '\\n__ROLLBACK_BOT_END_0 0\\n'; exit 5", timeout=20)
    assert result.exit_status == 5
    assert result.stdout == "\n__ROLLBACK_BOT_END_0 0\n"


async def test_start_drops_what_rc_files_print() -> None:
    session, _ = await _session_over(
        "sh", "-c", "echo banner; echo warning >&2; exec bash --norc --noprofile -s", client_grace=5
    )
    await session.start(timeout=20)
    result = await session.run("echo clean", timeout=20)
    assert (result.stdout, result.stderr) == ("clean\n", "")
    await session.close()


async def test_a_shell_that_does_not_start_is_a_connect_error() -> None:
    session, _ = await _session_over("sh", "-c", "echo 'bash: not found' >&2; exit 127", client_grace=5)
    with pytest.raises(ConnectError, match="not found"):
        await session.start(timeout=20)
    assert session.broken


def test_script_rejects_what_bash_cannot_carry() -> None:
    with pytest.raises(ValueError):
        build_script("true", timeout=0, marker="m")
    with pytest.raises(ValueError):
        build_script("echo \0", timeout=1, marker="m")
    with pytest.raises(ValueError):
        build_script("x" * 200_000, timeout=1, marker="m")


async def test_dead_idle_shell_is_replaced_not_reported_lost(transport: AnyTransport) -> None:
    find_shell = (
        'pid=$$; while [ "$pid" -gt 1 ]; do pid=$(ps -o ppid= -p "$pid" | tr -d \' \'); '
        "[ \"$(tr '\\0' ' ' </proc/$pid/cmdline)\" = 'bash --norc --noprofile -s ' ] "
        "&& break; done; echo $pid"
    )
    shell_pid = int((await transport.run(find_shell, timeout=20)).stdout)
    assert _cmdline(shell_pid) == ["bash", "--norc", "--noprofile", "-s"]
    os.kill(shell_pid, signal.SIGKILL)
    assert await _wait_for(lambda: not _running(shell_pid), within=5)
    # The pool learns of the death from the event loop (pipe/channel closed), not at once.
    assert await _wait_for(lambda: not any(s.usable for s in transport.pool._idle), within=5)
    result = await transport.run("echo fresh", timeout=20)
    assert result.stdout == "fresh\n"


# --- LocalTransport ----------------------------------------------------------------------


async def test_local_root_is_the_default_directory(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("x")
    transport = LocalTransport(root=str(tmp_path))
    try:
        assert (await transport.run("pwd", timeout=20)).stdout == f"{tmp_path}\n"
        await transport.get_file("data.txt", tmp_path / "copy.txt")
        assert (tmp_path / "copy.txt").read_text() == "x"
    finally:
        await transport.close()


# --- SSHTransport ------------------------------------------------------------------------


async def test_ssh_unknown_host_key_is_refused_with_a_pin_hint(sshd_target: SshdTarget, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    transport = make_ssh_transport(sshd_target, known_hosts=str(known_hosts))
    with pytest.raises(HostKeyError) as caught:
        await transport.run("touch /tmp/should-not-run", timeout=20)
    message = str(caught.value)
    assert "ssh-keyscan" in message
    assert f"-p {sshd_target.port} {sshd_target.host}" in message
    assert str(known_hosts) in message
    await transport.close()


async def test_ssh_missing_known_hosts_file_is_a_host_key_error(sshd_target: SshdTarget, tmp_path: Path) -> None:
    transport = make_ssh_transport(sshd_target, known_hosts=str(tmp_path / "nope"))
    with pytest.raises(HostKeyError, match="ssh-keyscan"):
        await transport.run("true", timeout=20)
    await transport.close()


@pytest.mark.parametrize("key_type", ["ed25519", "rsa"])
async def test_ssh_changed_host_key_is_refused(sshd_target: SshdTarget, tmp_path: Path, key_type: str) -> None:
    other_key = keygen(tmp_path / "other_key", key_type)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{sshd_target.host}]:{sshd_target.port} {other_key}\n")
    transport = make_ssh_transport(sshd_target, known_hosts=str(known_hosts))
    with pytest.raises(HostKeyError, match="ssh-keyscan"):
        await transport.run("true", timeout=20)
    await transport.close()


async def test_ssh_unauthorized_client_key_is_a_connect_error(sshd_target: SshdTarget, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    keygen(stranger)
    transport = make_ssh_transport(sshd_target, client_keys=[str(stranger)])
    with pytest.raises(ConnectError) as caught:
        await transport.run("true", timeout=20)
    assert not isinstance(caught.value, HostKeyError)
    assert f"{sshd_target.host}:{sshd_target.port}" in str(caught.value)
    await transport.close()


async def test_ssh_refused_port_is_a_connect_error(sshd_target: SshdTarget) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        transport = make_ssh_transport(sshd_target, port=port, connect_timeout=5)
        with pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
            await transport.run("true", timeout=20)
    await transport.close()


async def test_ssh_refused_channels_are_retried_then_reported(sshd_target: SshdTarget) -> None:
    # sshd allows 10 sessions per connection (MaxSessions); ask for 11 at once.
    transport = make_ssh_transport(sshd_target, max_channels=11)
    try:
        results = await asyncio.gather(
            *(transport.run("sleep 3; echo ok", timeout=30) for _ in range(11)), return_exceptions=True
        )
    finally:
        await transport.close()
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1, results
    assert isinstance(refused[0], ConnectError)
    assert "refused a session channel" in str(refused[0])
    assert all(r.stdout == "ok\n" for r in results if not isinstance(r, BaseException))


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        chain.append(pid)
    return chain


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


async def test_ssh_dropped_connection_is_lost_then_reconnects(
    ssh_transport: SSHTransport, sshd_target: SshdTarget
) -> None:
    assert (await ssh_transport.run("echo warm", timeout=20)).stdout == "warm\n"
    sleep = _unique_sleep(20)
    step = asyncio.create_task(ssh_transport.run(f"{sleep}; echo done", timeout=40))
    try:
        assert await _wait_for(lambda: bool(_pids(f"^{sleep}")), within=10)
        sleep_pid = _pids(f"^{sleep}")[0]
        # This connection's own sshd processes: ancestors of the step below the main sshd.
        chain = _ancestors(sleep_pid)
        assert sshd_target.pid in chain
        own = [p for p in chain[: chain.index(sshd_target.pid)] if _comm(p) == "sshd"]
        assert own, f"no per-connection sshd above {sleep_pid}: {chain}"
        _kill(own)
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(step, timeout=20)
    finally:
        step.cancel()
        _kill(_pids(sleep))
    result = await ssh_transport.run("echo reconnected", timeout=20)
    assert result.stdout == "reconnected\n"
    assert ssh_transport.connections_opened == 2


async def test_ssh_per_command_overhead(ssh_transport: SSHTransport, capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(5):
        await ssh_transport.run("true", timeout=20)
    count = 50
    started = time.monotonic()
    for _ in range(count):
        await ssh_transport.run("true", timeout=20)
    per_command = (time.monotonic() - started) / count
    with capsys.disabled():
        print(f"\nSSHTransport: {per_command * 1000:.1f} ms per `true` (persistent shell)")
