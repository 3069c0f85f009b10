"""Makes each incident's thread in Slack match its state.

``ThreadPublisher`` posts what is missing, edits what changed, at most once per
``update_interval`` per incident, and keeps each message's ``ts`` and content hash in
the incident's ``view`` column, so after a restart or a Slack outage it catches the
thread up without losing or doubling anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.exc import DBAPIError

from bot.core.approvals import ApprovalPolicy
from bot.core.lifecycle import FINAL
from bot.core.runbook import Runbook
from bot.slack.thread import desired_messages
from bot.slack.view import Rendered, clip, load_state
from bot.state.schema import Fence, LeaseLost, fenced
from bot.state.store import Incident, Store

log = logging.getLogger(__name__)

#: Metadata event type on every message the bot posts, to find it again after a lost answer.
POST_EVENT = "rollback_bot_message"
#: Errors of conversations.history / .replies that mean "the bot may not look" (not "try later").
NO_READ_BACK = ("missing_scope", "not_in_channel", "channel_not_found", "thread_not_found", "not_allowed_token_type")
READ_BACK_PAGES = 10

#: Errors that mean "Slack did not take it now; try again later".
TRANSIENT = (SlackApiError, SlackRequestError, aiohttp.ClientError, asyncio.TimeoutError, OSError)


@dataclass(kw_only=True, eq=False)
class ThreadPublisher:
    """Makes each incident's thread match its state; coalesces, retries, survives restarts."""

    client: AsyncWebClient
    store: Store
    runbook: Runbook
    policy: ApprovalPolicy
    update_interval: float = 1.0
    retry_max: float = 30.0
    upload_over: int = 3500
    #: Several replicas: the fence under which this process writes an incident's thread
    #: (None: another replica writes it, and ``elsewhere`` is told of the change instead).
    fence_of: Callable[[str], Fence | None] | None = None
    elsewhere: Callable[[str], None] | None = None
    _dirty: set[str] = field(default_factory=set, init=False)
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict, init=False)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict, init=False)
    _last: dict[str, float] = field(default_factory=dict, init=False)
    _idle: dict[str, asyncio.Event] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._poster = _never_resend(self.client)

    def request(self, incident_id: str) -> None:
        """Note that the incident changed; its thread is synced soon (coalesced)."""
        if self.fence_of is not None and self.fence_of(incident_id) is None:
            if self.elsewhere is not None:
                self.elsewhere(incident_id)
            return
        self._dirty.add(incident_id)
        ev = self._idle.setdefault(incident_id, asyncio.Event())
        ev.clear()
        task = self._tasks.get(incident_id)
        if task is None or task.done():
            self._tasks[incident_id] = asyncio.create_task(self._loop(incident_id), name=f"thread-{incident_id}")

    async def on_change(self, incident_id: str) -> None:
        """The engine's change callback."""
        self.request(incident_id)

    async def settled(self, incident_id: str, timeout: float | None = None) -> None:
        """Wait until the thread shows the latest state (tests, shutdown)."""
        ev = self._idle.setdefault(incident_id, asyncio.Event())
        if incident_id not in self._dirty and not (incident_id in self._tasks
                                                     and not self._tasks[incident_id].done()):
            return
        await asyncio.wait_for(ev.wait(), timeout)

    def drop(self, incident_id: str) -> None:
        """Stop writing an incident's thread (its lease went to another replica)."""
        self._dirty.discard(incident_id)
        task = self._tasks.pop(incident_id, None)
        if task is not None:
            task.cancel()
        self._idle.setdefault(incident_id, asyncio.Event()).set()

    def busy(self, incident_id: str) -> bool:
        """True while a sync of the incident is pending or under way."""
        task = self._tasks.get(incident_id)
        return incident_id in self._dirty or (task is not None and not task.done())

    async def close(self) -> None:
        """Stop the sync tasks (pending changes are caught up at the next start)."""
        for task in self._tasks.values():
            task.cancel()
        for task in list(self._tasks.values()):
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def catch_up(self) -> list[str]:
        """After a start: sync every incident whose thread may lag its state."""
        ids = []
        for inc in await self.store.incidents():
            if inc.channel and (inc.status not in FINAL or not inc.view.get("final_synced")):
                self.request(inc.id)
                ids.append(inc.id)
        return ids

    async def _loop(self, incident_id: str) -> None:
        failures = 0
        while incident_id in self._dirty:
            wait = self._last.get(incident_id, 0.0) + self.update_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._dirty.discard(incident_id)
            fence = self.fence_of(incident_id) if self.fence_of is not None else None
            if self.fence_of is not None and fence is None:
                break  # the lease went elsewhere: that replica writes the thread now
            try:
                with fenced(fence) if fence is not None else contextlib.nullcontext():
                    await self.sync(incident_id)
                failures = 0
            except LeaseLost:
                break  # another replica writes this thread now
            except (*TRANSIENT, DBAPIError) as exc:
                failures += 1
                self._dirty.add(incident_id)
                delay = min(self.retry_max, 0.5 * 2 ** min(failures, 10))
                log.warning("thread of %s not synced (%s); retrying in %.1fs", incident_id, _brief(exc), delay)
                await asyncio.sleep(delay)
            finally:
                self._last[incident_id] = time.monotonic()
        self._idle.setdefault(incident_id, asyncio.Event()).set()

    async def sync(self, incident_id: str) -> None:
        """One pass: post what is missing, edit what changed; ``view`` is saved after each call."""
        async with self._locks.setdefault(incident_id, asyncio.Lock()):
            state = await load_state(self.store, self.runbook, incident_id)
            inc = state.incident
            if not inc.channel:
                return
            view: dict[str, Any] = dict(inc.view or {})
            sent: dict[str, dict[str, str]] = dict(view.get("messages", {}))
            thread_ts = inc.thread_ts
            for msg in desired_messages(state, self.runbook, self.policy, upload_over=self.upload_over):
                digest = msg.digest()
                have = sent.get(msg.key)
                if have is not None and have.get("hash") == digest:
                    continue
                if msg.file is not None:
                    if thread_ts and (have is None or have.get("pending")):
                        if have is None or not await self._find_upload(inc, thread_ts, msg):
                            # Intent first: if the answer is lost, the next pass looks before it uploads again.
                            sent[msg.key] = {"ts": "", "hash": "", "pending": "upload"}
                            await self._save(incident_id, view, sent)
                            await self._upload(inc, thread_ts, msg)
                        sent[msg.key] = {"ts": "", "hash": digest}
                        await self._save(incident_id, view, sent)
                    continue
                if have is not None and have.get("pending"):
                    # A post whose answer was lost may be in Slack: adopt it rather than post twice.
                    found = await self._find_post(inc, thread_ts, msg, have)
                    have = {"ts": found, "hash": have.get("posted", "")} if found else None
                    if have is not None:
                        sent[msg.key] = have
                        if msg.in_channel and not thread_ts:
                            thread_ts = found
                            await self.store.update_incident(incident_id, thread_ts=found)
                        await self._save(incident_id, view, sent)
                        if have["hash"] == digest:
                            continue
                if have is not None:
                    await self.client.chat_update(channel=inc.channel, ts=have["ts"], text=msg.text,
                                                  blocks=msg.payload())
                    sent[msg.key] = {"ts": have["ts"], "hash": digest}
                else:
                    if not msg.in_channel and not thread_ts:
                        continue  # the root message is not there yet
                    kwargs: dict[str, Any] = {}
                    if not msg.in_channel:
                        kwargs["thread_ts"] = thread_ts
                        if msg.broadcast:
                            kwargs["reply_broadcast"] = True
                    nonce = uuid.uuid4().hex[:12]
                    sent[msg.key] = {"ts": "", "hash": "", "pending": nonce, "posted": digest,
                                     "at": f"{time.time():.3f}"}
                    await self._save(incident_id, view, sent)
                    resp = await self._poster.chat_postMessage(
                        channel=inc.channel, text=msg.text, blocks=msg.payload(),
                        metadata={"event_type": POST_EVENT,
                                  "event_payload": {"incident": inc.id, "key": msg.key, "nonce": nonce}},
                        **kwargs)
                    ts = str(resp["ts"])
                    sent[msg.key] = {"ts": ts, "hash": digest}
                    if msg.in_channel:
                        thread_ts = ts
                        await self.store.update_incident(incident_id, thread_ts=ts)
                await self._save(incident_id, view, sent)
            if inc.status in FINAL and not view.get("final_synced"):
                view["final_synced"] = True
                await self._save(incident_id, view, sent)

    async def _save(self, incident_id: str, view: dict[str, Any], sent: dict[str, dict[str, str]]) -> None:
        view["messages"] = sent
        await self.store.update_incident(incident_id, view=dict(view))

    async def _upload(self, inc: Incident, thread_ts: str, msg: Rendered) -> None:
        assert msg.file is not None and inc.channel is not None
        if not msg.file.exists():
            log.warning("%s: artifact %s is gone; not uploaded", inc.id, msg.file)
            return
        await self._poster.files_upload_v2(channel=inc.channel, thread_ts=thread_ts, file=str(msg.file),
                                           filename=msg.file.name, title=clip(msg.text, 200))

    async def _find_post(self, inc: Incident, thread_ts: str | None, msg: Rendered,
                         have: dict[str, str]) -> str | None:
        """The ts of this message if an earlier post of it reached Slack (found by its metadata)."""
        assert inc.channel is not None
        if not msg.in_channel and not thread_ts:
            return None
        oldest = f"{float(have.get('at') or 0) - 120:.6f}"
        for m in await self._read_back(inc.channel, None if msg.in_channel else thread_ts, oldest=oldest):
            meta = m.get("metadata") or {}
            payload = meta.get("event_payload") or {}
            if meta.get("event_type") == POST_EVENT and payload.get("incident") == inc.id \
                    and payload.get("key") == msg.key:
                return str(m["ts"])
        return None

    async def _find_upload(self, inc: Incident, thread_ts: str, msg: Rendered) -> bool:
        """True if an earlier upload of this file reached the thread (found by its file name)."""
        assert inc.channel is not None and msg.file is not None
        return any(f.get("name") == msg.file.name
                   for m in await self._read_back(inc.channel, thread_ts) for f in m.get("files") or [])

    async def _read_back(self, channel: str, thread_ts: str | None, *, oldest: str = "0") -> list[dict[str, Any]]:
        """The thread's replies (or the channel's recent messages), with metadata; [] if not allowed."""
        out: list[dict[str, Any]] = []
        cursor = None
        try:
            for _ in range(READ_BACK_PAGES):
                if thread_ts:
                    resp = await self.client.conversations_replies(channel=channel, ts=thread_ts, cursor=cursor,
                                                                   include_all_metadata=True, limit=200)
                else:
                    resp = await self.client.conversations_history(channel=channel, oldest=oldest, cursor=cursor,
                                                                   include_all_metadata=True, limit=200)
                out += resp.get("messages") or []
                cursor = (resp.get("response_metadata") or {}).get("next_cursor")
                if not cursor:
                    break
        except SlackApiError as exc:
            if exc.response.get("error") not in NO_READ_BACK:
                raise
            # Without the history scope the bot cannot look: it posts again, which may double.
            log.warning("cannot read back %s (%s); posting again may show a message twice",
                        channel, exc.response.get("error"))
        return out


def _never_resend(client: AsyncWebClient) -> AsyncWebClient:
    """A copy of ``client`` for posts and uploads: it retries only 429s (Slack took nothing then),
    never a request whose answer was lost; the publisher looks before it posts again."""
    return AsyncWebClient(token=client.token, base_url=client.base_url, timeout=client.timeout,
                          session=client.session, headers=dict(client.headers),
                          retry_handlers=[h for h in client.retry_handlers
                                          if isinstance(h, AsyncRateLimitErrorRetryHandler)])


def _brief(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError):
        return f"{exc.response.status_code} {exc.response.get('error')}"
    return f"{type(exc).__name__}: {exc}"
