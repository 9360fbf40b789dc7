"""Data-aware scheduling under ``dag.test()``: what the scheduler would do after an asset event, on 2.11 and 3.x.

``dag.test()`` runs one DAG run without a scheduler, so an asset event from a producer run never starts the
downstream DAG by itself. These helpers take the scheduler's place, using Airflow's own code for each step:

1. :func:`sync_and_unpause` writes every DAG of the DAGs folder to the metadata DB (the DAG processor's job: the
   asset rows, the ``schedule=[asset]`` references) and unpauses the given DAGs (a user's click; new DAGs start
   paused, and Airflow queues no runs for paused DAGs).
2. The producer runs with :func:`tests.integration.harness.run_dag`; on success Airflow itself records the asset
   event (with the task's ``extra``) and queues the downstream DAG (``AssetDagRunQueue``/``DatasetDagRunQueue``).
3. :func:`create_asset_triggered_run` calls the scheduler's ``_create_dag_runs_asset_triggered`` (3.x) /
   ``_create_dag_runs_dataset_triggered`` (2.11) for the downstream DAG: the same code that creates the
   asset-triggered run, with the consumed events attached, in a real scheduler.
4. :func:`run_existing_dag_run` executes that run with ``dag.test()``'s task loop (``dag.test()`` would otherwise
   create a fresh manual run without triggering events), so tasks see ``triggering_asset_events``.

What stays simulated: no scheduler loop, executor or DAG processor process; timing (``dags_needing_dagruns``) is
not exercised.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

from tests.integration import harness
from tests.integration.harness import AIRFLOW_V_3, DagRunResult


def _models() -> dict[str, Any]:
    if AIRFLOW_V_3:
        from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel

        return {"event": AssetEvent, "asset": AssetModel, "queue": AssetDagRunQueue, "uri_of": "asset"}
    from airflow.models.dataset import DatasetDagRunQueue, DatasetEvent, DatasetModel

    return {"event": DatasetEvent, "asset": DatasetModel, "queue": DatasetDagRunQueue, "uri_of": "dataset"}


def place_files(dag_file: Path, support_files: Iterable[Path]) -> None:
    harness.ensure_airflow_db()
    harness.place_files(dag_file, None, list(support_files))


def sync_and_unpause(dag_ids: Iterable[str], env: Mapping[str, str] | None = None) -> None:
    """Write the DAGs folder to the DB (as the DAG processor does) and unpause ``dag_ids``."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with mock.patch.dict(os.environ, dict(env or {})):
        if AIRFLOW_V_3:
            from airflow.dag_processing.bundles.manager import DagBundlesManager
            from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

            manager = DagBundlesManager()
            with create_session() as session:
                manager.sync_bundles_to_db(session=session)
            for bundle in manager.get_all_dag_bundles():
                if not bundle.is_initialized:
                    bundle.initialize()
                bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
                _no_import_errors(bag)
                sync_bag_to_db(bag, bundle.name, bundle.version)
        else:
            from airflow.models.dagbag import DagBag

            bag = DagBag(dag_folder=str(harness.dags_folder()), include_examples=False)
            _no_import_errors(bag)
            bag.sync_to_db()
    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id.in_(list(dag_ids))).values(is_paused=False))


def _no_import_errors(bag: Any) -> None:
    if bag.import_errors:
        raise harness.DagImportError("\n".join(f"{k}:\n{v}" for k, v in bag.import_errors.items()))


def asset_events(uri: str, source_dag_id: str | None = None) -> list[dict[str, Any]]:
    """Asset (dataset) events recorded for ``uri``: plain dicts with extra and source."""
    from airflow.utils.session import create_session
    from sqlalchemy import select

    m = _models()
    event, asset = m["event"], m["asset"]
    id_col = event.asset_id if AIRFLOW_V_3 else event.dataset_id
    with create_session() as session:
        query = select(event).join(asset, id_col == asset.id).where(asset.uri == uri)
        if source_dag_id:
            query = query.where(event.source_dag_id == source_dag_id)
        return [
            {
                "id": row.id,
                "extra": dict(row.extra or {}),
                "source_dag_id": row.source_dag_id,
                "source_task_id": row.source_task_id,
                "source_run_id": row.source_run_id,
            }
            for row in session.scalars(query.order_by(event.id))
        ]


def queued_for(dag_id: str) -> int:
    """Rows the asset manager queued for ``dag_id`` (what makes the scheduler create an asset-triggered run)."""
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    queue = _models()["queue"]
    with create_session() as session:
        return int(
            session.scalar(select(func.count()).select_from(queue).where(queue.target_dag_id == dag_id))
        )


def create_asset_triggered_run(dag_id: str) -> str:
    """Let the scheduler's own code create the asset-triggered run of ``dag_id``; returns its run id."""
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    runner = SchedulerJobRunner(job=Job())
    with create_session() as session:
        model = session.scalars(select(DagModel).where(DagModel.dag_id == dag_id)).one()
        if AIRFLOW_V_3:
            runner._create_dag_runs_asset_triggered(dag_models=[model], session=session)
        else:
            _, info = DagModel.dags_needing_dagruns(session)
            if dag_id not in info:
                raise AssertionError(f"{dag_id} is not waiting for a dataset-triggered run: {info}")
            runner._create_dag_runs_dataset_triggered([model], info, session)
        session.flush()
        kind = "asset_triggered" if AIRFLOW_V_3 else "dataset_triggered"
        runs = session.scalars(
            select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_type == kind).order_by(DagRun.id.desc())
        ).all()
        if not runs:
            raise AssertionError(f"the scheduler created no {kind} run of {dag_id}")
        return str(runs[0].run_id)


def consumed_events(dag_id: str, run_id: str) -> list[dict[str, Any]]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)).one()
        events = run.consumed_asset_events if AIRFLOW_V_3 else run.consumed_dataset_events
        return [{"id": e.id, "extra": dict(e.extra or {}), "source_dag_id": e.source_dag_id} for e in events]


def run_existing_dag_run(
    dag_file: Path,
    dag_id: str,
    run_id: str,
    *,
    support_files: Iterable[Path] = (),
    env: Mapping[str, str] | None = None,
) -> DagRunResult:
    """Execute the already created run ``run_id`` with ``dag.test()``'s task loop (instead of a new manual run)."""
    return harness.run_dag(
        dag_file,
        dag_id,
        support_files=support_files,
        env=env,
        disable_retries=False,
        existing_run_id=run_id,
    )
