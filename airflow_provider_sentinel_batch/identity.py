"""Which batch job belongs to a task instance, and whether it still computes what the task asks for.

A job's identity has two parts, both written into its ``description`` (no secret, 40 characters):

- the **task tag** ``airflow-<16 hex>``: the same on every try and rerun of one task instance (dag, task, run,
  map index), different otherwise; the list endpoint's ``search`` finds the task's jobs by it;
- the **payload fingerprint** ``payload-<12 hex>``: a hash of the canonical JSON of the credential-free payload
  (everything but ``description`` and bucket keys), so a changed evalscript, time range, area or output makes a
  different job, and rotated bucket keys do not.

Batch Statistical requests have no ``description``: their identity is the payload alone (the fingerprint of the
credential-free ``input``, ``aggregation``, ``calculations`` and ``output``, compared with the service's copy of
each request), so identical payloads share one request whichever task made it, and a changed payload is a new one.

Airflow 3.3+ also keeps the request id and fingerprint in the task state store (it survives retries), so the
common retry is one GET; the tag search stays the fallback on every version and for the moments the store cannot
know about (death between create and persist, a concurrent execution of the same task instance).

The decisions are pure functions (:func:`decide`, :func:`check_stored`, :func:`converge`); :class:`TaskJobs`
runs them against the service for the create operator.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_sentinel_batch.exceptions import SentinelBatchAPIError, SentinelBatchError
from airflow_provider_sentinel_batch.models import FAILURE, TERMINAL, request_payload

#: A ``logging.Logger`` or Airflow's task logger (structlog): anything with ``info``/``warning``.
Logger = Any

if TYPE_CHECKING:
    from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook

#: Key of this provider's entry in Airflow's task state store (Airflow 3.3+). Renaming it would make in-flight
#: retries fall back to the tag search (still correct, one list call more).
STATE_KEY = "sentinel_batch_request"

#: Keys whose values are credentials, not part of what a job computes or where it delivers (dropped at any depth).
CREDENTIAL_KEYS = frozenset({"accessKey", "secretAccessKey", "sessionToken", "iamRoleARN"})

#: Top-level payload fields that do not change what is computed or where it goes.
NOT_IDENTITY = frozenset({"description"})

#: Create-time fields compared when naming what changed (others in a service answer are the service's own).
PAYLOAD_FIELDS = {
    "v1": ("processRequest", "tilingGrid", "output", "bucketName", "zarrOutput"),
    "v2": ("processRequest", "input", "output", "instanceType"),
    "statistical": ("input", "aggregation", "calculations", "output"),
}

#: Values the service fills in when a payload leaves a field out (the same job either way).
SERVICE_DEFAULTS: dict[str, dict[str, Any]] = {"v1": {}, "v2": {"instanceType": "normal"}, "statistical": {}}

REATTACH = "reattach"
CREATE = "create"

_LABEL = re.compile(r"\[(airflow-[0-9a-f]{16})(?: payload-([0-9a-f]{12}))?\]")


# ---------------------------------------------------------------------------------------------- identity
def task_tag(context: Mapping[str, Any]) -> str:
    """Same value on every try and rerun of one task instance (dag, task, run, map index), different otherwise."""
    ti = context["ti"]
    run_id = context.get("run_id") or getattr(ti, "run_id", "")
    key = f"{ti.dag_id}|{ti.task_id}|{run_id}|{getattr(ti, 'map_index', -1)}"
    return "airflow-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def credential_free(value: Any) -> Any:
    """A copy of ``value`` without credential keys (bucket access keys, session tokens, role ARNs) at any depth."""
    if isinstance(value, Mapping):
        return {k: credential_free(v) for k, v in value.items() if k not in CREDENTIAL_KEYS}
    if isinstance(value, list | tuple):
        return [credential_free(v) for v in value]
    return value


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else value
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return str(value)


def canonical_json(payload: Mapping[str, Any]) -> str:
    """The payload as it identifies a job: no description, no credentials, sorted keys, ``60.0`` == ``60``."""
    identity = {k: v for k, v in payload.items() if k not in NOT_IDENTITY}
    return json.dumps(
        _canonical(credential_free(identity)), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def payload_fingerprint(payload: Mapping[str, Any]) -> str:
    """12 hex digits of SHA-256 over :func:`canonical_json`: changes when what is computed or delivered does."""
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:12]


def _echo_neutral(value: Any, parent: str = "") -> Any:
    """``value`` without what a service's copy of a request may add or drop: nulls, and an S3 location's
    ``region`` (a property of the bucket, added from ``bucket_conn_id``)."""
    if isinstance(value, Mapping):
        return {
            k: _echo_neutral(v, str(k))
            for k, v in value.items()
            if v is not None and not (parent == "s3" and k == "region")
        }
    if isinstance(value, list | tuple):
        return [_echo_neutral(v) for v in value]
    return value


def statistical_fingerprint(payload: Any) -> str:
    """A Batch Statistical request's identity: :func:`payload_fingerprint` of its ``input``, ``aggregation``,
    ``calculations`` and ``output`` (credentials, nulls and bucket regions aside), for a payload as sent and for
    the service's copy of a request alike."""
    fields = PAYLOAD_FIELDS["statistical"]
    body = (
        {k: v for k, v in dict(payload or {}).items() if k in fields} if isinstance(payload, Mapping) else {}
    )
    return payload_fingerprint(_echo_neutral(body))


def fingerprint(api_version: str, payload: Mapping[str, Any]) -> str:
    """The payload fingerprint a job of ``api_version`` is identified by."""
    return statistical_fingerprint(payload) if api_version == "statistical" else payload_fingerprint(payload)


def label(tag: str, fingerprint: str) -> str:
    """The identity label put into a job's description: ``[airflow-<16 hex> payload-<12 hex>]``."""
    return f"[{tag} payload-{fingerprint}]"


def labelled_description(base: str | None, tag: str, fingerprint: str) -> str:
    """``base`` followed by the identity label (the label alone when there is no base)."""
    return f"{base} {label(tag, fingerprint)}" if base else label(tag, fingerprint)


def description_of(request: Mapping[str, Any]) -> str:
    """A request's description, v1 (top level) or v2 (under ``request``)."""
    inner = request.get("request")
    text = request.get("description") or (inner.get("description") if isinstance(inner, Mapping) else None)
    return text if isinstance(text, str) else ""


def find_label(description: str, tag: str) -> tuple[bool, str | None]:
    """Whether ``description`` carries ``tag``, and the payload fingerprint next to it (``None``: a label
    written before fingerprints existed)."""
    for match in _LABEL.finditer(description or ""):
        if match.group(1) == tag:
            return True, match.group(2)
    return False, None


def belongs(
    api_version: str, request: Mapping[str, Any], tag: str, fingerprint: str
) -> tuple[bool, str | None]:
    """Whether ``request`` is one of this task instance's jobs, and the payload fingerprint it carries.

    v1/v2: the label in its description (:func:`find_label`). Batch Statistical has no description: a request
    whose copy of the payload has this ``fingerprint`` counts (whichever task made it)."""
    if api_version == "statistical":
        inner = request.get("request")
        same = isinstance(inner, Mapping) and statistical_fingerprint(inner) == fingerprint
        return same, fingerprint if same else None
    return find_label(description_of(request), tag)


def withdrawn_description(description: str, tag: str, survivor_id: str) -> str:
    """``description`` with this task's label replaced by a note naming the job that is used instead, so the
    tag search no longer finds the withdrawn job."""

    def replace(match: re.Match[str]) -> str:
        return f"[duplicate of {survivor_id}, not used]" if match.group(1) == tag else match.group(0)

    return _LABEL.sub(replace, description or "")


# ---------------------------------------------------------------------------------------------- jobs seen
def _instant(created: str | None) -> float:
    if not created:
        return math.inf
    try:
        return datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return math.inf


@dataclass(frozen=True)
class Job:
    """One request of this task instance, as the service listed it."""

    id: str
    status: str
    created: str | None
    fingerprint: str | None
    error: str | None = None
    stopped_reason: str | None = None
    request: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def order(self) -> tuple[float, str]:
        """Oldest first, ties by id: every observer of the same list ranks the jobs the same way."""
        return (_instant(self.created), self.id)

    @property
    def why(self) -> str:
        """The service's reason for a failure, when it gave one."""
        parts = [p for p in (self.error, self.stopped_reason) if p]
        return f"{self.status}: {'; '.join(parts)}" if parts else self.status

    @classmethod
    def from_request(
        cls, request: Mapping[str, Any], tag: str, *, api_version: str = "v2", fingerprint: str = ""
    ) -> Job | None:
        """The job, when ``request`` belongs to the task (see :func:`belongs`; v1/v2: it carries ``tag``);
        ``None`` otherwise (a search also matches look-alikes)."""
        found, carried = belongs(api_version, request, tag, fingerprint)
        if not found or request.get("id") in (None, ""):
            return None
        created = request.get("created")
        return cls(
            id=str(request["id"]),
            status=str(request.get("status") or ""),
            created=str(created) if created else None,
            fingerprint=carried,
            error=str(request["error"]) if request.get("error") else None,
            stopped_reason=str(request["stoppedStatusReason"])
            if request.get("stoppedStatusReason")
            else None,
            request=request,
        )


def jobs_of(
    requests: Iterable[Mapping[str, Any]], tag: str, *, api_version: str = "v2", fingerprint: str = ""
) -> list[Job]:
    """The requests that belong to the task (in the order given): v1/v2 carry ``tag``, Batch Statistical have
    this payload ``fingerprint``."""
    return [
        job
        for r in requests
        if (job := Job.from_request(r, tag, api_version=api_version, fingerprint=fingerprint)) is not None
    ]


# ---------------------------------------------------------------------------------------------- decisions
@dataclass(frozen=True)
class Decision:
    """What a try of the create task does with the jobs its task instance already has."""

    action: str
    """:data:`REATTACH` (to :attr:`job`) or :data:`CREATE`."""
    job: Job | None = None
    failed: tuple[Job, ...] = ()
    """Jobs from the same payload that ended in failure (a new job replaces them)."""
    superseded: tuple[Job, ...] = ()
    """Jobs made from a different payload: never re-attached to."""
    unverified: bool = False
    """The job re-attached to predates payload fingerprints, so its payload could not be compared by hash."""


def decide(api_version: str, jobs: Iterable[Job], fingerprint: str) -> Decision:
    """The re-attach table for one task instance's jobs.

    ========================================================  ==============================================
    job carrying this task's tag                              outcome
    ========================================================  ==============================================
    same fingerprint, not failed (CREATED…PROCESSING, DONE,   re-attach (the oldest such job, ties by id)
    v1 PARTIAL)
    same fingerprint, FAILED / CANCELED (v1), STOPPED (v2)    not reused; listed in ``failed``
    another fingerprint (payload changed), any status         not reused; listed in ``superseded``
    no fingerprint (labelled before fingerprints existed)     re-attach if no fingerprinted job qualifies
    nothing qualifies                                         create
    ========================================================  ==============================================
    """
    failure = FAILURE[api_version]
    jobs = sorted(jobs, key=lambda j: j.order)
    same = [j for j in jobs if j.fingerprint == fingerprint]
    legacy = [j for j in jobs if j.fingerprint is None]
    superseded = tuple(j for j in jobs if j.fingerprint not in (None, fingerprint))
    failed = tuple(j for j in jobs if j in same + legacy and j.status in failure)
    for candidates, unverified in ((same, False), (legacy, True)):
        live = [j for j in candidates if j.status not in failure]
        if live:
            return Decision(REATTACH, live[0], failed, superseded, unverified)
    return Decision(CREATE, None, failed, superseded)


@dataclass(frozen=True)
class StoredJob:
    """What the create task keeps in Airflow's task state store: its request, payload fingerprint, API version."""

    request_id: str
    fingerprint: str
    api_version: str

    def to_json(self) -> dict[str, str]:
        """The record as stored in the task state store (primitives only)."""
        return {
            "request_id": self.request_id,
            "fingerprint": self.fingerprint,
            "api_version": self.api_version,
        }

    @classmethod
    def from_json(cls, value: Any) -> StoredJob | None:
        """``None`` for anything that is not a complete entry written by this provider."""
        if not isinstance(value, Mapping):
            return None
        request_id, fingerprint, api_version = (
            value.get(k) for k in ("request_id", "fingerprint", "api_version")
        )
        if not all(isinstance(v, str) and v for v in (request_id, fingerprint, api_version)):
            return None
        return cls(str(request_id), str(fingerprint), str(api_version))


def check_stored(
    api_version: str, stored: StoredJob, fingerprint: str, request: Mapping[str, Any] | None, tag: str
) -> str | None:
    """Why the stored request must not be re-attached to (``None``: re-attach). The caller then searches by tag.

    ``request`` is the service's answer for the stored id, ``None`` when it answered 404.
    """
    if stored.api_version != api_version:
        return f"it is a Batch {stored.api_version} request and this task now uses {api_version}"
    if stored.fingerprint != fingerprint:
        return "it was made from a different payload"
    if request is None:
        return "the service does not know it (404)"
    found, label_fingerprint = belongs(api_version, request, tag, fingerprint)
    if not found and api_version == "statistical":
        return "the service's copy of it was made from a different payload"
    if not found:
        return "its description no longer carries this task's tag (withdrawn or renamed)"
    if label_fingerprint != fingerprint:
        return "its description names a different payload"
    status = request.get("status")
    if status in FAILURE[api_version]:
        return f"it ended {status}"
    return None


@dataclass(frozen=True)
class Convergence:
    """What one execution does after its create call, given the live jobs of its task instance."""

    keep: bool
    """Use this execution's own job (it is the survivor, or nothing better is visible)."""
    survivor: Job | None
    visible: bool
    """The execution's own job was in the list (the list is recent enough to decide on)."""
    others: tuple[Job, ...] = ()
    """Live same-payload jobs other than the survivor (they are withdrawn by their own executions)."""


def converge(api_version: str, own_id: str, jobs: Iterable[Job], fingerprint: str) -> Convergence:
    """The rule that makes concurrent executions of one task instance agree on one job.

    Every execution lists the task's jobs *after* its create call and keeps the oldest live job with the same
    payload fingerprint (ties by id). Executions that see the same list pick the same survivor; an execution
    decides only on a list that already shows its own job, and an older job became visible no later than a
    younger one, so the younger execution also sees the older job.
    """
    jobs = list(jobs)
    visible = any(j.id == own_id for j in jobs)
    failure = FAILURE[api_version]
    live = sorted(
        (j for j in jobs if j.fingerprint == fingerprint and j.status not in failure), key=lambda j: j.order
    )
    if not visible:
        return Convergence(keep=True, survivor=None, visible=False)
    if not live:
        return Convergence(keep=True, survivor=None, visible=True)
    survivor = live[0]
    return Convergence(keep=survivor.id == own_id, survivor=survivor, visible=True, others=tuple(live[1:]))


def changed_fields(
    api_version: str, old_request: Mapping[str, Any], new_payload: Mapping[str, Any]
) -> list[str]:
    """Which payload fields differ between a service request and a new payload, as ``field`` or
    ``field.subfield`` (credentials and description ignored). For log messages only: the decision itself is
    made on fingerprints."""
    defaults = SERVICE_DEFAULTS[api_version]
    old = _canonical(credential_free(request_payload(api_version, dict(old_request))))
    new = _canonical(credential_free({**defaults, **new_payload}))
    keys = (set(new) | {k for k in PAYLOAD_FIELDS[api_version] if k in old}) - NOT_IDENTITY
    changed: list[str] = []
    for key in sorted(keys):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [f"{key}.{sub}" for sub in sorted(set(a) | set(b)) if a.get(sub) != b.get(sub)]
        else:
            changed.append(key)
    return changed


# ---------------------------------------------------------------------------------------------- state store
def state_store(context: Mapping[str, Any]) -> Any | None:
    """Airflow's task state store of this task instance (Airflow 3.3+), or ``None`` where there is none."""
    try:
        store = context.get("task_state_store")
    except Exception:
        return None
    if (
        store is None
        or not callable(getattr(store, "get", None))
        or not callable(getattr(store, "set", None))
    ):
        return None
    return store


def read_stored(context: Mapping[str, Any], log: Logger) -> StoredJob | None:
    """This task instance's stored request, or ``None`` (no store, nothing stored, unreadable)."""
    store = state_store(context)
    if store is None:
        return None
    try:
        value = store.get(STATE_KEY)
    except Exception as exc:
        log.warning(
            "Could not read Airflow's task state store (%s); finding the request by its tag instead", exc
        )
        return None
    stored = StoredJob.from_json(value)
    if value is not None and stored is None:
        log.warning("Ignoring an unrecognised task state store entry %r", STATE_KEY)
    return stored


def write_stored(context: Mapping[str, Any], stored: StoredJob, log: Logger) -> bool:
    """Record the request in the task state store (Airflow 3.3+); ``False`` when there is none or it failed."""
    store = state_store(context)
    if store is None:
        return False
    try:
        store.set(STATE_KEY, stored.to_json())
    except Exception as exc:
        log.warning("Could not record request %s in Airflow's task state store: %s", stored.request_id, exc)
        return False
    return True


# ---------------------------------------------------------------------------------------------- against the service
#: Pauses (seconds) between the lists that wait for a new job to show up in the list (the service's read side
#: lags its writes): about 17 s in all, then the execution keeps its job without the concurrency check.
SETTLE_PAUSES: Sequence[float] = (0.0, 1.0, 2.0, 4.0, 10.0)


@dataclass(kw_only=True)
class TaskJobs:
    """The create operator's identity steps against the service: find this task instance's job (task state
    store first, then the tag search), record it, and converge with concurrent executions after a create."""

    hook: SentinelBatchHook
    api_version: str
    tag: str
    fingerprint: str
    log: Logger
    sleep: Callable[[float], None] = time.sleep
    settle_pauses: Sequence[float] = SETTLE_PAUSES
    decision: Decision | None = field(default=None, init=False)
    found_in: str | None = field(default=None, init=False)
    """Where :meth:`find` found the request: ``"store"``, ``"search"`` or ``None``."""

    def tagged(self) -> list[Job]:
        """Every request of this task instance (one paginated list call): v1/v2 by the tag search; Batch
        Statistical, whose list has no search, by the payload fingerprint of every request listed."""
        if self.api_version == "statistical":
            requests = self.hook.iter_requests(sort="created", api_version=self.api_version)
        else:
            requests = self.hook.iter_requests(search=self.tag, sort="created")
        return jobs_of(requests, self.tag, api_version=self.api_version, fingerprint=self.fingerprint)

    def from_store(self, context: Mapping[str, Any]) -> dict[str, Any] | None:
        """The stored request when it still fits (one GET), else ``None`` (the caller searches by tag)."""
        stored = read_stored(context, self.log)
        if stored is None:
            return None
        request: dict[str, Any] | None = None
        if stored.api_version == self.api_version and stored.fingerprint == self.fingerprint:
            try:
                request = self.hook.get_request(stored.request_id)
            except SentinelBatchAPIError as exc:
                if exc.status != 404:
                    raise
        why = check_stored(self.api_version, stored, self.fingerprint, request, self.tag)
        if why is None:
            return request
        self.log.info(
            "Airflow's task state store names batch request %s, but %s; looking for this task's requests by tag",
            stored.request_id,
            why,
        )
        return None

    def search(self, payload: Mapping[str, Any]) -> dict[str, Any] | None:
        """Decide from the tag search (see :func:`decide`) and log why; the request to re-attach to, or ``None``."""
        self.decision = decision = decide(self.api_version, self.tagged(), self.fingerprint)
        for job in decision.failed:
            self.log.info(
                "Earlier batch request %s of this task instance ended %s; not reusing it", job.id, job.why
            )
        for job in decision.superseded:
            changed = changed_fields(self.api_version, job.request, payload)
            self.log.warning(
                "Batch request %s (%s) of this task instance was made from a different payload (changed: %s); "
                "it is superseded and not reused",
                job.id,
                job.status,
                ", ".join(changed) or "fields the service does not echo",
            )
        if decision.job is None:
            return None
        if decision.unverified:
            changed = changed_fields(self.api_version, decision.job.request, payload)
            if changed:
                self.log.warning(
                    "Batch request %s of this task instance carries no payload fingerprint (it was created by an "
                    "older version of this provider), and these fields look different as the service echoes "
                    "them: %s. Re-attaching to it all the same; set reuse_existing=False to force a new job.",
                    decision.job.id,
                    ", ".join(changed),
                )
        return dict(decision.job.request)

    def find(self, context: Mapping[str, Any], payload: Mapping[str, Any]) -> dict[str, Any] | None:
        """The request a retry or rerun re-attaches to, or ``None`` when a new one must be created."""
        places: tuple[tuple[str, Callable[[], dict[str, Any] | None], str], ...] = (
            (
                "store",
                lambda: self.from_store(context),
                ", recorded by an earlier try in Airflow's task state store",
            ),
            ("search", lambda: self.search(payload), " created by an earlier try of this task"),
        )
        for place, look, how in places:
            request = look()
            if request is not None:
                self.found_in = place
                self.log.info(
                    "Re-attaching to batch request %s (%s)%s; not creating a new one",
                    request.get("id"),
                    request.get("status"),
                    how,
                )
                return request
        return None

    def stop_superseded(self) -> None:
        """Stop (v2) / cancel (v1) superseded requests that are still running (``stop_superseded=True``)."""
        for job in self.decision.superseded if self.decision else ():
            if job.status in TERMINAL[self.api_version]:
                continue
            if (
                self.api_version == "v2"
                and job.status == "CREATED"
                and job.request.get("userAction")
                in (
                    None,
                    "NONE",
                )
            ):
                self.log.info(
                    "Superseded batch request %s was never started (costs nothing): left as is", job.id
                )
                continue
            try:
                self.hook.stop_or_cancel(job.id, api_version=self.api_version)
            except SentinelBatchError as exc:
                self.log.warning("Could not stop superseded batch request %s: %s", job.id, exc)
            else:
                self.log.warning(
                    "Asked the service to stop superseded batch request %s (%s)", job.id, job.status
                )

    def remember(self, context: Mapping[str, Any], request_id: str) -> bool:
        """Record ``request_id`` in the task state store (Airflow 3.3+)."""
        return write_stored(context, StoredJob(request_id, self.fingerprint, self.api_version), self.log)

    def converge(self, own: dict[str, Any]) -> dict[str, Any]:
        """After this execution's create call: the request to use (its own, or an older concurrent one).

        A losing execution withdraws its own job while it is still CREATED (free): v1 deletes it; v2, which has
        no DELETE and refuses STOP in CREATED, renames it so the tag no longer finds it (never started, it costs
        nothing and the service cleans it up).
        """
        own_id = str(own["id"])
        result: Convergence | None = None
        for pause in self.settle_pauses:
            if pause:
                self.sleep(pause)
            try:
                result = converge(self.api_version, own_id, self.tagged(), self.fingerprint)
            except SentinelBatchError as exc:
                self.log.warning(
                    "Could not check for a concurrent execution of this task instance (%s); using request %s",
                    exc,
                    own_id,
                )
                return own
            if result.visible:
                break
        if result is None or not result.visible:
            self.log.warning(
                "Batch request %s is not in the service's list yet; using it without checking for a concurrent "
                "execution of this task instance",
                own_id,
            )
            return own
        if result.keep or result.survivor is None:
            if result.others:
                self.log.warning(
                    "Concurrent executions of this task instance also created %s; they use %s (the oldest) and "
                    "withdraw their own",
                    ", ".join(j.id for j in result.others),
                    own_id,
                )
            return own
        survivor = result.survivor
        self.log.warning(
            "Another execution of this task instance created batch request %s (%s) before this one created %s: "
            "using %s and withdrawing %s",
            survivor.id,
            survivor.status,
            own_id,
            survivor.id,
            own_id,
        )
        self.withdraw(own_id, description_of(own), survivor.id)
        return dict(survivor.request)

    def withdraw(self, request_id: str, description: str, survivor_id: str) -> None:
        """Take a duplicate CREATED request out of the tag search: delete (v1) or rename (v2); never raises.
        Batch Statistical can neither delete nor rename: the duplicate stays CREATED, and every execution keeps
        choosing the oldest request with the payload, so it is never started."""
        if self.api_version == "statistical":
            self.log.info(
                "Batch Statistical request %s stays CREATED (the API can neither delete nor rename it): it is never "
                "started, costs nothing, and the service deletes it after 7 days; this task instance uses %s",
                request_id,
                survivor_id,
            )
            return
        if self.api_version == "v1":
            try:
                self.hook.delete_request(request_id)
            except SentinelBatchError as exc:
                self.log.warning(
                    "Could not delete duplicate batch request %s (%s); renaming it", request_id, exc
                )
            else:
                self.log.info(
                    "Deleted duplicate batch request %s (never started, nothing was charged)", request_id
                )
                return
        renamed = withdrawn_description(description, self.tag, survivor_id)
        try:
            self.hook.update_request(request_id, description=renamed, api_version=self.api_version)
        except SentinelBatchError as exc:
            self.log.warning(
                "Could not withdraw duplicate batch request %s (%s): it stays CREATED, which costs nothing, and "
                "every execution of this task instance uses %s",
                request_id,
                exc,
                survivor_id,
            )
        else:
            self.log.info(
                "Renamed duplicate batch request %s (never started, costs nothing; the service cleans it up)",
                request_id,
            )
