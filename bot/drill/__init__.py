"""The drill: a throwaway local production sandbox and a full runbook run against it.

``sandbox`` builds the target (a WAL SQLite database with the plan's tables, backups, a
bad deployment to undo, the app under a process manager); ``target_app`` and ``procman``
are stdlib-only scripts copied onto that target and run there.
"""
