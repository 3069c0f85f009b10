"""rollback-bot core: runbook, incidents, engine, store, views and the CLI."""
