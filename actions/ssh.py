"""``SSHTransport``: commands on a target over one asyncssh connection with a pinned host key.

The connection is opened on first use and reused; each channel carries one persistent shell
(``actions.shellsession``), at most ``max_channels`` at once (OpenSSH allows 10 sessions per
connection by default; one more is kept free for SFTP). After the link drops, the running
command fails with ``ConnectionLost`` and the next ``run()`` opens a fresh connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from pathlib import Path

import asyncssh

from actions.errors import ConnectError, ConnectionLost, HostKeyError, TransportError
from actions.shellpool import PooledTransport
from actions.shellsession import SHELL_COMMAND, SHELL_START_TIMEOUT, ShellSession
from actions.transport import partial_file

logger = logging.getLogger(__name__)

#: Tries to open a channel before giving up (sshd refuses beyond MaxSessions).
CHANNEL_OPEN_ATTEMPTS = 4
CHANNEL_OPEN_BACKOFF = 0.1
_CLOSE_WAIT = 5.0


class SSHTransport(PooledTransport):
    """Runs commands on ``host`` over SSH; the host key must be pinned in ``known_hosts``."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        username: str,
        client_keys: list[str],
        known_hosts: str,
        connect_timeout: float = 10,
        keepalive_interval: float = 5,
        keepalive_count_max: int = 3,
        max_channels: int = 8,
    ) -> None:
        super().__init__(max_channels)
        self.name = name
        self.host = host
        self.port = port
        self.username = username
        self.client_keys = list(client_keys)
        self.known_hosts = known_hosts
        self.connect_timeout = connect_timeout
        self.keepalive_interval = keepalive_interval
        self.keepalive_count_max = keepalive_count_max
        self._conn: asyncssh.SSHClientConnection | None = None
        self._connect_lock = asyncio.Lock()
        self._sftp_lock = asyncio.Lock()
        #: How many connections were opened (the first one plus reconnects).
        self.connections_opened = 0

    @property
    def address(self) -> str:
        """``host:port`` as used in messages."""
        return f"{self.host}:{self.port}"

    def _pin_hint(self) -> str:
        scan = f"ssh-keyscan -p {self.port} {self.host}" if self.port != 22 else f"ssh-keyscan {self.host}"
        return f"pin it with: {scan} >> {self.known_hosts} (and check the fingerprint)"

    def _host_key_message(self, reason: str) -> str:
        try:
            pinned = asyncssh.match_known_hosts(self.known_hosts, self.host, self.host, self.port)[0]
        except (OSError, ValueError):
            pinned = []
        if not pinned:
            return f"host key for {self.address} is not in {self.known_hosts} ({reason}); {self._pin_hint()}"
        return (
            f"host key for {self.address} differs from the one pinned in {self.known_hosts} "
            f"({reason}): it changed, or this is not the host you meant; if the change is "
            f"expected, remove the old line and {self._pin_hint()}"
        )

    async def _connection(self) -> asyncssh.SSHClientConnection:
        async with self._connect_lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            if self._conn is not None:
                logger.info("connection to %s is gone; reconnecting", self.address)
            self._conn = await self._connect()
            self.connections_opened += 1
            return self._conn

    def _check_known_hosts(self) -> None:
        if not Path(self.known_hosts).is_file():
            raise HostKeyError(
                f"known_hosts file {self.known_hosts} does not exist, so the host key for "
                f"{self.address} is not pinned; {self._pin_hint()}"
            )

    async def _connect(self) -> asyncssh.SSHClientConnection:
        self._check_known_hosts()
        try:
            try:
                return await self._handshake(server_host_key_algs=())
            except (asyncssh.ConnectionLost, asyncssh.KeyExchangeFailed, ConnectionResetError, BrokenPipeError):
                # asyncssh offers only the key types pinned for this host; a server that no
                # longer has one hangs up ("no matching host key type"), with a FIN or a RST.
                # Offer every type once so that a changed key is reported as one.
                # Verification against known_hosts is unchanged.
                return await self._handshake(server_host_key_algs="default")
        except asyncssh.HostKeyNotVerifiable as exc:
            raise HostKeyError(self._host_key_message(exc.reason)) from exc
        except asyncssh.PermissionDenied as exc:
            raise ConnectError(f"authentication as {self.username} on {self.address} failed: {exc.reason}") from exc
        except asyncssh.KeyImportError as exc:
            raise ConnectError(f"cannot load client key for {self.address}: {exc}") from exc
        except asyncssh.Error as exc:
            raise ConnectError(f"cannot connect to {self.address}: {exc.reason}") from exc
        except TimeoutError as exc:
            raise ConnectError(
                f"cannot connect to {self.address}: no answer within {self.connect_timeout:g} s"
            ) from exc
        except OSError as exc:
            raise ConnectError(f"cannot connect to {self.address}: {exc.strerror or exc!r}") from exc

    async def _handshake(self, *, server_host_key_algs: str | tuple[()]) -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(
            self.host,
            self.port,
            username=self.username,
            client_keys=self.client_keys,
            known_hosts=self.known_hosts,
            server_host_key_algs=server_host_key_algs,
            connect_timeout=self.connect_timeout,
            keepalive_interval=self.keepalive_interval,
            keepalive_count_max=self.keepalive_count_max,
            # Only what this transport was given: no agent, no ~/.ssh/config.
            agent_path=None,
            config=[],
            preferred_auth="publickey",
        )

    async def _open_channel(self) -> tuple[asyncssh.SSHClientConnection, asyncssh.SSHClientProcess]:
        reason = ""
        for attempt in range(CHANNEL_OPEN_ATTEMPTS):
            # Fetched each time: a channel refused because the link died gets a fresh one.
            conn = await self._connection()
            try:
                process = await conn.create_process(SHELL_COMMAND, encoding=None)
            except asyncssh.ChannelOpenError as exc:
                reason = exc.reason
                logger.info("%s refused a channel (%s); retrying", self.address, reason)
                await asyncio.sleep(CHANNEL_OPEN_BACKOFF * 2**attempt)
                continue
            except (asyncssh.Error, OSError) as exc:
                # No command has been sent on this channel: "could not connect", not "lost".
                raise ConnectError(f"cannot open a session on {self.address}: {exc!r}") from exc
            return conn, process
        raise ConnectError(f"{self.address} refused a session channel {CHANNEL_OPEN_ATTEMPTS} times: {reason}")

    async def _open_session(self) -> ShellSession:
        conn, process = await self._open_channel()

        async def close() -> None:
            # Closing the channel does not stop a running command; its `timeout` does.
            process.close()
            with contextlib.suppress(asyncssh.Error, OSError, TimeoutError):
                await asyncio.wait_for(process.wait_closed(), _CLOSE_WAIT)

        def is_alive() -> bool:
            return not conn.is_closed() and not process.is_closing()

        session = ShellSession(
            name=f"{self.name} ({self.address})",
            stdin=process.stdin,
            stdout=process.stdout,
            stderr=process.stderr,
            close=close,
            is_alive=is_alive,
            link_errors=(asyncssh.Error, OSError),
        )
        # Whatever the login shell's rc files print is dropped here, not blamed on a step.
        await session.start(SHELL_START_TIMEOUT)
        return session

    async def get_file(self, remote: str, local: Path) -> None:
        """Copy ``remote`` from the target to ``local`` over SFTP (via a ``.part`` file)."""
        with partial_file(local) as partial:
            async with self._sftp_lock:
                conn = await self._connection()
                try:
                    async with conn.start_sftp_client() as sftp:
                        await sftp.get(remote, partial)
                except asyncssh.SFTPNoSuchFile as exc:
                    raise FileNotFoundError(errno.ENOENT, f"{exc.reason} on {self.name}", remote) from exc
                except asyncssh.SFTPPermissionDenied as exc:
                    raise PermissionError(errno.EACCES, f"{exc.reason} on {self.name}", remote) from exc
                except asyncssh.SFTPError as exc:
                    raise OSError(f"SFTP get {remote} from {self.name} failed: {exc.reason}") from exc
                except asyncssh.DisconnectError as exc:
                    raise ConnectionLost(f"link to {self.address} failed while copying {remote}: {exc.reason}") from exc
                except asyncssh.Error as exc:
                    raise TransportError(f"SFTP to {self.address} failed: {exc.reason}") from exc

    async def close(self) -> None:
        """Close every idle channel and the connection."""
        await self._pool.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(asyncssh.Error, OSError, TimeoutError):
                await asyncio.wait_for(conn.wait_closed(), _CLOSE_WAIT)
