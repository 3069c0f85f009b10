FROM python:3.11-slim

# ssh client tools for host-key pinning (ssh-keyscan); sqlite3 for operators' own checks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssh-client sqlite3 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY actions ./actions
COPY handlers ./handlers
RUN pip install --no-cache-dir .

RUN useradd --create-home --uid 10001 rollback \
    && mkdir -p /data && chown rollback /data
USER rollback
WORKDIR /data
ENV ROLLBACK_BOT_CONFIG=/config/rollback-bot.yml
EXPOSE 3000
CMD ["rollback-bot", "serve"]
