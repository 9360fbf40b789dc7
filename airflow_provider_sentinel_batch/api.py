"""Transport-neutral pieces of the Batch API: paths, body decoding and pagination.

Shared by the sync hook (requests) and the async trigger client (httpx), so both build the same URLs and
read pages the same way.
"""

from __future__ import annotations

import json
from typing import Any

from airflow_provider_sentinel_batch.exceptions import SentinelBatchAPIError, SentinelBatchConfigError


def batch_root(base_url: str, api_version: str) -> str:
    """The root URL of the Batch API of one version: ``<base>/api/<version>/batch``."""
    return f"{base_url}/api/{api_version}/batch"


def process_url(
    base_url: str, api_version: str, request_id: str | None = None, action: str | None = None
) -> str:
    """The URL of the requests collection, one request, or an action on it (``analyse``, ``start``, ...).

    ``api_version="statistical"`` gives the Batch Statistical URLs (``/api/v1/statistics/batch``).
    """
    if api_version == "statistical":
        return statistical_url(base_url, request_id, action)
    url = f"{batch_root(base_url, api_version)}/process"
    if request_id is not None:
        if not str(request_id).strip() or "/" in str(request_id):
            raise SentinelBatchConfigError(f"request id {request_id!r} is not a valid batch request id")
        url += f"/{request_id}"
    if action:
        url += f"/{action}"
    return url


def statistical_url(base_url: str, request_id: str | None = None, action: str | None = None) -> str:
    """``/api/v1/statistics/batch[/{requestId}[/{action}]]`` (Batch Statistical; ``action`` may be ``status``)."""
    url = f"{base_url}/api/v1/statistics/batch"
    if request_id is not None:
        if not str(request_id).strip() or "/" in str(request_id):
            raise SentinelBatchConfigError(
                f"request id {request_id!r} is not a valid batch statistical request id"
            )
        url += f"/{request_id}"
    if action:
        url += f"/{action}"
    return url


def request_url(base_url: str, api: str, request_id: str | None = None, action: str | None = None) -> str:
    """A request's URL in any API family: ``"v1"``/``"v2"`` (Batch Processing) or ``"statistical"``."""
    if api == "statistical":
        return statistical_url(base_url, request_id, action)
    return process_url(base_url, api, request_id, action)


def grids_url(base_url: str, api_version: str, grid_id: int | None = None) -> str:
    """The URL of the tiling grids, or of one grid."""
    url = f"{batch_root(base_url, api_version)}/tilinggrids"
    return url if grid_id is None else f"{url}/{int(grid_id)}"


def decode_body(status: int, text: str, method: str, url: str) -> Any:
    """204 and empty bodies are ``None``; anything else must be JSON (a clear error if the service sent HTML)."""
    if status == 204 or not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise SentinelBatchAPIError(
            status=status,
            method=method,
            url=url,
            message=f"expected a JSON body, got: {text.strip()[:200]!r}",
            code="NON_JSON_RESPONSE",
        ) from None


def expect_object(body: Any, method: str, url: str) -> dict[str, Any]:
    """A request/tile/grid answer must be a JSON object; ``None`` or a list would fail later, obscurely."""
    if not isinstance(body, dict):
        raise SentinelBatchAPIError(
            status=200,
            method=method,
            url=url,
            message=f"expected a JSON object, got {type(body).__name__}: {body!r:.200}",
            code="UNEXPECTED_RESPONSE",
        )
    return body


def page_items(body: Any, method: str, url: str) -> tuple[list[dict[str, Any]], str | None, str | None]:
    """``(items, next_token, next_url)`` of one list page; follows ``links.nextToken`` first, else ``links.next``."""
    if not isinstance(body, dict) or not isinstance(body.get("data", []), list):
        raise SentinelBatchAPIError(
            status=200,
            method=method,
            url=url,
            message=f"expected a list page {{'data': [...]}}, got {body!r:.200}",
        )
    items = body.get("data") or []
    links = body.get("links") or {}
    if not items:
        return [], None, None
    return items, links.get("nextToken") or None, links.get("next") or None


class Pages:
    """A cursor over list pages, shared by both transports: call ``url``/``params``, feed the body back.

    Follows ``links.nextToken`` (sent back as ``viewtoken``) first, else ``links.next``; stops on an empty page,
    a missing link, or a token seen before (a service bug must not become an endless loop).
    """

    def __init__(self, url: str, params: dict[str, Any] | None = None) -> None:
        self.url = url
        self.params = dict(params or {})
        self.done = False
        self._seen: set[str] = set()

    def advance(self, body: Any) -> list[dict[str, Any]]:
        """Take one page's body; return its items and move the cursor to the next page (or mark it done)."""
        items, token, link = page_items(body, "GET", self.url)
        if token and token not in self._seen:
            self._seen.add(token)
            self.params = {**self.params, "viewtoken": token}
        elif link and not token and link not in self._seen:
            self._seen.add(link)
            self.url, self.params = link, {}
        else:
            self.done = True
        return items


def count_by_status(items: Any) -> dict[str, int]:
    """Tiles (or any items) per ``status``: the progress/summary figure both transports report."""
    counts: dict[str, int] = {}
    for item in items:
        status = str(item.get("status"))
        counts[status] = counts.get(status, 0) + 1
    return counts
