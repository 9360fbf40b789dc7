"""Apache Airflow provider for the Sentinel Hub Batch Processing API (v1 and v2).

Import-light on purpose: DAG files import operators constantly, so nothing here pulls in HTTP or OAuth code.
"""

from __future__ import annotations

__version__ = "0.1.0"
