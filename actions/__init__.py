"""Things a runbook step does to the world: commands, HTTP calls, SQLite operations.

A leaf package: it imports nothing from ``bot`` or ``handlers`` and nothing from Slack.
"""
