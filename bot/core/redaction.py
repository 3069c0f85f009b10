"""Redaction of secrets in what the target prints, before it is stored, posted or uploaded.

Two kinds of secret are hidden: text matching a configured pattern (``redact`` in the
config; by default the shapes of Slack, GitHub and cloud tokens, private keys and
``password=…``-style assignments), and the exact values of the environment variables
that hold the bot's own secrets (a local target's shells inherit them, and ``env`` on a
target prints whatever it has).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable

MASK = "[REDACTED]"

#: Shapes of secrets redacted unless the config says otherwise. A pattern with a group
#: named ``keep`` keeps that part (the name in ``PASSWORD=…``) and hides the rest.
DEFAULT_PATTERNS: tuple[str, ...] = (
    r"xox[abposre]-[A-Za-z0-9-]{8,}",                      # Slack bot/user/config tokens
    r"xapp-[A-Za-z0-9-]{8,}",                             # Slack app-level tokens
    r"gh[pousr]_[A-Za-z0-9]{20,}",                        # GitHub tokens
    r"github_pat_[A-Za-z0-9_]{20,}",
    r"AKIA[0-9A-Z]{16}",                                  # AWS access key ids
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)",
    r"(?i)(?P<keep>\b[A-Za-z0-9_.-]*(?:password|passwd|secret|token|api[_-]?key|private[_-]?key)[\"']?\s*[=:]\s*)"
    r"[\"']?[^\s\"',;]+",
)

#: Environment variables whose values are the bot's own secrets (a webhook URL is a credential).
SECRET_ENV = ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "GITHUB_TOKEN",
              "ROLLBACK_STAKEHOLDER_WEBHOOK")

#: The credentials of a URL (``https://user:password@host``), hidden whatever the patterns say.
URL_USERINFO = re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+@")


class Redactor:
    """Replaces every match of the patterns, and every listed secret value, with ``[REDACTED]``."""

    def __init__(self, patterns: Iterable[str] = DEFAULT_PATTERNS, values: Iterable[str] = ()) -> None:
        self.patterns = [re.compile(p) for p in patterns]
        # Longest first, so a secret containing another is hidden whole; short values would
        # hide ordinary words, so they are left to the patterns.
        self.values = sorted({v for v in values if len(v) >= 8}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        """``text`` with every secret replaced."""
        if not text:
            return text
        for value in self.values:
            text = text.replace(value, MASK)
        for pattern in self.patterns:
            text = pattern.sub(_mask, text)
        return URL_USERINFO.sub(MASK + "@", text)


def _mask(m: re.Match[str]) -> str:
    keep = m.groupdict().get("keep")
    return (keep or "") + MASK


def env_secrets(names: Iterable[str] = SECRET_ENV) -> list[str]:
    """The values of the named environment variables that are set."""
    return [v for v in (os.environ.get(n, "") for n in names) if v]


class RedactingFormatter(logging.Formatter):
    """A log formatter that hides secrets in the whole line, traceback included."""

    def __init__(self, inner: logging.Formatter | None, redact: Callable[[str], str]) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        """The inner formatter's line with every secret replaced."""
        return self.redact(self.inner.format(record))


def redact_logs(redact: Callable[[str], str]) -> None:
    """Hide secrets in every line the process logs; httpx's request lines (full URLs) only at WARNING."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(handler.formatter, redact))
