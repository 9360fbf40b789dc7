"""Shared test setup: an isolated AIRFLOW_HOME, no example DAGs, and clean process-wide caches per test."""

from __future__ import annotations

import json
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

# Airflow 2.11: a test that first imports airflow.models.baseoperator inside a worker thread (common-compat's
# async connection lookup runs get_connection in one) fails with "AttributeError: '_thread._local' object has no
# attribute 'callers'"; importing BaseOperator once here, at module level, avoids it.
from airflow.providers.common.compat.sdk import BaseOperator  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _clean_caches(monkeypatch):
    from airflow_provider_sentinel_batch import budget
    from airflow_provider_sentinel_batch.auth import TOKEN_CACHE
    from airflow_provider_sentinel_batch.hooks import sentinel_batch

    # mocked services answer in microseconds: the deployments' default request budgets would only pace the
    # tests (tests/unit/test_budget.py covers the budget itself, with its defaults)
    monkeypatch.setattr(
        budget, "DEFAULT_REQUESTS_PER_MINUTE", dict.fromkeys(budget.DEFAULT_REQUESTS_PER_MINUTE)
    )
    TOKEN_CACHE.clear()
    sentinel_batch._GRID_CACHE.clear()
    budget.forget_budgets()
    yield
    TOKEN_CACHE.clear()
    sentinel_batch._GRID_CACHE.clear()
    budget.forget_budgets()


@pytest.fixture
def emulator(sentinel_batch_emulator, monkeypatch):
    """Point connections at the plugin's emulator: ``emulator(version)`` returns the server.

    ``sentinel_batch_default`` gets the emulator for ``version`` (default v2); with ``bucket_keys=(access key,
    secret key)`` the ``aws`` connection ``bucket_conn_id`` (default ``sentinel_batch_bucket``) holds v2
    delivery keys as well.
    """

    def use(
        version: str = "v2",
        *,
        bucket_keys: tuple[str, str] | None = None,
        bucket_conn_id: str = "sentinel_batch_bucket",
    ):
        monkeypatch.setenv(
            "AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", sentinel_batch_emulator.airflow_conn_json(version)
        )
        if bucket_keys is not None:
            login, password = bucket_keys
            monkeypatch.setenv(
                f"AIRFLOW_CONN_{bucket_conn_id.upper()}",
                json.dumps({"conn_type": "aws", "login": login, "password": password}),
            )
        return sentinel_batch_emulator

    return use
