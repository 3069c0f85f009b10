"""A local fake of the few GitHub REST endpoints a rollback uses, on 127.0.0.1 (real HTTP).

- ``GET /repos/{o}/{r}/releases``;
- ``POST /repos/{o}/{r}/actions/workflows/{wf}/dispatches``: 204 with no body, as GitHub;
  422 for an unknown ref or an input the workflow does not declare, 404 for an unknown
  workflow, 401 for a bad token, each with GitHub's ``{"message": …}``;
- ``GET /repos/{o}/{r}/actions/runs`` (``event``, ``created`` filters) and ``…/runs/{id}``.

A dispatched run gets its ``display_title`` from the workflow's run-name (with the inputs
filled in), is listed only after ``list_after`` listings (GitHub's lag), and moves
queued -> in_progress -> completed one step per ``GET`` of the run, ending with the
conclusion set for it. Progress is counted in requests, not seconds, so tests are not
timing-dependent. Every request is recorded.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeRun:
    id: int
    title: str
    workflow: str
    ref: str
    inputs: dict[str, str]
    created_at: str
    conclusion: str
    steps: list[str] = field(default_factory=lambda: ["queued", "in_progress", "in_progress", "completed"])
    polls: int = 0
    listings: int = 0

    @property
    def status(self) -> str:
        return self.steps[min(self.polls, len(self.steps) - 1)]

    def json(self, base: str, repo: str) -> dict[str, Any]:
        done = self.status == "completed"
        return {"id": self.id, "name": "Deploy production", "display_title": self.title, "event": "workflow_dispatch",
                "status": self.status, "conclusion": self.conclusion if done else None, "head_branch": self.ref,
                "created_at": self.created_at, "html_url": f"{base}/{repo}/actions/runs/{self.id}"}


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    body: Any


class GitHubFake:
    """The fake server; ``api_url`` is what ``TargetSettings.github_api_url`` takes."""

    def __init__(self, *, repo: str = "org/orbis-forge-admin", token: str = "ghp_test_token",
                 workflow: str = "deploy-production.yml",
                 declared_inputs: tuple[str, ...] = ("environment", "deployment_type", "rollback_reason",
                                                     "correlation_id"),
                 run_name: str = "Deploy {environment} ({deployment_type}) [{correlation_id}]") -> None:
        self.repo = repo
        self.token = token
        self.workflow = workflow
        self.declared_inputs = declared_inputs
        self.run_name = run_name
        self.releases: list[dict[str, Any]] = []
        self.runs: list[FakeRun] = []
        self.calls: list[Call] = []
        self.conclusion = "success"
        self.list_after = 1
        self.errors: dict[tuple[str, str], tuple[int, str]] = {}
        self._ids = itertools.count(9000)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------ setup

    def add_release(self, tag: str, published_at: str, *, draft: bool = False, prerelease: bool = False) -> None:
        self.releases.append({"tag_name": tag, "name": tag, "published_at": published_at, "draft": draft,
                              "prerelease": prerelease, "html_url": f"https://github.test/{self.repo}/releases/{tag}"})

    def add_sandbox_releases(self) -> None:
        """The drill sandbox's releases: phase-2.3.0, phase-2.4.1 (the one before the bad deployment) and
        phase-3.0.0 (the bad deployment)."""
        for tag, at in (("phase-2.3.0", "2025-05-01T00:00:00Z"), ("phase-2.4.1", "2025-06-01T00:00:00Z"),
                        ("phase-3.0.0", "2025-07-30T00:00:00Z")):
            self.add_release(tag, at)

    def add_foreign_run(self, title: str) -> FakeRun:
        """A run someone else dispatched (must not be mistaken for ours)."""
        run = FakeRun(next(self._ids), title, self.workflow, "main", {}, _now(), "success", listings=99)
        self.runs.append(run)
        return run

    def fail(self, method: str, path_suffix: str, status: int, message: str) -> None:
        """Answer ``status`` with GitHub's ``{"message": …}`` to requests whose path ends so."""
        self.errors[(method, path_suffix)] = (status, message)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> GitHubFake:
        app = web.Application()
        app.router.add_route("*", "/repos/{owner}/{name}/{rest:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------ handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rest = request.match_info["rest"]
        repo = f"{request.match_info['owner']}/{request.match_info['name']}"
        body: Any = None
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                body = None
        self.calls.append(Call(request.method, "/" + rest, dict(request.query), body))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _error(401, "Bad credentials")
        for (method, suffix), (status, message) in self.errors.items():
            if request.method == method and ("/" + rest).endswith(suffix):
                return _error(status, message)
        if repo != self.repo:
            return _error(404, "Not Found")
        if request.method == "GET" and rest == "releases":
            per = int(request.query.get("per_page", "30"))
            ordered = sorted(self.releases, key=lambda r: r["published_at"], reverse=True)
            return web.json_response(ordered[:per])
        m = re.fullmatch(r"actions/workflows/([^/]+)/dispatches", rest)
        if request.method == "POST" and m:
            return self._dispatch(m.group(1), body)
        if request.method == "GET" and rest == "actions/runs":
            return self._list(request.query)
        m = re.fullmatch(r"actions/runs/(\d+)", rest)
        if request.method == "GET" and m:
            run = next((r for r in self.runs if r.id == int(m.group(1))), None)
            if run is None:
                return _error(404, "Not Found")
            run.polls += 1
            return web.json_response(run.json("https://github.test", self.repo))
        return _error(404, "Not Found")

    def _dispatch(self, workflow: str, body: Any) -> web.StreamResponse:
        if workflow != self.workflow:
            return _error(404, "Not Found")
        if not isinstance(body, dict) or "ref" not in body:
            return _error(422, "Invalid request.\n\n\"ref\" wasn't supplied.")
        ref = str(body["ref"])
        if ref not in {r["tag_name"] for r in self.releases} | {"main"}:
            return _error(422, f"No ref found for: {ref}")
        inputs = {str(k): str(v) for k, v in (body.get("inputs") or {}).items()}
        unexpected = sorted(set(inputs) - set(self.declared_inputs))
        if unexpected:
            return _error(422, f"Unexpected inputs provided: {unexpected}")
        title = self.run_name.format_map(_Missing(inputs))
        self.runs.append(FakeRun(next(self._ids), title, workflow, ref, inputs, _now(), self.conclusion))
        return web.Response(status=204)

    def _list(self, query: Any) -> web.StreamResponse:
        out = []
        for run in sorted(self.runs, key=lambda r: r.id, reverse=True):
            run.listings += 1
            if run.listings <= self.list_after:
                continue  # not listed yet: GitHub's lag after a dispatch
            created = str(query.get("created", "")).removeprefix(">=")
            if created and run.created_at < created:
                continue
            out.append(run.json("https://github.test", self.repo))
        return web.json_response({"total_count": len(out), "workflow_runs": out})

    def dispatches(self) -> list[Call]:
        return [c for c in self.calls if c.method == "POST" and c.path.endswith("/dispatches")]


class _Missing(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message, "documentation_url": "https://docs.github.com/rest"},
                             status=status)
