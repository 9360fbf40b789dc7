"""One execution of the create task instance ``identity.create`` of a given run, in a process of its own.

Used by the concurrency test: two of these run the *same* task instance at the same moment, as an executor that
delivers a task twice would. Usage::

    python -m tests.integration.identity_racer <api_version> <run_id>

The connection comes from ``AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT``. The process imports everything, builds the
operator and fetches its token, prints ``RACER ready``, waits for a line on stdin, executes the create and prints
``RACER {"request_id": ...}`` (or ``RACER {"error": ...}``); other lines on stdout are Airflow's logs.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from tests.seed import seed_payload


class FakeTI:
    """The task instance surface the create operator uses: identity fields and XCom push."""

    def __init__(self, run_id: str = "manual__identity", map_index: int = -1) -> None:
        self.dag_id, self.task_id, self.run_id, self.map_index = "identity", "create", run_id, map_index
        self.try_number = 1
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


def payload(version: str, evalscript_suffix: str = "") -> dict[str, Any]:
    """The Corsica request (v1), or the same job in v2's shape, optionally with a changed evalscript."""
    p = seed_payload("corsica-bucket")
    p["processRequest"]["evalscript"] += evalscript_suffix
    if version == "v2":
        del p["tilingGrid"], p["bucketName"]
        p["input"] = {"type": "tiling-grid", "id": 0, "resolution": 60.0}
        p["output"] = {"type": "raster", "delivery": {"s3": {"url": "s3://corsica-bucket/v2"}}}
    return p


PREFIX = "RACER "


def main(version: str, run_id: str) -> int:
    from airflow_provider_sentinel_batch.operators.batch import SentinelBatchCreateOperator

    op = SentinelBatchCreateOperator(task_id="create", payload=payload(version), api_version=version)
    op.hook.get_token()  # warm up: after "go", both executions only make the create task's own calls
    print("RACER ready", flush=True)
    sys.stdin.readline()
    ti = FakeTI(run_id)
    try:
        result: dict[str, Any] = {"request_id": op.execute({"ti": ti, "run_id": run_id})}
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print("RACER " + json.dumps(result), flush=True)
    return 0 if "request_id" in result else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
