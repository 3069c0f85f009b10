"""The drill: a throwaway local production sandbox and a full runbook run against it.

``sandbox`` builds the target (a WAL SQLite database with the plan's tables, backups, a
bad deployment to undo, the app under a process manager); ``target`` holds the stdlib-only
scripts copied onto that target and run there (the app, the process manager); ``person``
plays the people; ``verdict`` checks the outcome.
"""
