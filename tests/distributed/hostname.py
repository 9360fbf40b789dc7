"""Airflow ``[core] hostname_callable`` for the distributed test stack: each simulated host names itself."""

from __future__ import annotations

import os
import socket


def from_environment() -> str:
    """``SENTINEL_BATCH_TEST_HOSTNAME`` when set (one value per simulated host), else the machine's FQDN."""
    return os.environ.get("SENTINEL_BATCH_TEST_HOSTNAME") or socket.getfqdn()
