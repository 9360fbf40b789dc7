"""HTTP layer: the FastAPI app with the v1/v2 Batch routes, the token endpoints, ``/_emulator`` and the
read-only ``/dashboard`` pages.

A gateway in ``__call__`` (before FastAPI's own middleware) counts calls per route template, injects faults
and checks bearer tokens. It sits there because dropping a connection needs uvicorn's transport, which is
only reachable from the outermost ``send``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Awaitable, Callable
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qs, unquote_plus

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Message, Receive, Scope, Send

from . import statistical
from .auth import INVALID_CLIENT, TOKEN_PATHS
from .config import EmulatorConfig
from .errors import ApiError, bad_payload, error_body, unauthorized
from .grids import GRIDS
from .pages import add_page_routes
from .state import EmulatorState

MAX_PAGE = 100
_CODES = {404: "COMMON_NOT_FOUND", 405: "COMMON_METHOD_NOT_ALLOWED", 415: "COMMON_UNSUPPORTED_MEDIA_TYPE"}
_REALMS = {
    "/oauth/token": "",
    "/auth/realms/main/protocol/openid-connect/token": "/auth/realms/main",
    "/auth/realms/CDSE/protocol/openid-connect/token": "/auth/realms/CDSE",
}


class EmulatorApp(FastAPI):
    """FastAPI plus the gateway; ``emu_state`` is the shared ``EmulatorState``."""

    emu_state: EmulatorState

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        path: str = scope["path"]
        is_token = path in _REALMS
        if not is_token and not path.startswith("/api/"):
            await super().__call__(scope, receive, send)  # control plane and unknown paths: no faults
            return
        st = self.emu_state
        with st.lock:
            st.calls[self._route_key(scope)] += 1
            if is_token:
                st.token_requests += 1
        decision = st.faults.decide(is_token)
        if decision.drop:
            _drop_connection(send)
            return
        if decision.delay_s:
            await asyncio.sleep(decision.delay_s)

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                with st.lock:
                    st.responses[str(message["status"])] += 1
            await send(message)

        if decision.status is not None:
            await _fault_response(decision.status, decision.retry_after_ms)(scope, receive, counting_send)
            return
        if not is_token:
            headers = dict(scope["headers"])
            problem = st.tokens.check(
                headers.get(b"authorization", b"").decode("latin-1") or None, st.config.realm
            )
            if problem is not None:
                err = unauthorized(problem)
                await JSONResponse(err.body(), err.status, headers=err.headers)(scope, receive, counting_send)
                return
            # tokens are only issued to the configured client: its account's policies apply
            retry_after_ms = st.rate_limiter.admit(st.config.client_id, time.monotonic())
            if retry_after_ms is not None:
                await _fault_response(429, retry_after_ms)(scope, receive, counting_send)
                return
        await super().__call__(scope, receive, counting_send)

    def _route_key(self, scope: Scope) -> str:
        """``"GET /api/v1/batch/process/{id}"``; cached per concrete path since clients poll the same URLs."""
        method, path = scope["method"], scope["path"]
        cache: dict[tuple[str, str], str] = self.__dict__.setdefault("_route_keys", {})
        key = cache.get((method, path))
        if key is None:
            key = f"{method} <unmatched>"
            for route in self.router.routes:
                match, _ = route.matches(scope)
                if match is not Match.NONE:
                    key = f"{method} {getattr(route, 'path', path)}"
                    break
            if len(cache) > 10_000:
                cache.clear()
            cache[(method, path)] = key
        return key


def _drop_connection(send: Send) -> None:
    """Close the TCP connection without a response: the client sees "connection closed"/reset.

    uvicorn's ``send`` is a bound method of its per-request cycle, which holds the transport.
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise RuntimeError("dropping connections needs uvicorn's HTTP protocol")
    transport.close()
    if cycle is not None and hasattr(cycle, "disconnected"):
        cycle.disconnected = True  # so uvicorn does not try to send its own 500


def _fault_response(status: int, retry_after_ms: int | None) -> Response:
    if status == 429:
        headers = {"Retry-After": str(retry_after_ms)} if retry_after_ms is not None else {}
        return JSONResponse(
            error_body(429, "You have exceeded your rate limit", "RATE_LIMIT_EXCEEDED"), 429, headers=headers
        )
    return JSONResponse(
        error_body(status, "The service is temporarily unavailable (emulated fault).", "COMMON_EXCEPTION"),
        status,
    )


# ---------------------------------------------------------------------------------------------------- helpers
async def read_payload(request: Request) -> Any:
    """JSON body, or the v1 multipart form (``request`` JSON + ``evalscript`` parts)."""
    raw = await request.body()
    if not raw.strip():
        raise bad_payload("Request body should be non-empty.")
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        return _multipart_payload(ctype, raw)
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise bad_payload(f"Request body should be valid JSON ({exc}).")


def _multipart_payload(ctype: str, raw: bytes) -> Any:
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + raw)
    parts: dict[str, bytes] = {}
    for part in msg.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        if name:
            content = part.get_payload(decode=True)
            parts[str(name)] = content if isinstance(content, bytes) else b""
    if "request" not in parts:
        raise bad_payload(
            "Multipart requests need a 'request' part.",
            [{"parameter": "request", "violation": "is required"}],
        )
    try:
        payload = json.loads(parts["request"])
    except ValueError as exc:
        raise bad_payload(f"The 'request' part should be valid JSON ({exc}).")
    if (
        "evalscript" in parts
        and isinstance(payload, dict)
        and isinstance(payload.get("processRequest"), dict)
    ):
        payload["processRequest"]["evalscript"] = parts["evalscript"].decode("utf-8")
    return payload


def paginate(request: Request, items: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"data", "links"}``: ``links.nextToken`` (SDK) and ``links.next`` (URL); ``{}`` on the last page."""
    q = request.query_params
    try:
        count = int(q.get("count", MAX_PAGE))
        if count < 1:
            raise ValueError
    except ValueError:
        raise bad_payload(
            "Invalid count.", [{"parameter": "count", "violation": "must be a positive integer"}]
        )
    count = min(count, MAX_PAGE)
    token = q.get("viewtoken") or q.get("viewToken") or "0"
    if not token.isdigit():
        raise bad_payload(
            "Invalid viewtoken.", [{"parameter": "viewtoken", "violation": "unknown view token"}]
        )
    offset = int(token)
    links: dict[str, Any] = {}

    def page_url(view_token: str) -> str:
        return str(
            request.url.remove_query_params("viewToken").include_query_params(
                viewtoken=view_token, count=count
            )
        )

    if offset > 0 or offset + count < len(items):
        links["currentToken"] = token
    if offset + count < len(items):
        nxt = str(offset + count)
        links.update({"nextToken": nxt, "next": page_url(nxt)})
    if offset > 0:
        prev = str(max(0, offset - count))
        links.update({"previousToken": prev, "previous": page_url(prev)})
    return {"data": items[offset : offset + count], "links": links}


async def _create_delay(st: EmulatorState) -> None:
    """The ``create_delay_ms`` fault: the create call waits before the job exists (other calls go on)."""
    delay = st.faults.faults.create_delay_ms
    if delay:
        st.faults.count("create_delay")
        await asyncio.sleep(delay / 1000.0)


async def _answer_delay(st: EmulatorState) -> None:
    """The ``create_answer_delay_ms`` fault: the job exists, its create call has not answered yet."""
    delay = st.faults.faults.create_answer_delay_ms
    if delay:
        st.faults.count("create_answer_delay")
        await asyncio.sleep(delay / 1000.0)


def _no_content() -> Response:
    return Response(status_code=204)


async def _json_or_empty(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise bad_payload(f"Request body should be valid JSON ({exc}).")
    if not isinstance(data, dict):
        raise bad_payload("Request body should be a JSON object.")
    return data


def _overrides(request: Request) -> dict[str, Any]:
    """Per-create knobs as headers (handy from DAG tests that cannot reach the control plane)."""
    result: dict[str, Any] = {}
    for header, key in (
        ("x-emulator-tile-failure-rate", "tile_failure_rate"),
        ("x-emulator-retry-tile-failure-rate", "retry_tile_failure_rate"),
    ):
        value = request.headers.get(header)
        if value is not None:
            try:
                rate = float(value)
            except ValueError:
                raise bad_payload(f"{header} must be a number")
            if not 0 <= rate <= 1:
                raise bad_payload(f"{header} must be within [0, 1]")
            result[key] = rate
    if request.headers.get("x-emulator-analysis-error"):
        result["analysis_error"] = request.headers["x-emulator-analysis-error"]
    return result


# ------------------------------------------------------------------------------------------------------ app
def create_app(config: EmulatorConfig | None = None, *, state: EmulatorState | None = None) -> EmulatorApp:
    """The emulator as an ASGI app (``state`` lets a server share its state object with tests)."""
    st = state if state is not None else EmulatorState(config or EmulatorConfig())
    # Plain Starlette routes (``add_route``): handlers take the Request and build responses themselves, so
    # FastAPI's per-request dependency solving is skipped (status polling is the hot path).
    app = EmulatorApp(
        title="Sentinel Hub Batch API emulator", docs_url=None, redoc_url=None, openapi_url=None
    )
    app.emu_state = st

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return JSONResponse(exc.body(), exc.status, headers=exc.headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = _CODES.get(exc.status_code, "COMMON_EXCEPTION")
        message = "Not found." if exc.status_code == 404 else str(exc.detail)
        return JSONResponse(error_body(exc.status_code, message, code), exc.status_code, headers=exc.headers)

    _token_routes(app, st)
    _v1_routes(app, st)
    _v2_routes(app, st)
    _grid_routes(app)
    statistical.register(app, st)
    _control_routes(app, st)
    add_page_routes(app, st)
    return app


Handler = Callable[[Request], Awaitable[Response]]


def _token_routes(app: FastAPI, st: EmulatorState) -> None:
    async def token(request: Request) -> Response:
        raw = (await request.body()).decode("utf-8", "replace")
        form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        client_id, secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode("utf-8").partition(":")
                client_id, secret = unquote_plus(user), unquote_plus(password)
            except (binascii.Error, UnicodeDecodeError):
                pass
        if not st.tokens.credentials_ok(client_id, secret):
            return JSONResponse(INVALID_CLIENT, 401)
        retry_after_ms = st.token_rate_limiter.admit(str(client_id), time.monotonic())
        if retry_after_ms is not None:
            return _fault_response(429, retry_after_ms)
        grant = form.get("grant_type")
        if grant != "client_credentials":
            description = "Missing form parameter: grant_type" if not grant else "Unsupported grant_type"
            return JSONResponse(
                {
                    "error": "invalid_request" if not grant else "unsupported_grant_type",
                    "error_description": description,
                },
                400,
            )
        lifetime = st.faults.faults.token_lifetime or st.config.token_lifetime
        base = str(request.base_url).rstrip("/")
        body = st.tokens.issue(base + _REALMS[request.url.path], lifetime)
        with st.lock:
            st.tokens_issued += 1
        return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    for path in TOKEN_PATHS:
        app.add_route(path, token, methods=["POST"], include_in_schema=True)


def _process_routes(app: FastAPI, st: EmulatorState, version: int, actions: dict[str, str]) -> str:
    """The request routes both Batch versions share (create, list, get, update, actions); returns the base path.

    ``actions`` maps a URL segment to the state's action name (v1 ``restartpartial`` is ``restart``).
    """
    base = f"/api/v{version}/batch"

    async def create(request: Request) -> Response:
        payload = await read_payload(request)
        await _create_delay(st)
        created = st.create(version, payload, _overrides(request))
        await _answer_delay(st)
        return JSONResponse(created, 201)

    async def list_(request: Request) -> Response:
        q = request.query_params
        filters = {}
        if version == 1:  # v2 lists have no user or collection filter
            filters = {"user_id": q.get("userid") or q.get("userId"), "collection_id": q.get("collectionId")}
        items = st.list_jobs(version, search=q.get("search"), sort=q.get("sort"), **filters)
        return JSONResponse(paginate(request, items))

    async def get(request: Request) -> Response:
        return JSONResponse(st.get_view(version, request.path_params["id"]))

    async def put(request: Request) -> Response:
        return JSONResponse(st.update(version, request.path_params["id"], await read_payload(request)))

    def action(name: str) -> Handler:
        async def handler(request: Request) -> Response:
            st.action(version, request.path_params["id"], name)
            return _no_content()

        return handler

    app.add_route(f"{base}/process", create, methods=["POST"])
    app.add_route(f"{base}/process", list_, methods=["GET"])
    app.add_route(f"{base}/process/{{id}}", get, methods=["GET"])
    app.add_route(f"{base}/process/{{id}}", put, methods=["PUT"])
    for segment, name in actions.items():
        app.add_route(f"{base}/process/{{id}}/{segment}", action(name), methods=["POST"])
    return base


def _v1_routes(app: FastAPI, st: EmulatorState) -> None:
    actions = {"analyse": "analyse", "start": "start", "cancel": "cancel", "restartpartial": "restart"}
    base = _process_routes(app, st, 1, actions)

    async def delete(request: Request) -> Response:
        st.delete(1, request.path_params["id"])
        return _no_content()

    async def tiles(request: Request) -> Response:
        return JSONResponse(
            paginate(request, st.list_tiles(request.path_params["id"], request.query_params.get("status")))
        )

    async def tile(request: Request) -> Response:
        raw = request.path_params["tileId"]
        if not raw.lstrip("-").isdigit():
            raise ApiError(404, f"Tile {raw} not found.", "COMMON_NOT_FOUND")
        return JSONResponse(st.get_tile(request.path_params["id"], int(raw)))

    app.add_route(f"{base}/process/{{id}}", delete, methods=["DELETE"])
    app.add_route(f"{base}/process/{{id}}/tiles", tiles, methods=["GET"])
    app.add_route(f"{base}/process/{{id}}/tiles/{{tileId}}", tile, methods=["GET"])

    async def col_create(request: Request) -> Response:
        return JSONResponse({"data": st.create_collection(await read_payload(request))}, 201)

    async def col_list(request: Request) -> Response:
        return JSONResponse(paginate(request, st.list_collections(request.query_params.get("search"))))

    async def col_get(request: Request) -> Response:
        return JSONResponse({"data": st.get_collection(request.path_params["id"])})

    async def col_put(request: Request) -> Response:
        st.update_collection(request.path_params["id"], await read_payload(request))
        return _no_content()

    async def col_delete(request: Request) -> Response:
        st.delete_collection(request.path_params["id"])
        return _no_content()

    app.add_route(f"{base}/collections", col_create, methods=["POST"])
    app.add_route(f"{base}/collections", col_list, methods=["GET"])
    app.add_route(f"{base}/collections/{{id}}", col_get, methods=["GET"])
    app.add_route(f"{base}/collections/{{id}}", col_put, methods=["PUT"])
    app.add_route(f"{base}/collections/{{id}}", col_delete, methods=["DELETE"])


def _v2_routes(app: FastAPI, st: EmulatorState) -> None:
    _process_routes(app, st, 2, {"analyse": "analyse", "start": "start", "stop": "stop"})


def _grid_routes(app: FastAPI) -> None:
    async def grid_list(request: Request) -> Response:
        return JSONResponse(paginate(request, [g.descriptor() for g in GRIDS.values()]))

    async def grid_get(request: Request) -> Response:
        raw = request.path_params["id"]
        if not raw.isdigit() or int(raw) not in GRIDS:
            raise bad_payload(
                f"Tiling grid {raw} does not exist.",
                [{"parameter": "id", "violation": f"must be one of {', '.join(map(str, GRIDS))}"}],
            )
        return JSONResponse(GRIDS[int(raw)].descriptor())

    for version in ("v1", "v2"):
        app.add_route(f"/api/{version}/batch/tilinggrids", grid_list, methods=["GET"])
        app.add_route(f"/api/{version}/batch/tilinggrids/{{id}}", grid_get, methods=["GET"])


def _control_routes(app: FastAPI, st: EmulatorState) -> None:
    """``/_emulator``: never faulted, no auth (loopback only), errors as ``{"error": {...}}`` too."""
    base = "/_emulator"

    def guarded(fn: Callable[[Request], Awaitable[Any]], status: int = 200) -> Handler:
        async def handler(request: Request) -> Response:
            try:
                result = await fn(request)
            except KeyError as exc:
                raise ApiError(404, f"Unknown job {exc.args[0]}.", "COMMON_NOT_FOUND")
            except (ValueError, TypeError) as exc:
                raise bad_payload(str(exc))
            return JSONResponse(result, status)

        return handler

    async def health(_: Request) -> Any:
        return {"status": "ok"}

    async def stats(_: Request) -> Any:
        return st.stats()

    async def get_rate_limits(_: Request) -> Any:
        return st.rate_limit_stats()

    async def set_rate_limits(request: Request) -> Any:
        body = await _json_or_empty(request)
        answer = {}
        if "token_policies" in body:
            answer["token_policies"] = st.set_rate_limits(body["token_policies"] or [], tokens=True)
        if "policies" in body or not answer:
            answer["policies"] = st.set_rate_limits(body.get("policies") or [])
        return answer

    async def get_faults(_: Request) -> Any:
        return st.faults.faults.to_dict()

    async def set_faults(request: Request) -> Any:
        body = await _json_or_empty(request)
        if not body:
            return st.clear_faults().to_dict()
        clear, replace = body.pop("clear", False), body.pop("replace", False)
        if clear or replace:
            st.clear_faults()
        return (st.set_faults(**body) if body else st.faults.faults).to_dict()

    async def reset(_: Request) -> Any:
        st.reset()
        return {"status": "reset"}

    async def revoke(_: Request) -> Any:
        st.revoke_tokens()
        return {"status": "revoked", "generation": st.tokens.generation}

    async def advance(request: Request) -> Any:
        body = await _json_or_empty(request)
        return {"emulated_seconds": st.advance(float(body.get("seconds", 0)))}

    async def time_scale(request: Request) -> Any:
        body = await _json_or_empty(request)
        st.set_time_scale(float(body["time_scale"]))
        return {"time_scale": st.clock.scale}

    async def account(request: Request) -> Any:
        if request.method == "POST":
            body = await _json_or_empty(request)
            if "pu_budget" in body:
                budget = body["pu_budget"]
                st.set_pu_budget(None if budget is None else float(budget))
        return {"pu_budget": st.pu_budget, "pu_spent": round(st.pu_spent(), 3)}

    async def jobs(_: Request) -> Any:
        with st.lock:
            return [
                {
                    "id": j.id,
                    "api": f"v{j.api}",
                    "status": st.get_job(j.id).status,
                    "tiles": len(j.tiles),
                    "description": j.description,
                }
                for j in list(st.jobs.values())
            ]

    async def bulk(request: Request) -> Any:
        body = await _json_or_empty(request)
        api = {"v1": 1, "v2": 2}.get(str(body.get("api", "v2")))
        if api is None:
            raise ValueError("api must be v1 or v2")
        ids = st.create_many(
            api,
            body.get("payload"),
            int(body.get("count", 1)),
            action=body.get("action"),
            write_outputs=bool(body.get("write_outputs", True)),
        )
        return {"ids": ids}

    async def job(request: Request) -> Any:
        j = st.get_job(request.path_params["id"])
        with st.lock:
            view = st.view(j)
            view["_emulator"] = {
                "tile_failure_rate": j.tile_failure_rate,
                "retry_tile_failure_rate": j.retry_tile_failure_rate,
                "analysis_error": j.analysis_error,
                "tile_statuses": _count_tiles(j, st.clock.now()),
            }
            return view

    async def force(request: Request) -> Any:
        body = await _json_or_empty(request)
        if "status" not in body:
            raise ValueError("status is required")
        j = st.force(
            request.path_params["id"], str(body["status"]), body.get("error"), body.get("stoppedStatusReason")
        )
        return st.view(j)

    async def configure(request: Request) -> Any:
        body = await _json_or_empty(request)
        j = st.configure_job(request.path_params["id"], **body)
        return st.view(j)

    async def next_jobs(request: Request) -> Any:
        body = await _json_or_empty(request)
        count = int(body.pop("count", 1))
        st.queue_job_overrides(count, **body)
        return {"queued": len(st.job_overrides)}

    routes: list[tuple[str, Callable[[Request], Awaitable[Any]], list[str]]] = [
        ("/health", health, ["GET"]),
        ("/stats", stats, ["GET"]),
        ("/faults", get_faults, ["GET"]),
        ("/faults", set_faults, ["POST"]),
        ("/rate-limits", get_rate_limits, ["GET"]),
        ("/rate-limits", set_rate_limits, ["POST"]),
        ("/reset", reset, ["POST"]),
        ("/revoke-tokens", revoke, ["POST"]),
        ("/advance", advance, ["POST"]),
        ("/time-scale", time_scale, ["POST"]),
        ("/account", account, ["GET", "POST"]),
        ("/jobs", jobs, ["GET"]),
        ("/jobs/bulk", bulk, ["POST"]),
        ("/jobs/{id}", job, ["GET"]),
        ("/jobs/{id}/force", force, ["POST"]),
        ("/jobs/{id}/configure", configure, ["POST"]),
        ("/next-jobs", next_jobs, ["POST"]),
    ]
    for path, fn, methods in routes:
        app.add_route(base + path, guarded(fn), methods=methods, include_in_schema=False)


def _count_tiles(job: Any, now: float) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in job.tiles:
        s = t.status(now)
        counts[s] = counts.get(s, 0) + 1
    return counts
