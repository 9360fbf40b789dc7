"""Where a request writes its outputs: the one rule for the path template and the request's own folder.

A plain delivery prefix means ``<prefix>/<requestId>/<tileName>/<outputId>.<format>`` (the service's rule); a
template with placeholders is taken as it is. The request's folder (``location``) is the fixed part of the
template above the first per-tile placeholder. Summaries, links, the result manifest, asset events and lineage
all read it from here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_sentinel_batch.models import request_payload

PLACEHOLDERS = ("<requestId>", "<tileName>", "<tileId>", "<outputId>", "<format>")
PER_TILE = ("<tileName>", "<tileId>", "<outputId>", "<format>")
DEFAULT_LAYOUT = "<requestId>/<tileName>/<outputId>.<format>"
FORMAT_EXTENSIONS = {"image/tiff": "tif", "application/json": "json", "zarr/array": "zarr"}


@dataclass(frozen=True)
class OutputLayout:
    """Where a request writes: ``kind`` raster | zarr, the path template (``<requestId>`` filled) and its root."""

    kind: str
    template: str | None
    responses: tuple[tuple[str, str], ...] = ()

    @property
    def location(self) -> str | None:
        """The request's own folder: the fixed part of the template above the first per-tile placeholder."""
        return root_of(self.template) if self.template else None

    def paths(self, tile_name: str, tile_id: Any) -> list[str]:
        """The output files of one tile or feature (raster outputs only)."""
        if self.kind != "raster" or not self.template:
            return []
        return [
            self.template.replace("<tileName>", str(tile_name))
            .replace("<tileId>", str(tile_id))
            .replace("<outputId>", identifier)
            .replace("<format>", FORMAT_EXTENSIONS.get(fmt, "bin"))
            for identifier, fmt in self.responses
        ]


def strip_userinfo(url: str) -> str:
    """``s3://key:secret@bucket/x`` → ``s3://bucket/x``: a URL with credentials must never reach XCom or lineage."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1", url)


def expand(template: str, request_id: str) -> str:
    """A plain prefix means ``<prefix>/<requestId>/<tileName>/<outputId>.<format>`` (the service's rule)."""
    template = strip_userinfo(str(template))
    if not any(p in template for p in PLACEHOLDERS):
        template = template.rstrip("/") + "/" + DEFAULT_LAYOUT
    return template.replace("<requestId>", str(request_id))


def root_of(expanded: str) -> str:
    """The directory above the first per-tile placeholder, with a trailing ``/``."""
    cut = min((expanded.find(p) for p in PER_TILE if p in expanded), default=len(expanded))
    head = expanded[:cut]
    scheme_end = head.find("://") + 3 if "://" in head else 0
    if "/" in head[scheme_end:]:
        head = head.rsplit("/", 1)[0]
    return head.rstrip("/") + "/"


def responses_of(payload: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """``(identifier, format)`` of each output of the evalscript (``default`` TIFF when none is declared)."""
    process = payload.get("processRequest") or {}
    responses = ((process.get("output") or {}).get("responses")) or []
    found = []
    for response in responses:
        if isinstance(response, dict) and response.get("identifier"):
            fmt = (response.get("format") or {}).get("type") or "image/tiff"
            found.append((str(response["identifier"]), str(fmt)))
    return tuple(found) or (("default", "image/tiff"),)


def output_layout(api_version: str, request: Mapping[str, Any], request_id: str) -> OutputLayout:
    """The output layout of a request object (GET) or create payload, v1 or v2."""
    payload = request_payload(api_version, request) if "request" in request else dict(request)
    if api_version == "statistical":
        from airflow_provider_sentinel_batch.statistical import output_root

        url = ((payload.get("output") or {}).get("s3") or {}).get("url")
        return OutputLayout(
            "statistics", output_root(url, request_id) if url else None, (("json", "application/json"),)
        )
    responses = responses_of(payload)
    if api_version == "v2":
        output = payload.get("output") or {}
        url = ((output.get("delivery") or {}).get("s3") or {}).get("url")
        kind = "zarr" if output.get("type") == "zarr" else "raster"
        return OutputLayout(kind, expand(url, request_id) if url else None, responses)
    if payload.get("bucketName"):
        return OutputLayout("raster", expand(f"s3://{payload['bucketName']}", request_id), responses)
    zarr = (payload.get("zarrOutput") or {}).get("path")
    if zarr:
        return OutputLayout("zarr", expand(zarr, request_id), responses)
    template = (payload.get("output") or {}).get("defaultTilePath")
    return OutputLayout("raster", expand(template, request_id) if template else None, responses)


def location_of(api_version: str, request: Mapping[str, Any], request_id: str | None = None) -> str | None:
    """The request's own output folder (``s3://…/<requestId>/``), or ``None`` when it is not known."""
    rid = request_id or request.get("id")
    if not rid:
        return None
    return output_layout(api_version, request, str(rid)).location
