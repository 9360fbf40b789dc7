"""Job identity: fingerprint, labels, the re-attach table, the task state store and the convergence rule."""

from __future__ import annotations

import copy
import logging

import pytest

from airflow_provider_sentinel_batch import identity
from airflow_provider_sentinel_batch.exceptions import SentinelBatchAPIError, SentinelBatchError
from airflow_provider_sentinel_batch.identity import (
    CREATE,
    REATTACH,
    Job,
    StoredJob,
    TaskJobs,
    changed_fields,
    check_stored,
    converge,
    decide,
    payload_fingerprint,
)
from tests.payloads import corsica_v1

TAG = "airflow-0123456789abcdef"
OTHER_TAG = "airflow-fedcba9876543210"
LOG = logging.getLogger("test-identity")


def v2_payload(**s3):
    return {
        "processRequest": {
            "input": {"bounds": {"bbox": [8.4, 41.3, 9.7, 43.1]}},
            "evalscript": "//VERSION=3 a",
        },
        "input": {"type": "tiling-grid", "id": 0, "resolution": 60.0},
        "output": {"type": "raster", "delivery": {"s3": {"url": "s3://bucket/corsica", **s3}}},
        "description": "Corsica",
    }


def job(jid, status="CREATED", created="2026-01-01T10:00:00.000Z", fingerprint="aaaaaaaaaaaa", **request):
    return Job(
        id=jid, status=status, created=created, fingerprint=fingerprint, request={"id": jid, **request}
    )


# ---------------------------------------------------------------------------------------------- fingerprint
def test_fingerprint_is_short_hex_and_stable():
    fp = payload_fingerprint(corsica_v1())
    assert len(fp) == 12 and int(fp, 16) >= 0
    assert payload_fingerprint(copy.deepcopy(corsica_v1())) == fp


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p["processRequest"].__setitem__(
            "evalscript", p["processRequest"]["evalscript"] + "\n// v2"
        ),
        lambda p: p["processRequest"]["input"]["data"][0]["dataFilter"]["timeRange"].__setitem__(
            "to", "2019-07-31T00:00:00Z"
        ),
        lambda p: p["processRequest"]["input"]["bounds"].__setitem__("bbox", [8.4, 41.3, 9.7, 43.1]),
        lambda p: p.__setitem__("bucketName", "another-bucket"),
        lambda p: p["tilingGrid"].__setitem__("resolution", 20.0),
        lambda p: p["processRequest"]["output"]["responses"][0]["format"].__setitem__("type", "image/png"),
    ],
    ids=["evalscript", "time-range", "bbox", "bucket", "resolution", "output-format"],
)
def test_what_is_computed_or_where_it_goes_changes_the_fingerprint(change):
    changed = corsica_v1()
    change(changed)
    assert payload_fingerprint(changed) != payload_fingerprint(corsica_v1())


def test_description_key_order_and_float_spelling_do_not_change_the_fingerprint():
    a = corsica_v1()
    b = dict(reversed(list(corsica_v1().items())))  # other key order
    b["description"] = "renamed"
    b["tilingGrid"] = {"resolution": 60, "id": 0}  # 60 == 60.0 (a template may render either)
    assert payload_fingerprint(a) == payload_fingerprint(b)


def test_rotated_bucket_keys_are_not_a_change_and_never_enter_the_canonical_form():
    old = v2_payload(accessKey="AKIAOLD", secretAccessKey="old-secret-1")
    new = v2_payload(accessKey="AKIANEW", secretAccessKey="new-secret-2", sessionToken="tok")
    role = v2_payload(iamRoleARN="arn:aws:iam::1:role/x")
    plain = v2_payload()
    assert (
        payload_fingerprint(old)
        == payload_fingerprint(new)
        == payload_fingerprint(role)
        == (payload_fingerprint(plain))
    )
    text = identity.canonical_json(new)
    assert "new-secret-2" not in text and "AKIANEW" not in text and "tok" not in text
    # GeoPackage input keys are credentials too, at any depth
    gpkg = v2_payload()
    gpkg["input"] = {
        "type": "geopackage",
        "features": {"s3": {"url": "s3://b/f.gpkg", "secretAccessKey": "x"}},
    }
    gpkg2 = copy.deepcopy(gpkg)
    gpkg2["input"]["features"]["s3"]["secretAccessKey"] = "y"
    assert payload_fingerprint(gpkg) == payload_fingerprint(gpkg2)


def test_credential_free_copies_and_leaves_the_input_alone():
    payload = v2_payload(accessKey="AK", secretAccessKey="SK")
    cleaned = identity.credential_free(payload)
    assert cleaned["output"]["delivery"]["s3"] == {"url": "s3://bucket/corsica"}
    assert payload["output"]["delivery"]["s3"]["secretAccessKey"] == "SK"


# ---------------------------------------------------------------------------------------------- labels
def test_label_round_trip_and_search_token():
    fp = payload_fingerprint(corsica_v1())
    text = identity.labelled_description("Max NDVI over Corsica", TAG, fp)
    assert text == f"Max NDVI over Corsica [{TAG} payload-{fp}]"
    assert TAG in text  # the list search finds it by the tag alone
    assert identity.find_label(text, TAG) == (True, fp)
    assert identity.find_label(text, OTHER_TAG) == (False, None)
    assert identity.labelled_description(None, TAG, fp) == f"[{TAG} payload-{fp}]"


def test_labels_written_before_fingerprints_are_still_found():
    assert identity.find_label(f"Max NDVI [{TAG}]", TAG) == (True, None)


def test_withdrawn_description_drops_only_this_tag():
    fp = "abcdefabcdef"
    text = f"x [{OTHER_TAG} payload-{fp}] [{TAG} payload-{fp}]"
    out = identity.withdrawn_description(text, TAG, "survivor-1")
    assert TAG not in out and OTHER_TAG in out and "duplicate of survivor-1" in out


def test_task_tag_matches_the_operator_tag():
    from airflow_provider_sentinel_batch.operators.batch import idempotency_tag

    class TI:
        dag_id, task_id, run_id, map_index = "d", "t", "r", 3

    context = {"ti": TI(), "run_id": "r"}
    assert identity.task_tag(context) == idempotency_tag(context)


def test_job_from_request_v1_and_v2():
    v1 = {
        "id": "a",
        "status": "FAILED",
        "created": "2026-01-01T00:00:00Z",
        "description": f"[{TAG}]",
        "error": "e",
    }
    v2 = {
        "id": "b",
        "status": "STOPPED",
        "stoppedStatusReason": "OUT_OF_PU",
        "request": {"description": f"[{TAG}]"},
    }
    assert Job.from_request(v1, TAG).why == "FAILED: e"
    assert Job.from_request(v2, TAG).why == "STOPPED: OUT_OF_PU"
    # the search matches substrings: a look-alike without this task's label is not this task's job
    assert Job.from_request({"id": "c", "description": f"mentions {TAG} in prose"}, TAG) is None
    assert identity.jobs_of([v1, v2, {"id": "d", "description": "other"}], TAG)[1].id == "b"


# ---------------------------------------------------------------------------------------------- decide
FP = "aaaaaaaaaaaa"
OLD_FP = "bbbbbbbbbbbb"


@pytest.mark.parametrize("status", ["CREATED", "ANALYSING", "ANALYSIS_DONE", "PROCESSING", "DONE", "PARTIAL"])
def test_same_payload_active_or_done_reattaches(status):
    d = decide("v1", [job("a", status)], FP)
    assert d.action == REATTACH and d.job.id == "a" and not d.unverified


@pytest.mark.parametrize(
    ("version", "status"), [("v1", "FAILED"), ("v1", "CANCELED"), ("v2", "FAILED"), ("v2", "STOPPED")]
)
def test_failed_previous_job_means_a_new_one_and_is_named(version, status):
    d = decide(version, [job("old", status)], FP)
    assert d.action == CREATE and [j.id for j in d.failed] == ["old"]


def test_v1_partial_is_reattached_but_v2_has_no_partial_and_stopped_is_a_failure():
    assert decide("v1", [job("a", "PARTIAL")], FP).action == REATTACH
    assert decide("v2", [job("a", "STOPPED")], FP).action == CREATE


@pytest.mark.parametrize("status", ["CREATED", "PROCESSING", "DONE", "FAILED"])
def test_changed_payload_supersedes_whatever_the_old_status(status):
    d = decide("v2", [job("old", status, fingerprint=OLD_FP)], FP)
    assert d.action == CREATE and [j.id for j in d.superseded] == ["old"] and not d.failed


def test_reverted_payload_reattaches_to_the_job_of_that_payload():
    jobs = [
        job("first", "DONE", "2026-01-01T10:00:00Z", FP),
        job("second", "PROCESSING", "2026-01-02T10:00:00Z", OLD_FP),
    ]
    d = decide("v1", jobs, FP)
    assert d.action == REATTACH and d.job.id == "first" and [j.id for j in d.superseded] == ["second"]


def test_several_matching_jobs_pick_the_oldest_ties_by_id():
    jobs = [
        job("c", created="2026-01-01T10:00:01.000Z"),
        job("b", created="2026-01-01T10:00:00.000Z"),
        job("a", created="2026-01-01T10:00:00.000Z"),
    ]
    assert decide("v2", jobs, FP).job.id == "a"
    assert decide("v2", list(reversed(jobs)), FP).job.id == "a"


def test_fingerprinted_job_wins_over_a_legacy_one_and_legacy_alone_is_unverified():
    legacy = job("legacy", created="2025-01-01T00:00:00Z", fingerprint=None)
    assert decide("v1", [legacy, job("new")], FP).job.id == "new"
    d = decide("v1", [legacy], FP)
    assert d.action == REATTACH and d.job.id == "legacy" and d.unverified


def test_nothing_found_creates():
    assert decide("v1", [], FP) == identity.Decision(CREATE)


def test_unparseable_created_sorts_last_deterministically():
    jobs = [job("a", created=None), job("b", created="not a date"), job("c", created="2026-01-01T00:00:00Z")]
    assert decide("v1", jobs, FP).job.id == "c"
    assert decide("v1", jobs[:2], FP).job.id == "a"


# ---------------------------------------------------------------------------------------------- check_stored
def stored(fp=FP, version="v1", rid="r1"):
    return StoredJob(rid, fp, version)


def req(status="PROCESSING", fp=FP, tag=TAG, rid="r1"):
    return {"id": rid, "status": status, "description": f"x [{tag} payload-{fp}]"}


def test_stored_request_that_fits_is_reattached():
    assert check_stored("v1", stored(), FP, req(), TAG) is None
    assert check_stored("v1", stored(), FP, req("DONE"), TAG) is None


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("v2", stored(), FP, req(), TAG), "Batch v1 request"),
        (("v1", stored(OLD_FP), FP, req(fp=OLD_FP), TAG), "different payload"),
        (("v1", stored(), FP, None, TAG), "404"),
        (("v1", stored(), FP, req(tag=OTHER_TAG), TAG), "no longer carries"),
        (("v1", stored(), FP, req(fp=OLD_FP), TAG), "names a different payload"),
        (("v1", stored(), FP, req("CANCELED"), TAG), "ended CANCELED"),
        (("v2", stored(version="v2"), FP, req("STOPPED"), TAG), "ended STOPPED"),
    ],
)
def test_stored_request_that_does_not_fit_falls_back_with_a_reason(args, reason):
    assert reason in check_stored(*args)


def test_stored_job_json_round_trip_and_garbage():
    s = stored()
    assert StoredJob.from_json(s.to_json()) == s
    for bad in (None, "r1", {"request_id": "r1"}, {"request_id": 1, "fingerprint": FP, "api_version": "v1"}):
        assert StoredJob.from_json(bad) is None


# ---------------------------------------------------------------------------------------------- state store
class FakeStore:
    """The task state store's get/set surface (Airflow 3.3), in memory."""

    def __init__(self, fail: bool = False) -> None:
        self.data: dict[str, object] = {}
        self.fail = fail

    def get(self, key, default=None):
        if self.fail:
            raise RuntimeError("supervisor comms down")
        return self.data.get(key, default)

    def set(self, key, value, *, retention=None):
        if self.fail:
            raise RuntimeError("supervisor comms down")
        self.data[key] = value


def test_store_absent_on_older_airflow_is_none():
    assert identity.state_store({"ti": object()}) is None
    assert identity.read_stored({}, LOG) is None
    assert identity.write_stored({}, stored(), LOG) is False


def test_store_round_trip():
    store = FakeStore()
    context = {"task_state_store": store}
    assert identity.write_stored(context, stored(), LOG)
    assert store.data[identity.STATE_KEY] == {"request_id": "r1", "fingerprint": FP, "api_version": "v1"}
    assert identity.read_stored(context, LOG) == stored()


def test_store_errors_fall_back_quietly(caplog):
    context = {"task_state_store": FakeStore(fail=True)}
    with caplog.at_level(logging.WARNING):
        assert identity.read_stored(context, LOG) is None
        assert identity.write_stored(context, stored(), LOG) is False
    assert "task state store" in caplog.text


def test_unrecognised_store_entry_is_ignored(caplog):
    store = FakeStore()
    store.data[identity.STATE_KEY] = "just-an-id"
    with caplog.at_level(logging.WARNING):
        assert identity.read_stored({"task_state_store": store}, LOG) is None
    assert "unrecognised" in caplog.text


# ---------------------------------------------------------------------------------------------- converge
def test_the_oldest_live_same_payload_job_survives_for_every_racer():
    a = job("a", created="2026-01-01T10:00:00.100Z")
    b = job("b", created="2026-01-01T10:00:00.200Z")
    seen = [
        b,
        a,
        job("f", "FAILED", "2026-01-01T09:00:00Z"),
        job("x", "DONE", "2026-01-01T08:00:00Z", OLD_FP),
    ]
    ra, rb = converge("v1", "a", seen, FP), converge("v1", "b", seen, FP)
    assert ra.keep and ra.survivor.id == "a" and [j.id for j in ra.others] == ["b"]
    assert not rb.keep and rb.survivor.id == "a"


def test_equal_creation_times_tie_by_id():
    seen = [job("b"), job("a")]
    assert converge("v2", "a", seen, FP).keep and not converge("v2", "b", seen, FP).keep


def test_no_decision_before_the_own_job_is_listed():
    r = converge("v1", "mine", [job("a")], FP)
    assert r.keep and not r.visible and r.survivor is None


def test_alone_keeps_its_job():
    r = converge("v1", "a", [job("a")], FP)
    assert r.keep and r.visible and r.survivor.id == "a" and not r.others


def test_an_older_done_job_of_the_same_payload_wins_over_a_fresh_one():
    # e.g. a job the pre-create search could not see yet (list lag): the fresh duplicate yields
    r = converge("v1", "new", [job("new", created="2026-01-02T00:00:00Z"), job("old", "DONE")], FP)
    assert not r.keep and r.survivor.id == "old"


# ---------------------------------------------------------------------------------------------- changed fields
def test_changed_fields_names_top_level_and_second_level_fields():
    old = corsica_v1()
    new = corsica_v1()
    new["processRequest"]["evalscript"] += "\n// fixed"
    new["tilingGrid"]["resolution"] = 20.0
    service_v1 = {"id": "r", "status": "DONE", "tileCount": 3, "created": "…", **old}
    assert changed_fields("v1", service_v1, new) == ["processRequest.evalscript", "tilingGrid.resolution"]
    new2 = corsica_v1()
    new2["bucketName"] = "b2"
    assert changed_fields("v1", service_v1, new2) == ["bucketName"]


def test_changed_fields_v2_ignores_service_defaults_and_credentials():
    old = v2_payload(accessKey="A", secretAccessKey="S")
    service_v2 = {"id": "r", "request": {**{k: v for k, v in old.items()}, "instanceType": "normal"}}
    assert changed_fields("v2", service_v2, v2_payload(accessKey="B", secretAccessKey="T")) == []
    new = v2_payload()
    new["output"]["delivery"]["s3"]["url"] = "s3://bucket/other"
    assert changed_fields("v2", service_v2, new) == ["output.delivery"]


def test_a_removed_field_is_named():
    old = corsica_v1()
    old["zarrOutput"] = {"path": "s3://b/z"}
    assert changed_fields("v1", {"id": "r", **old}, corsica_v1()) == ["zarrOutput"]


# ---------------------------------------------------------------------------------------------- TaskJobs
class FakeHook:
    """The hook calls TaskJobs makes, against an in-memory list of requests."""

    def __init__(
        self, requests=(), *, visible_after=0, list_error=None, delete_error=None, update_error=None
    ):
        self.requests = [dict(r) for r in requests]
        self.calls: list[tuple] = []
        self.visible_after = visible_after  # lists that still miss the newest request
        self.list_error = list_error
        self.delete_error = delete_error
        self.update_error = update_error

    def iter_requests(self, *, search=None, sort=None):
        self.calls.append(("list", search))
        if self.list_error:
            raise self.list_error
        shown = self.requests
        if self.visible_after > 0:
            self.visible_after -= 1
            shown = self.requests[:-1]
        return iter([r for r in shown if search in identity.description_of(r)])

    def get_request(self, request_id):
        self.calls.append(("get", request_id))
        for r in self.requests:
            if r["id"] == request_id:
                return r
        raise SentinelBatchAPIError(status=404, method="GET", url="u", message="not found")

    def delete_request(self, request_id):
        self.calls.append(("delete", request_id))
        if self.delete_error:
            raise self.delete_error
        self.requests = [r for r in self.requests if r["id"] != request_id]

    def update_request(self, request_id, *, description, api_version=None):
        self.calls.append(("update", request_id))
        if self.update_error:
            raise self.update_error
        for r in self.requests:
            if r["id"] == request_id:
                r["description"] = description
        return {}

    def stop_or_cancel(self, request_id, *, api_version=None):
        self.calls.append(("stop", request_id))


PAYLOAD = corsica_v1()
PFP = payload_fingerprint(PAYLOAD)


def tagged(rid, status="CREATED", created="2026-01-01T10:00:00.000Z", fp=PFP, **extra):
    return {
        "id": rid,
        "status": status,
        "created": created,
        "description": f"d [{TAG} payload-{fp}]",
        **extra,
    }


def jobs_for(hook, version="v1", sleeps=None):
    return TaskJobs(
        hook=hook,
        api_version=version,
        tag=TAG,
        fingerprint=PFP,
        log=LOG,
        sleep=(sleeps.append if sleeps is not None else lambda s: None),
    )


def test_store_hit_is_one_get_and_no_list():
    hook = FakeHook([tagged("r1", "PROCESSING")])
    store = FakeStore()
    store.data[identity.STATE_KEY] = StoredJob("r1", PFP, "v1").to_json()
    found = jobs_for(hook).find({"task_state_store": store}, PAYLOAD)
    assert found["id"] == "r1" and hook.calls == [("get", "r1")]


def test_store_pointing_at_a_failed_job_falls_back_to_the_search(caplog):
    hook = FakeHook([tagged("r1", "FAILED", error="boom")])
    store = FakeStore()
    store.data[identity.STATE_KEY] = StoredJob("r1", PFP, "v1").to_json()
    with caplog.at_level(logging.INFO):
        assert jobs_for(hook).find({"task_state_store": store}, PAYLOAD) is None
    assert hook.calls == [("get", "r1"), ("list", TAG)]
    assert "ended FAILED" in caplog.text and "r1" in caplog.text and "boom" in caplog.text


def test_store_pointing_at_a_deleted_job_falls_back_to_the_search():
    hook = FakeHook([tagged("r2", "PROCESSING")])
    store = FakeStore()
    store.data[identity.STATE_KEY] = StoredJob("gone", PFP, "v1").to_json()
    assert jobs_for(hook).find({"task_state_store": store}, PAYLOAD)["id"] == "r2"
    assert hook.calls == [("get", "gone"), ("list", TAG)]


def test_store_with_another_fingerprint_skips_the_get_and_logs_the_superseded_job(caplog):
    old = corsica_v1()
    old["processRequest"]["evalscript"] = "//VERSION=3 old"
    old_fp = payload_fingerprint(old)
    hook = FakeHook(
        [tagged("r1", "PROCESSING", fp=old_fp, **{k: v for k, v in old.items() if k != "description"})]
    )
    store = FakeStore()
    store.data[identity.STATE_KEY] = StoredJob("r1", old_fp, "v1").to_json()
    tj = jobs_for(hook)
    with caplog.at_level(logging.INFO):
        assert tj.find({"task_state_store": store}, PAYLOAD) is None
    assert hook.calls == [("list", TAG)]
    assert "r1 (PROCESSING)" in caplog.text and "changed: processRequest.evalscript" in caplog.text
    tj.stop_superseded()
    assert hook.calls[-1] == ("stop", "r1")


def test_non_404_errors_of_the_stored_get_propagate():
    class Hook(FakeHook):
        def get_request(self, request_id):
            raise SentinelBatchAPIError(status=500, method="GET", url="u", message="down")

    store = FakeStore()
    store.data[identity.STATE_KEY] = StoredJob("r1", PFP, "v1").to_json()
    with pytest.raises(SentinelBatchAPIError):
        jobs_for(Hook()).find({"task_state_store": store}, PAYLOAD)


def test_stop_superseded_leaves_finished_and_never_started_v2_jobs():
    hook = FakeHook(
        [
            tagged("done", "DONE", fp=OLD_FP),
            tagged("fresh", "CREATED", fp=OLD_FP, userAction="NONE"),
            tagged("run", "PROCESSING", fp=OLD_FP),
        ]
    )
    tj = jobs_for(hook, "v2")
    assert tj.search(PAYLOAD) is None
    tj.stop_superseded()
    assert [c for c in hook.calls if c[0] == "stop"] == [("stop", "run")]


def test_converge_keeps_its_own_job_when_oldest():
    hook = FakeHook(
        [tagged("mine", created="2026-01-01T10:00:00.000Z"), tagged("late", created="2026-01-01T10:00:01Z")]
    )
    assert jobs_for(hook).converge(hook.requests[0])["id"] == "mine"
    assert [c[0] for c in hook.calls] == ["list"]


def test_converge_v1_loser_deletes_its_own_job_and_returns_the_survivor():
    hook = FakeHook(
        [
            tagged("first", created="2026-01-01T10:00:00.000Z"),
            tagged("mine", created="2026-01-01T10:00:00.500Z"),
        ]
    )
    assert jobs_for(hook).converge(dict(hook.requests[1]))["id"] == "first"
    assert ("delete", "mine") in hook.calls and [r["id"] for r in hook.requests] == ["first"]


def test_converge_v1_falls_back_to_renaming_when_delete_is_refused():
    err = SentinelBatchAPIError(status=409, method="DELETE", url="u", message="conflict")
    hook = FakeHook([tagged("first"), tagged("mine", created="2026-01-01T10:00:00.500Z")], delete_error=err)
    assert jobs_for(hook).converge(dict(hook.requests[1]))["id"] == "first"
    assert ("update", "mine") in hook.calls
    assert TAG not in hook.requests[1]["description"]


def test_converge_v2_loser_renames_its_job_out_of_the_tag_search():
    first = {
        "id": "first",
        "status": "CREATED",
        "created": "2026-01-01T10:00:00Z",
        "request": {"description": f"[{TAG} payload-{PFP}]"},
    }
    mine = {
        "id": "mine",
        "status": "CREATED",
        "created": "2026-01-01T10:00:01Z",
        "request": {"description": f"d [{TAG} payload-{PFP}]"},
    }
    hook = FakeHook([first, mine])
    assert jobs_for(hook, "v2").converge(dict(mine))["id"] == "first"
    assert ("update", "mine") in hook.calls and not any(c[0] in ("delete", "stop") for c in hook.calls)
    assert identity.jobs_of(hook.requests, TAG) == [identity.Job.from_request(first, TAG)]


def test_converge_never_fails_the_task_when_withdrawing_fails(caplog):
    err = SentinelBatchError("nope")
    hook = FakeHook(
        [tagged("first"), tagged("mine", created="2026-01-01T10:00:01Z")], delete_error=err, update_error=err
    )
    with caplog.at_level(logging.WARNING):
        assert jobs_for(hook).converge(dict(hook.requests[1]))["id"] == "first"
    assert "costs nothing" in caplog.text


def test_converge_waits_for_its_own_job_to_be_listed():
    hook = FakeHook([tagged("first"), tagged("mine", created="2026-01-01T10:00:01Z")], visible_after=2)
    sleeps: list[float] = []
    assert jobs_for(hook, sleeps=sleeps).converge(dict(hook.requests[1]))["id"] == "first"
    assert [c[0] for c in hook.calls].count("list") == 3 and sleeps == [1.0, 2.0]


def test_converge_gives_up_waiting_and_keeps_its_job(caplog):
    hook = FakeHook([tagged("first"), tagged("mine", created="2026-01-01T10:00:01Z")], visible_after=99)
    sleeps: list[float] = []
    with caplog.at_level(logging.WARNING):
        assert jobs_for(hook, sleeps=sleeps).converge(dict(hook.requests[1]))["id"] == "mine"
    assert sum(sleeps) == sum(identity.SETTLE_PAUSES) and "not in the service's list yet" in caplog.text


def test_converge_keeps_its_job_when_the_list_fails():
    hook = FakeHook([tagged("mine")], list_error=SentinelBatchError("list down"))
    assert jobs_for(hook).converge(dict(hook.requests[0]))["id"] == "mine"


def test_remember_writes_id_fingerprint_and_version():
    store = FakeStore()
    assert jobs_for(FakeHook(), "v2").remember({"task_state_store": store}, "r9")
    assert store.data[identity.STATE_KEY] == {"request_id": "r9", "fingerprint": PFP, "api_version": "v2"}


# ---------------------------------------------------------------------------------------------- Batch Statistical
def stat_body(**changes):
    from tests.emulator.stat_helpers import stat_payload

    return stat_payload(**changes)


SFP = identity.statistical_fingerprint(stat_body())


def stat_request(rid, status="CREATED", created="2026-01-01T10:00:00Z", body=None, **extra):
    """A Batch Statistical request as the service lists it: no description, the payload under ``request``."""
    return {"id": rid, "status": status, "created": created, "request": body or stat_body(), **extra}


class StatHook(FakeHook):
    """The statistical list has no ``search``: TaskJobs must list everything and compare payloads."""

    def iter_requests(self, *, search=None, sort=None, api_version=None):
        assert search is None and api_version == "statistical"
        self.calls.append(("list", None))
        shown = self.requests[:-1] if self.visible_after > 0 else self.requests
        self.visible_after = max(0, self.visible_after - 1)
        return iter(shown)


def stat_jobs(hook, fingerprint=SFP):
    return TaskJobs(
        hook=hook, api_version="statistical", tag=TAG, fingerprint=fingerprint, log=LOG, sleep=lambda s: None
    )


def test_statistical_fingerprint_ignores_keys_nulls_regions_and_service_fields():
    keyless = stat_body()
    for place in (keyless["input"]["features"]["s3"], keyless["output"]["s3"]):
        del place["accessKey"], place["secretAccessKey"]
    keyless["output"]["s3"]["region"] = "eu-central-1"
    keyless["aggregation"]["width"] = None
    echoed = {**stat_body(), "id": "r1", "status": "DONE", "costPU": 3.0, "domainAccountId": "x"}
    assert identity.statistical_fingerprint(keyless) == identity.statistical_fingerprint(echoed) == SFP
    assert identity.fingerprint("statistical", keyless) == SFP
    assert identity.fingerprint("v2", v2_payload()) == payload_fingerprint(v2_payload())


@pytest.mark.parametrize(
    "change",
    [
        {"aggregation.timeRange": {"from": "2024-05-01T00:00:00Z", "to": "2024-07-01T00:00:00Z"}},
        {"aggregation.evalscript": "//VERSION=3 other"},
        {"aggregation.aggregationInterval": {"of": "P10D"}},
        {"aggregation.resx": 20},
        {"calculations": {}},
        {"input.features.s3.url": "s3://stat-bucket/input/other.gpkg"},
        {"output.s3.url": "s3://stat-bucket/elsewhere"},
    ],
    ids=["time-range", "evalscript", "interval", "resolution", "calculations", "features", "output"],
)
def test_what_a_statistical_request_computes_or_where_it_writes_changes_its_fingerprint(change):
    assert identity.statistical_fingerprint(stat_body(**change)) != SFP


def test_a_statistical_request_belongs_by_its_payload_not_a_tag():
    assert identity.belongs("statistical", stat_request("r1"), TAG, SFP) == (True, SFP)
    other = stat_request("r2", body=stat_body(**{"output.s3.url": "s3://b/x"}))
    assert identity.belongs("statistical", other, TAG, SFP) == (False, None)
    assert identity.belongs("statistical", {"id": "r3"}, TAG, SFP) == (False, None)
    jobs = identity.jobs_of([stat_request("r1"), other], TAG, api_version="statistical", fingerprint=SFP)
    assert [(j.id, j.fingerprint) for j in jobs] == [("r1", SFP)]


def test_statistical_store_checks():
    stored = StoredJob("r1", SFP, "statistical")
    assert check_stored("statistical", stored, SFP, stat_request("r1", "PROCESSING"), TAG) is None
    changed = stat_request("r1", body=stat_body(**{"aggregation.resx": 20}))
    assert check_stored("statistical", stored, SFP, changed, TAG) == (
        "the service's copy of it was made from a different payload"
    )
    assert check_stored("statistical", stored, SFP, stat_request("r1", "STOPPED"), TAG) == "it ended STOPPED"
    assert check_stored("v2", stored, SFP, None, TAG) == (
        "it is a Batch statistical request and this task now uses v2"
    )


def test_statistical_find_reattaches_to_the_oldest_live_request_of_the_payload():
    other = stat_body(**{"output.s3.url": "s3://b/x"})
    hook = StatHook(
        [
            stat_request("failed", "FAILED", "2026-01-01T09:00:00Z"),
            stat_request("other-payload", "PROCESSING", "2026-01-01T09:30:00Z", body=other),
            stat_request("live", "PROCESSING", "2026-01-01T10:00:00Z"),
            stat_request("younger", "CREATED", "2026-01-01T11:00:00Z"),
        ]
    )
    jobs = stat_jobs(hook)
    assert jobs.find({}, stat_body())["id"] == "live" and jobs.found_in == "search"
    assert [j.id for j in jobs.decision.failed] == ["failed"] and jobs.decision.superseded == ()
    assert hook.calls == [("list", None)]


def test_statistical_store_hit_is_one_get():
    hook = StatHook([stat_request("r1", "DONE")])
    store = FakeStore()
    store.data[identity.STATE_KEY] = StoredJob("r1", SFP, "statistical").to_json()
    assert stat_jobs(hook).find({"task_state_store": store}, stat_body())["id"] == "r1"
    assert hook.calls == [("get", "r1")]


def test_statistical_converge_loser_uses_the_oldest_and_leaves_its_own_created(caplog):
    hook = StatHook(
        [stat_request("first"), stat_request("mine", created="2026-01-01T10:00:01Z")], visible_after=1
    )
    with caplog.at_level(logging.INFO, logger=LOG.name):
        used = stat_jobs(hook).converge(dict(hook.requests[1]))
    assert used["id"] == "first"
    assert hook.calls == [("list", None), ("list", None)]  # waited until its own request was listed
    assert "stays CREATED (the API can neither delete nor rename it)" in caplog.text
    assert stat_jobs(hook).converge(dict(hook.requests[0]))["id"] == "first"  # the winner keeps its own
