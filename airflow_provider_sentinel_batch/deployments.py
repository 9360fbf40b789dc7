"""Sentinel Hub deployments and the connection settings derived from an Airflow connection.

A deployment is more than a URL: Sentinel Hub (Planet) and CDSE use different identity providers, so the base
URL and the token URL must be chosen together (a CDSE token on services.sentinel-hub.com gives a baffling 401).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from airflow_provider_sentinel_batch.exceptions import SentinelBatchConfigError

API_VERSIONS = ("v1", "v2")
DEFAULT_API_VERSION = "v2"
#: How a connection's ``api_version`` extra may be written: the number (what the connection form writes: Airflow 3
#: logs "Skipping masking for a secret as it's too short" for every *string* extra value under 5 characters,
#: numbers are not registered with its masker) or the names tasks use.
_CONNECTION_API_VERSIONS: dict[Any, str] = {1: "v1", 2: "v2", "1": "v1", "2": "v2", "v1": "v1", "v2": "v2"}


@dataclass(frozen=True)
class Deployment:
    """One Sentinel Hub deployment: its API, its identity provider and its dashboard, chosen together."""

    name: str
    base_url: str
    token_url: str
    dashboard_url: str
    realm: str
    label: str


_SH_TOKEN = "https://services.sentinel-hub.com/auth/realms/main/protocol/openid-connect/token"

DEPLOYMENTS: dict[str, Deployment] = {
    "sentinel-hub-eu": Deployment(
        "sentinel-hub-eu",
        "https://services.sentinel-hub.com",
        _SH_TOKEN,
        "https://apps.sentinel-hub.com/dashboard/#/batch",
        "main",
        "Sentinel Hub EU",
    ),
    "sentinel-hub-us": Deployment(
        "sentinel-hub-us",
        "https://services-uswest2.sentinel-hub.com",
        _SH_TOKEN,
        "https://apps.sentinel-hub.com/dashboard/#/batch",
        "main",
        "Sentinel Hub US West",
    ),
    "copernicus-dataspace": Deployment(
        "copernicus-dataspace",
        "https://sh.dataspace.copernicus.eu",
        "https://identity.dataspace.copernicus.eu/auth/realms/CDSE/protocol/openid-connect/token",
        "https://shapps.dataspace.copernicus.eu/dashboard/#/batch",
        "CDSE",
        "Copernicus Data Space Ecosystem",
    ),
}
DEPLOYMENT_NAMES = (*DEPLOYMENTS, "custom")
#: Other spellings of a deployment still read from connections (names under 5 characters make Airflow 3 log
#: "Skipping masking for a secret as it's too short" when a task reads the connection).
DEPLOYMENT_ALIASES = {"cdse": "copernicus-dataspace"}


def is_loopback(url: str) -> bool:
    """The URL points at this machine (plain ``http://`` is allowed only there)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport(url: str, what: str) -> str:
    """Plain http is only acceptable for a loopback emulator; credentials must never cross a network in clear."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SentinelBatchConfigError(f"{what} {url!r} is not an http(s) URL; expected e.g. 'https://host'.")
    if parts.scheme == "http" and not is_loopback(url):
        raise SentinelBatchConfigError(
            f"{what} {url!r} uses plain http to a non-loopback host. Use https, or http only for a local "
            "emulator on 127.0.0.1/localhost."
        )
    return url.rstrip("/")


def realm_of_token_url(token_url: str) -> str | None:
    """'main' or 'CDSE' for keycloak-style token URLs, 'legacy' for /oauth/token, None otherwise."""
    path = urlsplit(token_url).path
    if "/auth/realms/" in path:
        return path.split("/auth/realms/", 1)[1].split("/", 1)[0]
    if path.endswith("/oauth/token"):
        return "legacy"
    return None


def deployment_for_base_url(base_url: str) -> Deployment | None:
    """The known deployment a base URL belongs to, if any."""
    host = urlsplit(base_url).hostname
    for dep in DEPLOYMENTS.values():
        if urlsplit(dep.base_url).hostname == host:
            return dep
    return None


def deployment_mismatch(base_url: str, token_url: str) -> str | None:
    """A warning when the token issuer cannot serve the base URL's deployment (e.g. CDSE token, SH base URL)."""
    dep = deployment_for_base_url(base_url)
    realm = realm_of_token_url(token_url)
    if dep is None or realm is None:
        return None
    if dep.realm == "CDSE" and realm != "CDSE":
        return f"token URL {token_url} issues Sentinel Hub tokens, but {base_url} is CDSE: expect 401."
    if dep.realm == "main" and realm == "CDSE":
        return f"token URL {token_url} issues CDSE tokens, but {base_url} is Sentinel Hub: expect 401."
    return None


class _ConnectionLike(Protocol):
    login: str | None
    password: str | None
    host: str | None
    port: int | None
    conn_id: str


def connection_extra(conn: Any) -> dict[str, Any]:
    """The connection's extras as a dict, read without Airflow's secrets masker.

    ``Connection.extra_dejson`` registers every extra value with the masker, which logs "Skipping masking for a
    secret as it's too short" for any string value under 5 characters whatever its key. None of this
    connection's extras is a secret (the client secret is the password, which Airflow masks when it loads the
    connection), so they are parsed here instead. (Airflow 3's own connection lookup still reads
    ``extra_dejson`` once, which is why the values the form writes are numbers or at least 5 characters long.)
    """
    raw = getattr(conn, "extra", None)
    if isinstance(raw, dict):
        return dict(raw)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        conn_id = getattr(conn, "conn_id", None)
        raise SentinelBatchConfigError(
            f"connection {conn_id!r}: the extra is not a JSON object; expected e.g. "
            '{"deployment": "sentinel-hub-eu", "api_version": "v2"}.'
        ) from None
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class ConnectionSettings:
    """Everything a client needs to talk to one deployment. The secret is excluded from repr."""

    client_id: str
    client_secret: str = field(repr=False)
    base_url: str
    token_url: str
    api_version: str = DEFAULT_API_VERSION
    deployment: str = "custom"
    conn_id: str | None = None
    requests_per_minute: float | None = None
    """The process's request budget for this account (``None``: unlimited); see ``budget.py``."""

    def describe(self) -> str:
        """Where this connection goes, for people: the preset's name, or the URLs when they are not a preset's."""
        preset = DEPLOYMENTS.get(self.deployment)
        if preset is not None and (self.base_url, self.token_url) == (preset.base_url, preset.token_url):
            return f"{preset.label} ({self.base_url})"
        where = f"{self.base_url} (token URL {self.token_url}"
        if preset is not None:
            where += f"; overrides the {preset.label} preset"
        return where + ")"

    @property
    def family(self) -> Deployment | None:
        """The preset this connection talks to: by name, else by base URL host, else by token realm."""
        dep = DEPLOYMENTS.get(self.deployment) or deployment_for_base_url(self.base_url)
        if dep is None:
            realm = realm_of_token_url(self.token_url)
            dep = next((d for d in DEPLOYMENTS.values() if d.realm == realm), None)
        return dep

    @property
    def is_emulator(self) -> bool:
        """A loopback base URL: the local emulator (the only service plain http is allowed for)."""
        return is_loopback(self.base_url)

    @property
    def dashboard_url(self) -> str | None:
        """The dashboard's batch page (requests are at ``<it>/<request id>``); the emulator serves its own."""
        if self.is_emulator:
            return f"{self.base_url}/dashboard/batch"
        dep = self.family
        return dep.dashboard_url if dep else None

    def output_page(self, location: str | None) -> str | None:
        """A web page that shows an output location (``s3://bucket/prefix/``), or None when there is none.

        Sentinel Hub delivers to AWS S3, so its buckets open in the AWS S3 console (which finds the bucket's
        region itself); CDSE buckets have no web console. The emulator lists the files it wrote.
        """
        if not location:
            return None
        if location.startswith(("https://", "http://")):
            return location
        if not location.startswith("s3://"):
            return None
        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        if not bucket:
            return None
        if self.is_emulator:
            return f"{self.base_url}/dashboard/outputs/{quote(bucket)}/{quote(prefix)}"
        dep = self.family
        if dep is not None and dep.realm == "main":
            return f"https://s3.console.aws.amazon.com/s3/buckets/{quote(bucket)}?prefix={quote(prefix, safe='')}"
        return None


#: API families a task can address: Batch Processing v1 and v2, and Batch Statistical (same lifecycle as v2).
API_FAMILIES = (*API_VERSIONS, "statistical")


def check_api_family(api_version: str | None) -> str:
    """A task's or hook's ``api_version``: ``v1`` | ``v2`` | ``statistical`` (Batch Statistical), default ``v2``."""
    version = (api_version or DEFAULT_API_VERSION).lower()
    if version not in API_FAMILIES:
        raise SentinelBatchConfigError(
            f"api_version must be 'v1', 'v2' or 'statistical' (Batch Statistical), got {api_version!r}."
        )
    return version


def settings_from_connection(
    conn: _ConnectionLike, extra: dict[str, Any], *, where: str | None = None
) -> ConnectionSettings:
    """Resolve a `sentinel_batch` connection (JSON or URI form) into settings, with errors that say what to fix.

    ``where`` names the connection in errors (default: by its id).
    """
    conn_id = getattr(conn, "conn_id", None)
    # Airflow 2.x UI forms may store custom fields as "extra__sentinel_batch__<field>"
    extra = {k.removeprefix("extra__sentinel_batch__"): v for k, v in (extra or {}).items()}
    where = where or (f"connection {conn_id!r}" if conn_id else "the connection")
    if not conn.login or not conn.password:
        raise SentinelBatchConfigError(
            f"{where} needs the OAuth client id as login and the client secret as password "
            "(in URI form the scheme must be 'sentinel-batch://id:secret@...': '_' is not allowed in a URI scheme)."
        )
    name = str(extra.get("deployment") or "").strip().lower() or None
    name = DEPLOYMENT_ALIASES.get(name, name) if name else None
    base_url = extra.get("base_url") or None
    # "auth_url": Airflow hides extra values whose key contains "token" (the edit form shows ***, logs too);
    # "token_url" is still read for connections made before.
    token_url = extra.get("auth_url") or extra.get("token_url") or None
    if not base_url and conn.host:
        host = conn.host if "://" in conn.host else f"https://{conn.host}"
        base_url = f"{host}:{conn.port}" if conn.port and "://" not in conn.host else host
    if name is None:
        name = "custom" if base_url and token_url else "sentinel-hub-eu"
    if name not in DEPLOYMENT_NAMES:
        raise SentinelBatchConfigError(
            f"{where}: unknown deployment {name!r}; choose one of {', '.join(DEPLOYMENT_NAMES)}."
        )
    preset = DEPLOYMENTS.get(name)
    base_url = base_url or (preset.base_url if preset else None)
    token_url = token_url or (preset.token_url if preset else None)
    if not base_url or not token_url:
        raise SentinelBatchConfigError(
            f"{where}: deployment 'custom' needs both 'base_url' and 'auth_url' (the OAuth2 token URL) in the "
            "connection extra."
        )
    return ConnectionSettings(
        client_id=conn.login,
        client_secret=conn.password,
        base_url=check_transport(str(base_url), "base URL"),
        token_url=check_transport(str(token_url), "token URL"),
        api_version=_connection_api_version(extra.get("api_version"), where),
        deployment=name,
        conn_id=conn_id,
        requests_per_minute=_requests_per_minute(extra.get("requests_per_minute"), name, where),
    )


def _connection_api_version(value: Any, where: str) -> str:
    """The connection's default Batch API version: ``2``/``1`` (numbers, as the form writes them) or ``v2``/``v1``."""
    if value is None or value == "":
        return DEFAULT_API_VERSION
    key = value.strip().lower() if isinstance(value, str) else value
    if isinstance(key, bool) or not isinstance(key, (str, int)) or key not in _CONNECTION_API_VERSIONS:
        raise SentinelBatchConfigError(f"{where}: api_version must be 2 or 1 (or 'v2'/'v1'), got {value!r}.")
    return _CONNECTION_API_VERSIONS[key]


def _requests_per_minute(value: Any, deployment: str, where: str) -> float | None:
    """The ``requests_per_minute`` extra (``0``: no budget), else the deployment's default."""
    from airflow_provider_sentinel_batch.budget import DEFAULT_REQUESTS_PER_MINUTE

    if value is None or value == "":
        return DEFAULT_REQUESTS_PER_MINUTE.get(deployment)
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise SentinelBatchConfigError(
            f"{where}: requests_per_minute must be a number (0 for no budget), got {value!r}."
        ) from None
    if rate < 0:
        raise SentinelBatchConfigError(f"{where}: requests_per_minute must not be negative, got {value!r}.")
    return rate or None
