"""Shared test setup: an isolated AIRFLOW_HOME, no example DAGs, and clean process-wide caches per test."""

from __future__ import annotations

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="sentinel-batch-airflow-home-")
os.environ.setdefault("AIRFLOW_HOME", _HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")

import pytest  # noqa: E402

# Airflow 2.11: importing BaseOperator lazily from a worker thread breaks; import it once here (reference §9).
from airflow.providers.common.compat.sdk import BaseOperator  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _clean_caches():
    from airflow_provider_sentinel_batch.auth import TOKEN_CACHE
    from airflow_provider_sentinel_batch.hooks import sentinel_batch

    TOKEN_CACHE.clear()
    sentinel_batch._GRID_CACHE.clear()
    yield
    TOKEN_CACHE.clear()
    sentinel_batch._GRID_CACHE.clear()
