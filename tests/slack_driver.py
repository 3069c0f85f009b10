"""Plays Slack's side of interactions: signed slash commands, button clicks and modal submissions.

The driver builds the exact requests Slack sends to an app (form-encoded, signed
with the signing secret: ``v0=`` HMAC-SHA256 over ``v0:{timestamp}:{body}``) and
hands them to a *sender*, so the same test runs over HTTP, in-process, or
through the Socket Mode fake.

Public API (kept stable; the bot's end-to-end tests rely on it)::

    fake = SlackFake(...)                               # tests/slack_fake.py
    driver = SlackDriver(fake, bolt_sender(app))        # in-process: app.async_dispatch
    driver = SlackDriver(fake, http_sender("http://127.0.0.1:PORT/slack/events"))
    driver = SlackDriver(fake, socket_sender(fake))     # as Socket Mode envelopes

    Sender = Callable[[str, dict[str, str]], Awaitable[tuple[int, str]]]
        send(body, headers) -> (status, response body)
    http_sender(url, timeout=10.0, client=None) -> Sender   httpx POST (client: reuse connections)
    bolt_sender(app) -> Sender                        AsyncBoltRequest + await app.async_dispatch
    socket_sender(fake, timeout=10.0, connection=None) -> Sender
                                                      envelope over the fake's websocket (to a connection
                                                      chosen at random, or that one); returns
                                                      (200, json of the ack payload or "")

    SlackDriver(fake, send, *, signing_secret=None (fake.signing_secret), default_user_id="U0REQUESTER",
                default_channel_id=None (first channel of the fake, else "C0INCIDENT1"))
      await driver.slash_command(text="start db1 reason", *, command="/rollback", user_id=..., channel_id=...,
                                 trigger_id=None (fresh from the fake), **delivery) -> DriverResponse
      await driver.block_action(action_id, value=None, *, user_id, channel_id, message_ts, thread_ts=None,
                                block_id=None, trigger_id=None, action_type="button", text=None,
                                selected_option=None, **delivery) -> DriverResponse
            ("message" in the payload is the message as it is now in the fake)
      await driver.press(control, user_id, *, allow_stale=False, **delivery) -> DriverResponse
            control from fake.buttons()/fake.choices()/fake.find_button(); StaleControl if the
            message no longer shows it (a real user cannot click it) unless allow_stale=True
      await driver.view_submission(callback_id, state_values=None, *, values=None, private_metadata=None,
                                   user_id, view_id=None, require_opened=True, **delivery) -> DriverResponse
            submits the view the bot opened (last one with that callback_id, or view_id);
            values={action_id: value} is filled and checked by fake.fill_view
      await driver.replay(request=None, *, retry_num=None, retry_reason="http_timeout") -> DriverResponse
            the same bytes and signature again (default: driver.last_request); with retry_num,
            Slack's retry headers are added
      await driver.send_raw(body, headers) -> DriverResponse
      driver.sign(body, timestamp=None) -> headers dict
      driver.last_request: SlackRequest | None;  driver.history: list[DriverResponse]

    **delivery (DeliveryOptions, all optional):
        retry_num: int           X-Slack-Retry-Num (with X-Slack-Retry-Reason, default "http_timeout")
        retry_reason: str
        timestamp: int           sign with this X-Slack-Request-Timestamp
        stale: bool              timestamp 10 minutes old (Bolt must answer 401)
        forged: bool             signature made with a wrong secret (Bolt must answer 401)

    DriverResponse: .status .body .json() .request (SlackRequest: .body .headers) .elapsed (s)
                    .trigger_id (the one sent, if any) .response_url (if any)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict, Unpack
from urllib.parse import parse_qsl, urlencode

import httpx

from tests.slack_fake import Control, SlackFake, View, controls_of

if TYPE_CHECKING:
    from slack_bolt.async_app import AsyncApp

Sender = Callable[[str, dict[str, str]], Awaitable[tuple[int, str]]]

FORM = "application/x-www-form-urlencoded"
STALE_SECONDS = 600


class StaleControl(AssertionError):
    """The control is no longer on the message: a real user could not click it."""


class DeliveryOptions(TypedDict, total=False):
    """How a request is delivered: as a retry, with an old timestamp, or with a forged signature."""

    retry_num: int
    retry_reason: str
    timestamp: int
    stale: bool
    forged: bool


@dataclass(frozen=True)
class SlackRequest:
    """What was sent: the raw body and the headers."""

    body: str
    headers: dict[str, str]


@dataclass
class DriverResponse:
    """What the app answered, and what it was answering."""

    status: int
    body: str
    request: SlackRequest
    elapsed: float
    trigger_id: str | None = None
    response_url: str | None = None

    def json(self) -> Any:
        """The body parsed as JSON (None when empty)."""
        return json.loads(self.body) if self.body else None


def http_sender(url: str, timeout: float = 10.0, client: httpx.AsyncClient | None = None) -> Sender:
    """POST to a running app (e.g. ``http://127.0.0.1:PORT/slack/events``) with httpx.

    Pass a long-lived ``client`` to reuse connections (benchmarks); otherwise each request
    opens and closes its own.
    """

    async def send(body: str, headers: dict[str, str]) -> tuple[int, str]:
        if client is not None:
            resp = await client.post(url, content=body.encode(), headers=headers, timeout=timeout)
            return resp.status_code, resp.text
        async with httpx.AsyncClient(timeout=timeout) as own:
            resp = await own.post(url, content=body.encode(), headers=headers)
        return resp.status_code, resp.text

    return send


def bolt_sender(app: AsyncApp) -> Sender:
    """Dispatch in-process through the real Bolt stack (signature check included)."""
    from slack_bolt.request.async_request import AsyncBoltRequest

    async def send(body: str, headers: dict[str, str]) -> tuple[int, str]:
        resp = await app.async_dispatch(AsyncBoltRequest(body=body, headers=dict(headers)))
        return resp.status, resp.body

    return send


def socket_sender(fake: SlackFake, timeout: float = 10.0, connection: int | None = None) -> Sender:
    """Deliver as a Socket Mode envelope through the fake (no signature in this mode).

    The fake picks one of its open connections at random, as Slack does, unless ``connection`` names one.
    """

    async def send(body: str, headers: dict[str, str]) -> tuple[int, str]:
        form = dict(parse_qsl(body, keep_blank_values=True))
        lower = {k.lower(): v for k, v in headers.items()}
        retry = lower.get("x-slack-retry-num")
        if "payload" in form:
            kind, payload = "interactive", json.loads(form["payload"])
        else:
            kind, payload = "slash_commands", form
        ack = await fake.socket_send(
            kind,
            payload,
            timeout=timeout,
            retry_attempt=int(retry) if retry is not None else None,
            retry_reason=lower.get("x-slack-retry-reason"),
            connection=connection,
        )
        return 200, json.dumps(ack["payload"]) if ack.get("payload") is not None else ""

    return send


@dataclass
class SlackDriver:
    """Sends what Slack sends, signed, through ``send`` (see the module docstring)."""

    fake: SlackFake
    send: Sender
    signing_secret: str | None = None
    default_user_id: str = "U0REQUESTER"
    default_channel_id: str | None = None
    last_request: SlackRequest | None = None
    history: list[DriverResponse] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.signing_secret is None:
            self.signing_secret = self.fake.signing_secret
        if self.default_channel_id is None:
            self.default_channel_id = next(iter(self.fake.channels), "C0INCIDENT1")

    # ----------------------------------------------------------------- signing and sending

    def sign(self, body: str, timestamp: int | None = None, *, secret: str | None = None) -> dict[str, str]:
        """Slack's headers for ``body``: content type, request timestamp and ``v0=`` signature."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        key = (secret or self.signing_secret or "").encode()
        digest = hmac.new(key, f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
        return {
            "Content-Type": FORM,
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": f"v0={digest}",
        }

    async def send_raw(self, body: str, headers: Mapping[str, str], **extra: Any) -> DriverResponse:
        """Send exactly this body and these headers; record and return the answer."""
        request = SlackRequest(body, dict(headers))
        self.last_request = request
        started = time.monotonic()
        status, text = await self.send(body, dict(headers))
        response = DriverResponse(status, text, request, time.monotonic() - started, **extra)
        self.history.append(response)
        return response

    async def _deliver(self, body: str, delivery: DeliveryOptions, **extra: Any) -> DriverResponse:
        timestamp = delivery.get("timestamp")
        if delivery.get("stale"):
            timestamp = int(time.time()) - STALE_SECONDS
        secret = "forged-" + (self.signing_secret or "") if delivery.get("forged") else None
        headers = self.sign(body, timestamp, secret=secret)
        if delivery.get("retry_num") is not None:
            headers["X-Slack-Retry-Num"] = str(delivery["retry_num"])
            headers["X-Slack-Retry-Reason"] = delivery.get("retry_reason", "http_timeout")
        return await self.send_raw(body, headers, **extra)

    async def replay(
        self, request: SlackRequest | None = None, *, retry_num: int | None = None, retry_reason: str = "http_timeout"
    ) -> DriverResponse:
        """Send a previous request again, byte for byte (Slack's retry headers added with ``retry_num``)."""
        request = request or self.last_request
        if request is None:
            raise ValueError("nothing to replay: no request sent yet")
        headers = dict(request.headers)
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = retry_reason
        return await self.send_raw(request.body, headers)

    # ----------------------------------------------------------------- payload pieces

    def _user(self, user_id: str) -> dict[str, str]:
        name = str(self.fake.users.get(user_id, {}).get("name", user_id.lower()))
        return {"id": user_id, "username": name, "name": name, "team_id": self.fake.team_id}

    def _channel(self, channel_id: str) -> dict[str, str]:
        return {"id": channel_id, "name": str(self.fake.channels.get(channel_id, {}).get("name", channel_id.lower()))}

    def _common(self, user_id: str, trigger_id: str) -> dict[str, Any]:
        return {
            "user": self._user(user_id),
            "api_app_id": self.fake.app_id,
            "token": "fake-verification-token",
            "trigger_id": trigger_id,
            "team": {"id": self.fake.team_id, "domain": self.fake.team_domain},
            "enterprise": None,
            "is_enterprise_install": False,
        }

    # ----------------------------------------------------------------- interactions

    async def slash_command(
        self,
        text: str = "start db1 reason",
        *,
        command: str = "/rollback",
        user_id: str | None = None,
        channel_id: str | None = None,
        trigger_id: str | None = None,
        **delivery: Unpack[DeliveryOptions],
    ) -> DriverResponse:
        """``/rollback start db1 reason`` typed by ``user_id`` in ``channel_id``."""
        user_id = user_id or self.default_user_id
        channel_id = channel_id or self.default_channel_id or ""
        trigger_id = trigger_id or self.fake.issue_trigger_id(user_id)
        response_url = self.fake.issue_response_url(channel_id, user_id)
        fields = {
            "token": "fake-verification-token",
            "team_id": self.fake.team_id,
            "team_domain": self.fake.team_domain,
            "channel_id": channel_id,
            "channel_name": self._channel(channel_id)["name"],
            "user_id": user_id,
            "user_name": self._user(user_id)["name"],
            "command": command,
            "text": text,
            "api_app_id": self.fake.app_id,
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": trigger_id,
        }
        return await self._deliver(urlencode(fields), delivery, trigger_id=trigger_id, response_url=response_url)

    async def block_action(
        self,
        action_id: str,
        value: str | None = None,
        *,
        user_id: str | None = None,
        channel_id: str | None = None,
        message_ts: str,
        thread_ts: str | None = None,
        block_id: str | None = None,
        trigger_id: str | None = None,
        action_type: str = "button",
        text: str | None = None,
        selected_option: dict[str, Any] | None = None,
        **delivery: Unpack[DeliveryOptions],
    ) -> DriverResponse:
        """A click on an element of message ``message_ts`` (prefer ``press`` with a posted control)."""
        user_id = user_id or self.default_user_id
        channel_id = channel_id or self.default_channel_id or ""
        trigger_id = trigger_id or self.fake.issue_trigger_id(user_id)
        message = self.fake.message(channel_id, message_ts)
        if thread_ts is None and message is not None and message.is_reply:
            thread_ts = message.thread_ts
        response_url = self.fake.issue_response_url(channel_id, user_id, message_ts, thread_ts)
        action: dict[str, Any] = {
            "type": action_type,
            "action_id": action_id,
            "block_id": block_id or "",
            "action_ts": f"{time.time():.6f}",
        }
        if action_type == "button":
            action["text"] = {"type": "plain_text", "text": text or "", "emoji": True}
            if value is not None:
                action["value"] = value
        elif action_type in ("checkboxes", "multi_static_select"):
            action["selected_options"] = [selected_option] if selected_option else []
        else:
            action["selected_option"] = selected_option or {
                "text": {"type": "plain_text", "text": text or value or ""},
                "value": value,
            }
        container: dict[str, Any] = {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
            "is_ephemeral": False,
        }
        if thread_ts:
            container["thread_ts"] = thread_ts
        payload: dict[str, Any] = {
            "type": "block_actions",
            **self._common(user_id, trigger_id),
            "container": container,
            "channel": self._channel(channel_id),
            "state": {"values": {}},
            "response_url": response_url,
            "actions": [action],
        }
        if message is not None:
            payload["message"] = message.to_slack()
        body = urlencode({"payload": json.dumps(payload)})
        return await self._deliver(body, delivery, trigger_id=trigger_id, response_url=response_url)

    async def press(
        self, control: Control, user_id: str, *, allow_stale: bool = False, **delivery: Unpack[DeliveryOptions]
    ) -> DriverResponse:
        """Click a button (or pick an option) the bot posted, as ``user_id``."""
        if not allow_stale:
            current = self.fake.message(control.channel, control.message_ts)
            shown = controls_of(current) if current is not None and not current.deleted else []
            if not any(_same_control(control, c) for c in shown):
                raise StaleControl(f"no longer on the message: {control.describe()}")
        return await self.block_action(
            control.action_id,
            control.value,
            user_id=user_id,
            channel_id=control.channel,
            message_ts=control.message_ts,
            thread_ts=control.thread_ts,
            block_id=control.block_id,
            action_type=control.type,
            text=control.text,
            selected_option=control.option,
            **delivery,
        )

    async def view_submission(
        self,
        callback_id: str,
        state_values: Mapping[str, Any] | None = None,
        *,
        values: Mapping[str, Any] | None = None,
        private_metadata: str | None = None,
        user_id: str | None = None,
        view_id: str | None = None,
        require_opened: bool = True,
        **delivery: Unpack[DeliveryOptions],
    ) -> DriverResponse:
        """Submit the modal the bot opened with ``callback_id`` (or ``view_id``), as ``user_id``."""
        user_id = user_id or self.default_user_id
        opened = self._find_view(callback_id, user_id, view_id)
        if opened is None and require_opened:
            seen = [(v.id, v.callback_id) for v in self.fake.views_opened]
            raise AssertionError(f"the bot opened no view with callback_id={callback_id!r}; opened: {seen}")
        view: dict[str, Any] = (
            dict(opened.view)
            if opened
            else {
                "id": view_id or "V0SYNTHETIC",
                "type": "modal",
                "callback_id": callback_id,
                "blocks": [],
                "private_metadata": "",
                "hash": "0.0",
            }
        )
        state: dict[str, Any]
        if values is not None:
            state = self.fake.fill_view(view, values)
            if state_values:
                state.update(state_values)
        else:
            state = dict(state_values or {})
        view["state"] = {"values": state}
        if private_metadata is not None:
            view["private_metadata"] = private_metadata
        trigger_id = self.fake.issue_trigger_id(user_id)
        payload = {
            "type": "view_submission",
            **self._common(user_id, trigger_id),
            "view": view,
            "response_urls": [],
        }
        body = urlencode({"payload": json.dumps(payload)})
        return await self._deliver(body, delivery, trigger_id=trigger_id)

    def _find_view(self, callback_id: str, user_id: str, view_id: str | None) -> View | None:
        for view in reversed(self.fake.views_opened):
            if view_id is not None:
                if view.id == view_id:
                    return view
                continue
            if view.callback_id == callback_id and view.user_id in (None, user_id):
                return view
        return None


def _same_control(a: Control, b: Control) -> bool:
    return (a.type, a.action_id, a.block_id, a.value) == (b.type, b.action_id, b.block_id, b.value)
