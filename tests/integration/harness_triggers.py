"""A tiny trigger and deferring operator for the harness tests.

They live in an importable module, not in a DAG file, because the triggerer (and ``dag.test()``) rebuilds
the trigger from its classpath.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.providers.common.compat.connection import get_async_connection, get_async_extra_dejson
from airflow.providers.common.compat.sdk import BaseHook, BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent


class EchoConnectionTrigger(BaseTrigger):
    """Sleeps, then reads a connection the async way (as a real trigger must) and echoes it in its event."""

    def __init__(self, conn_id: str, delay: float = 0.1, note: str = "") -> None:
        super().__init__()
        self.conn_id = conn_id
        self.delay = delay
        self.note = note

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{__name__}.EchoConnectionTrigger", {
            "conn_id": self.conn_id,
            "delay": self.delay,
            "note": self.note,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        await asyncio.sleep(self.delay)
        conn = await get_async_connection(self.conn_id)
        extra = await get_async_extra_dejson(conn)
        self.log.info("EchoConnectionTrigger read connection %s", self.conn_id)
        yield TriggerEvent({"login": conn.login, "extra": extra, "note": self.note})


class DeferToEchoOperator(BaseOperator):
    """Reads the connection on the worker side, defers to :class:`EchoConnectionTrigger`, returns its event."""

    template_fields = ("conn_id", "note")

    def __init__(self, *, conn_id: str, note: str = "", delay: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self.note = note
        self.delay = delay

    def execute(self, context: Any) -> None:
        conn = BaseHook.get_connection(self.conn_id)
        context["ti"].xcom_push(key="worker_login", value=conn.login)
        self.log.info("Deferring to EchoConnectionTrigger for %s", self.conn_id)
        self.defer(
            trigger=EchoConnectionTrigger(conn_id=self.conn_id, delay=self.delay, note=self.note),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        self.log.info("Resumed after the trigger with %s", sorted(event))
        return event
