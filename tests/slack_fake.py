"""A local Slack Web API fake that the real slack_sdk / Bolt stack talks to.

One aiohttp server on 127.0.0.1 (random port) plays every part of Slack a bot
meets: the Web API (``/api/{method}``), the file upload URLs handed out by
``files.getUploadURLExternal`` (``/upload/{file_id}``), the ``response_url`` of
commands and actions (``/response/{token}``) and the Socket Mode websocket
(``/socket``). It answers like Slack: ``{"ok": true, ...}`` or
``{"ok": false, "error": ...}`` with HTTP 200, 429 with ``Retry-After`` when
told to rate limit, 503 (or refused connections) when told to be down.

Public API (kept stable; the bot's end-to-end tests rely on it)::

    async with SlackFake(channels={"C0INCIDENT1": "incident-response"},
                         users={"U0ALICE": "alice"},
                         usergroups={"S0LEADS": ["U0ALICE"]},
                         scopes=None) as fake:         # or: await fake.start() ... await fake.stop()
        client = AsyncWebClient(token=fake.bot_token, base_url=fake.base_url)

    Construction (all keyword-only, all optional):
        bot_token, app_token, signing_secret   defaults DEFAULT_BOT_TOKEN / DEFAULT_APP_TOKEN /
                                               DEFAULT_SIGNING_SECRET
        team_id, team_domain, bot_user_id, bot_id, app_id
        channels   {channel_id: name | {"name", "is_private", "is_member"}}; none configured (here or with
                   add_channel) -> any channel id is accepted and created on first post
        users      {user_id: name | {"name", "real_name", "is_bot", "deleted", "tz"}}
        usergroups {group_id: [user_id, ...] | {"handle", "name", "users"}}
        scopes     bot scopes to enforce (``missing_scope``); None -> not enforced.
                   ``bot_scopes_from_manifest()`` reads them from manifest.yml.
        trigger_ttl seconds a trigger_id stays valid (Slack: 3); None -> forever
        socket_seed seed of the Socket Mode connection choice (the same seed, the same choices)

    Addresses: fake.port, fake.root_url ("http://127.0.0.1:P/"),
               fake.base_url ("http://127.0.0.1:P/api/", for AsyncWebClient(base_url=...)),
               fake.socket_url ("ws://127.0.0.1:P/socket")

    Web API methods: auth.test, chat.postMessage, chat.update, chat.delete,
        chat.postEphemeral, views.open, views.update, users.info, usergroups.list,
        usergroups.users.list, conversations.info, conversations.history,
        conversations.replies (metadata only with include_all_metadata; ``limit``/``cursor``
        pages), files.getUploadURLExternal (+ the upload POST), files.completeUploadExternal,
        apps.connections.open.
        Bodies: form-encoded, multipart or JSON; token from ``Authorization: Bearer``
        (or a ``token`` form field). Missing token -> not_authed, wrong token ->
        invalid_auth, bot token on apps.connections.open (or app token elsewhere) ->
        not_allowed_token_type, unknown method -> unknown_method. Blocks are checked
        against Slack's limits (50 per message, 100 per modal, 3000 chars a section,
        ...) -> invalid_blocks / invalid_arguments.

    Recorded state (read freely; mutate only through the methods):
        fake.calls        list[Call]; a Call unpacks and indexes as (method, params, at) and also
                          has .token .status (0: connection dropped) .error .ok; ``at`` is
                          time.monotonic(); params as received (form values are strings)
        fake.calls_to(method) -> list[Call]
        fake.messages(channel, include_deleted=False) -> list[Message]  current state, ts order
        fake.message(channel, ts) -> Message | None
        fake.thread(channel, ts) -> list[Message]  parent first, then replies in order
        fake.files        list[UploadedFile]   (.content bytes, .text, .channel, .thread_ts, ...)
        fake.ephemerals   list[Ephemeral]      (chat.postEphemeral and ephemeral response_url posts)
        fake.views_opened list[View]           (.view is the current view dict, .updates the history)
        fake.responses    list[ResponsePost]   every POST to a response_url
        fake.socket_acks  list[SocketAck]      every ack the Socket Mode client sent
        fake.socket_deliveries list[SocketDelivery]  every envelope pushed, with its connection
        fake.buttons(channel, thread_ts=None) -> list[Control]  buttons the bot really posted
        fake.choices(channel, thread_ts=None) -> list[Control]  one per option of selects,
                                                                radio buttons, overflows, checkboxes
        fake.find_button(channel, thread_ts=None, *, action_id=None, text=None, value=None) -> Control
                          exactly one match, else AssertionError listing what is there
        fake.fill_view(view, {action_id: value}) -> state["values"] dict, checked against the view

    Record types (dataclasses):
        Message   channel ts text blocks thread_ts reply_broadcast user bot_id metadata files(ids)
                  edits(list of {"text","blocks","at"} before each update) deleted posted_at
                  updated_at reply_count; .is_reply; .to_slack() (the dict Slack would show)
        Control   type ("button" | "static_select" | ...) action_id block_id text value message_ts
                  channel thread_ts (None for a root message) confirm(bool) style url option
        UploadedFile id filename length title content text channel thread_ts initial_comment
                  completed message_ts
        Ephemeral channel user text blocks message_ts thread_ts source at
        View      id view trigger_id user_id hash opened_at updates; .callback_id .private_metadata
        ResponsePost token body at channel user message_ts status
        SocketAck envelope_id payload at
        SocketDelivery envelope_id connection type retry_attempt at
    Helpers: check_blocks(blocks, limit) -> problems, controls_of(message) -> list[Control],
        bot_scopes_from_manifest(path=None) -> list[str]

    Configuration at runtime:
        fake.add_channel(id, name, is_private=False, is_member=True), fake.add_user(id, name, **fields),
        fake.add_usergroup(id, users, handle=None, name=None)  (replaces the members)
        fake.issue_trigger_id(user_id) -> str      (the driver does this for you)
        fake.issue_response_url(channel_id, user_id, message_ts=None, thread_ts=None) -> str

    Faults (effective immediately, combinable):
        fake.rate_limit(method=None, times=1, retry_after=1, seconds=None)
            the next ``times`` calls of ``method`` (any method if None), or every call for
            ``seconds`` if given, answer 429 {"ok":false,"error":"ratelimited"} + Retry-After
        fake.clear_rate_limits()
        fake.lose_responses(method, times=1)   the next ``times`` calls of ``method`` take effect, then
                                         the connection drops before the answer (a lost response)
        fake.down(seconds, mode="503")   503 {"ok":false,"error":"service_unavailable"} for a while;
                                         mode="refuse": the port stops listening and open
                                         connections are dropped (websockets too)
        fake.set_down(True | False, mode="503")
        await fake.wait_up()             after set_down(False) / a timed refuse outage: listening again
        async with fake.outage(mode="503"): ...   down inside the block, up (and listening) after it
        fake.is_down -> bool

    Socket Mode:
        apps.connections.open returns ws://127.0.0.1:P/socket?ticket=...; the server greets
        with {"type":"hello",...}.
        await fake.wait_socket_connections(n=1, timeout=10)  n connections made so far
        Connections are numbered 1, 2, ... in the order they were made.
        await fake.socket_send(type="slash_commands"|"interactive"|"events_api", payload={...},
                               timeout=10, retry_attempt=None, retry_reason=None,
                               accepts_response_payload=None, connection=None) -> dict
            sends an envelope to one open connection and returns the client's ack
            ({"envelope_id", "payload"?}); asyncio.TimeoutError if none comes. Like Slack,
            each envelope (a retry too) goes to one connection chosen at random among the
            open ones that were not told to disconnect; ``connection``: to that one.
        await fake.socket_disconnect(reason="refresh_requested")  {"type":"disconnect"} to all
        await fake.socket_close_all()   server-side close of every websocket
        fake.socket_count -> int        open websockets now
        fake.socket_connections -> list[int]   their numbers
        fake.socket_peers  {number: (host, port)}  the client's address of each connection

Differences from Slack worth knowing: ts values are unique across channels
(Slack: per channel); a ``thread_ts`` that is not in the channel is
``thread_not_found`` (Slack may accept it); an unknown ``trigger_id`` is
``invalid_trigger_id``, a used or expired one ``expired_trigger_id``; a
``response_url`` takes 5 posts, then 404 ``used_url``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import random
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from aiohttp import WSMsgType, web
from aiohttp.web_request import FileField

DEFAULT_BOT_TOKEN = "xoxb-0000000001-fake-bot-token"
DEFAULT_APP_TOKEN = "xapp-1-A0FAKEAPP1-0000000001-fake-app-token"
DEFAULT_SIGNING_SECRET = "fake-signing-secret-0123456789abcdef"

ALL_BOT_SCOPES = ("commands", "chat:write", "users:read", "usergroups:read", "files:write", "channels:read",
                  "channels:history")

#: Bot scope each Web API method needs (None: no scope; apps.connections.open uses the app token).
METHOD_SCOPES: dict[str, str | None] = {
    "auth.test": None,
    "chat.postMessage": "chat:write",
    "chat.update": "chat:write",
    "chat.delete": "chat:write",
    "chat.postEphemeral": "chat:write",
    "views.open": None,
    "views.update": None,
    "users.info": "users:read",
    "usergroups.list": "usergroups:read",
    "usergroups.users.list": "usergroups:read",
    "conversations.info": "channels:read",
    "conversations.history": "channels:history",
    "conversations.replies": "channels:history",
    "files.getUploadURLExternal": "files:write",
    "files.completeUploadExternal": "files:write",
    "apps.connections.open": None,
}

RESPONSE_URL_MAX_USES = 5
RESPONSE_URL_TTL = 30 * 60


def bot_scopes_from_manifest(path: str | Path | None = None) -> list[str]:
    """The bot scopes listed in the project's ``manifest.yml`` (to enforce them with ``scopes=``)."""
    import yaml

    manifest_path = Path(path) if path else Path(__file__).resolve().parent.parent / "manifest.yml"
    manifest = yaml.safe_load(manifest_path.read_text())
    return list(manifest["oauth_config"]["scopes"]["bot"])


# --------------------------------------------------------------------------- records


@dataclass
class Call:
    """One Web API request as the fake received it; unpacks and indexes as ``(method, params, at)``."""

    method: str
    params: dict[str, Any]
    at: float
    token: str | None = None
    status: int = 200
    error: str | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.method, self.params, self.at))

    def __getitem__(self, index: int) -> Any:
        return (self.method, self.params, self.at)[index]

    def __len__(self) -> int:
        return 3

    @property
    def ok(self) -> bool:
        """True when Slack would have said ``ok: true``."""
        return self.status == 200 and self.error is None


@dataclass
class Message:
    """A channel message in its current state (``edits`` keeps the earlier versions)."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    reply_broadcast: bool = False
    user: str = ""
    bot_id: str | None = None
    metadata: dict[str, Any] | None = None
    files: list[str] = field(default_factory=list)
    edits: list[dict[str, Any]] = field(default_factory=list)
    deleted: bool = False
    posted_at: float = 0.0
    updated_at: float | None = None
    reply_count: int = 0

    @property
    def is_reply(self) -> bool:
        """True for a message inside a thread (not the parent)."""
        return self.thread_ts is not None and self.thread_ts != self.ts

    def to_slack(self) -> dict[str, Any]:
        """The message as Slack shows it in API answers and interaction payloads."""
        out: dict[str, Any] = {"type": "message", "user": self.user, "text": self.text, "ts": self.ts}
        if self.bot_id:
            out["bot_id"] = self.bot_id
        if self.blocks:
            out["blocks"] = self.blocks
        if self.is_reply:
            out["thread_ts"] = self.thread_ts
            if self.reply_broadcast:
                out["subtype"] = "thread_broadcast"
        elif self.reply_count:
            out["thread_ts"] = self.ts
            out["reply_count"] = self.reply_count
        if self.metadata:
            out["metadata"] = self.metadata
        if self.files:
            out["files"] = [{"id": f} for f in self.files]
            out["upload"] = True
        if self.edits:
            out["edited"] = {"user": self.user, "ts": self.ts}
        return out


@dataclass
class Ephemeral:
    """An ephemeral message shown to one user (never stored in the channel)."""

    channel: str
    user: str
    text: str
    blocks: list[dict[str, Any]]
    message_ts: str
    thread_ts: str | None
    source: Literal["chat.postEphemeral", "response_url"]
    at: float


@dataclass
class UploadedFile:
    """A file from getUploadURLExternal; ``content`` once uploaded, ``channel`` once shared."""

    id: str
    filename: str
    length: int
    title: str | None = None
    content: bytes | None = None
    channel: str | None = None
    thread_ts: str | None = None
    initial_comment: str | None = None
    completed: bool = False
    message_ts: str | None = None

    @property
    def text(self) -> str:
        """The uploaded bytes as UTF-8 text ("" before the upload)."""
        return (self.content or b"").decode("utf-8", errors="replace")


@dataclass
class View:
    """A modal opened with views.open; ``view`` is its current definition."""

    id: str
    view: dict[str, Any]
    trigger_id: str
    user_id: str | None
    hash: str
    opened_at: float
    updates: list[dict[str, Any]] = field(default_factory=list)

    @property
    def callback_id(self) -> str | None:
        """The view's callback_id."""
        return self.view.get("callback_id")

    @property
    def private_metadata(self) -> str:
        """The view's private_metadata ("" when absent)."""
        return str(self.view.get("private_metadata") or "")


@dataclass
class ResponsePost:
    """A POST to a response_url, with what the url was issued for."""

    token: str
    body: dict[str, Any]
    at: float
    channel: str
    user: str
    message_ts: str | None
    status: int


@dataclass
class SocketAck:
    """An acknowledgement the Socket Mode client sent back."""

    envelope_id: str
    payload: dict[str, Any] | None
    at: float


@dataclass
class SocketDelivery:
    """An envelope the fake pushed, and the connection it went to."""

    envelope_id: str
    connection: int
    type: str
    retry_attempt: int | None
    at: float


@dataclass(frozen=True)
class Control:
    """An interactive element the bot posted: a button, or one option of a select-like element."""

    type: str
    action_id: str
    block_id: str
    text: str
    value: str | None
    message_ts: str
    channel: str
    thread_ts: str | None
    confirm: bool
    style: str | None = None
    url: str | None = None
    option: dict[str, Any] | None = None

    def describe(self) -> str:
        """One line for assertion messages."""
        return f"{self.type} {self.text!r} action_id={self.action_id} value={self.value!r} msg={self.message_ts}"


@dataclass
class _Trigger:
    user_id: str | None
    issued_at: float
    used: bool = False


@dataclass
class _ResponseUrl:
    channel: str
    user: str
    message_ts: str | None
    thread_ts: str | None
    issued_at: float
    uses: int = 0


@dataclass
class _RateLimit:
    method: str | None
    remaining: int | None
    until: float | None
    retry_after: int


class _ApiError(Exception):
    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


# --------------------------------------------------------------------------- block checks


def _plain(obj: Any) -> str:
    if isinstance(obj, dict):
        return str(obj.get("text", ""))
    return "" if obj is None else str(obj)


def _check_len(problems: list[str], value: Any, limit: int, pointer: str) -> None:
    if value is not None and len(_plain(value)) > limit:
        problems.append(f"[ERROR] must be less than {limit + 1} characters [json-pointer:{pointer}]")


def _check_element(problems: list[str], el: Any, pointer: str) -> None:
    if not isinstance(el, dict) or not isinstance(el.get("type"), str):
        problems.append(f"[ERROR] missing required field: type [json-pointer:{pointer}]")
        return
    _check_len(problems, el.get("action_id"), 255, f"{pointer}/action_id")
    if el["type"] == "button":
        if "text" not in el:
            problems.append(f"[ERROR] missing required field: text [json-pointer:{pointer}]")
        _check_len(problems, el.get("text"), 75, f"{pointer}/text/text")
        _check_len(problems, el.get("value"), 2000, f"{pointer}/value")
        _check_len(problems, el.get("url"), 3000, f"{pointer}/url")
    options = el.get("options")
    if isinstance(options, list):
        if len(options) > 100:
            problems.append(f"[ERROR] no more than 100 items allowed [json-pointer:{pointer}/options]")
        for i, opt in enumerate(options):
            _check_len(problems, opt.get("text"), 75, f"{pointer}/options/{i}/text/text")
            _check_len(problems, opt.get("value"), 150, f"{pointer}/options/{i}/value")
    confirm = el.get("confirm")
    if isinstance(confirm, dict):
        for key, limit in (("title", 100), ("text", 300), ("confirm", 30), ("deny", 30)):
            _check_len(problems, confirm.get(key), limit, f"{pointer}/confirm/{key}/text")


def check_blocks(blocks: Any, limit: int) -> list[str]:
    """Slack's checks on a list of blocks, as ``[ERROR] ... [json-pointer:...]`` lines."""
    problems: list[str] = []
    if not isinstance(blocks, list):
        return ["[ERROR] expected an array [json-pointer:/blocks]"]
    if len(blocks) > limit:
        problems.append(f"[ERROR] no more than {limit} items allowed [json-pointer:/blocks]")
    block_ids: set[str] = set()
    for i, block in enumerate(blocks):
        ptr = f"/blocks/{i}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            problems.append(f"[ERROR] missing required field: type [json-pointer:{ptr}]")
            continue
        block_id = block.get("block_id")
        if block_id is not None:
            _check_len(problems, block_id, 255, f"{ptr}/block_id")
            if block_id in block_ids:
                problems.append(f"[ERROR] duplicate block_id {block_id!r} [json-pointer:{ptr}/block_id]")
            block_ids.add(block_id)
        kind = block["type"]
        if kind == "section":
            if "text" not in block and "fields" not in block:
                problems.append(f"[ERROR] must provide text or fields [json-pointer:{ptr}]")
            _check_len(problems, block.get("text"), 3000, f"{ptr}/text/text")
            fields = block.get("fields") or []
            if len(fields) > 10:
                problems.append(f"[ERROR] no more than 10 items allowed [json-pointer:{ptr}/fields]")
            for j, fld in enumerate(fields):
                _check_len(problems, fld, 2000, f"{ptr}/fields/{j}/text")
            if "accessory" in block:
                _check_element(problems, block["accessory"], f"{ptr}/accessory")
        elif kind == "header":
            _check_len(problems, block.get("text"), 150, f"{ptr}/text/text")
        elif kind == "context":
            if len(block.get("elements") or []) > 10:
                problems.append(f"[ERROR] no more than 10 items allowed [json-pointer:{ptr}/elements]")
        elif kind == "actions":
            elements = block.get("elements") or []
            if len(elements) > 25:
                problems.append(f"[ERROR] no more than 25 items allowed [json-pointer:{ptr}/elements]")
            seen: set[str] = set()
            for j, el in enumerate(elements):
                _check_element(problems, el, f"{ptr}/elements/{j}")
                aid = el.get("action_id") if isinstance(el, dict) else None
                if aid is not None and aid in seen:
                    problems.append(f"[ERROR] duplicate action_id {aid!r} [json-pointer:{ptr}/elements/{j}]")
                if aid is not None:
                    seen.add(aid)
        elif kind == "input":
            _check_len(problems, block.get("label"), 2000, f"{ptr}/label/text")
            if "element" not in block:
                problems.append(f"[ERROR] missing required field: element [json-pointer:{ptr}]")
            else:
                _check_element(problems, block["element"], f"{ptr}/element")
    return problems


def _fill_ids(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give blocks and interactive elements the random ids Slack assigns when they have none."""
    out = json.loads(json.dumps(blocks))
    for block in out:
        block.setdefault("block_id", secrets.token_urlsafe(4)[:5])
        elements = list(block.get("elements") or []) if block.get("type") == "actions" else []
        if isinstance(block.get("accessory"), dict):
            elements.append(block["accessory"])
        if isinstance(block.get("element"), dict):
            elements.append(block["element"])
        for el in elements:
            if isinstance(el, dict) and el.get("type") not in ("image", "mrkdwn", "plain_text"):
                el.setdefault("action_id", secrets.token_urlsafe(4)[:5])
    return out


def controls_of(message: Message) -> list[Control]:
    """Every button and every option of a select-like element on ``message``, in display order."""
    found: list[Control] = []
    thread = message.thread_ts if message.is_reply else None
    for block in message.blocks:
        elements = list(block.get("elements") or []) if block.get("type") == "actions" else []
        if isinstance(block.get("accessory"), dict):
            elements.append(block["accessory"])
        for el in elements:
            if not isinstance(el, dict):
                continue
            base = Control(
                type=str(el.get("type", "")),
                action_id=str(el.get("action_id", "")),
                block_id=str(block.get("block_id", "")),
                text="",
                value=None,
                message_ts=message.ts,
                channel=message.channel,
                thread_ts=thread,
                confirm=isinstance(el.get("confirm"), dict),
            )
            if el.get("type") == "button":
                found.append(
                    replace(
                        base,
                        text=_plain(el.get("text")),
                        value=el.get("value"),
                        style=el.get("style"),
                        url=el.get("url"),
                    )
                )
                continue
            options = list(el.get("options") or [])
            for group in el.get("option_groups") or []:
                options.extend(group.get("options") or [])
            found.extend(replace(base, text=_plain(o.get("text")), value=o.get("value"), option=o) for o in options)
    return found


# --------------------------------------------------------------------------- the fake


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).lower() in ("1", "true", "yes")


def _json_param(params: Mapping[str, Any], key: str, error: str) -> Any:
    value = params.get(key)
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise _ApiError(error) from exc
    return value


def _str_param(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is None or value == "":
        return None
    return str(value)


class SlackFake:
    """The Slack Web API, response_url, file upload and Socket Mode fake (see the module docstring)."""

    def __init__(
        self,
        *,
        bot_token: str = DEFAULT_BOT_TOKEN,
        app_token: str = DEFAULT_APP_TOKEN,
        signing_secret: str = DEFAULT_SIGNING_SECRET,
        team_id: str = "T0FAKETEAM1",
        team_domain: str = "fake-team",
        bot_user_id: str = "U0FAKEBOT01",
        bot_id: str = "B0FAKEBOT01",
        app_id: str = "A0FAKEAPP01",
        channels: Mapping[str, str | Mapping[str, Any]] | None = None,
        users: Mapping[str, str | Mapping[str, Any]] | None = None,
        usergroups: Mapping[str, Sequence[str] | Mapping[str, Any]] | None = None,
        scopes: Iterable[str] | None = None,
        trigger_ttl: float | None = 3.0,
        socket_seed: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.signing_secret = signing_secret
        self.team_id = team_id
        self.team_domain = team_domain
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        self.scopes: list[str] | None = list(scopes) if scopes is not None else None
        self.trigger_ttl = trigger_ttl
        self.host = host
        self.port = 0

        self.calls: list[Call] = []
        self.files: list[UploadedFile] = []
        self.ephemerals: list[Ephemeral] = []
        self.views_opened: list[View] = []
        self.responses: list[ResponsePost] = []
        self.socket_acks: list[SocketAck] = []
        self.socket_deliveries: list[SocketDelivery] = []
        self.socket_peers: dict[int, tuple[str, int]] = {}
        self._messages: dict[str, list[Message]] = {}
        self._by_ts: dict[tuple[str, str], Message] = {}
        self._files_by_id: dict[str, UploadedFile] = {}
        self._triggers: dict[str, _Trigger] = {}
        self._response_urls: dict[str, _ResponseUrl] = {}
        self._tickets: set[str] = set()
        self._last_ts_us = 0
        self._ids = itertools.count(1)

        self.channels: dict[str, dict[str, Any]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.usergroups: dict[str, dict[str, Any]] = {}
        self._strict_channels = False
        for cid, spec in (channels or {}).items():
            self.add_channel(cid, **({"name": spec} if isinstance(spec, str) else dict(spec)))
        self.add_user(bot_user_id, "rollback-bot", is_bot=True)
        for uid, uspec in (users or {}).items():
            self.add_user(uid, **({"name": uspec} if isinstance(uspec, str) else dict(uspec)))
        for gid, gspec in (usergroups or {}).items():
            if isinstance(gspec, Mapping):
                self.add_usergroup(gid, **dict(gspec))
            else:
                self.add_usergroup(gid, list(gspec))

        self._rate_limits: list[_RateLimit] = []
        self._lost: list[list[Any]] = []  # [method, remaining]: answers dropped after the effect
        self._down_until: float | None = None
        self._down_mode: Literal["503", "refuse"] = "503"
        self._restart_task: asyncio.Task[None] | None = None

        self._sockets: dict[int, web.WebSocketResponse] = {}  # by number, oldest first
        self._socket_leaving: set[int] = set()  # told to disconnect: Slack sends them nothing new
        self._socket_random = random.Random(socket_seed)
        self._socket_total = 0
        self._socket_changed: asyncio.Condition | None = None
        self._pending_acks: dict[str, asyncio.Future[dict[str, Any]]] = {}

        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._methods = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "views.open": self._views_open,
            "views.update": self._views_update,
            "users.info": self._users_info,
            "usergroups.list": self._usergroups_list,
            "usergroups.users.list": self._usergroups_users_list,
            "conversations.info": self._conversations_info,
            "conversations.history": self._conversations_history,
            "conversations.replies": self._conversations_replies,
            "files.getUploadURLExternal": self._files_get_upload_url,
            "files.completeUploadExternal": self._files_complete_upload,
            "apps.connections.open": self._apps_connections_open,
        }

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> SlackFake:
        """Listen on 127.0.0.1 (a random port unless one was used before) and return self."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self._handle_api)
        app.router.add_post("/upload/{file_id}", self._handle_upload)
        app.router.add_post("/response/{token}", self._handle_response_url)
        app.router.add_get("/socket", self._handle_socket)
        self._socket_changed = asyncio.Condition()
        self._runner = web.AppRunner(app, shutdown_timeout=2.0, access_log=None)
        await self._runner.setup()
        await self._listen()
        return self

    async def stop(self) -> None:
        """Close websockets, stop listening and release the port."""
        if self._restart_task is not None:
            self._restart_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restart_task
            self._restart_task = None
        await self.socket_close_all()
        for fut in self._pending_acks.values():
            fut.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def __aenter__(self) -> SlackFake:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT/``."""
        return f"http://{self.host}:{self.port}/"

    @property
    def base_url(self) -> str:
        """The Web API base URL for ``AsyncWebClient(base_url=...)`` (ends with ``/api/``)."""
        return f"{self.root_url}api/"

    @property
    def socket_url(self) -> str:
        """The Socket Mode websocket URL (without its ticket)."""
        return f"ws://{self.host}:{self.port}/socket"

    # ----------------------------------------------------------------- configuration

    def add_channel(self, channel_id: str, name: str | None = None, *, is_private: bool = False,
                    is_member: bool = True) -> None:
        """Make a channel known; once any channel is configured, posting elsewhere is ``channel_not_found``.
        ``is_member=False``: the bot was not invited (history and posts are ``not_in_channel``)."""
        self._strict_channels = True
        self._register_channel(channel_id, name, is_private, is_member)

    def _register_channel(self, channel_id: str, name: str | None, is_private: bool, is_member: bool = True) -> None:
        self.channels[channel_id] = {"id": channel_id, "name": name or channel_id.lower(), "is_private": is_private,
                                     "is_member": is_member}
        self._messages.setdefault(channel_id, [])

    def add_user(self, user_id: str, name: str | None = None, **fields: Any) -> None:
        """Make a user known to users.info."""
        self.users[user_id] = {"id": user_id, "name": name or user_id.lower(), **fields}

    def add_usergroup(
        self, group_id: str, users: Sequence[str], *, handle: str | None = None, name: str | None = None
    ) -> None:
        """Create or replace a user group (usergroups.users.list, usergroups.list)."""
        handle = handle or self.usergroups.get(group_id, {}).get("handle") or group_id.lower()
        self.usergroups[group_id] = {"id": group_id, "handle": handle, "name": name or handle, "users": list(users)}

    def issue_trigger_id(self, user_id: str | None = None) -> str:
        """A fresh trigger_id, valid once for ``trigger_ttl`` seconds (as in a real interaction)."""
        trigger_id = f"{next(self._ids)}.{self.team_id[1:]}.{secrets.token_hex(16)}"
        self._triggers[trigger_id] = _Trigger(user_id=user_id, issued_at=time.monotonic())
        return trigger_id

    def issue_response_url(
        self, channel_id: str, user_id: str, message_ts: str | None = None, thread_ts: str | None = None
    ) -> str:
        """A response_url for an interaction in ``channel_id`` by ``user_id`` (on ``message_ts`` if any)."""
        token = f"{self.team_id}/{next(self._ids)}/{secrets.token_urlsafe(12)}".replace("/", "-")
        self._response_urls[token] = _ResponseUrl(channel_id, user_id, message_ts, thread_ts, time.monotonic())
        return f"{self.root_url}response/{token}"

    # ----------------------------------------------------------------- faults

    def rate_limit(
        self, method: str | None = None, times: int = 1, retry_after: int = 1, seconds: float | None = None
    ) -> None:
        """Answer 429 + Retry-After to the next ``times`` calls of ``method`` (any if None), or for ``seconds``."""
        until = time.monotonic() + seconds if seconds is not None else None
        self._rate_limits.append(
            _RateLimit(
                method=method, remaining=None if seconds is not None else times, until=until, retry_after=retry_after
            )
        )

    def lose_responses(self, method: str, times: int = 1) -> None:
        """Carry out the next ``times`` calls of ``method``, then drop the connection instead of answering."""
        self._lost.append([method, times])

    def _lose(self, method: str) -> bool:
        for rule in self._lost:
            if rule[0] == method and rule[1] > 0:
                rule[1] -= 1
                return True
        return False

    def clear_rate_limits(self) -> None:
        """Drop every pending rate-limit rule."""
        self._rate_limits.clear()

    def down(self, seconds: float, mode: Literal["503", "refuse"] = "503") -> None:
        """Be unavailable for ``seconds`` (503 answers, or refused connections with mode="refuse")."""
        self.set_down(True, mode=mode, seconds=seconds)

    def set_down(self, down: bool, mode: Literal["503", "refuse"] = "503", seconds: float | None = None) -> None:
        """Go down (until ``set_down(False)`` or for ``seconds``) or come back up now."""
        if self._restart_task is not None:
            self._restart_task.cancel()
            self._restart_task = None
        self._down_mode = mode if down else "503"
        self._down_until = None if not down else math.inf if seconds is None else time.monotonic() + seconds
        loop = asyncio.get_running_loop()
        if down and mode == "refuse":
            self._restart_task = loop.create_task(self._refuse(seconds))
        elif self._site is None and self._runner is not None:
            self._restart_task = loop.create_task(self._relisten())

    async def wait_up(self) -> None:
        """After ``set_down(False)`` (or a timed refuse-mode outage): wait until the port listens again."""
        if self._restart_task is not None:
            await self._restart_task

    @property
    def is_down(self) -> bool:
        """True while the fake is answering 503 or refusing connections."""
        return self._down_until is not None and time.monotonic() < self._down_until

    async def _refuse(self, seconds: float | None) -> None:
        if self._site is not None:
            site, self._site = self._site, None
            await site.stop()
        await self.socket_close_all()
        if seconds is not None:
            await asyncio.sleep(seconds)
            await self._relisten()

    async def _relisten(self) -> None:
        if self._site is None and self._runner is not None:
            await self._listen()

    def _fault(self, method: str | None) -> web.Response | None:
        if self.is_down:
            if self._down_mode == "refuse":
                raise _DropConnection
            return web.json_response({"ok": False, "error": "service_unavailable"}, status=503)
        if method is None:
            return None
        now = time.monotonic()
        self._rate_limits = [
            r
            for r in self._rate_limits
            if (r.remaining is None or r.remaining > 0) and (r.until is None or now < r.until)
        ]
        for rule in self._rate_limits:
            if rule.method in (None, method):
                if rule.remaining is not None:
                    rule.remaining -= 1
                return web.json_response(
                    {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": str(rule.retry_after)}
                )
        return None

    # ----------------------------------------------------------------- queries

    def calls_to(self, method: str) -> list[Call]:
        """Every recorded call of one Web API method."""
        return [c for c in self.calls if c.method == method]

    def messages(self, channel: str, include_deleted: bool = False) -> list[Message]:
        """Current state of every message in ``channel`` (threads included), in ts order."""
        channel = self._channel_id(channel) or channel
        return [m for m in self._messages.get(channel, []) if include_deleted or not m.deleted]

    def message(self, channel: str, ts: str) -> Message | None:
        """The message with this ts in ``channel`` (deleted ones included), or None."""
        return self._by_ts.get((self._channel_id(channel) or channel, ts))

    def thread(self, channel: str, ts: str) -> list[Message]:
        """The thread rooted at ``ts``: the parent first, then its replies in order."""
        return [m for m in self.messages(channel) if m.ts == ts or m.thread_ts == ts]

    def buttons(self, channel: str, thread_ts: str | None = None) -> list[Control]:
        """Buttons on the current messages of ``channel`` (or of one thread), in display order."""
        return [c for c in self._controls(channel, thread_ts) if c.type == "button"]

    def choices(self, channel: str, thread_ts: str | None = None) -> list[Control]:
        """One Control per option of every select, radio group, overflow or checkbox group posted."""
        return [c for c in self._controls(channel, thread_ts) if c.type != "button"]

    def find_button(
        self,
        channel: str,
        thread_ts: str | None = None,
        *,
        action_id: str | None = None,
        text: str | None = None,
        value: str | None = None,
    ) -> Control:
        """The one button matching every filter given; AssertionError listing the buttons otherwise."""
        candidates = self.buttons(channel, thread_ts)
        hits = [
            b
            for b in candidates
            if (action_id is None or b.action_id == action_id)
            and (text is None or b.text == text)
            and (value is None or b.value == value)
        ]
        if len(hits) != 1:
            listing = "\n  ".join(b.describe() for b in candidates) or "(none)"
            raise AssertionError(
                f"expected one button with action_id={action_id!r} text={text!r} value={value!r}, "
                f"found {len(hits)}; buttons posted:\n  {listing}"
            )
        return hits[0]

    def fill_view(self, view: View | dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
        """``state["values"]`` for a submission of ``view`` with ``{action_id: value}``.

        Text inputs take a str; selects and radio buttons the option value; checkboxes and
        multi-selects a list of option values; users_select a user id; datepicker "YYYY-MM-DD".
        An action_id the view lacks, or an option it does not offer, raises AssertionError.
        """
        definition = view.view if isinstance(view, View) else view
        state: dict[str, Any] = {}
        wanted = dict(values)
        for block in definition.get("blocks") or []:
            el = block.get("element") if block.get("type") == "input" else None
            if not isinstance(el, dict) or el.get("action_id") not in wanted:
                continue
            action_id = el["action_id"]
            state.setdefault(block["block_id"], {})[action_id] = self._element_state(el, wanted.pop(action_id))
        if wanted:
            raise AssertionError(f"the view has no input with action_id {sorted(wanted)}")
        return state

    @staticmethod
    def _element_state(el: dict[str, Any], value: Any) -> dict[str, Any]:
        kind = el["type"]
        options = list(el.get("options") or [])
        for group in el.get("option_groups") or []:
            options.extend(group.get("options") or [])
        by_value = {o.get("value"): o for o in options}

        def pick(v: Any) -> dict[str, Any]:
            if v not in by_value:
                raise AssertionError(f"{el['action_id']}: option {v!r} not offered; offered {sorted(by_value)}")
            return by_value[v]

        if kind in ("static_select", "radio_buttons"):
            return {"type": kind, "selected_option": pick(value) if value is not None else None}
        if kind in ("checkboxes", "multi_static_select"):
            return {"type": kind, "selected_options": [pick(v) for v in value]}
        if kind == "users_select":
            return {"type": kind, "selected_user": value}
        if kind == "multi_users_select":
            return {"type": kind, "selected_users": list(value)}
        if kind == "conversations_select":
            return {"type": kind, "selected_conversation": value}
        if kind == "channels_select":
            return {"type": kind, "selected_channel": value}
        if kind == "datepicker":
            return {"type": kind, "selected_date": value}
        if kind == "timepicker":
            return {"type": kind, "selected_time": value}
        return {"type": kind, "value": None if value is None else str(value)}

    def _controls(self, channel: str, thread_ts: str | None) -> list[Control]:
        msgs = self.thread(channel, thread_ts) if thread_ts else self.messages(channel)
        return [c for m in msgs for c in controls_of(m)]

    # ----------------------------------------------------------------- HTTP plumbing

    async def _read_params(self, request: web.Request) -> tuple[dict[str, Any], bool]:
        params: dict[str, Any] = dict(request.query)
        is_json = request.content_type == "application/json"
        if request.method == "POST" and request.can_read_body:
            if is_json:
                try:
                    body = await request.json()
                except json.JSONDecodeError:
                    body = None
                if not isinstance(body, dict):
                    raise _ApiError("invalid_json")
                params.update(body)
            else:
                form = await request.post()
                for key, value in form.items():
                    params[key] = value if isinstance(value, str) else getattr(value, "file", None)
        return params, is_json

    @staticmethod
    def _token(request: web.Request, params: Mapping[str, Any], is_json: bool) -> str | None:
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip() or None
        if not is_json and isinstance(params.get("token"), str):
            return str(params["token"])
        return None

    def _auth_error(self, method: str, token: str | None) -> str | None:
        if not token:
            return "not_authed"
        wanted, other = (
            (self.app_token, self.bot_token) if method == "apps.connections.open" else (self.bot_token, self.app_token)
        )
        if token == wanted:
            return None
        return "not_allowed_token_type" if token == other else "invalid_auth"

    def _headers(self) -> dict[str, str]:
        scopes = self.scopes if self.scopes is not None else list(ALL_BOT_SCOPES)
        return {"X-OAuth-Scopes": ",".join(scopes), "X-Accepted-OAuth-Scopes": ""}

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        call = Call(method=method, params={}, at=time.monotonic())
        self.calls.append(call)
        try:
            fault = self._fault(method)
        except _DropConnection:
            return self._drop(request, call)
        if fault is not None:
            call.status = fault.status
            call.error = "ratelimited" if fault.status == 429 else "service_unavailable"
            with contextlib.suppress(Exception):
                call.params, _ = await self._read_params(request)
            return fault
        try:
            call.params, is_json = await self._read_params(request)
            call.token = self._token(request, call.params, is_json)
            handler = self._methods.get(method)
            if handler is None:
                raise _ApiError("unknown_method", req_method=method)
            auth_error = self._auth_error(method, call.token)
            if auth_error:
                raise _ApiError(auth_error)
            needed = METHOD_SCOPES.get(method)
            if needed and self.scopes is not None and needed not in self.scopes:
                raise _ApiError("missing_scope", needed=needed, provided=",".join(self.scopes))
            result = handler(call.params)
        except _ApiError as err:
            call.error = err.error
            result = {"ok": False, "error": err.error, **err.extra}
        if call.error is None and self._lose(method):
            response = self._drop(request, call)
            call.error = "response_lost"  # the effect happened; the caller never hears of it
            return response
        return web.json_response(result, headers=self._headers())

    def _drop(self, request: web.Request, call: Call) -> web.StreamResponse:
        call.status = 0
        call.error = "connection_refused"
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=503)

    def _fault_or_drop(self, request: web.Request, what: str) -> web.StreamResponse | None:
        """The answer of a fault (Slack down, the connection refused) for a request outside the Web API."""
        try:
            return self._fault(None)
        except _DropConnection:
            return self._drop(request, Call(what, {}, time.monotonic()))

    async def _handle_upload(self, request: web.Request) -> web.StreamResponse:
        fault = self._fault_or_drop(request, "(upload)")
        if fault is not None:
            return fault
        upload = self._files_by_id.get(request.match_info["file_id"])
        if upload is None:
            return web.Response(status=404, text="file_not_found")
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            part = next((v for v in form.values() if isinstance(v, FileField)), None)
            upload.content = part.file.read() if part is not None else b""
        else:
            upload.content = await request.read()
        return web.Response(text=f"OK - {len(upload.content)}", content_type="text/plain")

    async def _handle_response_url(self, request: web.Request) -> web.StreamResponse:
        fault = self._fault_or_drop(request, "(response_url)")
        if fault is not None:
            return fault
        token = request.match_info["token"]
        issued = self._response_urls.get(token)
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        now = time.monotonic()
        if issued is None:
            return web.json_response({"ok": False, "error": "invalid_url"}, status=404)
        issued.uses += 1
        status = 200
        if issued.uses > RESPONSE_URL_MAX_USES:
            status = 404
        elif now - issued.issued_at > RESPONSE_URL_TTL:
            status = 404
        self.responses.append(ResponsePost(token, body, now, issued.channel, issued.user, issued.message_ts, status))
        if status != 200:
            error = "used_url" if issued.uses > RESPONSE_URL_MAX_USES else "expired_url"
            return web.json_response({"ok": False, "error": error}, status=status)
        problems = check_blocks(body["blocks"], 50) if "blocks" in body else []
        if problems:
            self.responses[-1].status = 400
            return web.json_response({"ok": False, "error": "invalid_blocks", "errors": problems}, status=400)
        self._apply_response(issued, body)
        return web.Response(text="ok", content_type="text/plain")

    def _apply_response(self, issued: _ResponseUrl, body: dict[str, Any]) -> None:
        original = self._by_ts.get((issued.channel, issued.message_ts or ""))
        raw_blocks = body.get("blocks")
        blocks: list[dict[str, Any]] = raw_blocks if isinstance(raw_blocks, list) else []
        text = str(body.get("text") or "")
        if original is not None and _truthy(body.get("delete_original", False)):
            original.deleted = True
        elif original is not None and _truthy(body.get("replace_original", False)):
            original.edits.append({"text": original.text, "blocks": original.blocks, "at": time.monotonic()})
            original.text, original.blocks = text, _fill_ids(blocks)
            original.updated_at = time.monotonic()
        elif body.get("response_type") == "in_channel":
            try:
                thread_ts = self._thread_root(issued.channel, body.get("thread_ts") or issued.thread_ts)
            except _ApiError:
                thread_ts = None
            self._store_message(issued.channel, text, blocks, thread_ts, False, None)
        else:
            self.ephemerals.append(
                Ephemeral(
                    issued.channel,
                    issued.user,
                    text,
                    blocks,
                    self._next_ts(),
                    body.get("thread_ts") or issued.thread_ts,
                    "response_url",
                    time.monotonic(),
                )
            )

    # ----------------------------------------------------------------- state helpers

    def _next_ts(self) -> str:
        now_us = time.time_ns() // 1000
        self._last_ts_us = max(now_us, self._last_ts_us + 1)
        return f"{self._last_ts_us // 1_000_000}.{self._last_ts_us % 1_000_000:06d}"

    def _channel_id(self, channel: str | None) -> str | None:
        if not channel:
            return None
        if channel in self.channels:
            return channel
        name = channel.lstrip("#")
        for cid, info in self.channels.items():
            if info["name"] == name:
                return cid
        return None

    def _resolve_channel(self, channel: str | None) -> str:
        if not channel:
            raise _ApiError("channel_not_found")
        cid = self._channel_id(channel)
        if cid is not None:
            return cid
        if self._strict_channels or channel.startswith("#"):
            raise _ApiError("channel_not_found")
        self._register_channel(channel, None, False)
        return channel

    def _content(self, params: Mapping[str, Any]) -> tuple[str | None, list[dict[str, Any]] | None]:
        text = _str_param(params, "text")
        blocks = _json_param(params, "blocks", "invalid_blocks_format")
        if blocks is not None:
            problems = check_blocks(blocks, 50)
            if problems:
                raise _ApiError("invalid_blocks", errors=problems, response_metadata={"messages": problems})
        if text is not None and len(text) > 40_000:
            raise _ApiError("msg_too_long")
        return text, blocks

    def _thread_root(self, channel: str, thread_ts: str | None) -> str | None:
        if not thread_ts:
            return None
        parent = self._by_ts.get((channel, thread_ts))
        if parent is None or parent.deleted:
            raise _ApiError("thread_not_found")
        return parent.thread_ts if parent.is_reply else parent.ts

    def _store_message(
        self,
        channel: str,
        text: str,
        blocks: list[dict[str, Any]],
        thread_ts: str | None,
        reply_broadcast: bool,
        metadata: dict[str, Any] | None,
        files: list[str] | None = None,
    ) -> Message:
        msg = Message(
            channel=channel,
            ts=self._next_ts(),
            text=text,
            blocks=_fill_ids(blocks),
            thread_ts=thread_ts,
            reply_broadcast=reply_broadcast,
            user=self.bot_user_id,
            bot_id=self.bot_id,
            metadata=metadata,
            files=files or [],
            posted_at=time.monotonic(),
        )
        self._messages.setdefault(channel, []).append(msg)
        self._by_ts[(channel, msg.ts)] = msg
        if thread_ts:
            self._by_ts[(channel, thread_ts)].reply_count += 1
        return msg

    # ----------------------------------------------------------------- Web API methods

    def _auth_test(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": f"https://{self.team_domain}.slack.com/",
            "team": "Fake Team",
            "user": "rollback-bot",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, params: Mapping[str, Any]) -> dict[str, Any]:
        channel = self._resolve_channel(_str_param(params, "channel"))
        text, blocks = self._content(params)
        if not text and not blocks and not params.get("attachments"):
            raise _ApiError("no_text")
        thread_ts = self._thread_root(channel, _str_param(params, "thread_ts"))
        metadata = _json_param(params, "metadata", "invalid_metadata_format")
        msg = self._store_message(
            channel,
            text or "",
            blocks or [],
            thread_ts,
            bool(thread_ts) and _truthy(params.get("reply_broadcast", False)),
            metadata if isinstance(metadata, dict) else None,
        )
        return {"ok": True, "channel": channel, "ts": msg.ts, "message": msg.to_slack()}

    def _chat_update(self, params: Mapping[str, Any]) -> dict[str, Any]:
        channel = self._resolve_channel(_str_param(params, "channel"))
        ts = _str_param(params, "ts")
        msg = self._by_ts.get((channel, ts or ""))
        if msg is None or msg.deleted:
            raise _ApiError("message_not_found")
        text, blocks = self._content(params)
        if text is None and blocks is None and not params.get("attachments"):
            raise _ApiError("no_text")
        msg.edits.append({"text": msg.text, "blocks": msg.blocks, "at": time.monotonic()})
        if text is not None:
            msg.text = text
        if blocks is not None:
            msg.blocks = _fill_ids(blocks)
        metadata = _json_param(params, "metadata", "invalid_metadata_format")
        if isinstance(metadata, dict):
            msg.metadata = metadata
        msg.updated_at = time.monotonic()
        return {"ok": True, "channel": channel, "ts": msg.ts, "text": msg.text, "message": msg.to_slack()}

    def _chat_delete(self, params: Mapping[str, Any]) -> dict[str, Any]:
        channel = self._resolve_channel(_str_param(params, "channel"))
        ts = _str_param(params, "ts") or ""
        msg = self._by_ts.get((channel, ts))
        if msg is None or msg.deleted:
            raise _ApiError("message_not_found")
        msg.deleted = True
        return {"ok": True, "channel": channel, "ts": ts}

    def _chat_post_ephemeral(self, params: Mapping[str, Any]) -> dict[str, Any]:
        channel = self._resolve_channel(_str_param(params, "channel"))
        user = _str_param(params, "user")
        if not user or user not in self.users:
            raise _ApiError("user_not_in_channel")
        text, blocks = self._content(params)
        if not text and not blocks and not params.get("attachments"):
            raise _ApiError("no_text")
        thread_ts = _str_param(params, "thread_ts")
        ts = self._next_ts()
        self.ephemerals.append(
            Ephemeral(
                channel,
                user,
                text or "",
                _fill_ids(blocks or []),
                ts,
                thread_ts,
                "chat.postEphemeral",
                time.monotonic(),
            )
        )
        return {"ok": True, "message_ts": ts}

    def _check_view(self, view: Any) -> dict[str, Any]:
        if not isinstance(view, dict):
            raise _ApiError(
                "invalid_arguments", response_metadata={"messages": ["[ERROR] missing required field: view"]}
            )
        problems = check_blocks(view.get("blocks", []), 100)
        if view.get("type") not in ("modal", "home"):
            problems.append("[ERROR] must be one of modal, home [json-pointer:/view/type]")
        if view.get("type") == "modal" and "title" not in view:
            problems.append("[ERROR] missing required field: title [json-pointer:/view]")
        for key, limit in (("title", 24), ("submit", 24), ("close", 24)):
            _check_len(problems, view.get(key), limit, f"/view/{key}/text")
        _check_len(problems, view.get("private_metadata"), 3000, "/view/private_metadata")
        _check_len(problems, view.get("callback_id"), 255, "/view/callback_id")
        if problems:
            raise _ApiError("invalid_arguments", response_metadata={"messages": problems})
        return view

    def _render_view(self, view_id: str, view: dict[str, Any], root: str) -> dict[str, Any]:
        return {
            "id": view_id,
            "team_id": self.team_id,
            "type": view.get("type", "modal"),
            "blocks": _fill_ids(view.get("blocks", [])),
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""),
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
            "title": view.get("title"),
            "close": view.get("close"),
            "submit": view.get("submit"),
            "clear_on_close": bool(view.get("clear_on_close", False)),
            "notify_on_close": bool(view.get("notify_on_close", False)),
            "external_id": view.get("external_id", ""),
            "root_view_id": root,
            "previous_view_id": None,
            "app_id": self.app_id,
            "bot_id": self.bot_id,
        }

    def _views_open(self, params: Mapping[str, Any]) -> dict[str, Any]:
        trigger_id = _str_param(params, "trigger_id")
        if not trigger_id:
            raise _ApiError("invalid_arguments", response_metadata={"messages": ["[ERROR] missing trigger_id"]})
        trigger = self._triggers.get(trigger_id)
        if trigger is None:
            raise _ApiError("invalid_trigger_id")
        expired = self.trigger_ttl is not None and time.monotonic() - trigger.issued_at > self.trigger_ttl
        if trigger.used or expired:
            raise _ApiError("expired_trigger_id")
        view = self._check_view(_json_param(params, "view", "invalid_arguments"))
        trigger.used = True
        view_id = f"V{next(self._ids):010d}"
        rendered = self._render_view(view_id, view, view_id)
        self.views_opened.append(
            View(view_id, rendered, trigger_id, trigger.user_id, rendered["hash"], time.monotonic())
        )
        return {"ok": True, "view": rendered}

    def _views_update(self, params: Mapping[str, Any]) -> dict[str, Any]:
        view_id, external_id = _str_param(params, "view_id"), _str_param(params, "external_id")
        target = next(
            (
                v
                for v in self.views_opened
                if (view_id and v.id == view_id) or (external_id and v.view.get("external_id") == external_id)
            ),
            None,
        )
        if target is None:
            raise _ApiError("not_found")
        wanted_hash = _str_param(params, "hash")
        if wanted_hash and wanted_hash != target.hash:
            raise _ApiError("hash_conflict")
        view = self._check_view(_json_param(params, "view", "invalid_arguments"))
        target.updates.append(target.view)
        target.view = self._render_view(target.id, view, target.id)
        target.hash = target.view["hash"]
        return {"ok": True, "view": target.view}

    def _users_info(self, params: Mapping[str, Any]) -> dict[str, Any]:
        user = self.users.get(_str_param(params, "user") or "")
        if user is None:
            raise _ApiError("user_not_found")
        real_name = user.get("real_name", user["name"])
        return {
            "ok": True,
            "user": {
                "id": user["id"],
                "team_id": self.team_id,
                "name": user["name"],
                "real_name": real_name,
                "deleted": bool(user.get("deleted", False)),
                "is_bot": bool(user.get("is_bot", False)),
                "tz": user.get("tz", "UTC"),
                "profile": {"real_name": real_name, "display_name": user.get("display_name", user["name"])},
            },
        }

    def _usergroups_list(self, params: Mapping[str, Any]) -> dict[str, Any]:
        include_users = _truthy(params.get("include_users", False))
        groups = []
        for g in self.usergroups.values():
            entry = {
                "id": g["id"],
                "team_id": self.team_id,
                "handle": g["handle"],
                "name": g["name"],
                "user_count": len(g["users"]),
            }
            if include_users:
                entry["users"] = list(g["users"])
            groups.append(entry)
        return {"ok": True, "usergroups": groups}

    def _usergroups_users_list(self, params: Mapping[str, Any]) -> dict[str, Any]:
        group = self.usergroups.get(_str_param(params, "usergroup") or "")
        if group is None:
            raise _ApiError("no_such_subteam")
        return {"ok": True, "users": list(group["users"])}

    def _conversations_info(self, params: Mapping[str, Any]) -> dict[str, Any]:
        cid = self._channel_id(_str_param(params, "channel"))
        if cid is None:
            raise _ApiError("channel_not_found")
        info = self.channels[cid]
        if info["is_private"] and self.scopes is not None and "groups:read" not in self.scopes:
            raise _ApiError("missing_scope", needed="groups:read", provided=",".join(self.scopes))
        return {
            "ok": True,
            "channel": {
                "id": cid,
                "name": info["name"],
                "is_channel": not info["is_private"],
                "is_group": False,
                "is_private": info["is_private"],
                "is_archived": False,
                "is_member": True,
                "context_team_id": self.team_id,
            },
        }

    def _history_entry(self, msg: Message, with_metadata: bool) -> dict[str, Any]:
        out = msg.to_slack()
        if not with_metadata:
            out.pop("metadata", None)
        if msg.files:
            out["files"] = [
                {"id": f, "name": self._files_by_id[f].filename, "title": self._files_by_id[f].title}
                for f in msg.files
                if f in self._files_by_id
            ]
        return out

    @staticmethod
    def _page(items: list[dict[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        limit = int(_str_param(params, "limit") or 100)
        start = int(_str_param(params, "cursor") or 0)
        page = items[start : start + max(1, min(limit, 1000))]
        nxt = start + len(page)
        more = nxt < len(items)
        return {"ok": True, "messages": page, "has_more": more,
                "response_metadata": {"next_cursor": str(nxt) if more else ""}}

    def _conversations_history(self, params: Mapping[str, Any]) -> dict[str, Any]:
        cid = self._channel_id(_str_param(params, "channel"))
        if cid is None:
            raise _ApiError("channel_not_found")
        if not self.channels[cid].get("is_member", True):
            raise _ApiError("not_in_channel")
        oldest = float(_str_param(params, "oldest") or 0)
        latest = float(_str_param(params, "latest") or math.inf)
        meta = _truthy(params.get("include_all_metadata", False))
        shown = [
            self._history_entry(m, meta)
            for m in reversed(self.messages(cid))
            if (not m.is_reply or m.reply_broadcast) and oldest < float(m.ts) < latest
        ]
        return self._page(shown, params)

    def _conversations_replies(self, params: Mapping[str, Any]) -> dict[str, Any]:
        cid = self._channel_id(_str_param(params, "channel"))
        if cid is None:
            raise _ApiError("channel_not_found")
        parent = self._by_ts.get((cid, _str_param(params, "ts") or ""))
        if parent is None or parent.deleted:
            raise _ApiError("thread_not_found")
        meta = _truthy(params.get("include_all_metadata", False))
        root = parent.thread_ts if parent.is_reply and parent.thread_ts else parent.ts
        return self._page([self._history_entry(m, meta) for m in self.thread(cid, root)], params)

    def _files_get_upload_url(self, params: Mapping[str, Any]) -> dict[str, Any]:
        filename = _str_param(params, "filename")
        length = _str_param(params, "length")
        if not filename or length is None or not length.isdigit():
            raise _ApiError("invalid_arguments")
        file_id = f"F{next(self._ids):010d}"
        upload = UploadedFile(id=file_id, filename=filename, length=int(length))
        self.files.append(upload)
        self._files_by_id[file_id] = upload
        return {"ok": True, "upload_url": f"{self.root_url}upload/{file_id}", "file_id": file_id}

    def _files_complete_upload(self, params: Mapping[str, Any]) -> dict[str, Any]:
        entries = _json_param(params, "files", "invalid_arguments")
        if not isinstance(entries, list) or not entries:
            raise _ApiError("invalid_arguments")
        uploads = []
        for entry in entries:
            upload = self._files_by_id.get(str(entry.get("id")) if isinstance(entry, dict) else "")
            if upload is None or upload.content is None or upload.completed:
                raise _ApiError("file_not_found")
            uploads.append((upload, entry.get("title")))
        channel_param = _str_param(params, "channel_id") or _str_param(params, "channels")
        channel = self._resolve_channel(channel_param) if channel_param else None
        thread_ts = self._thread_root(channel, _str_param(params, "thread_ts")) if channel else None
        comment = _str_param(params, "initial_comment")
        message_ts = None
        if channel is not None:
            msg = self._store_message(channel, comment or "", [], thread_ts, False, None, [u.id for u, _ in uploads])
            message_ts = msg.ts
        for upload, title in uploads:
            upload.title = title or upload.filename
            upload.completed = True
            upload.channel, upload.thread_ts = channel, thread_ts
            upload.initial_comment, upload.message_ts = comment, message_ts
        return {"ok": True, "files": [{"id": u.id, "title": u.title} for u, _ in uploads]}

    def _apps_connections_open(self, params: Mapping[str, Any]) -> dict[str, Any]:
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        return {"ok": True, "url": f"{self.socket_url}?ticket={ticket}"}

    # ----------------------------------------------------------------- Socket Mode

    async def _handle_socket(self, request: web.Request) -> web.StreamResponse:
        if self.is_down:
            return web.Response(status=503)
        if request.query.get("ticket") not in self._tickets:
            return web.Response(status=401, text="invalid ticket")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": len(self._sockets) + 1,
                "debug_info": {"host": "fake-socket-mode", "build_number": 1, "approximate_connection_time": 18060},
                "connection_info": {"app_id": self.app_id},
            }
        )
        number = await self._socket_event(ws, added=True)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.socket_peers[number] = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                with contextlib.suppress(json.JSONDecodeError):
                    self._on_socket_text(json.loads(msg.data))
        finally:
            await self._socket_event(ws, added=False)
        return ws

    def _on_socket_text(self, data: Any) -> None:
        if not isinstance(data, dict) or "envelope_id" not in data:
            return
        ack = SocketAck(str(data["envelope_id"]), data.get("payload"), time.monotonic())
        self.socket_acks.append(ack)
        fut = self._pending_acks.pop(ack.envelope_id, None)
        if fut is not None and not fut.done():
            fut.set_result(data)

    async def _socket_event(self, ws: web.WebSocketResponse, *, added: bool) -> int:
        assert self._socket_changed is not None
        async with self._socket_changed:
            if added:
                self._socket_total += 1
                self._sockets[self._socket_total] = ws
            number = next((n for n, open_ws in self._sockets.items() if open_ws is ws), 0)
            if not added:
                self._sockets.pop(number, None)
            self._socket_changed.notify_all()
        return number

    @property
    def socket_count(self) -> int:
        """Websockets open right now."""
        return len(self._sockets)

    @property
    def socket_connections(self) -> list[int]:
        """The numbers of the websockets open right now, oldest first."""
        return list(self._sockets)

    async def wait_socket_connections(self, n: int = 1, timeout: float = 10.0) -> None:
        """Wait until ``n`` Socket Mode connections have been made since start (and one is open)."""
        assert self._socket_changed is not None
        cond = self._socket_changed

        async def reached() -> None:
            async with cond:
                await cond.wait_for(lambda: self._socket_total >= n and bool(self._sockets))

        await asyncio.wait_for(reached(), timeout)

    async def socket_send(
        self,
        type: str,
        payload: dict[str, Any],
        *,
        timeout: float = 10.0,
        retry_attempt: int | None = None,
        retry_reason: str | None = None,
        accepts_response_payload: bool | None = None,
        connection: int | None = None,
    ) -> dict[str, Any]:
        """Push one envelope to a connection chosen at random (or to ``connection``); the client's ack."""
        await self.wait_socket_connections(1, timeout)
        if connection is None:
            connection = self._socket_random.choice(
                [n for n in self._sockets if n not in self._socket_leaving] or list(self._sockets))
        ws = self._sockets[connection]
        envelope_id = str(uuid.uuid4())
        if accepts_response_payload is None:
            accepts_response_payload = type == "slash_commands" or (
                type == "interactive" and payload.get("type") in ("view_submission", "block_suggestion")
            )
        envelope: dict[str, Any] = {
            "envelope_id": envelope_id,
            "type": type,
            "payload": payload,
            "accepts_response_payload": accepts_response_payload,
        }
        if retry_attempt is not None:
            envelope["retry_attempt"] = retry_attempt
            envelope["retry_reason"] = retry_reason or "timeout"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending_acks[envelope_id] = fut
        self.socket_deliveries.append(SocketDelivery(envelope_id, connection, type, retry_attempt, time.monotonic()))
        try:
            await ws.send_json(envelope)
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending_acks.pop(envelope_id, None)

    async def socket_disconnect(self, reason: str = "refresh_requested") -> None:
        """Send ``{"type": "disconnect"}`` to every connection (the client should reconnect)."""
        self._socket_leaving.update(self._sockets)
        for ws in list(self._sockets.values()):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_json({"type": "disconnect", "reason": reason, "debug_info": {"host": "fake"}})

    async def socket_close_all(self) -> None:
        """Close every websocket from the server side."""
        for ws in list(self._sockets.values()):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.close()

    @contextlib.asynccontextmanager
    async def outage(self, mode: Literal["503", "refuse"] = "503") -> AsyncIterator[None]:
        """``async with fake.outage():`` down inside the block, up again after it."""
        self.set_down(True, mode=mode)
        try:
            yield
        finally:
            self.set_down(False)
            await self.wait_up()


class _DropConnection(Exception):
    """Raised internally to drop the client's connection (refuse mode)."""
