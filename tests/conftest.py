"""Shared test setup: an isolated AIRFLOW_HOME, no example DAGs, and clean process-wide caches per test."""

from __future__ import annotations

import os
import tempfile
from importlib.metadata import version

_HOME = tempfile.mkdtemp(prefix="sentinel-batch-airflow-home-")
# Forced, not setdefault: integration tests migrate this DB and write DAG files, never into a developer's own
# AIRFLOW_HOME (or a database it points at). dag.test() on Airflow 3 needs DAG files inside the DAGs folder.
os.environ["AIRFLOW_HOME"] = _HOME
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = os.path.join(_HOME, "dags")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = "sqlite:///" + os.path.join(_HOME, "airflow.db")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
if version("apache-airflow").startswith("2."):
    # 2.x unit-test mode loads unit_tests.cfg (executor = LocalExecutor), which refuses SQLite as soon as a
    # sensor's ReadyToRescheduleDep loads the executor under dag.test(); 3.x has no SequentialExecutor.
    os.environ["AIRFLOW__CORE__EXECUTOR"] = "SequentialExecutor"

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
