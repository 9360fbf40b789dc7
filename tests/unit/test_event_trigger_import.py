"""The event trigger exists on Airflow 3 only; on Airflow 2 importing it says so and what to use instead."""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import version

import pytest

AIRFLOW_2 = version("apache-airflow").startswith("2.")
MODULE = "airflow_provider_sentinel_batch.triggers.events"


@pytest.mark.skipif(not AIRFLOW_2, reason="the import error is Airflow 2 behaviour")
def test_airflow_2_import_error_names_the_reason_and_the_alternative():
    sys.modules.pop(MODULE, None)
    with pytest.raises(ImportError) as info:
        importlib.import_module(MODULE)
    message = str(info.value)
    assert "needs Airflow 3" in message and "does not exist in Airflow 2.x" in message
    assert "SentinelBatchSensor with outlets" in message


@pytest.mark.skipif(AIRFLOW_2, reason="asset watchers exist from Airflow 3 on")
def test_airflow_3_trigger_is_an_event_trigger():
    from airflow.triggers.base import BaseEventTrigger

    module = importlib.import_module(MODULE)
    assert issubclass(module.SentinelBatchEventTrigger, BaseEventTrigger)
