"""Extra links of the operators and the sensor: the request's dashboard page and its output folder.

Their targets are pushed to XCom (``LINKS_KEY``) as soon as a task knows its request, so they work while the
task is deferred.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.common.compat.sdk import BaseOperator, BaseOperatorLink, XCom

LINKS_KEY = "sentinel_batch_links"


class _LinkFromXCom(BaseOperatorLink):
    key = ""

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        links = XCom.get_value(ti_key=ti_key, key=LINKS_KEY) or {}
        return str(links.get(self.key) or "")


class SentinelBatchDashboardLink(_LinkFromXCom):
    """The request's page in the Sentinel Hub / CDSE dashboard."""

    name = "Sentinel Hub batch request"
    key = "dashboard"


class SentinelBatchOutputLink(_LinkFromXCom):
    """Where the outputs are delivered (the request's own folder)."""

    name = "Batch output location"
    key = "output"
