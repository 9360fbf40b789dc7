"""``SentinelBatchHook``: the whole Sentinel Hub Batch API (v1 and v2) over one OAuth2 session."""

from __future__ import annotations

import copy
import functools
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseHook

from airflow_provider_sentinel_batch import api
from airflow_provider_sentinel_batch.deployments import (
    DEPLOYMENTS,
    ConnectionSettings,
    check_api_family,
    connection_extra,
    deployment_mismatch,
    settings_from_connection,
)
from airflow_provider_sentinel_batch.exceptions import (
    SentinelBatchConfigError,
    SentinelBatchError,
    parse_retry_after,
)
from airflow_provider_sentinel_batch.retry import (
    RECENT_REQUESTS,
    SURELY_REFUSED,
    RetryPolicy,
    TransientError,
    classify_response,
    connection_error,
    final_error,
)
from airflow_provider_sentinel_batch.statistical import normalised, validate_statistical_payload

if TYPE_CHECKING:
    import requests

    from airflow_provider_sentinel_batch.budget import RequestBudget

_GRID_CACHE: dict[tuple[str, str], tuple[float, list[dict[str, Any]]]] = {}
_GRID_CACHE_LOCK = threading.Lock()
GRID_CACHE_SECONDS = 3600.0
#: Seconds per HTTP call of ``test_connection`` (a person is waiting at the Test button).
TEST_CONNECTION_TIMEOUT = 10.0


class SentinelBatchHook(BaseHook):
    """Sentinel Hub Batch Processing API client (sync), for operators and for your own tasks.

    Tokens come from a process-wide cache shared with every other hook and trigger of the same client, and
    every call goes through one retry policy (429 ``Retry-After`` in ms, 5xx/connection backoff, 404 grace after
    create). Methods take ``api_version`` to override the connection's default (``v2`` unless set).

    :param sentinel_batch_conn_id: Airflow connection of type ``sentinel_batch``.
    :param api_version: ``"v1"`` or ``"v2"``; defaults to the connection's ``api_version`` extra.
    :param retry_policy: bounds for retries; the defaults suit production.
    :param timeout: seconds per HTTP request.
    """

    conn_name_attr = "sentinel_batch_conn_id"
    default_conn_name = "sentinel_batch_default"
    conn_type = "sentinel_batch"
    hook_name = "Sentinel Hub Batch"

    def __init__(
        self,
        *,
        sentinel_batch_conn_id: str = default_conn_name,
        api_version: str | None = None,
        retry_policy: RetryPolicy | None = None,
        timeout: float = 60.0,
        settings: ConnectionSettings | None = None,
    ) -> None:
        super().__init__()
        self.sentinel_batch_conn_id = sentinel_batch_conn_id
        self._api_version = check_api_family(api_version) if api_version else None
        self.retry_policy = retry_policy or RetryPolicy()
        self.timeout = timeout
        self._sleep: Callable[[float], None] | None = None  # tests inject a fake clock here
        if settings is not None:
            self.__dict__["settings"] = settings

    # ----------------------------------------------------------------------------------- connection & auth
    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The connection form's layout for Airflow < 3.2: the provider info's ``ui-field-behaviour`` (3.2+ reads
        it and ``conn-fields`` from the provider info itself)."""
        from airflow_provider_sentinel_batch.get_provider_info import UI_FIELD_BEHAVIOUR

        return {key.replace("-", "_"): copy.deepcopy(value) for key, value in UI_FIELD_BEHAVIOUR.items()}

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Airflow < 3.2 custom fields: deployment preset, URL overrides, default API version.

        Plain ``StringField`` only: Airflow 2.11 (and 3.0/3.1) drop the whole hook, i.e. the ``sentinel_batch``
        connection type, when a widget is any other wtforms class (``SelectField`` included).
        """
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import StringField

        presets = "; ".join(f"{name}: {dep.label}, {dep.base_url}" for name, dep in DEPLOYMENTS.items())
        return {
            "deployment": StringField(
                lazy_gettext("Deployment"),
                widget=BS3TextFieldWidget(),
                default="sentinel-hub-eu",
                description=f"Sets base URL and token URL together. {presets}; custom: the two URLs below.",
            ),
            "base_url": StringField(
                lazy_gettext("Base URL (override)"),
                widget=BS3TextFieldWidget(),
                description="Needed for 'custom'; otherwise leave empty to use the deployment's.",
            ),
            "auth_url": StringField(
                lazy_gettext("Token URL (override)"),
                widget=BS3TextFieldWidget(),
                description="OAuth2 token endpoint. Needed for 'custom'; otherwise leave empty.",
            ),
            "api_version": StringField(
                lazy_gettext("Default Batch API version"),
                widget=BS3TextFieldWidget(),
                description="Empty = v2 (current); 1 = v1.",
            ),
        }

    @cached_property
    def settings(self) -> ConnectionSettings:
        """The resolved connection settings (deployment, URLs, API version)."""
        conn = self.get_connection(self.sentinel_batch_conn_id)
        return settings_from_connection(conn, connection_extra(conn))

    @property
    def api_version(self) -> str:
        """The API version in use: the hook's argument, else the connection's."""
        return self._api_version or self.settings.api_version

    def _version(self, api_version: str | None) -> str:
        return check_api_family(api_version) if api_version else self.api_version

    @cached_property
    def session(self) -> requests.Session:
        """The ``requests`` session of this hook (unauthenticated; calls add the token)."""
        import requests

        session = requests.Session()
        session.headers["User-Agent"] = "airflow-provider-sentinel-batch"
        session.auth = _Bearer(self.get_token)
        # The environment's proxy and CA-bundle settings, read once for this hook's base URL: requests would
        # otherwise scan the whole environment twice on every call (the largest share of the hook's overhead).
        session.proxies.update(requests.utils.get_environ_proxies(self.settings.base_url))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            session.verify = bundle
        session.trust_env = False
        return session

    @cached_property
    def budget(self) -> RequestBudget | None:
        """The process-wide request budget of this connection's account (``None``: unlimited)."""
        from airflow_provider_sentinel_batch.budget import budget_for

        settings = self.settings
        return budget_for(settings.token_url, settings.client_id, settings.requests_per_minute)

    def get_conn(self) -> requests.Session:
        """A ``requests.Session`` that authenticates every call with the cached token (for raw API calls)."""
        return self.session

    def get_token(self) -> str:
        """A fresh access token from the process-wide cache."""
        from airflow_provider_sentinel_batch.auth import TOKEN_CACHE, fetch_token_sync, token_key

        settings = self.settings
        return TOKEN_CACHE.get_sync(
            token_key(settings),
            lambda: fetch_token_sync(
                settings, policy=self.retry_policy, timeout=self.timeout, sleep=self._sleep
            ),
        )

    # --------------------------------------------------------------------------------------- transport
    def _call(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        request_id: str | None = None,
        retry_on: frozenset[str] | None = None,
        token: str | None = None,
        policy: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One API call with the shared retry policy; returns the decoded JSON body (``None`` for 204).

        ``token`` sends that token instead of the cached one (and a 401 is then final, not a refresh);
        ``policy`` and ``timeout`` replace the hook's for this call.
        """
        import requests

        from airflow_provider_sentinel_batch.auth import TOKEN_CACHE, token_key

        fixed_token = token
        retry_policy = policy or self.retry_policy
        timeout = timeout or self.timeout

        def once() -> requests.Response:
            # ``refreshed``: no second chance left; a fixed token has none (a 401 is then the answer)
            for refreshed in (True,) if fixed_token else (False, True):
                token = fixed_token or self.get_token()
                budget = self.budget
                if budget is not None:
                    budget.acquire(
                        action=method != "GET", sleep=self._sleep
                    )  # polls paced, actions never wait
                try:
                    response = self.session.request(
                        method,
                        url,
                        params=params,
                        json=json,
                        timeout=timeout,
                        auth=_Bearer(functools.partial(str, token)),
                    )
                except (requests.ConnectionError, requests.Timeout) as exc:
                    raise connection_error(method, url, exc) from None
                if response.status_code == 401 and not refreshed:
                    # expired or revoked early: drop this token, fetch a new one, try once more
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
                    reason=response.reason,
                    request_id=request_id,
                    not_found_grace=retry_policy.not_found_grace,
                )
                return response
            raise AssertionError("unreachable")  # pragma: no cover

        try:
            for attempt in retry_policy.retrying(f"{method} {url}", self._sleep, retry_on):
                with attempt:
                    response = once()
        except TransientError as exc:
            error = final_error(exc)
            if request_id and hasattr(error, "request_id"):
                error.request_id = request_id
            raise error from None
        return api.decode_body(response.status_code, response.text, method, url)

    def _paginate(
        self, url: str, params: dict[str, Any], *, request_id: str | None = None, **call: Any
    ) -> Iterator[dict[str, Any]]:
        pages = api.Pages(url, params)
        while not pages.done:
            yield from pages.advance(
                self._call("GET", pages.url, params=pages.params, request_id=request_id, **call)
            )

    # ------------------------------------------------------------------------------- requests (v1 + v2)
    def create_request(
        self, payload: dict[str, Any], *, api_version: str | None = None, validate: bool = True
    ) -> dict[str, Any]:
        """POST a new batch request (201). Validates locally first, so a bad payload costs nothing."""
        version = self._version(api_version)
        if validate:
            self.validate_payload(payload, api_version=version)
        # Never resent after an ambiguous failure (5xx, connection lost, timeout): the service may have created
        # the job already, and a second POST would pay twice. Only a 429 surely refused it. Callers that can
        # find their job again (SentinelBatchCreateOperator searches its tag) handle the rest.
        body = self._call(
            "POST", api.process_url(self.settings.base_url, version), json=payload, retry_on=SURELY_REFUSED
        )
        if not isinstance(body, dict) or not body.get("id"):
            raise SentinelBatchError(f"Create answered without a request id: {body!r:.300}")
        RECENT_REQUESTS.note(body["id"])
        self.log.info("Created batch %s request %s", version, body["id"])
        return normalised(body) if version == "statistical" else body

    def iter_requests(
        self,
        *,
        search: str | None = None,
        sort: str | None = None,
        page_size: int | None = None,
        user_id: str | None = None,
        api_version: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every request of the account, page by page. ``search`` matches descriptions (``|`` OR, ``&`` AND)."""
        params = {
            k: v
            for k, v in {"search": search, "sort": sort, "count": page_size, "userid": user_id}.items()
            if v
        }
        return self._paginate(api.process_url(self.settings.base_url, self._version(api_version)), params)

    def list_requests(self, **kwargs: Any) -> list[dict[str, Any]]:
        """Every request matching the filters, all pages read."""
        return list(self.iter_requests(**kwargs))

    def get_request(self, request_id: str, *, api_version: str | None = None) -> dict[str, Any]:
        """The request object (``GET .../process/<id>``; Batch Statistical: ``costPU`` always set)."""
        version = self._version(api_version)
        url = api.process_url(self.settings.base_url, version, request_id)
        body = api.expect_object(self._call("GET", url, request_id=request_id), "GET", url)
        return normalised(body) if version == "statistical" else body

    def get_status(self, request_id: str, *, api_version: str | None = None) -> str:
        """The request's ``status``."""
        return str(self.get_request(request_id, api_version=api_version).get("status"))

    def get_user_action(self, request_id: str, *, api_version: str | None = None) -> str | None:
        """The request's ``userAction``."""
        return self.get_request(request_id, api_version=api_version).get("userAction")

    def update_request(
        self,
        request_id: str,
        *,
        description: str | None = None,
        output: dict[str, Any] | None = None,
        api_version: str | None = None,
    ) -> dict[str, Any]:
        """PUT: v1 may change ``description`` and ``output.collectionId``; v2 only ``description``."""
        version = self._version(api_version)
        body: dict[str, Any] = {}
        if description is not None:
            body["description"] = description
        if output is not None:
            if version == "v2":
                raise SentinelBatchConfigError("Batch v2 can only update 'description', not 'output'.")
            body["output"] = output
        if not body:
            raise SentinelBatchConfigError("update_request needs 'description' or 'output'.")
        url = api.process_url(self.settings.base_url, version, request_id)
        return self._call("PUT", url, json=body, request_id=request_id)

    def delete_request(self, request_id: str) -> None:
        """v1 only: delete a request that is not processing (409 otherwise)."""
        url = api.process_url(self.settings.base_url, "v1", request_id)
        self._call("DELETE", url, request_id=request_id)
        self.log.info("Deleted batch v1 request %s", request_id)

    def _action(self, request_id: str, action: str, api_version: str | None) -> None:
        url = api.process_url(self.settings.base_url, self._version(api_version), request_id, action)
        self._call("POST", url, request_id=request_id)
        self.log.info("Batch request %s: %s accepted", request_id, action)

    def analyse(self, request_id: str, *, api_version: str | None = None) -> None:
        """Ask for analysis (tile list and, on v1, ``valueEstimate``); free of processing cost."""
        self._action(request_id, "analyse", api_version)

    def start(self, request_id: str, *, api_version: str | None = None) -> None:
        """Start processing (this is what costs PU); analysis runs first if it has not."""
        self._action(request_id, "start", api_version)

    def cancel(self, request_id: str) -> None:
        """v1 CANCEL (unspent reserved PU are returned)."""
        self._action(request_id, "cancel", "v1")

    def stop(self, request_id: str) -> None:
        """v2 STOP (no restart for 30 minutes afterwards)."""
        self._action(request_id, "stop", "v2")

    def stop_or_cancel(self, request_id: str, *, api_version: str | None = None) -> None:
        """Version-neutral: v1 cancel, v2 stop."""
        version = self._version(api_version)
        self._action(request_id, "cancel" if version == "v1" else "stop", version)

    def restart_partial(self, request_id: str) -> None:
        """v1: re-run the FAILED tiles of a PARTIAL request (400 in any other status)."""
        self._action(request_id, "restartpartial", "v1")

    # ---------------------------------------------------------------------------------------- v1 tiles
    def iter_tiles(
        self, request_id: str, *, status: str | None = None, page_size: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """v1 tiles of an analysed request, optionally filtered by tile status (e.g. ``FAILED``)."""
        params = {k: v for k, v in {"status": status, "count": page_size}.items() if v}
        url = api.process_url(self.settings.base_url, "v1", request_id, "tiles")
        return self._paginate(url, params, request_id=request_id)

    def list_tiles(self, request_id: str, **kwargs: Any) -> list[dict[str, Any]]:
        """v1: every tile of the request (optionally of one status), all pages read."""
        return list(self.iter_tiles(request_id, **kwargs))

    def count_tiles(self, request_id: str) -> dict[str, int]:
        """v1: tiles per status (one paginated listing)."""
        return api.count_by_status(self.iter_tiles(request_id))

    def get_tile(self, request_id: str, tile_id: int) -> dict[str, Any]:
        """v1: one tile of the request."""
        url = api.process_url(self.settings.base_url, "v1", request_id, f"tiles/{int(tile_id)}")
        return self._call("GET", url, request_id=request_id)

    # ---------------------------------------------------------------------------------- Batch Statistical
    def create_statistical_request(self, payload: dict[str, Any], *, validate: bool = True) -> dict[str, Any]:
        """POST a new Batch Statistical request (201), after the local checks (a bad payload costs nothing).

        Like :meth:`create_request`, never resent after an ambiguous failure (the service may have created it).
        """
        if validate:
            self.validate_statistical_payload(payload)
        url = api.statistical_url(self.settings.base_url)
        body = self._call("POST", url, json=payload, retry_on=SURELY_REFUSED)
        if not isinstance(body, dict) or not body.get("id"):
            raise SentinelBatchError(f"Create answered without a request id: {body!r:.300}")
        RECENT_REQUESTS.note(body["id"])
        self.log.info("Created Batch Statistical request %s", body["id"])
        return normalised(body)

    def iter_statistical_requests(
        self, *, sort: str | None = None, page_size: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every Batch Statistical request of the account, page by page (``sort``: ``created``, ``status``,
        with ``:desc``)."""
        params = {k: v for k, v in {"sort": sort, "count": page_size}.items() if v}
        return (normalised(r) for r in self._paginate(api.statistical_url(self.settings.base_url), params))

    def list_statistical_requests(self, **kwargs: Any) -> list[dict[str, Any]]:
        """Every Batch Statistical request matching the filters, all pages read."""
        return list(self.iter_statistical_requests(**kwargs))

    def get_statistical_request(self, request_id: str) -> dict[str, Any]:
        """The whole request (``request``, ``userAction``, status, progress, cost as ``costPU``)."""
        url = api.statistical_url(self.settings.base_url, request_id)
        return normalised(api.expect_object(self._call("GET", url, request_id=request_id), "GET", url))

    def get_statistical_status(self, request_id: str) -> dict[str, Any]:
        """The small ``/status`` body: ``status``, ``completionPercentage``, ``costPU``, ``error``,
        ``stoppedStatusReason``, ``lastUpdated``."""
        url = api.statistical_url(self.settings.base_url, request_id, "status")
        return normalised(api.expect_object(self._call("GET", url, request_id=request_id), "GET", url))

    def _statistical_action(self, request_id: str, action: str) -> None:
        self._call(
            "POST", api.statistical_url(self.settings.base_url, request_id, action), request_id=request_id
        )
        self.log.info("Batch Statistical request %s: %s accepted", request_id, action)

    def analyse_statistical(self, request_id: str) -> None:
        """ANALYSE (free): reads the GeoPackage and checks the evalscript."""
        self._statistical_action(request_id, "analyse")

    def start_statistical(self, request_id: str) -> None:
        """START processing (this is what costs PU); analysis runs first if it has not."""
        self._statistical_action(request_id, "start")

    def stop_statistical(self, request_id: str) -> None:
        """STOP (no restart for 30 minutes afterwards; a finished request is left as it is)."""
        self._statistical_action(request_id, "stop")

    def cancel_statistical(self, request_id: str) -> None:
        """The deprecated name of STOP (``/cancel``), for deployments that still only know it."""
        warnings.warn(
            "cancel_statistical calls the deprecated /cancel endpoint; use stop_statistical",
            DeprecationWarning,
            stacklevel=2,
        )
        self._statistical_action(request_id, "cancel")

    def validate_statistical_payload(self, payload: Any) -> None:
        """Local checks of a Batch Statistical payload (shape, intervals, evalscript, sampling, output)."""
        validate_statistical_payload(payload)

    # ------------------------------------------------------------------------------------ tiling grids
    def list_tiling_grids(
        self, *, api_version: str | None = None, use_cache: bool = True
    ) -> list[dict[str, Any]]:
        """Tiling grids of the deployment (free); cached per process for an hour."""
        version = self._version(api_version)
        key = (self.settings.base_url, version)
        with _GRID_CACHE_LOCK:
            cached = _GRID_CACHE.get(key)
        if use_cache and cached and time.monotonic() - cached[0] < GRID_CACHE_SECONDS:
            return cached[1]
        grids = list(self._paginate(api.grids_url(self.settings.base_url, version), {}))
        with _GRID_CACHE_LOCK:
            _GRID_CACHE[key] = (time.monotonic(), grids)
        return grids

    def get_tiling_grid(self, grid_id: int, *, api_version: str | None = None) -> dict[str, Any]:
        """One tiling grid (id, name, resolutions)."""
        return self._call("GET", api.grids_url(self.settings.base_url, self._version(api_version), grid_id))

    # ------------------------------------------------------------------------------------ helpers
    def validate_payload(
        self, payload: Any, *, api_version: str | None = None, check_grids: bool = True
    ) -> None:
        """Local checks before a paid call; grid id and resolution against the deployment's (cached) grids."""
        from airflow_provider_sentinel_batch.validation import validate_payload

        version = self._version(api_version)
        if version == "statistical":
            validate_statistical_payload(payload)  # no tiling grid: polygons come from a GeoPackage
            return
        validate_payload(payload, version)  # shape first: no network for an obviously broken payload
        if check_grids:
            validate_payload(payload, version, grids=self.list_tiling_grids(api_version=version))

    def dashboard_url(self, request_id: str) -> str | None:
        """The request's dashboard page (the emulator's own page for a loopback base URL)."""
        base = self.settings.dashboard_url
        return f"{base}/{request_id}" if base else None

    def output_page(self, location: str | None) -> str | None:
        """A web page for an output location: the AWS S3 console (Sentinel Hub), the emulator's file list."""
        return self.settings.output_page(location)

    def test_connection(self) -> tuple[bool, str]:
        """Fetch a fresh token and list tiling grids with it: free of PU, and proves both URLs and the credentials.

        The token is neither taken from nor put into the process-wide cache, so the answer is about exactly
        these credentials, whatever this process fetched before. A person waits for the answer: one try per
        call, at most ``TEST_CONNECTION_TIMEOUT`` seconds each, and errors in plain words.
        """
        from airflow_provider_sentinel_batch.auth import fetch_token_sync

        policy = RetryPolicy(max_attempts=1, max_rate_limited=1, max_call_seconds=TEST_CONNECTION_TIMEOUT)
        timeout = min(self.timeout, TEST_CONNECTION_TIMEOUT)
        try:
            settings = self.__dict__.get("settings")
            if settings is None:
                # the UI tests an unsaved form under a random connection id: do not name it in errors
                conn = self.get_connection(self.sentinel_batch_conn_id)
                settings = settings_from_connection(conn, connection_extra(conn), where="this connection")
            api_version = self._api_version or settings.api_version
            fresh = fetch_token_sync(settings, policy=policy, timeout=timeout, sleep=self._sleep)
            grids_url = api.grids_url(settings.base_url, api_version)
            token = str(fresh["access_token"])
            grids = list(self._paginate(grids_url, {}, token=token, policy=policy, timeout=timeout))
        except Exception as exc:
            return False, str(exc)
        message = (
            f"Connected to {settings.describe()}, Batch {api_version}: token issued, "
            f"{len(grids)} tiling grids visible."
        )
        warning = deployment_mismatch(settings.base_url, settings.token_url)
        if warning:
            message += f" Warning: {warning}"
        return True, message


class _Bearer:
    """``requests`` auth that adds a bearer token: the hook's cached one (``get_conn`` sessions) or a fixed one."""

    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def __call__(self, request: Any) -> Any:
        request.headers["Authorization"] = f"Bearer {self._token()}"
        return request

    def __repr__(self) -> str:
        return "_Bearer(<token>)"
