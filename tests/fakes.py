"""Stand-ins for Airflow runtime objects in tests that call ``execute``/``poke`` directly."""

from __future__ import annotations

from typing import Any


class FakeTI:
    """A task instance that keeps its XCom pushes in ``xcoms`` and answers pulls from them."""

    def __init__(
        self,
        task_id: str = "create",
        map_index: int = -1,
        *,
        dag_id: str = "corsica",
        run_id: str = "manual__2019",
        try_number: int = 1,
    ) -> None:
        self.dag_id, self.task_id, self.map_index, self.run_id = dag_id, task_id, map_index, run_id
        self.try_number = try_number
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        """Record ``value`` under ``key``."""
        self.xcoms[key] = value

    def xcom_pull(self, task_ids: Any = None, key: str = "return_value", **_: Any) -> Any:
        """What was pushed under ``key`` (any task id), else None."""
        return self.xcoms.get(key)
