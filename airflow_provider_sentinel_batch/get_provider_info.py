"""Provider metadata read by Airflow's providers manager.

This module must not import Airflow (importing it from the provider discovery path would be circular).
"""

from __future__ import annotations

from typing import Any

DEPLOYMENT_CHOICES = ["sentinel-hub-eu", "sentinel-hub-us", "copernicus-dataspace", "custom"]
#: What the connection form shows for each deployment (the same presets as ``deployments.DEPLOYMENTS``).
DEPLOYMENT_LABELS = {
    "sentinel-hub-eu": "Sentinel Hub EU (services.sentinel-hub.com)",
    "sentinel-hub-us": "Sentinel Hub US West (services-uswest2.sentinel-hub.com)",
    "copernicus-dataspace": "Copernicus Data Space Ecosystem (sh.dataspace.copernicus.eu)",
    "custom": "Custom: the two URLs below",
}
_PRESETS = (
    "Presets: Sentinel Hub EU https://services.sentinel-hub.com, Sentinel Hub US West "
    "https://services-uswest2.sentinel-hub.com (both with tokens from "
    "https://services.sentinel-hub.com/auth/realms/main/protocol/openid-connect/token); Copernicus Data Space "
    "Ecosystem https://sh.dataspace.copernicus.eu (tokens from "
    "https://identity.dataspace.copernicus.eu/auth/realms/CDSE/protocol/openid-connect/token)."
)

#: The connection form's layout: hidden standard fields, labels and placeholders (read by every Airflow line).
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema", "port", "host", "extra"],
    "relabeling": {"login": "Client ID", "password": "Client secret"},
    "placeholders": {
        "login": "OAuth client id",
        "password": "OAuth client secret",
        "base_url": "empty = the deployment's, e.g. https://services.sentinel-hub.com",
        "auth_url": "empty = the deployment's token URL",
    },
}


def get_provider_info() -> dict[str, Any]:
    """The provider metadata Airflow reads through the ``apache_airflow_provider`` entry point."""
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
            "airflow_provider_sentinel_batch.links.SentinelBatchDashboardLink",
            "airflow_provider_sentinel_batch.links.SentinelBatchOutputLink",
        ],
        "connection-types": [
            {
                "connection-type": "sentinel_batch",
                "hook-class-name": "airflow_provider_sentinel_batch.hooks.sentinel_batch.SentinelBatchHook",
                "hook-name": "Sentinel Hub Batch",
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
                "conn-fields": {
                    "deployment": {
                        "label": "Deployment",
                        "description": "Sets the base URL and the token URL together. " + _PRESETS,
                        "schema": {
                            "type": "string",
                            "enum": DEPLOYMENT_CHOICES,
                            "values_display": DEPLOYMENT_LABELS,
                            "default": "sentinel-hub-eu",
                        },
                    },
                    "base_url": {
                        "label": "Base URL (override)",
                        "description": "Needed for 'custom'; otherwise leave empty to use the deployment's.",
                        "schema": {"type": ["string", "null"], "format": "url"},
                    },
                    "auth_url": {
                        "label": "Token URL (override)",
                        "description": "OAuth2 token endpoint. Needed for 'custom'; otherwise leave empty to use "
                        "the deployment's.",
                        "schema": {"type": ["string", "null"], "format": "url"},
                    },
                    "api_version": {
                        "label": "Default Batch API version",
                        "description": "Empty = v2, the current API; v1 is deprecated upstream but fully "
                        "supported. Tasks may override it.",
                        # numbers, not "v2"/"v1": Airflow 3 logs "Skipping masking for a secret as it's too short"
                        # for every string extra value under 5 characters when a task reads the connection
                        "schema": {
                            "type": ["integer", "null"],
                            "enum": [2, 1, None],
                            "values_display": {
                                "null": "Not set: v2",
                                "2": "v2 (current)",
                                "1": "v1 (deprecated upstream)",
                            },
                        },
                    },
                },
            }
        ],
    }
