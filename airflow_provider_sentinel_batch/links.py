"""Extra links of the operators and the sensor: the request's dashboard page and its output folder.

Their targets are pushed to XCom (``LINKS_KEY``) as soon as a task knows its request, so they work while the
task is deferred.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.common.compat.sdk import BaseOperator, BaseOperatorLink, XCom

LINKS_KEY = "sentinel_batch_links"


def recorded_links(ti_key: Any) -> dict[str, Any]:
    """The link targets a task instance recorded, ``{}`` when it recorded none (e.g. its create failed first).

    Airflow 3 asks every link for its target when the task ends, in the worker. A plain ``XCom.get_value`` for a
    key that was never pushed makes the worker's supervisor log an error ("XCom not found") into the task log;
    listing the key's values (one query, empty when nothing was pushed) is quiet. Airflow 2.11 reads the
    metadata DB, which is quiet either way.
    """
    get_all = getattr(XCom, "get_all", None)  # the Airflow 3 task SDK
    if get_all is None:
        return XCom.get_value(ti_key=ti_key, key=LINKS_KEY) or {}
    values = get_all(key=LINKS_KEY, dag_id=ti_key.dag_id, task_id=ti_key.task_id, run_id=ti_key.run_id)
    if not values:
        return {}
    map_index = getattr(ti_key, "map_index", -1)
    if map_index is None or map_index < 0:  # one value: this task's
        return dict(values[0] or {})
    # a mapped task's values carry no map index: ask for this one's (some map index did record links)
    return XCom.get_value(ti_key=ti_key, key=LINKS_KEY) or {}


class _LinkFromXCom(BaseOperatorLink):
    key = ""

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        return str(recorded_links(ti_key).get(self.key) or "")


class SentinelBatchDashboardLink(_LinkFromXCom):
    """The request's page in the Sentinel Hub / CDSE dashboard."""

    name = "Sentinel Hub batch request"
    key = "dashboard"


class SentinelBatchOutputLink(_LinkFromXCom):
    """Where the outputs are delivered (the request's own folder)."""

    name = "Batch output location"
    key = "output"
