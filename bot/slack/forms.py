"""The modals: starting a rollback with the plan's inputs, and rejecting one with a reason.

Built with ``slack_sdk.models.views``; ``parse_start`` turns a submission into a typed
``StartRequest`` or a dict of errors keyed by block id (``response_action: errors``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from slack_sdk.models.blocks import (
    CheckboxesElement,
    InputBlock,
    MarkdownTextObject,
    Option,
    PlainTextInputElement,
    SectionBlock,
    StaticSelectElement,
)
from slack_sdk.models.views import View

from bot.core.decision import BUSINESS_RISKS, IMPACTS, ROWS, SEVERITIES

START_CALLBACK = "rb_start"
REJECT_CALLBACK = "rb_reject_reason"

#: The plan's five trigger conditions.
TRIGGERS: dict[str, str] = {
    "security_vulnerability": "Critical security vulnerability: data exposure or breach detected",
    "data_corruption": "Data corruption: database integrity compromised beyond repair",
    "performance_degradation": "Performance degradation: response times >5x baseline for >15 minutes",
    "functionality_failure": "Functionality failure: core features completely non-functional",
    "business_critical": "Business critical issue: operations cannot continue with current deployment",
}

REASON_MAX = 300
DESCRIPTION_MAX = 2900


def _opt(value: str, label: str, description: str | None = None) -> Option:
    return Option(value=value, label=label[:75], description=description[:75] if description else None)


def start_modal(*, targets: list[str], target: str | None, reason: str, channel: str) -> View:
    """The modal ``/rollback start`` opens: the plan's inputs."""
    target_opts = [_opt(t, t) for t in targets[:100]]
    initial_target = next((o for o in target_opts if o.value == target), None)
    sev = [_opt(s, f"{s} — {ROWS[i].label}") for i, s in enumerate(SEVERITIES)]
    imp = [_opt(v, v) for v in IMPACTS]
    risk = [_opt(v, v) for v in BUSINESS_RISKS]
    blocks = [
        SectionBlock(text=MarkdownTextObject(
            text="The decision follows the plan's matrix; when the inputs disagree, the most urgent row wins.")),
        InputBlock(block_id="target", label="Target", element=StaticSelectElement(
            action_id="target", options=target_opts, initial_option=initial_target, placeholder="Target")),
        InputBlock(block_id="triggers", label="Trigger conditions", element=CheckboxesElement(
            action_id="triggers",
            options=[_opt(k, v.split(":")[0], v.split(":", 1)[1].strip()) for k, v in TRIGGERS.items()])),
        InputBlock(block_id="severity", label="Severity", element=StaticSelectElement(
            action_id="severity", options=sev, placeholder="P1–P4")),
        InputBlock(block_id="impact", label="Impact", element=StaticSelectElement(
            action_id="impact", options=imp, placeholder="Impact")),
        InputBlock(block_id="business_risk", label="Business risk", element=StaticSelectElement(
            action_id="business_risk", options=risk, placeholder="Business risk")),
        InputBlock(block_id="reason", label="Rollback reason", element=PlainTextInputElement(
            action_id="reason", initial_value=reason[:REASON_MAX] or None, max_length=REASON_MAX)),
        InputBlock(block_id="description", label="Incident description", optional=True,
                   element=PlainTextInputElement(action_id="description", multiline=True, max_length=DESCRIPTION_MAX)),
        InputBlock(block_id="override", label="P4 override reason (incident commander)", optional=True,
                   hint="Only for P4: an incident commander may roll back anyway, with a reason.",
                   element=PlainTextInputElement(action_id="override", max_length=REASON_MAX)),
    ]
    return View(type="modal", callback_id=START_CALLBACK, title="Start a rollback", submit="Start",
                close="Cancel", blocks=blocks, private_metadata=json.dumps({"channel": channel}))


def reject_modal(*, incident_id: str) -> View:
    """The modal a Reject click opens: the reason is required."""
    return View(type="modal", callback_id=REJECT_CALLBACK, title="Reject the rollback", submit="Reject",
                close="Cancel", private_metadata=json.dumps({"incident": incident_id}), blocks=[
                    InputBlock(block_id="note", label=f"Why reject {incident_id}?", element=PlainTextInputElement(
                        action_id="note", multiline=True, max_length=REASON_MAX)),
                ])


@dataclass
class StartRequest:
    """A validated start submission."""

    target: str
    triggers: list[str]
    severity: str
    impact: str
    business_risk: str
    reason: str
    description: str
    override: str
    channel: str
    errors: dict[str, str] = field(default_factory=dict)


def _value(values: dict[str, Any], block: str) -> Any:
    el = next(iter((values.get(block) or {}).values()), None) or {}
    kind = el.get("type")
    if kind == "static_select":
        opt = el.get("selected_option") or {}
        return opt.get("value")
    if kind == "checkboxes":
        return [o.get("value") for o in el.get("selected_options") or []]
    if kind == "plain_text_input":
        return (el.get("value") or "").strip()
    return None


def parse_start(view: dict[str, Any], *, targets: list[str]) -> StartRequest:
    """A typed request from a start submission; ``errors`` by block id when something is wrong."""
    values = (view.get("state") or {}).get("values") or {}
    try:
        meta = json.loads(view.get("private_metadata") or "{}")
    except ValueError:
        meta = {}
    req = StartRequest(
        target=_value(values, "target") or "",
        triggers=[t for t in _value(values, "triggers") or [] if isinstance(t, str)],
        severity=_value(values, "severity") or "",
        impact=_value(values, "impact") or "",
        business_risk=_value(values, "business_risk") or "",
        reason=_value(values, "reason") or "",
        description=_value(values, "description") or "",
        override=_value(values, "override") or "",
        channel=str(meta.get("channel") or ""),
    )
    if req.target not in targets:
        req.errors["target"] = "Pick one of the configured targets."
    unknown = [t for t in req.triggers if t not in TRIGGERS]
    if not req.triggers or unknown:
        req.errors["triggers"] = "Tick at least one of the plan's trigger conditions."
    if req.severity not in SEVERITIES:
        req.errors["severity"] = "Pick P1, P2, P3 or P4."
    if req.impact not in IMPACTS:
        req.errors["impact"] = "Pick one of " + ", ".join(IMPACTS) + "."
    if req.business_risk not in BUSINESS_RISKS:
        req.errors["business_risk"] = "Pick one of " + ", ".join(BUSINESS_RISKS) + "."
    if not req.reason:
        req.errors["reason"] = "Say why the rollback is needed (it goes into the audit trail)."
    elif len(req.reason) > REASON_MAX:
        req.errors["reason"] = f"At most {REASON_MAX} characters."
    if len(req.description) > DESCRIPTION_MAX:
        req.errors["description"] = f"At most {DESCRIPTION_MAX} characters."
    if not req.channel:
        req.errors["reason"] = "This form lost its channel; run the command again."
    return req


def parse_reject(view: dict[str, Any]) -> tuple[str, str]:
    """(incident id, note) from a reject submission."""
    values = (view.get("state") or {}).get("values") or {}
    try:
        meta = json.loads(view.get("private_metadata") or "{}")
    except ValueError:
        meta = {}
    return str(meta.get("incident") or ""), _value(values, "note") or ""
