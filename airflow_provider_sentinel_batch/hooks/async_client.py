"""``SentinelBatchAsyncClient``: the trigger's transport (httpx), with the hook's auth, retries and errors.

One implementation of the policy, two transports: tokens come from the same process-wide cache as the sync
hook's (so thousands of triggers of one connection share one token), responses are classified by the same
:func:`~airflow_provider_sentinel_batch.retry.classify_response`, and waits come from the same
:class:`~airflow_provider_sentinel_batch.retry.RetryPolicy`. Nothing here blocks the event loop.

Every trigger of one base URL on one event loop shares one connection pool, reference-counted: the first
``async with`` opens it, the last one out closes it. Measured in ``docs/benchmarks.md``: a private
``httpx.AsyncClient`` per trigger costs an SSL context (~40 ms of CPU that blocks the loop, ~0.8 MiB) and an
idle socket each, so 10,000 waiting triggers would need gigabytes and minutes of CPU just to start.

The pool is a stack of single-connection httpx clients ("lanes") behind a semaphore, not one client with
many sockets: httpcore's pool rescans all of its connections and queued requests on every request, so one
client with dozens of sockets costs several times more CPU per poll, and a burst of thousands of queued
polls costs quadratic time. A lane holds one keep-alive socket; the most recently used lane is reused first,
so a quiet triggerer keeps only the sockets it needs warm.
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

import httpx

from airflow_provider_sentinel_batch import api
from airflow_provider_sentinel_batch.auth import TOKEN_CACHE, fetch_token_async, token_key
from airflow_provider_sentinel_batch.budget import budget_for
from airflow_provider_sentinel_batch.deployments import (
    ConnectionSettings,
    connection_extra,
    settings_from_connection,
)
from airflow_provider_sentinel_batch.exceptions import parse_retry_after
from airflow_provider_sentinel_batch.retry import (
    RetryPolicy,
    TransientError,
    classify_response,
    connection_error,
    final_error,
)

#: Sockets per base URL and event loop: polls in flight at once. 10,000 triggers polling every minute make
#: ~170 polls/s; at 100-300 ms per call that is 17-50 busy sockets. More polls wait for a free lane (up to
#: the request timeout) instead of opening more sockets.
MAX_CONNECTIONS = 64
_LANE = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=30.0)
_MAIN = httpx.Limits(max_connections=4, max_keepalive_connections=4, keepalive_expiry=30.0)
_HEADERS = {"User-Agent": "airflow-provider-sentinel-batch"}


class _Pool:
    """The shared HTTP state of one base URL on one event loop (only touched from that loop's thread)."""

    def __init__(self, timeout: float, *, tls: bool = True) -> None:
        self.timeout = timeout
        self.tls = tls
        # One for all lanes (each default client, even ``verify=True``, loads its own CA bundle: 40-200 ms of
        # CPU that blocks the loop). A pool that never talks https (a loopback emulator) gets an empty context
        # instead: it costs nothing to build and, with no CA loaded, fails any TLS handshake (fails closed).
        self.ssl_context = httpx.create_ssl_context() if tls else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.main = self._client(_MAIN)  # ``SentinelBatchAsyncClient.http``: token requests, raw calls
        self.lanes: list[httpx.AsyncClient] = []
        self.idle: list[httpx.AsyncClient] = []  # a stack: the warmest socket first
        self.gate = asyncio.Semaphore(MAX_CONNECTIONS)
        self.users = 0

    def _client(self, limits: httpx.Limits) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=self.timeout, limits=limits, headers=_HEADERS, verify=self.ssl_context
        )

    async def take(self, timeout: float) -> httpx.AsyncClient:
        async with asyncio.timeout(timeout):
            await self.gate.acquire()
        if self.idle:
            return self.idle.pop()
        lane = self._client(_LANE)
        self.lanes.append(lane)
        return lane

    def give_back(self, lane: httpx.AsyncClient) -> None:
        self.idle.append(lane)
        self.gate.release()

    async def aclose(self) -> None:
        for client in (self.main, *self.lanes):
            await client.aclose()
        self.lanes.clear()
        self.idle.clear()


#: Open pools: event loop -> base URL -> pool.
_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Pool]] = weakref.WeakKeyDictionary()


def _needs_tls(*urls: str) -> bool:
    return any(url.lower().startswith("https:") for url in urls)


def _acquire(base_url: str, timeout: float, *, tls: bool = True) -> _Pool:
    pools = _POOLS.setdefault(asyncio.get_running_loop(), {})
    pool = pools.get(base_url)
    # a pool without TLS is replaced (not shared) when a connection needs it; its users keep it until they leave
    if pool is None or pool.main.is_closed or (tls and not pool.tls):
        pool = pools[base_url] = _Pool(timeout, tls=tls)
    pool.users += 1
    return pool


async def _release(base_url: str, pool: _Pool) -> None:
    pools = _POOLS.get(asyncio.get_running_loop(), {})
    pool.users -= 1
    if pool.users <= 0:
        if pools.get(base_url) is pool:
            del pools[base_url]  # before awaiting, so a trigger arriving meanwhile opens a fresh pool
        await pool.aclose()


async def settings_for_conn_id(conn_id: str) -> ConnectionSettings:
    """Resolve a connection without blocking the loop (async helpers of common-compat on every version)."""
    from airflow.providers.common.compat.connection import get_async_connection

    conn = await get_async_connection(conn_id)
    return settings_from_connection(conn, connection_extra(conn))


class SentinelBatchAsyncClient:
    """Async Batch API client for one trigger run; use as ``async with`` so the shared pool is released.

    ``transport`` (tests) gives this client a private ``httpx.AsyncClient`` instead of the shared pool.
    """

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
        self._pool: _Pool | None = None
        self._budget = budget_for(settings.token_url, settings.client_id, settings.requests_per_minute)

    async def __aenter__(self) -> SentinelBatchAsyncClient:
        if self._http is not None:
            return self
        if self._transport is None:
            settings = self.settings
            tls = _needs_tls(settings.base_url, settings.token_url)  # plain http: only a loopback emulator
            self._pool = _acquire(settings.base_url, self.timeout, tls=tls)
            self._http = self._pool.main
        else:
            self._http = httpx.AsyncClient(
                timeout=self.timeout, limits=_MAIN, transport=self._transport, headers=_HEADERS
            )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Give back the pooled HTTP client (or close an own one)."""
        http, pool, self._http, self._pool = self._http, self._pool, None, None
        if pool is not None:
            await _release(self.settings.base_url, pool)
        elif http is not None:
            await http.aclose()

    @property
    def http(self) -> httpx.AsyncClient:
        """The open ``httpx.AsyncClient`` of this client (pooled per base URL); only inside ``async with``."""
        if self._http is None:
            raise RuntimeError("use SentinelBatchAsyncClient as 'async with' (the HTTP client is not open)")
        return self._http

    async def get_token(self) -> str:
        """A fresh access token from the process-wide cache."""
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
        budget = self._budget
        for refreshed in (False, True):
            token = await self.get_token()
            if budget is not None:
                await budget.acquire_async(action=method != "GET")  # polls paced, actions never wait
            try:
                response = await self._send(method, url, params, token)
            except (httpx.TransportError, TimeoutError) as exc:
                raise connection_error(method, url, exc) from None
            if response.status_code == 401 and not refreshed:
                TOKEN_CACHE.invalidate(token_key(self.settings), token)
                continue
            if response.status_code == 429 and budget is not None:
                budget.rate_limited_for(parse_retry_after(response.headers.get("Retry-After")))
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

    async def _send(self, method: str, url: str, params: dict[str, Any] | None, token: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        pool = self._pool
        if pool is None:
            return await self.http.request(method, url, params=params, headers=headers, timeout=self.timeout)
        lane = await pool.take(self.timeout)
        try:
            return await lane.request(method, url, params=params, headers=headers, timeout=self.timeout)
        finally:
            pool.give_back(lane)

    async def call(
        self, method: str, url: str, *, params: dict[str, Any] | None = None, request_id: str | None = None
    ) -> Any:
        """One API call with the retry policy; returns the decoded JSON body."""
        try:
            async for attempt in self.retry_policy.async_retrying(f"{method} {url}", self._sleep):
                with attempt:
                    response = await self._once(method, url, params, request_id)
        except TransientError as exc:
            raise final_error(exc) from None
        return api.decode_body(response.status_code, response.text, method, url)

    async def get_request(self, request_id: str, api_version: str) -> dict[str, Any]:
        """The request object (``GET .../process/<id>``; Batch Statistical: ``costPU`` always set)."""
        from airflow_provider_sentinel_batch.statistical import normalised

        url = api.process_url(self.settings.base_url, api_version, request_id)
        body = api.expect_object(await self.call("GET", url, request_id=request_id), "GET", url)
        return normalised(body) if api_version == "statistical" else body

    async def stop_or_cancel(self, request_id: str, api_version: str) -> None:
        """Ask the service to stop (v2) or cancel (v1) the job."""
        action = "cancel" if api_version == "v1" else "stop"
        url = api.process_url(self.settings.base_url, api_version, request_id, action)
        await self.call("POST", url, request_id=request_id)

    async def iter_requests(
        self,
        api_version: str,
        *,
        search: str | None = None,
        sort: str | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """The account's requests (the list endpoint), page by page; every page call has the retry policy.

        ``api_version``: ``v1``, ``v2`` or ``statistical`` (whose list has no ``search``: it is not sent).
        """
        if api_version == "statistical":
            search = None
        params = {k: v for k, v in {"search": search, "sort": sort, "count": page_size}.items() if v}
        pages = api.Pages(api.request_url(self.settings.base_url, api_version), params)
        while not pages.done:
            body = await self.call("GET", pages.url, params=pages.params)
            for item in pages.advance(body):
                yield item

    async def get_statistical(self, request_id: str, *, status_only: bool = True) -> dict[str, Any]:
        """A Batch Statistical request (``status_only``: the small ``/status`` body), ``costPU`` always set."""
        from airflow_provider_sentinel_batch.statistical import normalised

        url = api.statistical_url(self.settings.base_url, request_id, "status" if status_only else None)
        return normalised(api.expect_object(await self.call("GET", url, request_id=request_id), "GET", url))

    async def stop_statistical(self, request_id: str) -> None:
        """STOP a Batch Statistical request (204 in every status; no restart for 30 minutes)."""
        url = api.statistical_url(self.settings.base_url, request_id, "stop")
        await self.call("POST", url, request_id=request_id)

    async def count_tiles(self, request_id: str) -> dict[str, int]:
        """v1: tiles per status (one paginated listing; used on status changes only, not every poll)."""
        pages = api.Pages(api.process_url(self.settings.base_url, "v1", request_id, "tiles"))
        tiles: list[dict[str, Any]] = []
        while not pages.done:
            body = await self.call("GET", pages.url, params=pages.params, request_id=request_id)
            tiles += pages.advance(body)
        return api.count_by_status(tiles)
