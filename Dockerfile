FROM python:3.11-slim

# ssh-keyscan to pin a target's host key; sqlite3 for an operator's own look at a backup.
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssh-client sqlite3 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY actions ./actions
COPY handlers ./handlers
RUN pip install --no-cache-dir .

# A non-root user (uid 10001: give it the SSH key, see the README); everything the bot writes
# (incidents, jobs, artifacts, audit log, evidence) lives in the state directory, a volume.
# The config folder is read-only to it.
RUN useradd --create-home --uid 10001 rollback \
    && mkdir -p /var/lib/rollback-bot/artifacts /etc/rollback-bot \
    && chown -R rollback /var/lib/rollback-bot \
    && chmod 0700 /var/lib/rollback-bot
USER rollback
WORKDIR /var/lib/rollback-bot
VOLUME /var/lib/rollback-bot
ENV ROLLBACK_BOT_CONFIG=/etc/rollback-bot/bot.yml \
    ROLLBACK_BOT_STATE_DIR=/var/lib/rollback-bot
# 3000: /slack/events and /healthz in HTTP mode; 8080: /healthz in Socket Mode.
EXPOSE 3000 8080
# GET /healthz on the port the config gives for the mode (no curl in the image).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["rollback-bot", "health"]
CMD ["rollback-bot", "serve"]
