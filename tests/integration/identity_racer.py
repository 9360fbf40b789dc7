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

from tests.fakes import FakeTI
from tests.payloads import corsica_v1, corsica_v2

__all__ = ["PREFIX", "FakeTI", "context", "payload"]


def context(run_id: str = "manual__identity") -> dict[str, Any]:
    """A task context of the create task instance ``identity.create`` of run ``run_id``."""
    ti = FakeTI("create", dag_id="identity", run_id=run_id)
    return {"ti": ti, "run_id": run_id}


def payload(version: str, evalscript_suffix: str = "") -> dict[str, Any]:
    """The Corsica request (v1), or the same job in v2's shape, optionally with a changed evalscript."""
    p = corsica_v1("corsica-bucket") if version == "v1" else corsica_v2("s3://corsica-bucket/v2")
    p["processRequest"]["evalscript"] += evalscript_suffix
    return p


PREFIX = "RACER "


def main(version: str, run_id: str) -> int:
    from airflow_provider_sentinel_batch.operators.batch import SentinelBatchCreateOperator

    op = SentinelBatchCreateOperator(task_id="create", payload=payload(version), api_version=version)
    op.hook.get_token()  # warm up: after "go", both executions only make the create task's own calls
    print("RACER ready", flush=True)
    sys.stdin.readline()
    try:
        result: dict[str, Any] = {"request_id": op.execute(context(run_id))}
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print("RACER " + json.dumps(result), flush=True)
    return 0 if "request_id" in result else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
