"""``rollback-bot health``: probe a running bot's ``/healthz`` (a container HEALTHCHECK without curl)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TextIO

import httpx

from bot.core.config import ConfigError, load_settings


def health_url(config: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``http://127.0.0.1:PORT/healthz``: the health port in Socket Mode, the HTTP port otherwise."""
    env = os.environ if environ is None else environ
    settings = load_settings(config, env, require_secrets=False)
    slack = settings.config.slack
    if settings.secrets.socket_mode:
        if not slack.health_port:
            raise ConfigError(["slack.health_port: 0 (no /healthz in Socket Mode); set a port to probe"])
        return f"http://127.0.0.1:{slack.health_port}/healthz"
    return f"http://127.0.0.1:{slack.http_port}/healthz"


def health_main(*, url: str | None, config: str | None, timeout: float, out: TextIO | None = None) -> int:
    """Exit 0 when /healthz answers 200 ``{"ok": true}``, 1 when not, 2 when the config is unusable."""
    out = out or sys.stderr
    if url is None:
        try:
            url = health_url(config)
        except ConfigError as exc:
            print(f"rollback-bot health: {exc.problems[0]}", file=out)
            return 2
    try:
        resp = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        print(f"rollback-bot health: {url}: {type(exc).__name__}: {exc or 'no answer'}", file=out)
        return 1
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if resp.status_code == 200 and isinstance(body, dict) and body.get("ok") is True:
        print(f"{url}: ok, {body.get('active_incidents', 0)} active incident(s)", file=sys.stdout)
        return 0
    print(f"rollback-bot health: {url} answered {resp.status_code}: {resp.text[:200]}", file=out)
    return 1
