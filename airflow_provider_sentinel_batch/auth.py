"""OAuth2 client-credentials tokens: one cache per process, shared by every hook and every trigger.

Token requests are rate limited by Sentinel Hub, so a token is fetched once per credentials (token URL, client
id and client secret) and reused until shortly before it expires (60-120 s, less for short-lived tokens). The
secret is part of the cache identity only as a keyed hash (HMAC-SHA256 under a random per-process key): a
connection with the right client id but a wrong secret never gets another connection's token, and neither the
secret nor a digest that could be guessed offline sits in the cache or its logs. The sync side fetches with
requests-oauthlib's ``OAuth2Session``; the async side sends the same oauthlib-prepared body over httpx and
parses the answer with the same oauthlib client, so the two never disagree about what a token is.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import random
import re
import threading
import time
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_sentinel_batch.deployments import ConnectionSettings, is_loopback
from airflow_provider_sentinel_batch.exceptions import (
    SentinelBatchAuthError,
    SentinelBatchCredentialsError,
    SentinelBatchError,
    parse_retry_after,
)
from airflow_provider_sentinel_batch.retry import (
    RATE_LIMITED,
    SERVER_ERROR,
    RetryPolicy,
    TransientError,
    connection_error,
    final_error,
)

if TYPE_CHECKING:
    import httpx
    import requests

TokenKey = tuple[str, str, str]

_SECRET_PATTERN = re.compile(
    r"""(client_secret|access_token|refresh_token|id_token)(['"]?\s*[:=]\s*['"]?)([^&'",}\s]+)""",
    re.IGNORECASE,
)
# requests-oauthlib logs the token request body (with the client secret) and the token response at DEBUG.
_OAUTH_LOGGERS = (
    "requests_oauthlib.oauth2_session",
    "oauthlib.oauth2.rfc6749.parameters",
    "oauthlib.oauth2.rfc6749.clients.base",
    "oauthlib.oauth2.rfc6749.tokens",
)


class RedactOAuthSecrets(logging.Filter):
    """Rewrites OAuth library log records so client secrets and tokens never reach a log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask client secrets and tokens in a log record; never drops the record."""
        message = record.getMessage()
        redacted = _SECRET_PATTERN.sub(r"\1\2***", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _install_redaction() -> None:
    for name in _OAUTH_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactOAuthSecrets) for f in logger.filters):
            logger.addFilter(RedactOAuthSecrets())


_install_redaction()


@dataclass
class Token:
    """An access token, when it expires, and when to refresh it (60-120 s before)."""

    access_token: str = field(repr=False)
    expires_at: float
    refresh_at: float

    def fresh(self, now: float | None = None) -> bool:
        """Not yet due for a refresh."""
        return (time.time() if now is None else now) < self.refresh_at


#: Key of the secret fingerprints; random per process, never stored or logged, so fingerprints cannot be checked
#: against guessed secrets outside this process.
_FINGERPRINT_KEY = os.urandom(32)


def secret_fingerprint(secret: str) -> str:
    """A keyed hash of a client secret: equal secrets give equal fingerprints within this process only."""
    return hmac.new(_FINGERPRINT_KEY, secret.encode("utf-8"), hashlib.sha256).hexdigest()


def token_key(settings: ConnectionSettings) -> TokenKey:
    """The cache identity of a token: token URL, client id and the fingerprint of the client secret."""
    return (settings.token_url, settings.client_id, secret_fingerprint(settings.client_secret))


class TokenCache:
    """Process-wide token store with single-flight refresh (one fetch even when 10,000 triggers ask at once)."""

    def __init__(self, *, leeway: tuple[float, float] = (60.0, 120.0)) -> None:
        self.leeway = leeway
        self.fetches: Counter[TokenKey] = Counter()
        self._tokens: dict[TokenKey, Token] = {}
        self._lock = threading.Lock()
        self._sync_locks: dict[TokenKey, threading.Lock] = {}
        self._async_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[TokenKey, asyncio.Lock]]
        self._async_locks = weakref.WeakKeyDictionary()

    def clear(self) -> None:
        """Forget every cached token."""
        with self._lock:
            self._tokens.clear()
            self.fetches.clear()

    def peek(self, key: TokenKey) -> Token | None:
        """The cached token for ``key`` if it is still fresh, else ``None``."""
        token = self._tokens.get(key)
        return token if token is not None and token.fresh() else None

    def store(self, key: TokenKey, token: Mapping[str, Any]) -> Token:
        """Cache a newly issued token for ``key``."""
        now = time.time()
        lifetime = float(token.get("expires_in") or 0) or max(0.0, float(token.get("expires_at", now)) - now)
        lifetime = lifetime or 3600.0
        # refresh 60-120 s early (jittered, so many processes do not refresh together); short tokens at 3/4 life
        lead = min(random.uniform(*self.leeway), lifetime * 0.25)
        entry = Token(str(token["access_token"]), now + lifetime, now + lifetime - lead)
        with self._lock:
            self._tokens[key] = entry
            self.fetches[key] += 1
        return entry

    def invalidate(self, key: TokenKey, access_token: str | None = None) -> None:
        """Drop a token the server rejected, unless another caller already replaced it."""
        with self._lock:
            current = self._tokens.get(key)
            if current is not None and (access_token is None or current.access_token == access_token):
                del self._tokens[key]

    def get_sync(self, key: TokenKey, fetch: Callable[[], Mapping[str, Any]]) -> str:
        """A fresh token for ``key``, fetching one with ``fetch`` (once per process) when needed."""
        token = self.peek(key)
        if token is not None:
            return token.access_token
        with self._lock:
            key_lock = self._sync_locks.setdefault(key, threading.Lock())
        with key_lock:
            token = self.peek(key)
            if token is None:
                token = self.store(key, fetch())
            return token.access_token

    async def get_async(self, key: TokenKey, fetch: Callable[[], Awaitable[Mapping[str, Any]]]) -> str:
        """The async counterpart of :meth:`get_sync`: one fetch at a time per key."""
        token = self.peek(key)
        if token is not None:
            return token.access_token
        loop = asyncio.get_running_loop()
        locks = self._async_locks.setdefault(loop, {})
        key_lock = locks.setdefault(key, asyncio.Lock())
        async with key_lock:
            token = self.peek(key)
            if token is None:
                token = self.store(key, await fetch())
            return token.access_token


TOKEN_CACHE = TokenCache()


def _token_failure(status: int, body: str, token_url: str, client_id: str) -> SentinelBatchAuthError:
    """The token endpoint's own error and description, verbatim, plus what to check. Never the secret.

    Refused credentials (400/401/403) are final; anything else (5xx, 429) may pass on a later try.
    """
    import json

    detail = body.strip()[:300]
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            err = data.get("error")
            if isinstance(err, dict):  # Sentinel Hub style wrapper
                detail = f"{err.get('code') or ''} {err.get('message') or ''}".strip()
            elif err:
                detail = f"{err}: {data.get('error_description') or ''}".rstrip(": ")
    except ValueError:
        pass
    hint = ""
    if status in (400, 401):
        hint = (
            f" Check the client id ({client_id!r}) and secret of the connection, and that the token URL "
            "belongs to the same deployment as the base URL (Sentinel Hub vs CDSE)."
        )
    cls = SentinelBatchCredentialsError if status in (400, 401, 403) else SentinelBatchAuthError
    return cls(
        f"Token request to {token_url} failed: HTTP {status} {detail}.{hint}",
        status=status,
        token_url=token_url,
    )


def check_token_response(
    status: int, body: str, headers: Mapping[str, str], token_url: str, client_id: str
) -> None:
    """Token endpoint answers go through the same transient/permanent split as API answers."""
    if status < 400:
        return
    error = _token_failure(status, body, token_url, client_id)
    if status == 429:
        raise TransientError(RATE_LIMITED, error, parse_retry_after(headers.get("Retry-After")))
    if status >= 500:
        raise TransientError(SERVER_ERROR, error)
    raise error


@contextlib.contextmanager
def allow_loopback_http(url: str) -> Iterator[None]:
    """oauthlib insists on https; a loopback emulator speaks http. URLs were checked by ``check_transport``."""
    if url.startswith("http://") and is_loopback(url):
        os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")
    yield


def _oauth_client(settings: ConnectionSettings) -> Any:
    from oauthlib.oauth2 import BackendApplicationClient

    return BackendApplicationClient(client_id=settings.client_id)


def fetch_token_sync(
    settings: ConnectionSettings,
    *,
    policy: RetryPolicy,
    timeout: float = 30.0,
    session: requests.Session | None = None,
    sleep: Callable[[float], None] | None = None,
) -> Mapping[str, Any]:
    """Client-credentials grant with requests-oauthlib (id and secret in the form body)."""
    import requests
    from requests_oauthlib import OAuth2Session

    oauth = OAuth2Session(client=_oauth_client(settings))
    if session is not None:
        oauth.mount("http://", session.get_adapter("http://"))
        oauth.mount("https://", session.get_adapter("https://"))

    def raise_for_token_response(response: requests.Response) -> requests.Response:
        check_token_response(
            response.status_code, response.text, response.headers, settings.token_url, settings.client_id
        )
        return response

    oauth.register_compliance_hook("access_token_response", raise_for_token_response)
    try:
        with allow_loopback_http(settings.token_url):
            for attempt in policy.retrying(f"token {settings.token_url}", sleep):
                with attempt:
                    try:
                        return oauth.fetch_token(
                            token_url=settings.token_url,
                            client_secret=settings.client_secret,
                            include_client_id=True,
                            timeout=timeout,
                        )
                    except (requests.ConnectionError, requests.Timeout) as exc:
                        raise connection_error("POST", settings.token_url, exc) from None
    except TransientError as exc:
        raise final_error(exc) from None
    except SentinelBatchError:
        raise
    except Exception as exc:  # oauthlib parse errors: never echo the request body (it holds the secret)
        raise SentinelBatchAuthError(
            f"Token response from {settings.token_url} could not be used: {type(exc).__name__}: {exc}",
            token_url=settings.token_url,
        ) from None
    raise AssertionError("unreachable")  # pragma: no cover


async def fetch_token_async(
    settings: ConnectionSettings,
    client: httpx.AsyncClient,
    *,
    policy: RetryPolicy,
    timeout: float = 30.0,
    sleep: Callable[[float], Any] | None = None,
) -> Mapping[str, Any]:
    """The same grant as :func:`fetch_token_sync`, over an already-open httpx client."""
    import httpx

    oauth_client = _oauth_client(settings)
    body = oauth_client.prepare_request_body(include_client_id=True, client_secret=settings.client_secret)
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    try:
        async for attempt in policy.async_retrying(f"token {settings.token_url}", sleep):
            with attempt:
                try:
                    response = await client.post(
                        settings.token_url, content=body, headers=headers, timeout=timeout
                    )
                except httpx.TransportError as exc:
                    raise connection_error("POST", settings.token_url, exc) from None
                check_token_response(
                    response.status_code,
                    response.text,
                    response.headers,
                    settings.token_url,
                    settings.client_id,
                )
                try:
                    return dict(oauth_client.parse_request_body_response(response.text))
                except Exception as exc:
                    raise SentinelBatchAuthError(
                        f"Token response from {settings.token_url} could not be used: {type(exc).__name__}: {exc}",
                        token_url=settings.token_url,
                    ) from None
    except TransientError as exc:
        raise final_error(exc) from None
    raise AssertionError("unreachable")  # pragma: no cover
