"""HTTP calls with httpx: health snapshots, the app's JSON export and import."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from actions.errors import HttpCheckFailed


@dataclass(frozen=True)
class HttpResponse:
    """An answer, with its latency and the sha256 of its body."""

    status: int
    text: str
    headers: dict[str, str]
    latency_ms: float
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        """The result a runbook step captures from: status, latency, sha256, json."""
        out: dict[str, Any] = {
            "status": self.status,
            "latency_ms": round(self.latency_ms, 2),
            "sha256": self.sha256,
            "bytes": len(self.text.encode()),
        }
        try:
            out["json"] = json.loads(self.text)
        except ValueError:
            pass
        return out


async def http_request(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    json_body: Any = None,
    timeout: float = 30.0,
    client: httpx.AsyncClient | None = None,
) -> HttpResponse:
    """Send one request; ``HttpCheckFailed`` when it cannot be sent or times out."""
    own = client is None
    c = client or httpx.AsyncClient()
    started = time.perf_counter()
    try:
        resp = await c.request(method, url, headers=headers, json=json_body, timeout=timeout)
    except httpx.HTTPError as exc:
        raise HttpCheckFailed(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
    finally:
        if own:
            await c.aclose()
    latency = (time.perf_counter() - started) * 1000
    body = resp.content
    return HttpResponse(
        status=resp.status_code,
        text=body.decode("utf-8", "replace"),
        headers=dict(resp.headers),
        latency_ms=latency,
        sha256=hashlib.sha256(body).hexdigest(),
    )
