"""The retry policy, written once and used by both transports (sync hook and async trigger client).

Transports turn each response into either a result, a permanent error, or a :class:`TransientError`
(via :func:`classify_response`); tenacity then decides how long to wait and when to give up, with the same
rules on both sides:

* 429: wait ``Retry-After`` (milliseconds on Sentinel Hub) or ``default_retry_after`` when absent;
* 5xx and connection errors: exponential backoff with jitter;
* 404 on a request created moments ago: retried until ``not_found_grace`` has passed since creation, because
  the service's read side lags its write side.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Unpack

import tenacity

from airflow_provider_sentinel_batch.exceptions import (
    ResponseParts,
    SentinelBatchAPIError,
    SentinelBatchError,
    api_error_from_response,
)

log = logging.getLogger(__name__)

RATE_LIMITED = "rate_limited"
SERVER_ERROR = "server_error"
CONNECTION = "connection"
NOT_FOUND = "not_found"
#: Failures after which a non-idempotent call (create) is known not to have happened: safe to resend.
SURELY_REFUSED = frozenset({RATE_LIMITED})


class TransientError(Exception):
    """A failure worth retrying; ``error`` is what the caller sees if retries run out."""

    def __init__(self, kind: str, error: SentinelBatchError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.kind = kind
        self.error = error
        self.retry_after = retry_after


def plain_network_reason(exc: BaseException) -> str:
    """What went wrong on the network, in a few plain words instead of the HTTP library's nested reprs."""
    text = str(exc)
    name = type(exc).__name__
    lowered = text.lower()
    if "timeout" in name.lower() or "timed out" in lowered or isinstance(exc, TimeoutError):
        return "no answer in time (timed out)"
    if (
        "name or service not known" in lowered
        or "nameresolution" in lowered
        or "failed to resolve" in lowered
    ):
        return "the host name does not resolve (check the URL)"
    if "nodename nor servname" in lowered or "temporary failure in name resolution" in lowered:
        return "the host name does not resolve (check the URL)"
    if "connection refused" in lowered or "all connection attempts failed" in lowered:
        return "connection refused (nothing answers at that host and port)"
    if "ssl" in lowered or "certificate" in lowered:
        return "the TLS handshake failed (certificate or protocol problem)"
    if "reset by peer" in lowered or "remotedisconnected" in lowered or "connection aborted" in lowered:
        return "the connection was dropped by the other side"
    first_line = text.splitlines()[0] if text else ""
    return f"{name}: {first_line[:200]}" if first_line else name


def connection_error(method: str, url: str, exc: BaseException) -> TransientError:
    """A network failure as a retryable error that names the call."""
    error = SentinelBatchError(
        f"Could not reach Sentinel Hub at {method} {url}: {plain_network_reason(exc)}."
    )
    return TransientError(CONNECTION, error)


class RecentRequests:
    """Creation times of requests this process (or a serialized trigger) knows to be new: 404 grace window."""

    def __init__(self) -> None:
        self._created: dict[str, float] = {}
        self._lock = threading.Lock()

    def note(self, request_id: str, created_at: float | None = None) -> None:
        """Remember that ``request_id`` was created at ``created_at`` (now by default)."""
        with self._lock:
            if len(self._created) > 10_000:
                cutoff = time.time() - 3600
                self._created = {k: v for k, v in self._created.items() if v > cutoff}
            self._created[request_id] = time.time() if created_at is None else created_at

    def confirm(self, request_id: str) -> None:
        """The request answered: from now on a 404 is real (deleted or expired), not replication lag."""
        if request_id in self._created:
            with self._lock:
                self._created.pop(request_id, None)

    def within(self, request_id: str | None, grace: float) -> bool:
        """The request was created less than ``grace`` seconds ago and not seen since."""
        if request_id is None:
            return False
        created = self._created.get(request_id)
        return created is not None and time.time() - created < grace


RECENT_REQUESTS = RecentRequests()


def classify_response(
    *, request_id: str | None = None, not_found_grace: float = 0.0, **answer: Unpack[ResponseParts]
) -> None:
    """Return for 2xx/3xx; raise :class:`TransientError` for what is worth retrying, else the API error.

    A 404 for ``request_id`` is retryable only while the request is new to us (created less than
    ``not_found_grace`` seconds ago and never seen since); once it has been read, a 404 means it is gone.
    """
    status = answer["status"]
    if status < 400:
        if request_id is not None:
            RECENT_REQUESTS.confirm(request_id)
        return
    not_found_retryable = status == 404 and RECENT_REQUESTS.within(request_id, not_found_grace)
    error = api_error_from_response(**answer)
    if status == 429:
        raise TransientError(RATE_LIMITED, error, error.retry_after)
    if status >= 500:
        raise TransientError(SERVER_ERROR, error)
    if status == 404 and not_found_retryable:
        raise TransientError(NOT_FOUND, error)
    raise error


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds for one API call. All durations in seconds. Primitive fields, so it serializes into triggers."""

    max_attempts: int = 6
    """Tries of a call that meets server errors (5xx) or a broken connection."""
    max_rate_limited: int = 30
    """429 answers one call waits out before it gives up."""
    backoff_initial: float = 1.0
    """First wait after a server error; doubles per failure up to ``backoff_max``."""
    backoff_max: float = 60.0
    jitter: float = 0.5
    """Share of each backoff drawn at random (0.5: between half and the whole), so clients spread out."""
    default_retry_after: float = 10.0
    """Wait after a 429 without ``Retry-After`` (the service sends it in milliseconds)."""
    max_retry_after: float = 300.0
    not_found_grace: float = 180.0
    """How long a request that was just created may answer 404 (the service is eventually consistent)."""
    max_call_seconds: float = 1800.0
    """Wall-clock bound of one call, retries included."""

    def to_dict(self) -> dict[str, Any]:
        """The policy as primitives (for trigger kwargs)."""
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RetryPolicy:
        """The policy from :meth:`to_dict` output (defaults for ``None``)."""
        return cls(**dict(data)) if data else cls()

    def limit(self, kind: str) -> int:
        """How many failures of this kind a call tolerates."""
        if kind == RATE_LIMITED:
            return self.max_rate_limited
        if kind == NOT_FOUND:
            return 10_000  # bounded by the grace window instead, see classify_response callers
        return self.max_attempts

    def delay(self, kind: str, count: int, retry_after: float | None) -> float:
        """Seconds to wait before the next try, ``count`` being how many failures of this kind so far."""
        if kind == RATE_LIMITED:
            base = self.default_retry_after if retry_after is None else retry_after
            base = min(base, self.max_retry_after)
            # a little spread so that many clients told "1 s" do not all come back at the same instant
            return base + random.uniform(0, min(1.0, 0.1 * base))
        backoff = min(self.backoff_max, self.backoff_initial * 2 ** max(0, count - 1))
        return backoff * random.uniform(1.0 - self.jitter, 1.0)

    def _tenacity_kwargs(self, what: str, retry_on: frozenset[str] | None = None) -> dict[str, Any]:
        counts: Counter[str] = Counter()
        counted: set[int] = set()
        started = time.monotonic()

        def failure(state: tenacity.RetryCallState) -> TransientError | None:
            """The attempt's transient error, counted once per attempt (tenacity may ask wait before stop)."""
            exc = state.outcome.exception() if state.outcome else None
            if not isinstance(exc, TransientError):
                return None
            if state.attempt_number not in counted:
                counted.add(state.attempt_number)
                counts[exc.kind] += 1
            return exc

        def stop(state: tenacity.RetryCallState) -> bool:
            exc = failure(state)
            if exc is None or time.monotonic() - started > self.max_call_seconds:
                return True
            return counts[exc.kind] >= self.limit(exc.kind)

        def wait(state: tenacity.RetryCallState) -> float:
            exc = failure(state)
            return 0.0 if exc is None else self.delay(exc.kind, counts[exc.kind], exc.retry_after)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            pause = state.next_action.sleep if state.next_action else 0.0
            log.warning("%s; retrying in %.1f s (try %d of %s)", exc, pause, state.attempt_number + 1, what)

        return {
            "retry": tenacity.retry_if_exception(
                lambda exc: isinstance(exc, TransientError) and (retry_on is None or exc.kind in retry_on)
            ),
            "stop": stop,
            "wait": wait,
            "before_sleep": before_sleep,
            "reraise": True,
        }

    def retrying(
        self, what: str, sleep: Callable[[float], None] | None = None, retry_on: frozenset[str] | None = None
    ) -> tenacity.Retrying:
        """``retry_on`` limits which kinds are retried (a create may only be resent when it was surely refused)."""
        kwargs = self._tenacity_kwargs(what, retry_on)
        if sleep is not None:
            kwargs["sleep"] = sleep
        return tenacity.Retrying(**kwargs)

    def async_retrying(
        self, what: str, sleep: Callable[[float], Any] | None = None
    ) -> tenacity.AsyncRetrying:
        """The async tenacity loop of this policy, for the trigger's client."""
        kwargs = self._tenacity_kwargs(what)
        if sleep is not None:
            kwargs["sleep"] = sleep
        return tenacity.AsyncRetrying(**kwargs)


def retries_ran_out(exc: BaseException) -> bool:
    """True for an error that only means "not now" (rate limits, 5xx, network): the call's retries ran out."""
    return isinstance(exc, SentinelBatchError) and exc.retries_exhausted


def final_error(exc: TransientError) -> SentinelBatchError:
    """What the caller sees once retries are exhausted: the last underlying error, annotated."""
    error = exc.error
    error.retries_exhausted = True  # transient: a later poll may succeed
    if isinstance(error, SentinelBatchAPIError) and exc.kind == RATE_LIMITED:
        error.args = (error.render() + "\n  (still rate limited after retrying; lower the polling rate?)",)
    return error
