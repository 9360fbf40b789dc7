"""Provider metadata read by Airflow's providers manager.

This module must not import Airflow (importing it from the provider discovery path would be circular).
"""

from __future__ import annotations

from typing import Any

DEPLOYMENT_CHOICES = ["sentinel-hub-eu", "sentinel-hub-us", "cdse", "custom"]


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-sentinel-batch",
        "name": "Sentinel Hub Batch",
        "description": "Sentinel Hub / Copernicus Data Space Batch Processing API (v1 and v2): "
        "hook, operators, deferrable sensor and a local emulator.",
        "integrations": [
            {
                "integration-name": "Sentinel Hub Batch Processing",
                "external-doc-url": "https://docs.sentinel-hub.com/api/latest/api/batchv2/",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Sentinel Hub Batch Processing",
                "python-modules": ["airflow_provider_sentinel_batch.hooks.sentinel_batch"],
            }
        ],
        "operators": [
            {
                "integration-name": "Sentinel Hub Batch Processing",
                "python-modules": ["airflow_provider_sentinel_batch.operators.batch"],
            }
        ],
        "sensors": [
            {
                "integration-name": "Sentinel Hub Batch Processing",
                "python-modules": ["airflow_provider_sentinel_batch.sensors.batch"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Sentinel Hub Batch Processing",
                "python-modules": [
                    "airflow_provider_sentinel_batch.triggers.batch",
                    "airflow_provider_sentinel_batch.triggers.events",
                ],
            }
        ],
        "extra-links": [
            "airflow_provider_sentinel_batch.operators.batch.SentinelBatchDashboardLink",
            "airflow_provider_sentinel_batch.operators.batch.SentinelBatchOutputLink",
        ],
        "connection-types": [
            {
                "connection-type": "sentinel_batch",
                "hook-class-name": "airflow_provider_sentinel_batch.hooks.sentinel_batch.SentinelBatchHook",
                "hook-name": "Sentinel Hub Batch",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "host", "extra"],
                    "relabeling": {"login": "Client ID", "password": "Client secret"},
                    "placeholders": {"login": "OAuth client id", "password": "OAuth client secret"},
                },
                "conn-fields": {
                    "deployment": {
                        "label": "Deployment",
                        "description": "Sets base URL and token URL together; 'custom' uses the two fields below.",
                        "schema": {
                            "type": "string",
                            "enum": DEPLOYMENT_CHOICES,
                            "default": "sentinel-hub-eu",
                        },
                    },
                    "base_url": {
                        "label": "Base URL (override)",
                        "description": "e.g. https://services.sentinel-hub.com; empty = the deployment's.",
                        "schema": {"type": ["string", "null"], "format": "url"},
                    },
                    "auth_url": {
                        "label": "Token URL (override)",
                        "description": "OAuth2 token endpoint; empty = the deployment's.",
                        "schema": {"type": ["string", "null"], "format": "url"},
                    },
                    "api_version": {
                        "label": "Default Batch API version",
                        "description": "v2 is the current API; v1 is deprecated upstream but fully supported.",
                        "schema": {"type": "string", "enum": ["v2", "v1"], "default": "v2"},
                    },
                },
            }
        ],
    }
