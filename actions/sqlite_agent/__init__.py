"""rollback-bot's SQLite agent: typed SQLite operations that run ON the target.

A package of its own, standard library only, Python 3.9+, importing nothing from the
project (its modules import each other relatively, so it runs under any package name; on
the target it is installed as ``rollback_bot_agent``, see ``actions.agent_cache``). Run as
``main([<op>, <json params>])`` (params ``-`` = read the JSON from stdin). Prints exactly
one JSON line on stdout: ``{"ok": true, "op": ..., "result": {...}}`` (exit 0) or
``{"ok": false, "op": ..., "error": "...", "kind": "...", "details": ...}`` (exit 2).

Values are always bound, never pasted into SQL; table and column names are checked against
the schema (sqlite_master, table_xinfo) and quoted as identifiers. Blob values travel in
JSON as {"$blob_b64": "<base64>"}, in both directions.

Its modules, each importing only those above it: ``base`` (constants, ``OpError``,
parameters, values), ``files``, ``tx`` (the one write transaction, the kill hook), ``db``
(opening), ``schema``; the read-only ``checks``, ``query``, ``hashing`` (content hash and
verify); ``backup``, ``restore`` (full restore); ``changes`` (the change log and the
deployment boundary), ``rows`` (ledger, row keys, access levels), ``access`` (the
maintenance restriction), ``diff``, ``strategies`` (A and B over the change log),
``selective``, ``governance``, ``loss`` and ``report``; ``dispatch`` (the table of
operations and ``main``).
"""

from __future__ import annotations

import json
import sys

if sys.version_info < (3, 9):  # noqa: UP036 -- the target's Python, not ours: say so plainly
    sys.stdout.write(
        json.dumps(
            {
                "ok": False,
                "op": sys.argv[1] if len(sys.argv) > 1 else "",
                "error": "the SQLite agent needs Python 3.9+ on the target, found "
                + sys.version.split()[0],
                "kind": "unsupported_python",
            }
        )
        + "\n"
    )
    sys.exit(2)

from .base import AGENT_VERSION, HISTORY_COLUMNS, OpError
from .changes import LEDGER
from .dispatch import OPS, main, run
from .files import file_sha256
from .hashing import content_hash
from .tx import KILL_HOOK_ENV

__all__ = [
    "AGENT_VERSION", "HISTORY_COLUMNS", "KILL_HOOK_ENV", "LEDGER", "OPS", "OpError", "content_hash",
    "file_sha256", "main", "run",
]
