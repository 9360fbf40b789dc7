"""Fixtures for integration tests that run real DAGs with ``dag.test()`` (see ``harness.py``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.harness import DagRunResult, dags_folder, ensure_airflow_db, run_dag


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """The test metadata DB, migrated once per session (``run_dag`` would also do it on first use)."""
    ensure_airflow_db()


@pytest.fixture
def dag_runner(airflow_db: None) -> Callable[..., DagRunResult]:
    """:func:`tests.integration.harness.run_dag`, with the database ready."""
    return run_dag


@pytest.fixture
def airflow_dags_folder(airflow_db: None):
    """The ``[core] dags_folder`` of the test AIRFLOW_HOME (the harness rewrites it on every run)."""
    return dags_folder()
