"""One long-lived ``bash --norc --noprofile -s`` on the target, fed one command at a time.

An SSH exec pays the remote login shell's start-up (~160 ms); a command written to a shell
that is already running costs a few ms. Both transports keep a small pool of such shells
(``actions.shellpool``).

For each command the shell gets one line (plus a heredoc body when there is stdin)::

    ( cd -- CWD && timeout -k 5 N bash --norc --noprofile -c 'CMD' ) </dev/null; \
__rc=$?; printf '\\nMARKER %d\\n' "$__rc"; printf '\\nMARKER\\n' >&2

- the command runs in a subshell and its own ``bash -c``: no state leaks between commands;
- ``timeout -k`` runs on the target, in its own process group, so the command and its
  children are really killed there (closing a channel or a connection would not);
- ``MARKER`` is new and random for every command and never appears in any process's argv,
  so a command cannot fake its own end; stdout and stderr each end with it;
- stdin, when given, is a quoted heredoc under another random delimiter: sent verbatim.

Anything unexpected (end of stream, no marker in time, a link error, cancellation) marks
the session broken; a broken session is closed and never reused.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import inspect
import secrets
import shlex
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from actions.errors import CommandTimeout, ConnectError, ConnectionLost
from actions.transport import OutputSink, ShellResult

SHELL_ARGV = ("bash", "--norc", "--noprofile", "-s")
SHELL_COMMAND = " ".join(SHELL_ARGV)

#: Seconds between ``timeout``'s TERM and its KILL.
KILL_AFTER = 5
#: Seconds we wait past a command's timeout for its end marker before giving up on the shell.
CLIENT_GRACE = 10.0
#: Seconds a new shell (and the login shell that starts it) may take to answer.
SHELL_START_TIMEOUT = 30.0
#: ``timeout`` exits 124 after TERM, 137 (128 + 9) after KILL.
TIMEOUT_STATUSES = frozenset({124, 137})
#: ``bash -c`` gets the command as one argv string; Linux caps one at 128 KiB.
MAX_COMMAND_BYTES = 100_000

_READ_SIZE = 65536
_MARKER_PREFIX = "__ROLLBACK_BOT_END_"


class ByteReader(Protocol):
    """The read side of a shell's stdout or stderr (asyncio or asyncssh stream)."""

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes; ``b""`` at end of stream."""
        ...


class ByteWriter(Protocol):
    """The shell's stdin (asyncio or asyncssh stream)."""

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the shell."""
        ...

    async def drain(self) -> None:
        """Wait until the queued data may be sent."""
        ...


class _EndOfStream(Exception):
    """The shell's output ended before the command's end marker."""


def _seconds(timeout: float) -> str:
    # `timeout 0` would disable the limit: never send less than a millisecond.
    return f"{max(timeout, 0.001):.3f}".rstrip("0").rstrip(".")


def _token(prefix: str, avoid: str = "") -> str:
    while True:
        token = prefix + secrets.token_hex(16)
        if token not in avoid:
            return token


def _trailer(marker: str) -> str:
    return f"__rc=$?; printf '\\n{marker} %d\\n' \"$__rc\"; printf '\\n{marker}\\n' >&2"


def wrap_command(command: str, *, timeout: float, cwd: str | None = None) -> str:
    """The line that runs ``command`` on the target: in ``cwd``, under a server-side ``timeout -k``."""
    step = f"timeout -k {KILL_AFTER} {_seconds(timeout)} bash --norc --noprofile -c {shlex.quote(command)}"
    return f"cd -- {shlex.quote(cwd)} && {step}" if cwd is not None else step


def build_script(command: str, *, timeout: float, marker: str, cwd: str | None = None, stdin: str | None = None) -> str:
    """The text written to the shell to run ``command`` once and print ``marker`` after it."""
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    for what, text in (("command", command), ("cwd", cwd), ("stdin", stdin)):
        if text is not None and "\0" in text:
            raise ValueError(f"{what} contains a NUL byte")
    if len(command.encode()) > MAX_COMMAND_BYTES:
        raise ValueError(f"command is longer than {MAX_COMMAND_BYTES} bytes; pass data via stdin")

    step = wrap_command(command, timeout=timeout, cwd=cwd)
    trailer = _trailer(marker)
    if stdin is None:
        return f"( {step} ) </dev/null; {trailer}\n"

    delimiter = _token("__STDIN_", avoid=stdin)
    if stdin == "" or stdin.endswith("\n"):
        return f"( {step} ) <<'{delimiter}'; {trailer}\n{stdin}{delimiter}\n"
    # A heredoc always ends with a newline; cut it off so the command sees stdin verbatim.
    size = len(stdin.encode())
    return f"head -c {size} <<'{delimiter}' | ( {step} ); {trailer}\n{stdin}\n{delimiter}\n"


def _held_back(buf: bytearray, sentinel: bytes) -> int:
    """Length of the longest tail of ``buf`` that could be the start of ``sentinel``."""
    first = sentinel[:1]
    i = buf.find(first, max(0, len(buf) - len(sentinel) + 1))
    while i != -1:
        if sentinel.startswith(bytes(buf[i:])):
            return len(buf) - i
        i = buf.find(first, i + 1)
    return 0


class _Collector:
    """Reads one stream up to its end marker, streaming what precedes it to the sink."""

    def __init__(self, reader: ByteReader, sentinel: bytes, channel: str, sink: OutputSink | None) -> None:
        self.reader = reader
        self.sentinel = sentinel
        self.channel = channel
        self.sink = sink
        self.buf = bytearray()
        self.after = b""  # bytes that followed the sentinel
        self._emitted = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @property
    def text(self) -> str:
        """What was read so far (the output up to the marker once it is complete)."""
        return bytes(self.buf).decode("utf-8", errors="replace")

    async def _emit(self, end: int, final: bool = False) -> None:
        chunk = self._decoder.decode(bytes(self.buf[self._emitted : end]), final=final)
        self._emitted = end
        if chunk and self.sink is not None:
            result = self.sink(self.channel, chunk)
            if inspect.isawaitable(result):
                await result

    async def collect(self) -> None:
        """Read until the sentinel; afterwards ``buf`` holds exactly the output before it."""
        searched = 0
        while True:
            found = self.buf.find(self.sentinel, searched)
            if found != -1:
                await self._emit(found, final=True)
                self.after = bytes(self.buf[found + len(self.sentinel) :])
                del self.buf[found:]
                return
            searched = max(0, len(self.buf) - len(self.sentinel) + 1)
            safe = len(self.buf) - _held_back(self.buf, self.sentinel)
            if safe > self._emitted:
                await self._emit(safe)
            chunk = await self.reader.read(_READ_SIZE)
            if not chunk:
                raise _EndOfStream(self.channel)
            self.buf += chunk

    async def read_line_after(self) -> bytes:
        """Read on until a newline follows the sentinel; return the text before it."""
        while b"\n" not in self.after:
            chunk = await self.reader.read(_READ_SIZE)
            if not chunk:
                raise _EndOfStream(self.channel)
            self.after += chunk
        return self.after.split(b"\n", 1)[0]

    async def read_rest(self, within: float) -> None:
        """Best effort: add what is still buffered or arriving to ``buf`` (for error messages)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(within):
                while chunk := await self.reader.read(_READ_SIZE):
                    self.buf += chunk


class ShellSession:
    """A persistent shell on the target that runs one command at a time."""

    def __init__(
        self,
        *,
        name: str,
        stdin: ByteWriter,
        stdout: ByteReader,
        stderr: ByteReader,
        close: Callable[[], Awaitable[None]],
        is_alive: Callable[[], bool],
        link_errors: tuple[type[BaseException], ...] = (OSError,),
        client_grace: float = CLIENT_GRACE,
    ) -> None:
        self.name = name
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        self._close = close
        self._is_alive = is_alive
        self._link_errors = link_errors
        self._client_grace = client_grace
        self._lock = asyncio.Lock()
        self.broken = False
        self.closed = False

    @property
    def usable(self) -> bool:
        """True when the next command may be sent to this shell."""
        return not (self.broken or self.closed) and self._is_alive()

    async def close(self) -> None:
        """Close the shell (idempotent). A running command is left to its target-side timeout."""
        if not self.closed:
            self.closed = True
            await self._close()

    async def _break(self) -> None:
        self.broken = True
        await self.close()

    async def start(self, timeout: float) -> None:
        """Wait until the shell answers, dropping anything a login script printed first.

        Raises ``ConnectError`` when it does not answer: no command has been sent yet.
        """
        marker = _token(_MARKER_PREFIX)
        out = _Collector(self._stdout, f"\n{marker} ".encode(), "stdout", None)
        err = _Collector(self._stderr, f"\n{marker}\n".encode(), "stderr", None)
        script = f"true; {_trailer(marker)}\n".encode()
        try:
            await self._converse(script, out, err, timeout, timeout)
        except CommandTimeout:
            raise ConnectError(f"the shell on {self.name} did not answer within {timeout:g} s") from None
        except (ConnectionLost, ConnectError) as exc:
            await err.read_rest(within=1.0)  # why it ended is usually on stderr
            raise ConnectError(
                f"the shell on {self.name} ended before it answered; stderr: {err.text[-500:]!r}"
            ) from exc

    async def run(
        self,
        command: str,
        *,
        timeout: float,
        cwd: str | None = None,
        stdin: str | None = None,
        on_output: OutputSink | None = None,
    ) -> ShellResult:
        """Run ``command`` in a fresh subshell; see ``actions.transport.Transport.run``."""
        marker = _token(_MARKER_PREFIX)
        script = build_script(command, timeout=timeout, marker=marker, cwd=cwd, stdin=stdin)
        out = _Collector(self._stdout, f"\n{marker} ".encode(), "stdout", on_output)
        err = _Collector(self._stderr, f"\n{marker}\n".encode(), "stderr", on_output)
        started = time.monotonic()
        status = await self._converse(script.encode(), out, err, timeout, timeout + self._client_grace)
        duration = time.monotonic() - started
        # Our clock started before the command was sent, so a real target-side timeout
        # always shows duration >= timeout; a quick `exit 124` is just an exit status.
        if status in TIMEOUT_STATUSES and duration >= timeout:
            raise CommandTimeout(
                f"command on {self.name} ran past its {timeout:g} s timeout and was killed (exit status {status})",
                timeout=timeout,
                stdout=out.text,
                stderr=err.text,
            )
        return ShellResult(exit_status=status, stdout=out.text, stderr=err.text, duration=duration)

    async def _converse(self, script: bytes, out: _Collector, err: _Collector, timeout: float, bound: float) -> int:
        """Send ``script``, read both streams to their markers; any failure breaks the session."""
        async with self._lock:
            if self.broken or self.closed:
                raise RuntimeError(f"shell session on {self.name} is closed or broken")
            if not self._is_alive():
                await self._break()
                raise ConnectError(f"the shell on {self.name} is gone; nothing was sent to it")
            limit = asyncio.timeout(bound)
            try:
                async with limit:
                    return await self._exchange(script, out, err)
            except TimeoutError as exc:
                await self._break()
                if not limit.expired():
                    raise ConnectionLost(f"link to {self.name} failed: {exc!r}; outcome unknown") from exc
                raise CommandTimeout(
                    f"no end of command from {self.name} within {bound:g} s; shell closed, outcome unknown",
                    timeout=timeout,
                    stdout=out.text,
                    stderr=err.text,
                ) from None
            except _EndOfStream as exc:
                await self._break()
                raise ConnectionLost(
                    f"{exc} from {self.name} ended before the command finished; outcome unknown"
                ) from None
            except self._link_errors as exc:
                await self._break()
                raise ConnectionLost(
                    f"link to {self.name} failed while a command ran ({exc!r}); outcome unknown"
                ) from exc
            except BaseException:
                await self._break()
                raise

    async def _exchange(self, script: bytes, out: _Collector, err: _Collector) -> int:
        async def send() -> None:
            self._stdin.write(script)
            await self._stdin.drain()

        async def read_status() -> int:
            await out.collect()
            line = await out.read_line_after()
            try:
                return int(line)
            except ValueError:
                raise _EndOfStream(f"stdout (garbled status {line!r})") from None

        sender = asyncio.create_task(send())
        status_task = asyncio.create_task(read_status())
        stderr_task = asyncio.create_task(err.collect())
        tasks = (sender, status_task, stderr_task)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:
                error = task.exception() if task in done else None
                if error is not None:
                    raise error
            return status_task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
