"""Preflight: is a target ready for a rollback? Reads only; changes nothing on the target.

The same checks run as the first phase of the default runbook (a ``preflight`` step) and in
``rollback-bot check``: SSH with the pinned host key, the workdir, the env file, the target's
Python (>= 3.9, with its sqlite3 module), the database (it opens; its journal mode), free disk
for the emergency backup and the corrupted copy (at least twice the database with its WAL),
the backups (listed; the newest verified), the app known to the process manager, and the
health URL answering. Every check is reported; one failure does not hide the others.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from actions.errors import ActionError
from actions.http import http_request
from actions.sqlite import sqlite_op
from actions.transport import Transport
from bot.core.targets import TargetSettings

#: Every check, in the order they are reported.
CHECKS = ("ssh", "workdir", "env_file", "python", "disk", "database", "backups", "app", "health")
#: Free space needed on the database's filesystem, as a multiple of the database with its WAL.
DISK_FACTOR = 2
MIN_PYTHON = (3, 9)
_NO_LINK = "not checked: no connection to the target"


class PreflightFailed(ActionError):
    """At least one preflight check failed; ``findings`` holds every check, ``stdout`` the report."""

    def __init__(self, message: str, *, findings: list[Finding]) -> None:
        super().__init__(message)
        self.findings = findings
        self.stdout = report(findings)
        self.stderr = ""


@dataclass(frozen=True)
class Finding:
    """One check's outcome: ``ok`` True, False (a failure) or None (not checked)."""

    check: str
    ok: bool | None
    detail: str

    def line(self) -> str:
        """``✓ name: detail`` (✗ failed, – not checked)."""
        mark = {True: "✓", False: "✗", None: "–"}[self.ok]
        return f"{mark} {self.check}: {self.detail}"


def report(findings: list[Finding]) -> str:
    """Every finding, one line each, and a summary line."""
    failed = [f for f in findings if f.ok is False]
    summary = f"preflight: {len(failed)} of {len(findings)} checks failed" if failed \
        else f"preflight: all {len(findings)} checks passed"
    return "\n".join([*(f.line() for f in findings), summary])


def failure_message(findings: list[Finding]) -> str:
    """One line naming every failed check and why."""
    failed = [f for f in findings if f.ok is False]
    return f"{len(failed)} of {len(findings)} preflight checks failed: " + "; ".join(
        f"{f.check}: {f.detail}" for f in failed)


def _probe_script(t: TargetSettings) -> str:
    """A read-only shell script printing ``check<TAB>ok|fail<TAB>detail`` lines."""
    q = shlex.quote
    python_code = ("import sys, sqlite3; v = sys.version_info; "
                   "print('%d.%d.%d SQLite %s' % (v[0], v[1], v[2], sqlite3.sqlite_version)); "
                   f"sys.exit(0 if v[:2] >= {MIN_PYTHON!r} else 3)")
    db = q(t.db_path)
    return "\n".join([
        "r() { printf '%s\\t%s\\t%s\\n' \"$1\" \"$2\" \"$3\"; }",
        f"if ! cd -- {q(t.workdir)} 2>/dev/null; then r workdir fail {q(t.workdir + ' is not a folder on the target')};"
        " exit 0; fi",
        "r workdir ok \"$PWD\"",
        f"e={q(t.env_file)}",
        "if [ ! -e \"$e\" ]; then r env_file fail \"$e does not exist\";"
        " elif [ ! -w \"$e\" ]; then r env_file fail \"$e is not writable\"; else r env_file ok \"$e\"; fi",
        f"p={q(t.python)}",
        f"if v=$(\"$p\" -c {q(python_code)} 2>&1); then r python ok \"$p $v\";"
        " elif [ $? = 3 ]; then r python fail \"$p $v is older than 3.9\";"
        " else r python fail \"$p cannot run here: $(printf %s \"$v\" | tail -n 1)\"; fi",
        # Sizes and free space in KiB, without the target's Python.
        f"d={q(t.databases_dir)}",
        f"if [ -f {db} ]; then",
        f"  s=$(( ( $(wc -c < {db}) + $( [ -f {db}-wal ] && wc -c < {db}-wal || echo 0) + 1023 ) / 1024 ))",
        "  f=$(df -Pk \"$d\" 2>/dev/null | awk 'NR==2 {print $4}')",
        "  if [ -z \"$f\" ]; then r disk fail \"cannot read the free space of $d\";"
        f"  elif [ \"$f\" -ge $(( s * {DISK_FACTOR} )) ]; then"
        "  r disk ok \"$f KiB free in $d, database with WAL $s KiB\";"
        f"  else r disk fail \"$f KiB free in $d, need {DISK_FACTOR} x $s KiB (the database with its WAL) for the"
        " emergency backup and the corrupted copy\"; fi",
        f"else r disk fail {q(t.db_path + ' does not exist')}; fi",
    ])


async def _shell_findings(t: TargetSettings, transport: Transport, timeout: float) -> list[Finding]:
    res = await transport.run(_probe_script(t), timeout=timeout)
    found: dict[str, Finding] = {}
    for line in res.stdout.splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[0] in CHECKS:
            found[parts[0]] = Finding(parts[0], parts[1] == "ok", parts[2])
    if "workdir" not in found:
        found["workdir"] = Finding("workdir", False, f"the probe printed nothing (exit {res.exit_status}): "
                                   f"{(res.stderr or res.stdout)[-200:]}")
    return [found[c] for c in ("workdir", "env_file", "python", "disk") if c in found]


async def _database(t: TargetSettings, transport: Transport, timeout: float) -> Finding:
    try:
        res = await sqlite_op(transport, "query", {"db": t.db_path, "sql": "SELECT * FROM pragma_journal_mode()",
                                                   "max_rows": 1}, timeout=timeout, python=t.python, cwd=t.workdir)
    except ActionError as exc:
        return Finding("database", False, f"{t.db_path} does not open: {exc}")
    rows = res.get("rows") or [[None]]
    return Finding("database", True, f"{t.db_path} opens, journal mode {rows[0][0]}")


async def _backups(t: TargetSettings, transport: Transport, timeout: float) -> Finding:
    try:
        listed = await sqlite_op(transport, "list_backups", {"dir": t.databases_dir, "pattern": t.backup_pattern},
                                 timeout=timeout, python=t.python, cwd=t.workdir)
    except ActionError as exc:
        return Finding("backups", False, f"cannot list {t.backup_pattern} in {t.databases_dir}: {exc}")
    backups = [b for b in listed.get("backups", []) if isinstance(b, dict) and b.get("sqlite")]
    if not backups:
        return Finding("backups", False, f"no SQLite backup matching {t.backup_pattern} in {t.databases_dir}")
    newest = backups[0]
    try:
        verified = await sqlite_op(transport, "verify", {"db": newest["path"]}, timeout=timeout,
                                   python=t.python, cwd=t.workdir)
    except ActionError as exc:
        return Finding("backups", False, f"the newest backup {newest['name']} does not verify: {exc}")
    if not verified.get("ok"):
        return Finding("backups", False, f"the newest backup {newest['name']} failed its integrity check: "
                       f"{verified.get('integrity')}")
    return Finding("backups", True, f"{len(backups)} listed; newest {newest['name']} ({newest.get('mtime_iso')}, "
                   f"{newest.get('bytes')} bytes) verified")


def _app_listed(output: str, app: str) -> bool:
    try:
        doc = json.loads(output)
    except ValueError:
        return any(app in line.split() for line in output.splitlines())
    entries = doc if isinstance(doc, list) else [doc]
    return any(isinstance(e, Mapping) and e.get("name") == app for e in entries)


async def _app(t: TargetSettings, transport: Transport, timeout: float) -> Finding:
    res = await transport.run(t.pm_status, timeout=timeout, cwd=t.workdir)
    if res.exit_status != 0:
        return Finding("app", False, f"`{t.pm_status}` exited {res.exit_status}: {res.stderr.strip()[-200:]}")
    if not _app_listed(res.stdout, t.app_name):
        return Finding("app", False, f"{t.app_name} is not listed by `{t.pm_status}`")
    return Finding("app", True, f"{t.app_name} is listed by `{t.pm_status}`")


async def _health(t: TargetSettings, http: httpx.AsyncClient | None, timeout: float) -> Finding:
    try:
        resp = await http_request("GET", t.health_url, headers={"X-User-ID": t.export_user},
                                  timeout=min(timeout, 15.0), client=http)
    except ActionError as exc:
        return Finding("health", False, str(exc))
    return Finding("health", True, f"{t.health_url} answered {resp.status} in {resp.latency_ms:.0f} ms")


async def run_preflight(t: TargetSettings, transport: Transport, *, http: httpx.AsyncClient | None = None,
                        timeout: float = 600.0, hosts: Mapping[str, Transport] | None = None) -> list[Finding]:
    """Every preflight check of target ``t`` (a group's SQLite checks run on its first host)."""
    findings: list[Finding] = []
    reached = True
    for name, host in (hosts or {"": transport}).items():
        label = f"ssh ({name})" if name else "ssh"
        try:
            res = await host.run("true", timeout=min(timeout, 60.0))
        except ActionError as exc:
            findings.append(Finding(label, False, str(exc)))
            reached = reached and host is not transport
            continue
        findings.append(Finding(label, res.exit_status == 0, "connected" + (
            ", host key pinned" if t.transport == "ssh" else " (local)")))
    if not reached:
        findings += [Finding(c, None, _NO_LINK) for c in CHECKS if c not in ("ssh", "health")]
    else:
        shell = await _shell_findings(t, transport, timeout)
        findings += shell
        by = {f.check: f for f in shell}
        if not by["workdir"].ok:
            findings += [Finding(c, None, "not checked: no workdir") for c in ("database", "backups", "app")]
        elif not by.get("python", Finding("python", False, "")).ok:
            findings += [Finding(c, None, "not checked: needs the target's Python") for c in ("database", "backups")]
            findings.append(await _app(t, transport, timeout))
        else:
            findings += [await _database(t, transport, timeout), await _backups(t, transport, timeout),
                         await _app(t, transport, timeout)]
    findings.append(await _health(t, http, timeout))
    return findings


def findings_result(findings: list[Finding]) -> dict[str, Any]:
    """The step's result: every finding as a dict, and the failed check names."""
    return {"checks": [{"check": f.check, "ok": f.ok, "detail": f.detail} for f in findings],
            "failed": [f.check for f in findings if f.ok is False]}
