"""Read-only HTML pages: the emulator's stand-in for the Sentinel Hub dashboard and for a bucket browser.

``/dashboard/batch/{id}`` shows one request (status, user action, progress, cost, error, output location and
the files written so far); ``/dashboard/outputs/{bucket}/{prefix}`` lists the files the emulator wrote under an
``s3://bucket/prefix`` (its local mirror in ``data_dir``). The provider's extra links point here when the
connection's base URL is a loopback address, so a demo in a browser has links that open. No auth, no faults,
nothing that changes state; every value is HTML-escaped (descriptions are user input).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from . import outputs as out
from .state import EmulatorState

MAX_FILES = 500
_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:60em;color:#222}"
    "table{border-collapse:collapse}td,th{padding:.2em .8em;text-align:left;border-bottom:1px solid #ddd}"
    "th{font-weight:600}code{background:#f4f4f4;padding:0 .2em}.status{font-weight:700}"
)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}"
        "<p><small>Sentinel Hub Batch API emulator: read-only page.</small></p></body></html>"
    )
    return HTMLResponse(doc, status)


def _rows(rows: list[tuple[str, str]]) -> str:
    """A two-column table; values are already escaped HTML."""
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _files(root: Path, data_dir: Path) -> tuple[list[tuple[str, int]], int]:
    """Files under ``root`` (relative path, size), at most ``MAX_FILES``, and how many there are in all."""
    root = root.resolve()
    if not root.is_dir() or not root.is_relative_to(data_dir):
        return [], 0
    found = sorted(p for p in root.rglob("*") if p.is_file())
    return [(str(p.relative_to(root)), p.stat().st_size) for p in found[:MAX_FILES]], len(found)


def _file_table(files: list[tuple[str, int]], total: int) -> str:
    if not files:
        return "<p>No files yet.</p>"
    rows = "".join(
        f"<tr><td><code>{html.escape(name)}</code></td><td>{size} B</td></tr>" for name, size in files
    )
    more = f"<p>... and {total - len(files)} more.</p>" if total > len(files) else ""
    return f"<p>{total} file(s).</p><table><tr><th>file</th><th>size</th></tr>{rows}</table>{more}"


def output_location(job: Any) -> str | None:
    """The request's output folder as ``s3://bucket/prefix/`` (what the provider's output link names)."""
    if not job.output_url or job.output_kind == "zarr":
        return job.output_url.replace("<requestId>", job.id) if job.output_url else None
    return out.output_root(job.output_url, job.id).rstrip("/") + "/"


def add_page_routes(app: FastAPI, st: EmulatorState) -> None:
    """Register the read-only pages on ``app``."""

    async def request_page(request: Request) -> HTMLResponse:
        job_id = request.path_params["id"]
        with st.lock:
            try:
                job = st.get_job(job_id)
            except KeyError:
                return _page(
                    "Batch request not found", f"<p>No request <code>{html.escape(job_id)}</code>.</p>", 404
                )
            now = st.clock.now()
            tiles: dict[str, int] = {}
            for tile in job.tiles:
                status = tile.status(now)
                tiles[status] = tiles.get(status, 0) + 1
            rows: list[tuple[str, str]] = [
                ("Request id", f"<code>{html.escape(job.id)}</code>"),
                ("API", f"Batch v{job.api}"),
                ("Description", html.escape(job.description) or "(none)"),
                ("Status", f"<span class='status' id='status'>{html.escape(job.status)}</span>"),
                ("User action", html.escape(job.user_action)),
                ("Progress", f"<span id='progress'>{job.completion(now):g} %</span>"),
                (
                    "Tiles" if job.api == 1 else "Features",
                    html.escape(
                        ", ".join(f"{k} {v}" for k, v in sorted(tiles.items())) or "not analysed yet"
                    ),
                ),
                ("Cost so far", f"<span id='cost'>{job.cost_pu(now):.2f} PU</span>"),
            ]
            if job.api == 1 and job.analysed:
                rows.append(
                    ("Estimate (valueEstimate)", f"{job.value_estimate:.2f} PU before the batch discount")
                )
            if job.error:
                rows.append(("Error", html.escape(job.error)))
            if job.stopped_reason:
                rows.append(("Stopped because", html.escape(job.stopped_reason)))
            location = output_location(job)
        files: list[tuple[str, int]] = []
        total = 0
        if location:
            bucket_path = location.removeprefix("s3://")
            link = f"/dashboard/outputs/{html.escape(bucket_path, quote=True)}"
            rows.append(
                ("Outputs", f"<a id='outputs' href='{link}'><code>{html.escape(location)}</code></a>")
            )
            files, total = _files(out.local_path(st.data_dir, location), st.data_dir)
        body = _rows(rows) + ("<h2>Files written</h2>" + _file_table(files, total) if location else "")
        return _page(f"Batch request {job.id}", body)

    async def outputs_page(request: Request) -> HTMLResponse:
        prefix = request.path_params["prefix"]
        location = f"s3://{prefix}"
        files, total = _files(out.local_path(st.data_dir, location), st.data_dir)
        body = _rows([("Location", f"<code>{html.escape(location)}</code>")]) + _file_table(files, total)
        return _page("Batch outputs", body)

    app.add_route("/dashboard/batch/{id}", request_page, methods=["GET"], include_in_schema=False)
    app.add_route("/dashboard/outputs/{prefix:path}", outputs_page, methods=["GET"], include_in_schema=False)
