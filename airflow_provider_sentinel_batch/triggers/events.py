"""``SentinelBatchEventTrigger``: schedule DAGs when batch requests finish (Airflow 3 asset watchers).

The watcher lists the account's requests once per interval and emits one event per request that *newly*
reaches a target status (``DONE`` by default), never again while it stays there: a consumer DAG runs once per
finished job, not on every look (Airflow's event-scheduling docs warn that a trigger firing while a condition
*holds* reschedules the DAG forever). Jobs created outside Airflow (dashboard, scripts) count the same.

Edge detection keeps a small state: the ids already reported, with their status, plus a floor below which
forgotten ids stay forgotten. On Airflow 3.3+ it lives in the asset state store and survives a triggerer
restart; without it (Airflow 3.0-3.2, or one trigger shared by several assets) it lives in memory, and after a
restart the watcher reports again what finished within ``catch_up`` seconds before it (at-least-once: consumers
deduplicate on ``request_id``).

Several watchers of one connection (same API version, interval and listing window) share one list poll per
interval where Airflow supports shared streams (3.3+): the poll lists every request of the window once, and
each watcher applies its own filters to that listing. Polls use the shared retry policy (429 ``Retry-After``,
5xx and network backoff); a failed poll is logged and skipped, never raised out of the trigger.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Hashable, Iterable
from datetime import UTC, datetime
from typing import Any

try:
    from airflow.triggers.base import BaseEventTrigger, TriggerEvent
except ImportError as _exc:  # Airflow 2.x
    raise ImportError(
        "SentinelBatchEventTrigger needs Airflow 3: event-driven scheduling (Asset watchers, BaseEventTrigger) "
        "does not exist in Airflow 2.x. On Airflow 2.11, schedule the downstream DAG on the Dataset outlet of "
        "the task that waits for the job (SentinelBatchSensor with outlets=[...])."
    ) from _exc

from airflow_provider_sentinel_batch import statistical
from airflow_provider_sentinel_batch.layout import location_of
from airflow_provider_sentinel_batch.models import search_matches

#: Statuses a watcher may wait for, per API (Batch Processing v1 / v2, Batch Statistical).
WATCHABLE = {
    "v1": frozenset({"DONE", "PARTIAL", "FAILED", "CANCELED"}),
    "v2": frozenset({"DONE", "FAILED", "STOPPED"}),
    statistical.STATISTICAL: statistical.TERMINAL,
}
#: Key prefix of the watcher's entry in the asset state store.
STATE_KEY_PREFIX = "sentinel_batch_events"
_STATE_VERSION = 1
_MULTI_ASSET_ERROR = "concrete inlets and outlets"
_DESCRIPTION_LIMIT = 500


def parse_time(value: Any) -> float | None:
    """Epoch seconds of an ISO-8601 string (``Z`` or offset), a number, or ``None``."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def compact(api_version: str, item: dict[str, Any]) -> dict[str, Any]:
    """The small, secret-free record of one listed request that watchers work on (never the payload).

    ``match`` is the text the watcher's ``search`` / ``tag`` look at: the description (Batch Processing), or the
    output URL (Batch Statistical requests have no description).
    """
    request_id = str(item.get("id"))
    created = item.get("created")
    status = item.get("status")
    description: Any = None
    if api_version == "v1":
        description = item.get("description")
        # v1 requests carry no finish time: the last user action (START) is the latest time they do carry
        times = [t for t in (parse_time(created), parse_time(item.get("userActionUpdated"))) if t is not None]
        finished = None
        estimate = item.get("valueEstimate")
        cost = (
            round(float(estimate) / 3.0, 3) if isinstance(estimate, int | float) else None
        )  # batch discount
    else:
        updated = item.get("lastUpdated")
        times = [t for t in (parse_time(updated), parse_time(created)) if t is not None]
        finished = updated if status in WATCHABLE[api_version] else None
        if api_version == statistical.STATISTICAL:
            cost = statistical.cost_pu(item)
        else:
            inner = item.get("request")
            description = (inner.get("description") if isinstance(inner, dict) else None) or item.get(
                "description"
            )
            cost = item.get("costPU") if isinstance(item.get("costPU"), int | float) else None
    try:
        if api_version == statistical.STATISTICAL:
            url = statistical.output_url(item)
            location = statistical.output_root(url, request_id) if url else None
            match = url or ""
        else:
            location = location_of(api_version, item, request_id)
            match = str(description or "")
    except Exception:
        location, match = None, str(description or "")
    return {
        "id": request_id,
        "status": status,
        "description": str(description)[:_DESCRIPTION_LIMIT] if description else None,
        "match": match,
        "created": created,
        "finished": finished,
        "t": max(times) if times else None,
        "cost_pu": cost,
        "output_location": location,
        "error": (str(item["error"])[:_DESCRIPTION_LIMIT] if item.get("error") else None),
    }


async def list_window(
    client: Any,
    api_version: str,
    *,
    search: str | None = None,
    page_size: int = 100,
    max_age: float | None = None,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """Compact records of the requests created within ``max_age`` seconds (all when ``None``), newest first.

    Lists ``sort=created:desc`` and stops paging at the first request older than the window, so an account
    with a long history costs a few pages per poll, not all of them. Raises what the client raises.
    """
    horizon = None if max_age is None else (now if now is not None else time.time()) - max_age
    records: list[dict[str, Any]] = []
    async for item in client.iter_requests(
        api_version, search=search, sort="created:desc", page_size=page_size
    ):
        if not isinstance(item, dict) or not item.get("id"):
            continue
        created = parse_time(item.get("created"))
        if horizon is not None and created is not None and created < horizon:
            break
        records.append(compact(api_version, item))
    return records


async def _close_quietly(client: Any) -> None:
    with contextlib.suppress(Exception):  # closing a broken connection must not end the watcher
        await client.aclose()


def _whole(t: float | None) -> int | None:
    """A time as whole seconds, rounded up: the state stays small, and a floor never drops below a time."""
    return None if t is None else int(-(-t // 1))


class WatchState:
    """Which requests a watcher has reported (id -> [status, time]) and the floor below which it forgets.

    ``observe`` turns one complete listing into the events to emit: a matching request at a target status
    fires once per (request, status); on the first listing (``baseline``) only those that reached it at or
    after the start watermark fire. Ids absent from a complete listing are dropped (deleted, or older than the
    window: they cannot come back); past ``max_remembered`` the oldest are dropped and the floor rises to
    their time, so a forgotten request never fires twice.
    """

    def __init__(
        self,
        *,
        reported: dict[str, list[Any]] | None = None,
        floor: float | None = None,
        baseline_done: bool = False,
        max_remembered: int = 500,
    ) -> None:
        self.reported: dict[str, list[Any]] = dict(reported or {})
        self.floor = floor
        self.baseline_done = baseline_done
        self.max_remembered = max(1, int(max_remembered))

    def to_json(self) -> dict[str, Any]:
        """The state as stored in the asset state store (primitives only)."""
        return {
            "version": _STATE_VERSION,
            "reported": self.reported,
            "floor": self.floor,
            "baseline_done": self.baseline_done,
        }

    @classmethod
    def from_json(cls, value: Any, *, max_remembered: int) -> WatchState | None:
        """The stored state, or ``None`` when there is none (or it is from an unknown version)."""
        if not isinstance(value, dict) or value.get("version") != _STATE_VERSION:
            return None
        reported = value.get("reported")
        if not isinstance(reported, dict):
            return None
        clean = {
            str(k): [v[0], v[1] if len(v) > 1 else None]
            for k, v in reported.items()
            if isinstance(v, list) and v
        }
        floor = value.get("floor")
        return cls(
            reported=clean,
            floor=float(floor) if isinstance(floor, int | float) else None,
            baseline_done=bool(value.get("baseline_done")),
            max_remembered=max_remembered,
        )

    def observe(
        self,
        records: Iterable[dict[str, Any]],
        *,
        matches: Any,
        targets: frozenset[str],
        watermark: float,
    ) -> list[dict[str, Any]]:
        """Records that newly reached a target status (oldest first); updates the state."""
        records = list(records)
        present = {r["id"] for r in records}
        fired: list[dict[str, Any]] = []
        for record in records:
            status = record.get("status")
            if status not in targets or not matches(record):
                continue
            rid, t = record["id"], record.get("t")
            previous = self.reported.get(rid)
            if previous is not None and previous[0] == status:
                continue
            if previous is None:
                if self.floor is not None and t is not None and t <= self.floor:
                    continue  # forgotten on purpose (over max_remembered): reported long ago
                if not self.baseline_done and (t is None or t < watermark):
                    self.reported[rid] = [status, _whole(t)]  # finished before the watcher started
                    continue
            self.reported[rid] = [status, _whole(t)]
            fired.append(record)
        self.baseline_done = True
        for rid in [rid for rid in self.reported if rid not in present]:
            del self.reported[rid]
        if len(self.reported) > self.max_remembered:
            by_age = sorted(self.reported.items(), key=lambda kv: kv[1][1] if kv[1][1] is not None else 0.0)
            for rid, (_, t) in by_age[: len(self.reported) - self.max_remembered]:
                del self.reported[rid]
                if t is not None:
                    self.floor = t if self.floor is None else max(self.floor, t)
        fired.sort(key=lambda r: r.get("t") or 0.0)
        return fired


class SentinelBatchEventTrigger(BaseEventTrigger):
    """Fire one event per batch request that newly reaches a target status; for ``AssetWatcher``.

    ::

        from airflow.sdk import Asset, AssetWatcher

        ndvi_done = Asset(
            "corsica_ndvi_batch_done",
            watchers=[
                AssetWatcher(
                    name="corsica_ndvi_done",
                    trigger=SentinelBatchEventTrigger(api_version="v2", search="corsica-ndvi"),
                )
            ],
        )

    The event (``triggering_asset_events[...][i].extra["payload"]``) is small and flat: ``request_id``,
    ``api_version``, ``status``, ``cost_pu``, ``output_location``, ``description``, ``created``, ``finished``
    (v2: ``lastUpdated``; v1 has no finish time), ``error``, and ``event_id`` (``<api>:<request id>:<status>``,
    unique per event, to deduplicate on after a restart without persisted state).

    All arguments are primitives (serialized into the metadata database; the trigger's identity is their hash,
    so never pass values that change on every DAG parse, like "now"). No credentials: the connection is
    resolved on the triggerer from ``conn_id``.

    :param api_version: ``v1`` or ``v2`` (Batch Processing) or ``statistical`` (Batch Statistical): which list
        endpoint to watch.
    :param statuses: target statuses (default ``DONE``); also ``FAILED``, ``STOPPED`` (v2, statistical),
        ``PARTIAL``, ``CANCELED`` (v1).
    :param search: only requests whose description matches (``|`` = OR, ``&`` = AND, case-insensitive
        substrings, the service's ``search`` rule). Batch Statistical requests have no description: there it
        matches the output URL (``output.s3.url``), locally (its list endpoint has no ``search``).
    :param tag: only requests whose description (Batch Statistical: output URL) contains this exact text (e.g. a
        marker your producer DAG puts into ``description``).
    :param poll_interval: seconds between list polls.
    :param max_age: only requests created within this many seconds are listed (default 30 days); older ones
        are never reported. ``None`` lists the whole account on every poll.
    :param since: the start watermark, ISO-8601 or epoch seconds: on its first listing the watcher reports
        requests that reached a target status at or after it. Default: ``catch_up`` seconds before the start.
    :param catch_up: see ``since``; also, without persisted state, how far back a restarted watcher reports
        again (at-least-once).
    :param max_remembered: bound of the reported-id memory (about 60 bytes each in the asset state store: the
        default stays well under Airflow's 64 KB advice for a state value).
    :param share_poll: take part in the shared list poll of this connection (Airflow 3.3+). A shared poll lists
        every request of the window (the watchers' filters apply afterwards); a lone watcher with a narrow
        ``search`` on a large account makes fewer calls with ``share_poll=False`` (the service filters).
    :param event_spacing: seconds between two events of this watcher. Airflow's scheduler leaves an event that
        arrives while the asset's previous event still waits for its run out of that run (it comes with the
        run of a later event); spaced events get a run each. ``0`` emits a poll's events at once.
    """

    def __init__(
        self,
        *,
        conn_id: str = "sentinel_batch_default",
        api_version: str = "v2",
        statuses: list[str] | tuple[str, ...] | None = None,
        search: str | None = None,
        tag: str | None = None,
        poll_interval: float = 60.0,
        max_age: float | None = 30 * 24 * 3600.0,
        page_size: int = 100,
        since: str | float | None = None,
        catch_up: float = 3600.0,
        max_remembered: int = 500,
        retry_policy: dict[str, Any] | None = None,
        share_poll: bool = True,
        event_spacing: float = 5.0,
    ) -> None:
        super().__init__()
        if api_version not in WATCHABLE:
            raise ValueError(f"api_version must be one of {sorted(WATCHABLE)}, got {api_version!r}")
        targets = [str(s).upper() for s in (statuses or ["DONE"])]
        unknown = sorted(set(targets) - WATCHABLE[api_version])
        if unknown:
            raise ValueError(
                f"cannot watch {api_version} requests for {', '.join(unknown)}: the {api_version} final "
                f"statuses are {', '.join(sorted(WATCHABLE[api_version]))}"
            )
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        if since is not None and parse_time(since) is None:
            raise ValueError(f"since must be an ISO-8601 time or epoch seconds, got {since!r}")
        self.conn_id = conn_id
        self.api_version = api_version
        self.statuses = sorted(set(targets))
        self.search = search or None
        self.tag = tag or None
        self.poll_interval = float(poll_interval)
        self.max_age = None if max_age is None else float(max_age)
        self.page_size = int(page_size)
        self.since = since
        self.catch_up = float(catch_up)
        self.max_remembered = int(max_remembered)
        self.retry_policy = retry_policy
        self.share_poll = bool(share_poll)
        self.event_spacing = max(0.0, float(event_spacing))
        self._last_event_at = float("-inf")
        self._state: WatchState | None = None
        self._store: Any = None
        self._watermark: float | None = None
        self._saved: str | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and primitive kwargs, as stored in the metadata database."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "api_version": self.api_version,
                "statuses": list(self.statuses),
                "search": self.search,
                "tag": self.tag,
                "poll_interval": self.poll_interval,
                "max_age": self.max_age,
                "page_size": self.page_size,
                "since": self.since,
                "catch_up": self.catch_up,
                "max_remembered": self.max_remembered,
                "retry_policy": self.retry_policy,
                "share_poll": self.share_poll,
                "event_spacing": self.event_spacing,
            },
        )

    # ----------------------------------------------------------------------------------- shared stream
    def shared_stream_key(self) -> Hashable | None:
        """Watchers with equal connection, API version, interval, window and retry policy share one poll."""
        if not self.share_poll:
            return None
        return (
            "sentinel_batch.events",
            self.conn_id,
            self.api_version,
            self.poll_interval,
            self.max_age,
            self.page_size,
            json.dumps(self.retry_policy, sort_keys=True),
        )

    @classmethod
    async def open_shared_stream(cls, kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        """One list poll per interval for the whole group: yields each complete listing (no search filter)."""
        watcher = cls(**kwargs)
        async for records in watcher._listings(search=None):
            yield records

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        """The events of this watcher from a poll shared with other watchers of the same connection."""
        await self._load()
        async for records in shared_stream:
            async for event in self._emit(records):
                yield event

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Own poll loop (Airflow 3.0-3.2, or when the triggerer does not share streams)."""
        await self._load()
        async for records in self._listings(search=self.search):
            async for event in self._emit(records):
                yield event

    async def _emit(self, records: list[dict[str, Any]]) -> AsyncIterator[TriggerEvent]:
        """This listing's events, ``event_spacing`` apart; the state is saved after each one is handed over.

        Spacing: Airflow's scheduler creates one run per queued asset and gives it the asset's events up to
        when the asset was queued; an event that arrives while the asset waits for that run is left out of it
        and only delivered with the run of a later event. Events a few seconds apart get a run each.
        """
        events = await self._observe(records)
        for index, event in enumerate(events):
            wait = self.event_spacing - (time.monotonic() - self._last_event_at)
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_event_at = time.monotonic()
            yield TriggerEvent(event)
            # handed over: persist, still without the ones not yet emitted (a restart now emits those)
            await self._save(pending={e["request_id"] for e in events[index + 1 :]})
        if not events:
            await self._save()

    # ----------------------------------------------------------------------------------------- polling
    def _client(self, settings: Any) -> Any:
        from airflow_provider_sentinel_batch.hooks.async_client import SentinelBatchAsyncClient
        from airflow_provider_sentinel_batch.retry import RetryPolicy

        return SentinelBatchAsyncClient(settings, retry_policy=RetryPolicy.from_dict(self.retry_policy))

    async def _listings(self, *, search: str | None) -> AsyncIterator[list[dict[str, Any]]]:
        """Complete listings, one per interval, forever; a failed poll is logged and skipped, never raised.

        The client (connection settings, token, pooled socket) is kept across polls and opened afresh after a
        failed one, so a changed connection is picked up then.
        """
        from airflow_provider_sentinel_batch.hooks.async_client import settings_for_conn_id

        failures = 0
        client: Any = None
        try:
            while True:
                started = time.monotonic()
                records: list[dict[str, Any]] | None = None
                try:
                    if client is None:
                        client = self._client(await settings_for_conn_id(self.conn_id))
                        await client.__aenter__()
                    records = await list_window(
                        client,
                        self.api_version,
                        search=search,
                        page_size=self.page_size,
                        max_age=self.max_age,
                    )
                except Exception as exc:
                    failures += 1
                    self.log.warning(
                        "Listing %s batch requests of connection %s failed (%d in a row; will look again in "
                        "%.0f s): %s",
                        self.api_version,
                        self.conn_id,
                        failures,
                        self.poll_interval,
                        exc,
                    )
                    client, closing = None, client
                    if closing is not None:
                        await _close_quietly(closing)
                if records is not None:
                    failures = 0
                    yield records
                await asyncio.sleep(max(0.0, self.poll_interval - (time.monotonic() - started)))
        finally:
            if client is not None:
                await _close_quietly(client)

    # ------------------------------------------------------------------------------------ edge detection
    def _matches(self, record: dict[str, Any]) -> bool:
        text = record.get("match") or ""
        if self.tag and self.tag not in text:
            return False
        return search_matches(text, self.search)

    def _start_watermark(self) -> float:
        if self.since is not None:
            parsed = parse_time(self.since)
            if parsed is not None:
                return parsed
        return time.time() - self.catch_up

    async def _observe(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self._state is None:
            await self._load()
        state = self._state
        assert state is not None
        if self._watermark is None:
            self._watermark = self._start_watermark()
        fired = state.observe(
            records, matches=self._matches, targets=frozenset(self.statuses), watermark=self._watermark
        )
        events = [self._payload(r) for r in fired]
        for event in events:
            self.log.info(
                "Batch %s request %s reached %s: event for the watching asset",
                self.api_version,
                event["request_id"],
                event["status"],
            )
        return events

    def _payload(self, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "event_id": f"{self.api_version}:{record['id']}:{record['status']}",
            "request_id": record["id"],
            "api_version": self.api_version,
            "status": record["status"],
            "cost_pu": record.get("cost_pu"),
            "output_location": record.get("output_location"),
            "description": record.get("description"),
            "created": record.get("created"),
            "finished": record.get("finished"),
            "error": record.get("error"),
        }

    # ------------------------------------------------------------------------------------- state store
    def state_key(self) -> str:
        """This watcher's key in the asset state store: one per filter, so two watchers never share one."""
        identity = json.dumps(
            [self.conn_id, self.api_version, self.statuses, self.search, self.tag], sort_keys=True
        )
        return f"{STATE_KEY_PREFIX}:{hashlib.sha256(identity.encode()).hexdigest()[:16]}"

    async def _load(self) -> None:
        if self._state is not None:
            return
        store = getattr(self, "asset_state_store", None)  # Airflow 3.3+; absent before
        stored: Any = None
        if store is not None:
            try:
                stored = await store.aget(self.state_key())
            except ValueError as exc:
                if _MULTI_ASSET_ERROR not in str(exc):
                    self.log.warning("Could not read the watcher state (%s); keeping it in memory", exc)
                else:
                    self.log.warning(
                        "This trigger is watched by more than one asset, so it keeps its state in memory: after "
                        "a triggerer restart it reports again what finished within %.0f s before (deduplicate "
                        "on request_id)",
                        self.catch_up,
                    )
                store = None
            except Exception as exc:
                self.log.warning("Could not read the watcher state (%s); keeping it in memory", exc)
                store = None
        else:
            self.log.info(
                "No asset state store (Airflow before 3.3, or not run by a triggerer): the watcher keeps its state in memory; after a "
                "triggerer restart it reports again what finished within %.0f s before (deduplicate on "
                "request_id)",
                self.catch_up,
            )
        self._store = store
        self._state = WatchState.from_json(stored, max_remembered=self.max_remembered) or WatchState(
            max_remembered=self.max_remembered
        )
        self._saved = json.dumps(self._state.to_json(), sort_keys=True) if stored is not None else None

    async def _save(self, pending: set[str] | None = None) -> None:
        """Persist the state when it changed, minus ``pending`` (events not handed over yet): at-least-once."""
        if self._store is None or self._state is None:
            return
        value = self._state.to_json()
        if pending:
            value["reported"] = {k: v for k, v in value["reported"].items() if k not in pending}
        text = json.dumps(value, sort_keys=True)
        if text == self._saved:
            return
        try:
            await self._store.aset(self.state_key(), value)
        except Exception as exc:
            self.log.warning("Could not save the watcher state (%s); will try again after the next poll", exc)
            return
        self._saved = text


__all__ = ["WATCHABLE", "SentinelBatchEventTrigger", "WatchState", "compact", "list_window"]
