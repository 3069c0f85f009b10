"""The Slack secrets and endpoint, from the environment only: they never live in the config
file and never print (``SecretStr``)."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

SECRET_VARS = ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_API_URL")


class SlackSecrets(BaseSettings):
    """Secrets and endpoints from the environment."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_api_url: str | None = None

    @property
    def socket_mode(self) -> bool:
        """Socket Mode when an app-level token is set."""
        return bool(self.slack_app_token and self.slack_app_token.get_secret_value())

    def problems(self) -> list[str]:
        """What is missing to serve: the name of each variable."""
        out = []
        token = self.slack_bot_token.get_secret_value() if self.slack_bot_token else ""
        if not token:
            out.append("SLACK_BOT_TOKEN: not set (the bot token, xoxb-…)")
        elif not token.startswith("xoxb-"):
            out.append("SLACK_BOT_TOKEN: does not look like a bot token (xoxb-…)")
        if self.socket_mode:
            assert self.slack_app_token is not None
            if not self.slack_app_token.get_secret_value().startswith("xapp-"):
                out.append("SLACK_APP_TOKEN: does not look like an app-level token (xapp-…)")
        elif not (self.slack_signing_secret and self.slack_signing_secret.get_secret_value()):
            out.append("SLACK_SIGNING_SECRET: not set (needed in HTTP mode, i.e. without SLACK_APP_TOKEN)")
        if self.slack_api_url and not self.slack_api_url.startswith(("http://", "https://")):
            out.append(f"SLACK_API_URL: {self.slack_api_url!r} is not an http(s) URL")
        return out

    @property
    def api_url(self) -> str:
        """The Web API base URL, with a trailing slash as slack_sdk expects."""
        url = self.slack_api_url or "https://slack.com/api/"
        return url if url.endswith("/") else url + "/"
