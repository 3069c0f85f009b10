"""Slack listeners: each acks at once and calls one function of ``bot``."""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp

from handlers import actions, commands, errors, views


def register(app: AsyncApp) -> None:
    """Attach every listener to the app."""
    commands.register(app)
    actions.register(app)
    views.register(app)
    errors.register(app)
