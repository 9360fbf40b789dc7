"""Provider exceptions and the one place where service error bodies become Python errors.

The sync hook and the async trigger client both map responses through :func:`api_error_from_response`, so a
user sees the same message (the service's own text, verbatim) whichever side hit the error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NotRequired, TypedDict, Unpack

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException


class SentinelBatchError(AirflowException):
    """Base class of every error raised by this provider."""

    #: Set when a call gave up after retrying failures that only mean "not now" (429, 5xx, network).
    retries_exhausted: bool = False


class SentinelBatchConfigError(SentinelBatchError, AirflowFailException, ValueError):
    """The connection or an argument is wrong; fix the configuration, retrying will not help.

    A final outcome: the task fails without Airflow's retries.
    """


class SentinelBatchValidationError(SentinelBatchError, ValueError):
    """A payload was rejected locally, before any call that could cost processing units."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or []
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class SentinelBatchAuthError(SentinelBatchError):
    """The token endpoint did not issue a token (never carries the secret).

    Raised as is when the endpoint was unreachable or kept failing (a later try may work); refused credentials
    raise the :class:`SentinelBatchCredentialsError` subclass.
    """

    def __init__(self, message: str, *, status: int | None = None, token_url: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.token_url = token_url


class SentinelBatchCredentialsError(SentinelBatchAuthError, AirflowFailException):
    """The token endpoint refused the credentials (wrong client id or secret, wrong deployment, disabled client).

    A final outcome: the task fails without Airflow's retries (the same credentials will be refused again).
    """


class SentinelBatchAPIError(SentinelBatchError):
    """A Batch API call failed. Carries the HTTP status, the service code and its message verbatim."""

    def __init__(
        self,
        *,
        status: int,
        method: str,
        url: str,
        message: str,
        code: str | None = None,
        reason: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.method = method
        self.url = url
        self.message = message
        self.code = code
        self.reason = reason
        self.errors = errors or []
        self.request_id = request_id
        self.retry_after = retry_after
        super().__init__(self.render())

    def render(self) -> str:
        """The message users see: call, HTTP status, code, the service's text and its per-parameter errors."""
        head = f"Sentinel Hub Batch API {self.method} {self.url} failed: HTTP {self.status}"
        if self.code:
            head += f" {self.code}"
        lines = [f"{head}: {self.message}"]
        for err in self.errors:
            param = err.get("parameter")
            violation = err.get("violation")
            if param or violation:
                lines.append(f"  - {param or '?'}: {violation or ''}".rstrip())
            else:
                lines.append(f"  - {json.dumps(err, sort_keys=True)}")
        return "\n".join(lines)


class SentinelBatchPermissionError(SentinelBatchAPIError, AirflowFailException):
    """401 with a freshly issued token, or 403: the token is not valid for this API or lacks the permission.

    A final outcome: the task fails without Airflow's retries.
    """

    def render(self) -> str:
        """The API error text plus what a 401/403 on a fresh token usually means."""
        hint = (
            "The API refused a freshly issued token: the token URL and the base URL belong to different "
            "deployments (Sentinel Hub vs CDSE)?"
            if self.status == 401
            else "The OAuth client (or its account) is not allowed to do this: check its roles and the account."
        )
        return super().render() + "\n  " + hint


class SentinelBatchNotFoundError(SentinelBatchAPIError):
    """404 after the grace period: the request was deleted, expired, or lives on another deployment."""

    def render(self) -> str:
        """The API error text plus what a 404 after the grace period usually means."""
        return (
            super().render() + "\n  The request does not exist here: deleted, cleaned up by the service, "
            "or created on another deployment/API version?"
        )


class SentinelBatchJobError(SentinelBatchError, AirflowFailException):
    """A batch job ended in a state the task does not accept (FAILED, CANCELED, STOPPED, PARTIAL, ...).

    A final outcome: the task fails without retrying (a retry of the wait cannot change it).
    """

    def __init__(self, message: str, *, request_id: str | None = None, status: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.status = status


class SentinelBatchRefusedError(SentinelBatchError, AirflowFailException):
    """A trigger's wait ended on an error a retry cannot fix (credentials, permission, configuration).

    A final outcome: the task fails without Airflow's retries; the message is the original error's.
    """


class SentinelBatchCostExceededError(SentinelBatchJobError):
    """The cost guard refused to start, or stopped, a job whose cost passed ``max_cost_pu``."""


def parse_retry_after(value: str | None) -> float | None:
    """Sentinel Hub's ``Retry-After`` is in **milliseconds** (docs and every client agree)."""
    if value is None or str(value).strip() == "":
        return None
    try:
        millis = float(value)
    except ValueError:
        return None
    return max(0.0, millis / 1000.0)


class ResponseParts(TypedDict):
    """What the error mapping needs of an HTTP answer, whichever transport received it."""

    status: int
    method: str
    url: str
    body: bytes | str | None
    headers: Mapping[str, str]
    reason: NotRequired[str | None]


def api_error_from_response(**answer: Unpack[ResponseParts]) -> SentinelBatchAPIError:
    """Build the error from any body the service sends: the documented wrapper, a bare 429 body, or text."""
    status, body, reason = answer["status"], answer["body"], answer.get("reason")
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    payload: Any = None
    if text.strip():
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
    info: Mapping[str, Any] = {}
    if isinstance(payload, Mapping):
        inner = payload.get("error")
        info = inner if isinstance(inner, Mapping) else payload
    message = info.get("message") or info.get("error_description")
    if not message:
        message = text.strip()[:500] if text.strip() and payload is None else (reason or "no error message")
    errors = info.get("errors")
    if isinstance(errors, Mapping):
        errors = [dict(errors)]
    elif not isinstance(errors, list):
        errors = []
    cls: type[SentinelBatchAPIError] = SentinelBatchAPIError
    if status == 404:
        cls = SentinelBatchNotFoundError
    elif status in (401, 403):
        cls = SentinelBatchPermissionError
    return cls(
        status=status,
        method=answer["method"],
        url=answer["url"],
        message=str(message),
        code=info.get("code") if isinstance(info.get("code"), str) else None,
        reason=info.get("reason") or reason,
        errors=[dict(e) for e in errors if isinstance(e, Mapping)],
        retry_after=parse_retry_after(_header(answer["headers"], "Retry-After")),
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None
