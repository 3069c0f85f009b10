"""The application rollback over the GitHub REST API, with httpx.

Releases are listed to choose the version to go back to; the deploy workflow is
dispatched with a correlation id in one of its inputs (and in its ``run-name``),
because the dispatch answers 204 with no run id: the run is then found in the
repository's ``workflow_dispatch`` runs by that id and watched to completion.

GitHubError (an ``ActionError``) carries GitHub's own message and the HTTP status.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from actions.errors import ActionError

API_VERSION = "2022-11-28"
#: Statuses of a run that is not finished yet.
PENDING_STATUSES = frozenset({"queued", "in_progress", "waiting", "requested", "pending"})


class GitHubError(ActionError):
    """GitHub refused a call or could not be reached; ``message`` is GitHub's own words."""

    def __init__(self, message: str, *, status: int | None = None, url: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.url = url


class WorkflowRunFailed(GitHubError):
    """The watched run completed with a conclusion other than success."""

    def __init__(self, message: str, *, run: WorkflowRun) -> None:
        super().__init__(message, url=run.html_url)
        self.run = run


@dataclass(frozen=True)
class Release:
    """One release of the repository."""

    tag: str
    name: str
    published_at: str
    draft: bool
    prerelease: bool
    html_url: str


@dataclass(frozen=True)
class WorkflowRun:
    """One workflow run as GitHub reports it."""

    id: int
    title: str
    status: str
    conclusion: str | None
    html_url: str
    created_at: str
    head_branch: str | None

    @property
    def completed(self) -> bool:
        """True once GitHub says the run is completed (whatever the conclusion)."""
        return self.status == "completed"

    def as_dict(self) -> dict[str, Any]:
        """The run's facts a step captures."""
        return {"run_id": self.id, "title": self.title, "status": self.status,
                "conclusion": self.conclusion, "html_url": self.html_url,
                "created_at": self.created_at, "head_branch": self.head_branch}


def _run(data: dict[str, Any]) -> WorkflowRun:
    return WorkflowRun(
        id=int(data["id"]),
        title=str(data.get("display_title") or data.get("name") or ""),
        status=str(data.get("status") or ""),
        conclusion=data.get("conclusion"),
        html_url=str(data.get("html_url") or ""),
        created_at=str(data.get("created_at") or ""),
        head_branch=data.get("head_branch"),
    )


def previous_release(releases: Sequence[Release], *, pattern: str, bad: str = "") -> Release | None:
    """The release to roll back to: the newest published one matching ``pattern``
    that is older than ``bad`` (the deployed, bad tag) when that tag is listed."""
    rx = re.compile(pattern)
    ordered = sorted(releases, key=lambda r: r.published_at, reverse=True)
    if bad and any(r.tag == bad for r in ordered):
        ordered = ordered[[r.tag for r in ordered].index(bad) + 1:]
    for rel in ordered:
        if rel.tag != bad and not rel.draft and not rel.prerelease and rx.search(rel.tag):
            return rel
    return None


OnRunUpdate = Callable[[WorkflowRun], Awaitable[None]]


class GitHubClient:
    """The few REST calls a rollback needs, on one repository (``owner/name``)."""

    def __init__(self, *, repo: str, token: str, api_url: str = "https://api.github.com",
                 client: httpx.AsyncClient | None = None, timeout: float = 30.0) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repo):
            raise GitHubError(f"repository {repo!r} is not 'owner/name'")
        if not token:
            raise GitHubError("no GitHub token (set the environment variable the target names)")
        self.repo = repo
        self.api_url = api_url.rstrip("/")
        self._token = token
        self._client = client
        self.timeout = timeout

    async def _call(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                    json_body: Any = None, retries: int = 2) -> httpx.Response:
        url = f"{self.api_url}/repos/{self.repo}{path}"
        headers = {"Accept": "application/vnd.github+json", "Authorization": f"Bearer {self._token}",
                   "X-GitHub-Api-Version": API_VERSION, "User-Agent": "rollback-bot"}
        own = self._client is None
        client = self._client or httpx.AsyncClient()
        try:
            for attempt in range(retries + 1):
                try:
                    resp = await client.request(method, url, params=params, json=json_body, headers=headers,
                                                timeout=self.timeout)
                except httpx.HTTPError as exc:
                    if attempt < retries and method == "GET":
                        await asyncio.sleep(0.5 * (attempt + 1))
                        continue
                    raise GitHubError(f"{method} {url}: {type(exc).__name__}: {exc}", url=url) from exc
                if resp.status_code >= 500 and attempt < retries and method == "GET":
                    await asyncio.sleep(0.5 * (attempt + 1))
                    continue
                if resp.status_code >= 400:
                    raise GitHubError(f"GitHub answered {resp.status_code} to {method} {path}: "
                                      f"{_message(resp)}", status=resp.status_code, url=url)
                return resp
        finally:
            if own:
                await client.aclose()
        raise AssertionError("unreachable")  # pragma: no cover

    async def releases(self, *, limit: int = 10) -> list[Release]:
        """The newest releases (the plan's ``gh release list | head -10``)."""
        resp = await self._call("GET", "/releases", params={"per_page": max(1, min(limit, 100))})
        out = []
        for r in resp.json():
            out.append(Release(tag=str(r["tag_name"]), name=str(r.get("name") or r["tag_name"]),
                               published_at=str(r.get("published_at") or r.get("created_at") or ""),
                               draft=bool(r.get("draft")), prerelease=bool(r.get("prerelease")),
                               html_url=str(r.get("html_url") or "")))
        return out

    async def dispatch(self, *, workflow: str, ref: str, inputs: dict[str, str]) -> None:
        """``workflow_dispatch`` the workflow (file name or id) on ``ref`` with ``inputs``."""
        await self._call("POST", f"/actions/workflows/{workflow}/dispatches",
                         json_body={"ref": ref, "inputs": inputs}, retries=0)

    async def find_run(self, *, correlation_id: str, since: dt.datetime, timeout: float,
                       poll: float) -> WorkflowRun:
        """The dispatched run whose run-name carries ``correlation_id``; waits until it is listed."""
        created = (since - dt.timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
        deadline = time.monotonic() + timeout
        while True:
            resp = await self._call("GET", "/actions/runs", params={
                "event": "workflow_dispatch", "created": f">={created}", "per_page": 50})
            for data in resp.json().get("workflow_runs", []):
                if correlation_id in str(data.get("display_title") or "") or \
                        correlation_id in str(data.get("name") or ""):
                    return _run(data)
            if time.monotonic() >= deadline:
                raise GitHubError(f"no workflow run with {correlation_id!r} in its run-name appeared within "
                                  f"{timeout:.0f}s (does the workflow's run-name include the input?)")
            await asyncio.sleep(poll)

    async def run(self, run_id: int) -> WorkflowRun:
        """One run's current state."""
        return _run((await self._call("GET", f"/actions/runs/{run_id}")).json())

    async def watch(self, run: WorkflowRun, *, timeout: float, poll: float,
                    on_update: OnRunUpdate | None = None) -> WorkflowRun:
        """Poll the run until it completes (the plan's ``gh run watch``); every status change
        goes to ``on_update``. ``WorkflowRunFailed`` unless it concludes with success."""
        deadline = time.monotonic() + timeout
        seen = (run.status, run.conclusion)
        if on_update is not None:
            await on_update(run)
        while not run.completed:
            if time.monotonic() >= deadline:
                raise GitHubError(f"run {run.id} still {run.status} after {timeout:.0f}s: {run.html_url}",
                                  url=run.html_url)
            await asyncio.sleep(poll)
            run = await self.run(run.id)
            if (run.status, run.conclusion) != seen and on_update is not None:
                await on_update(run)
            seen = (run.status, run.conclusion)
        if run.conclusion != "success":
            raise WorkflowRunFailed(f"workflow run {run.id} concluded {run.conclusion}: {run.html_url}", run=run)
        return run


def _message(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:300] or resp.reason_phrase
    if isinstance(data, dict):
        msg = str(data.get("message") or resp.reason_phrase)
        errors = data.get("errors")
        if isinstance(errors, list) and errors:
            details = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors[:5])
            msg += f" ({details})"
        return msg
    return resp.text[:300]
