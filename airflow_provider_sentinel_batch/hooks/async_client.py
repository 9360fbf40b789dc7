"""``SentinelBatchAsyncClient``: the trigger's transport (httpx), with the hook's auth, retries and errors.

One implementation of the policy, two transports: tokens come from the same process-wide cache as the sync
hook's (so thousands of triggers of one connection share one token), responses are classified by the same
:func:`~airflow_provider_sentinel_batch.retry.classify_response`, and waits come from the same
:class:`~airflow_provider_sentinel_batch.retry.RetryPolicy`. Nothing here blocks the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

import httpx

from airflow_provider_sentinel_batch import api
from airflow_provider_sentinel_batch.auth import TOKEN_CACHE, fetch_token_async, token_key
from airflow_provider_sentinel_batch.deployments import ConnectionSettings, settings_from_connection
from airflow_provider_sentinel_batch.retry import (
    RetryPolicy,
    TransientError,
    classify_response,
    connection_error,
    final_error,
)

# Many waiting triggers keep one connection each; keep the pool small and let idle sockets go.
_LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=2, keepalive_expiry=30.0)


async def settings_for_conn_id(conn_id: str) -> ConnectionSettings:
    """Resolve a connection without blocking the loop (async helpers of common-compat on every version)."""
    from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson

    conn = await get_async_connection(conn_id)
    extra = await get_async_extra_dejson(conn)
    return settings_from_connection(conn, extra)


class SentinelBatchAsyncClient:
    """Async Batch API client for one trigger run; use as ``async with`` so its HTTP client is closed."""

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        retry_policy: RetryPolicy | None = None,
        timeout: float = 60.0,
        sleep: Callable[[float], Any] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.retry_policy = retry_policy or RetryPolicy()
        self.timeout = timeout
        self._sleep = sleep
        self._transport = transport
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> SentinelBatchAsyncClient:
        self._http = httpx.AsyncClient(
            timeout=self.timeout,
            limits=_LIMITS,
            transport=self._transport,
            headers={"User-Agent": "airflow-provider-sentinel-batch"},
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("use SentinelBatchAsyncClient as 'async with' (the HTTP client is not open)")
        return self._http

    async def get_token(self) -> str:
        settings = self.settings
        return await TOKEN_CACHE.get_async(
            token_key(settings),
            lambda: fetch_token_async(
                settings, self.http, policy=self.retry_policy, timeout=self.timeout, sleep=self._sleep
            ),
        )

    async def _once(
        self, method: str, url: str, params: dict[str, Any] | None, request_id: str | None
    ) -> httpx.Response:
        for refreshed in (False, True):
            token = await self.get_token()
            try:
                response = await self.http.request(
                    method, url, params=params, headers={"Authorization": f"Bearer {token}"}
                )
            except httpx.TransportError as exc:
                raise connection_error(method, url, exc) from None
            if response.status_code == 401 and not refreshed:
                TOKEN_CACHE.invalidate(token_key(self.settings), token)
                continue
            classify_response(
                status=response.status_code,
                method=method,
                url=url,
                body=response.content,
                headers=response.headers,
                reason=response.reason_phrase,
                request_id=request_id,
                not_found_grace=self.retry_policy.not_found_grace,
            )
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def call(
        self, method: str, url: str, *, params: dict[str, Any] | None = None, request_id: str | None = None
    ) -> Any:
        try:
            async for attempt in self.retry_policy.async_retrying(f"{method} {url}", self._sleep):
                with attempt:
                    response = await self._once(method, url, params, request_id)
        except TransientError as exc:
            raise final_error(exc) from None
        return api.decode_body(response.status_code, response.text, method, url)

    async def get_request(self, request_id: str, api_version: str) -> dict[str, Any]:
        url = api.process_url(self.settings.base_url, api_version, request_id)
        return await self.call("GET", url, request_id=request_id)

    async def stop_or_cancel(self, request_id: str, api_version: str) -> None:
        action = "cancel" if api_version == "v1" else "stop"
        url = api.process_url(self.settings.base_url, api_version, request_id, action)
        await self.call("POST", url, request_id=request_id)

    async def count_tiles(self, request_id: str) -> dict[str, int]:
        """v1: tiles per status (one paginated listing; used on status changes only, not every poll)."""
        pages = api.Pages(api.process_url(self.settings.base_url, "v1", request_id, "tiles"))
        counts: dict[str, int] = {}
        while not pages.done:
            body = await self.call("GET", pages.url, params=pages.params, request_id=request_id)
            for tile in pages.advance(body):
                status = str(tile.get("status"))
                counts[status] = counts.get(status, 0) + 1
        return counts
