"""The S3 test server for this project's tests: it lives in the package, where the demo and users' DAG tests
can use it too (``airflow_provider_sentinel_batch.emulator.s3server``; fixtures ``sentinel_batch_s3_server`` and
``sentinel_batch_s3_bucket`` from the package's pytest plugin)."""

from __future__ import annotations

from airflow_provider_sentinel_batch.emulator.s3server import REGION, S3Keys, S3Server

__all__ = ["REGION", "S3Keys", "S3Server"]
