"""Batch Statistical API (``/api/v1/statistics/batch``): payload checks, the request lifecycle, statistics.

A request is a :class:`~.jobs.Job` whose "tiles" are the polygons of the input GeoPackage, so it shares the
time-driven state machine of Batch v2 (CREATED → ANALYSING → ANALYSIS_DONE → PROCESSING → DONE | FAILED |
STOPPED), the worker pool, failure draws, the PU account and the fault injection. What differs:

* the GeoPackage is read from the data dir when analysis starts (missing or unreadable → ``FAILED``);
* create, analyse and start need at least 1000 PU on the account; processing stops (``OUT_OF_PU``) when the
  balance would drop below 1000, and such a request cannot be restarted for 60 minutes (30 after a user STOP);
* STOP answers 204 in every status (the published API lists no 400 for it) and only acts in ANALYSING,
  ANALYSIS_DONE, PROCESSING, or on a START still queued in CREATED;
* each finished feature gets one JSON file with the documented response shape. No imagery exists here, so the
  numbers are synthetic: a deterministic, plausible seasonal NDVI-like curve per feature and interval.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import random
import re
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from .config import BucketKeys
from .errors import ApiError, bad_payload, not_found
from .geopackage import GeoPackageError, metres_per_unit, read_features
from .jobs import V2_STATUSES, Job, Tile
from .outputs import DeliveryError, local_path
from .validation import _data_item, _Errors, _is_number, _obj, _require_object

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from fastapi.responses import Response

    from .state import EmulatorState

log = logging.getLogger("airflow_provider_sentinel_batch.emulator")

BASE = "/api/v1/statistics/batch"
MIN_PU_BALANCE = 1000.0
OUT_OF_PU_BLOCK = 3600.0
"""No restart within 60 minutes of an OUT_OF_PU stop (30 minutes after a user STOP, as for Batch v2)."""
MIN_REQUEST_PU = 100.0
MAX_EVALSCRIPT_BYTES = 32 * 1024
OUTPUT_PLACEHOLDERS = ("<REQUEST_ID>", "<ID>", "<IDENTIFIER>")
INTERVAL_BEHAVIOURS = ("SKIP", "SHORTEN", "EXTEND")
MAX_INTERVALS = 10_000
_DURATION = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?$")
_OUTPUT_BLOCK = re.compile(r"output\s*:\s*(\[[^\]]*(?:\[[^\]]*\][^\]]*)*\]|\{[^}]*\})", re.S)
_OUTPUT_ITEM = re.compile(r"\{[^{}]*\}", re.S)
_ID = re.compile(r"""\bid\s*:\s*["']([^"']+)["']""")
_BANDS_INT = re.compile(r"\bbands\s*:\s*(\d+)")
_BANDS_LIST = re.compile(r"\bbands\s*:\s*\[([^\]]*)\]")
_INPUT_BANDS = re.compile(r"input\s*:\s*\[?\s*\{[^}]*bands\s*:\s*\[([^\]]*)\]", re.S)


# ------------------------------------------------------------------------------------------- validation
@dataclass(kw_only=True)
class StatPlan:
    """What a valid create payload means: where the polygons are, the intervals, outputs and delivery."""

    features_url: str = ""
    output_url: str = ""
    intervals: list[tuple[str, str]] = field(default_factory=list)
    evalscript: str | None = None
    evalscript_url: str | None = None
    resolution: tuple[float, float] | None = None
    size: tuple[int, int] | None = None
    input_bands: int = 3

    def stored(self) -> dict[str, Any]:
        """The plan as a request keeps it (JSON types: it goes into the state file)."""
        plan: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return plan


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _add_duration(start: datetime, years: int, months: int, days: int) -> datetime:
    month_index = start.month - 1 + months + 12 * years
    year, month = start.year + month_index // 12, month_index % 12 + 1
    day = start.day
    while True:
        try:
            moved = start.replace(year=year, month=month, day=day)
            break
        except ValueError:
            day -= 1  # 31 January + P1M = 28/29 February
    return moved + timedelta(days=days)


def _stamp(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def split_intervals(
    start: datetime, end: datetime, of: str, behaviour: str = "SKIP"
) -> list[tuple[str, str]]:
    """The aggregation intervals of ``[start, end]`` (``SKIP``/``SHORTEN``/``EXTEND`` the last one)."""
    match = _DURATION.match(of)
    if match is None:
        raise ValueError(of)
    years, months, weeks, days = (int(g or 0) for g in match.groups())
    days += 7 * weeks
    if not (years or months or days):
        raise ValueError(of)
    intervals: list[tuple[str, str]] = []
    cursor = start
    while cursor < end and len(intervals) <= MAX_INTERVALS:
        nxt = _add_duration(cursor, years, months, days)
        if nxt > end:
            if behaviour == "SHORTEN":
                intervals.append((_stamp(cursor), _stamp(end)))
            elif behaviour == "EXTEND":
                intervals.append((_stamp(cursor), _stamp(nxt)))
            break
        intervals.append((_stamp(cursor), _stamp(nxt)))
        cursor = nxt
    return intervals


def _s3_url(obj: object, path: str, err: _Errors) -> str:
    s3 = _obj((_obj(obj) or {}).get("s3"))
    if s3 is None:
        err.add(f"{path}->s3", "is required (an object with url and, unless the bucket grants access, keys)")
        return ""
    url = s3.get("url")
    if not isinstance(url, str) or not url.startswith("s3://") or len(url.rstrip("/")) <= len("s3://"):
        err.add(f"{path}->s3->url", "is required and must be an s3:// URL")
        return ""
    if bool(s3.get("accessKey")) != bool(s3.get("secretAccessKey")):
        err.add(f"{path}->s3", "accessKey and secretAccessKey must be given together")
    return url


def validate_statistical(payload: object) -> StatPlan:
    """Every problem of a create payload at once, as the service's ``errors`` list (400 otherwise)."""
    err = _Errors()
    body = _require_object(payload, err)
    plan = StatPlan()
    inp = _obj(body.get("input"))
    if inp is None:
        err.add("input", "is required (features and data)")
    else:
        if inp.get("features") is None:
            err.add("input->features", "is required (the GeoPackage with the polygons, input->features->s3)")
        else:
            plan.features_url = _s3_url(inp["features"], "input->features", err)
        data = inp.get("data")
        if not isinstance(data, list) or not data:
            err.add("input->data", "must be a non-empty array")
        else:
            for i, item in enumerate(data):
                _data_item(item, f"input->data[{i}]", err)
    agg = _obj(body.get("aggregation"))
    if agg is None:
        err.add(
            "aggregation",
            "is required (timeRange, aggregationInterval, evalscript, resx/resy or width/height)",
        )
    else:
        plan.intervals = _aggregation_intervals(agg, err)
        has_script, has_ref = agg.get("evalscript") is not None, agg.get("evalscriptReference") is not None
        if has_script and has_ref:
            err.add("aggregation->evalscript", "evalscript and evalscriptReference are mutually exclusive")
        elif has_ref:
            plan.evalscript_url = _s3_url(agg["evalscriptReference"], "aggregation->evalscriptReference", err)
        elif not has_script:
            err.add("aggregation->evalscript", "either evalscript or evalscriptReference is required")
        elif not isinstance(agg["evalscript"], str) or not agg["evalscript"].strip():
            err.add("aggregation->evalscript", "must be a non-empty string")
        elif len(agg["evalscript"].encode("utf-8")) > MAX_EVALSCRIPT_BYTES:
            err.add(
                "aggregation->evalscript",
                "is larger than 32 KB; store it in a bucket and use evalscriptReference",
            )
        else:
            plan.evalscript = agg["evalscript"]
        plan.resolution, plan.size = _sampling(agg, err)
    calculations = body.get("calculations")
    if calculations is not None:
        _calculations(calculations, err)
    if body.get("output") is None:
        err.add("output", "is required (output->s3->url)")
    else:
        plan.output_url = output_url = _s3_url(body["output"], "output", err)
        if "<" in output_url:
            unknown = [p for p in re.findall(r"<[^<>]*>", output_url) if p not in OUTPUT_PLACEHOLDERS]
            if unknown:
                err.add(
                    "output->s3->url",
                    f"unknown placeholder(s) {', '.join(unknown)}; allowed: {', '.join(OUTPUT_PLACEHOLDERS)}",
                )
            elif "<ID>" not in output_url and "<IDENTIFIER>" not in output_url:
                err.add("output->s3->url", "a URL template must contain <ID> or <IDENTIFIER>")
    err.raise_if_any()
    match = _INPUT_BANDS.search(plan.evalscript or "")
    if match:  # the bands an evalscript reads (dataMask aside); 3 when it does not say
        bands = len(re.findall(r"[\"']([^\"']+)[\"']", match.group(1)))
        plan.input_bands = max(1, bands - (1 if "dataMask" in match.group(1) else 0))
    return plan


def _aggregation_intervals(agg: dict[str, Any], err: _Errors) -> list[tuple[str, str]]:
    tr = agg.get("timeRange")
    start = end = None
    if tr is None:
        err.add("aggregation->timeRange", "is required (from, to)")
    elif _obj(tr) is None:
        err.add("aggregation->timeRange", "must be an object {from, to}")
    else:
        start, end = _parse_time(tr.get("from")), _parse_time(tr.get("to"))
        for key, value in (("from", start), ("to", end)):
            if value is None:
                err.add(f"aggregation->timeRange->{key}", "is required and must be an ISO-8601 date-time")
        if start is not None and end is not None and start >= end:
            err.add("aggregation->timeRange", "from must be before to")
            start = end = None
    interval = agg.get("aggregationInterval")
    of = (_obj(interval) or {}).get("of")
    behaviour = (_obj(interval) or {}).get("lastIntervalBehavior", "SKIP")
    if interval is None:
        err.add("aggregation->aggregationInterval", 'is required (e.g. {"of": "P30D"})')
        return []
    if not isinstance(of, str) or _DURATION.match(of) is None or of == "P":
        err.add(
            "aggregation->aggregationInterval->of",
            "must be an ISO-8601 duration of days, weeks, months or years, e.g. P1D, P30D, P1M",
        )
        return []
    if behaviour not in INTERVAL_BEHAVIOURS:
        err.add(
            "aggregation->aggregationInterval->lastIntervalBehavior",
            f"must be one of {', '.join(INTERVAL_BEHAVIOURS)}",
        )
        return []
    if start is None or end is None:
        return []
    try:
        intervals = split_intervals(start, end, of, behaviour)
    except ValueError:
        err.add("aggregation->aggregationInterval->of", "must not be a zero duration")
        return []
    if not intervals:
        err.add(
            "aggregation->aggregationInterval",
            f"timeRange is shorter than one interval of {of} (lastIntervalBehavior {behaviour}); nothing to compute",
        )
    elif len(intervals) > MAX_INTERVALS:
        err.add("aggregation->aggregationInterval", f"gives more than {MAX_INTERVALS} intervals")
    return intervals


def _sampling(agg: dict[str, Any], err: _Errors) -> tuple[tuple[float, float] | None, tuple[int, int] | None]:
    has_res = agg.get("resx") is not None or agg.get("resy") is not None
    has_size = agg.get("width") is not None or agg.get("height") is not None
    if has_res and has_size:
        err.add("aggregation", "only one pair of parameters width/height or resx/resy must be set")
        return None, None
    if has_res:
        rx, ry = _positive(agg.get("resx")), _positive(agg.get("resy"))
        for key, value in (("resx", rx), ("resy", ry)):
            if value is None:
                err.add(f"aggregation->{key}", "is required with the other and must be a positive number")
        return ((rx, ry) if rx is not None and ry is not None else None), None
    if has_size:
        w, h = agg.get("width"), agg.get("height")
        for key, value in (("width", w), ("height", h)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 2500:
                err.add(
                    f"aggregation->{key}",
                    "is required with the other and must be an integer within [1, 2500]",
                )
        if isinstance(w, int) and isinstance(h, int) and 1 <= w <= 2500 and 1 <= h <= 2500:
            return None, (w, h)
        return None, None
    err.add("aggregation", "resx and resy, or width and height, are required")
    return None, None


def _positive(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and _is_number(value) and value > 0 else None


def _calculations(calculations: object, err: _Errors) -> None:
    calc = _obj(calculations)
    if calc is None:
        err.add("calculations", "must be an object keyed by evalscript output id (or default)")
        return
    for output, definition in calc.items():
        base = f"calculations->{output}"
        d = _obj(definition)
        if d is None:
            err.add(base, "must be an object with histograms and/or statistics")
            continue
        for key in sorted(set(d) - {"histograms", "statistics"}):
            err.add(f"{base}->{key}", "unknown key; allowed: histograms, statistics")
        for band, stat in (_obj(d.get("statistics")) or {}).items():
            k = ((_obj(stat) or {}).get("percentiles") or {}).get("k") if _obj(stat) else None
            if k is not None and (
                not isinstance(k, list) or not k or not all(_is_number(v) and 0 <= v <= 1 for v in k)
            ):
                err.add(
                    f"{base}->statistics->{band}->percentiles->k",
                    "must be a non-empty array of numbers in [0, 1]",
                )
        if d.get("statistics") is not None and _obj(d.get("statistics")) is None:
            err.add(f"{base}->statistics", "must be an object keyed by band name (or default)")
        if d.get("histograms") is not None and _obj(d.get("histograms")) is None:
            err.add(f"{base}->histograms", "must be an object keyed by band name (or default)")
        for band, hist in (_obj(d.get("histograms")) or {}).items():
            _histogram(_obj(hist), f"{base}->histograms->{band}", err)


def _histogram(h: dict[str, Any] | None, path: str, err: _Errors) -> None:
    if h is None:
        err.add(path, "must be an object with nBins, binWidth or bins")
        return
    given = [k for k in ("nBins", "binWidth", "bins") if h.get(k) is not None]
    if len(given) != 1:
        err.add(path, "exactly one of nBins, binWidth or bins is required")
        return
    if "nBins" in given and (
        not isinstance(h["nBins"], int) or isinstance(h["nBins"], bool) or h["nBins"] < 1
    ):
        err.add(f"{path}->nBins", "must be a positive integer")
    if "binWidth" in given and (not _is_number(h["binWidth"]) or h["binWidth"] <= 0):
        err.add(f"{path}->binWidth", "must be a positive number")
    if "bins" in given:
        bins = h["bins"]
        if (
            not isinstance(bins, list)
            or len(bins) < 2
            or not all(_is_number(v) for v in bins)
            or any(b >= a for a, b in zip(bins[1:], bins, strict=False))
        ):
            err.add(f"{path}->bins", "must be an increasing array of at least 2 numbers")
    low, high = h.get("lowEdge"), h.get("highEdge")
    for key, value in (("lowEdge", low), ("highEdge", high)):
        if value is not None and not _is_number(value):
            err.add(f"{path}->{key}", "must be a number")
    if isinstance(low, int | float) and isinstance(high, int | float) and low >= high:
        err.add(f"{path}->lowEdge", "must be smaller than highEdge")


# ---------------------------------------------------------------------------------------------- outputs
def evalscript_outputs(evalscript: str) -> list[tuple[str, list[str]]]:
    """``(output id, band names)`` declared in ``setup()``; ``dataMask`` is the mask, not a result."""
    found: list[tuple[str, list[str]]] = []
    block = _OUTPUT_BLOCK.search(evalscript)
    for item in _OUTPUT_ITEM.findall(block.group(1)) if block else []:
        ident = _ID.search(item)
        name = ident.group(1) if ident else "default"
        if name == "dataMask":
            continue
        names = _BANDS_LIST.search(item)
        if names:
            bands = re.findall(r"[\"']([^\"']+)[\"']", names.group(1))
        else:
            count = _BANDS_INT.search(item)
            bands = [f"B{i}" for i in range(int(count.group(1)) if count else 1)]
        found.append((name, bands or ["B0"]))
    return found or [("default", ["B0"])]


def output_path(template: str, request_id: str, feature_id: int, identifier: str | None) -> str:
    """``<url>/<REQUEST_ID>/<ID>.json`` for a plain URL, else the template with its placeholders filled."""
    if not any(p in template for p in OUTPUT_PLACEHOLDERS):
        template = template.rstrip("/") + "/<REQUEST_ID>/<ID>.json"
    return (
        template.replace("<REQUEST_ID>", request_id)
        .replace("<ID>", str(feature_id))
        .replace("<IDENTIFIER>", identifier if identifier is not None else str(feature_id))
    )


def output_root(template: str, request_id: str) -> str:
    """The fixed folder above the per-feature part of the output URL."""
    if not any(p in template for p in OUTPUT_PLACEHOLDERS):
        return template.rstrip("/") + f"/{request_id}"
    cut = min(template.find(p) for p in ("<ID>", "<IDENTIFIER>") if p in template)
    return template[:cut].replace("<REQUEST_ID>", request_id).rsplit("/", 1)[0]


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _pick(definitions: dict[str, Any], output: str, key: str, band: str) -> dict[str, Any] | None:
    for out in (output, "default"):
        per_band = (_obj(definitions.get(out)) or {}).get(key)
        if isinstance(per_band, dict):
            for b in (band, "default"):
                if isinstance(per_band.get(b), dict):
                    return per_band[b]
    return None


def feature_statistics(
    *,
    seed: int,
    feature_id: int,
    samples: int,
    intervals: list[tuple[str, str]],
    outputs: list[tuple[str, list[str]]],
    calculations: dict[str, Any],
) -> list[dict[str, Any]]:
    """The ``data`` list of one feature: per interval, per output and band, ``stats`` (+ percentiles) and,
    when asked for, a ``histogram``. Intervals without an acquisition are left out, as the service does."""
    feature_rng = _rng(seed, feature_id)
    offset, amplitude = feature_rng.uniform(-0.12, 0.08), feature_rng.uniform(0.25, 0.5)
    data = []
    for start, end in intervals:
        irng = _rng(seed, feature_id, start)
        if irng.random() < 0.08:
            continue  # no acquisition in this interval
        day = datetime.fromisoformat(start.replace("Z", "+00:00")).timetuple().tm_yday
        season = max(0.0, math.sin(math.pi * (day - 60) / 240)) if 60 <= day <= 300 else 0.0
        cloudy = irng.random() < 0.1
        result: dict[str, Any] = {"interval": {"from": start, "to": end}, "outputs": {}}
        for output, bands in outputs:
            out: dict[str, Any] = {"bands": {}}
            for bi, band in enumerate(bands):
                brng = _rng(seed, feature_id, start, output, band)
                no_data = samples if cloudy else int(samples * brng.uniform(0.0, 0.25))
                valid = samples - no_data
                band_stats: dict[str, Any]
                if valid == 0:
                    band_stats = {
                        "stats": {
                            "min": "NaN",
                            "max": "NaN",
                            "mean": "NaN",
                            "stDev": "NaN",
                            "sampleCount": samples,
                            "noDataCount": no_data,
                        }
                    }
                else:
                    mean = min(0.95, max(-0.2, 0.15 + offset + amplitude * season + 0.05 * bi))
                    mean += brng.uniform(-0.03, 0.03)
                    sd = brng.uniform(0.04, 0.12) if valid > 1 else 0.0
                    dist = NormalDist(mean, sd) if sd > 0 else None
                    lo = max(-1.0, mean - 2.5 * sd) if valid > 1 else mean
                    hi = min(1.0, mean + 2.5 * sd) if valid > 1 else mean
                    stats: dict[str, Any] = {
                        "min": round(lo, 6),
                        "max": round(hi, 6),
                        "mean": round(mean, 6),
                        "stDev": round(sd, 6),
                        "sampleCount": samples,
                        "noDataCount": no_data,
                    }
                    stat_def = _pick(calculations, output, "statistics", band)
                    ks = ((stat_def or {}).get("percentiles") or {}).get("k")
                    if ks:
                        stats["percentiles"] = {
                            f"{float(k) * 100:.1f}": round(
                                min(
                                    hi,
                                    max(
                                        lo, dist.inv_cdf(min(max(float(k), 1e-6), 1 - 1e-6)) if dist else mean
                                    ),
                                ),
                                6,
                            )
                            for k in ks
                        }
                    band_stats = {"stats": stats}
                    hist_def = _pick(calculations, output, "histograms", band)
                    if hist_def is not None:
                        band_stats["histogram"] = _histogram_values(hist_def, lo, hi, valid, dist)
                out["bands"][band] = band_stats
            result["outputs"][output] = out
        data.append(result)
    return data


def _histogram_values(
    definition: dict[str, Any], lo: float, hi: float, valid: int, dist: NormalDist | None
) -> dict[str, Any]:
    low = float(definition.get("lowEdge", lo))
    high = float(definition.get("highEdge", hi if hi > low else low + 1e-6))
    if definition.get("bins") is not None:
        edges = [float(v) for v in definition["bins"]]
    elif definition.get("binWidth") is not None:
        width = float(definition["binWidth"])
        n = max(1, math.ceil((high - low) / width))
        edges = [low + i * width for i in range(n + 1)]
    else:
        n = int(definition.get("nBins", 10))
        edges = [low + (high - low) * i / n for i in range(n + 1)]

    def cdf(x: float) -> float:
        if dist is None:
            return 1.0 if x >= lo else 0.0
        return dist.cdf(x)

    bins = []
    counted = 0
    for a, b in itertools.pairwise(edges):
        count = round(valid * (cdf(b) - cdf(a)))
        counted += count
        bins.append({"lowEdge": a, "highEdge": b, "count": count})
    under = round(valid * cdf(edges[0]))
    over = max(0, valid - counted - under)
    return {"bins": bins, "overflowCount": over, "underflowCount": under}


def _samples(
    feature_area: float, bbox: tuple[float, float, float, float], epsg: int, plan: dict[str, Any]
) -> int:
    if plan.get("size"):
        w, h = plan["size"]
        box = max((bbox[2] - bbox[0]) * (bbox[3] - bbox[1]), 1e-12)
        return max(1, round(w * h * min(1.0, feature_area / box)))
    rx, ry = plan.get("resolution") or (10.0, 10.0)
    mx, my = metres_per_unit(epsg, (bbox[1] + bbox[3]) / 2)
    if epsg in (4326, 4258, 0) and rx >= 1:  # metres given for a geographic layer: convert the area
        return max(1, round(feature_area * mx * my / (rx * ry)))
    return max(1, round(feature_area / (rx * ry)))


# ---------------------------------------------------------------------------------------------- request
@dataclass
class StatRequest(Job):
    """One Batch Statistical request; its tiles are the GeoPackage's polygons once analysis has read it."""

    plan: dict[str, Any] = field(default_factory=dict)
    account_id: str = ""
    epsg: int = 4326
    out_of_pu_block_until: float | None = None

    @property
    def description(self) -> str:
        """Always ``""``: Batch Statistical requests have no description."""
        return ""

    def cost_pu(self, now: float) -> float:
        """Features processed so far; a finished request is billed at least the minimum of 100 PU."""
        cost = super().cost_pu(now)
        return max(cost, MIN_REQUEST_PU) if self.status == "DONE" else cost

    # -------------------------------------------------------------------------------- lifecycle hooks
    def _begin_analysis(self, st: EmulatorState, t: float) -> None:
        if not self.tiles and not self.analysis_error:
            self._load_features(st)
        super()._begin_analysis(st, t)

    def _load_features(self, st: EmulatorState) -> None:
        with tempfile.TemporaryDirectory(prefix="sentinel-batch-emulator-input-") as scratch:
            self._load_inputs(st, Path(scratch))

    def _load_inputs(self, st: EmulatorState, scratch: Path) -> None:
        """The GeoPackage (and a referenced evalscript): from the data dir, or over S3 with the input's keys."""
        url = self.plan["features_url"]
        try:
            layer = read_features(
                st.outputs.input_file(url, _s3_keys(self.body, "input", "features"), scratch)
            )
        except DeliveryError as exc:
            reason = (
                "the GeoPackage does not exist." if exc.code == "NoSuchKey" else exc.describe("read from")
            )
            self.analysis_error = f"Failed to read input features from {url}: {reason}"
            return
        except GeoPackageError as exc:
            self.analysis_error = f"Failed to read input features from {url}: the GeoPackage {exc}."
            return
        script = self.plan.get("evalscript")
        if script is None:
            ref_url = self.plan["evalscript_url"]
            keys = _s3_keys(self.body, "aggregation", "evalscriptReference")
            try:
                ref = st.outputs.input_file(ref_url, keys, scratch)
                reason = "" if ref.is_file() else "the object does not exist."
            except DeliveryError as exc:
                reason = (
                    "the object does not exist." if exc.code == "NoSuchKey" else exc.describe("read from")
                )
            if reason:
                self.analysis_error = f"Failed to read the evalscript from {ref_url}: {reason}"
                return
            script = ref.read_text("utf-8", "replace")
            self.plan["evalscript"] = script
        if "evaluatePixel" not in script:
            self.analysis_error = (
                "Failed to evaluate script!\nevalscript.js: ReferenceError: evaluatePixel is not defined"
            )
            return
        self.epsg = layer.epsg
        intervals = max(1, len(self.plan["intervals"]))
        bands = self.plan.get("input_bands", 3)
        for f in layer.features:
            samples = _samples(f.area, f.bbox, layer.epsg, self.plan)
            cost = max(0.01, samples / 512**2) * max(1.0, bands / 3) * intervals
            self.tiles.append(
                Tile(
                    id=f.id,
                    name=f.identifier if f.identifier is not None else "",
                    epsg=layer.epsg,
                    geometry={
                        "bbox": list(f.bbox),
                        "samples": samples,
                        "has_identifier": f.identifier is not None,
                    },
                    origin={},
                    cost=cost,
                )
            )

    def _enter_processing(self, st: EmulatorState, t: float) -> None:
        super()._enter_processing(st, t)
        if st.pu_budget is None:
            return
        available = st.pu_budget - st.pu_spent(now=t) - MIN_PU_BALANCE
        if available <= 0:
            self.oop_at = t
            return
        total = 0.0
        for tile in sorted((x for x in self.tiles if x.end_at and x.end_at > t), key=lambda x: x.end_at or 0):
            if not tile.fails:
                total += tile.cost
                if total > available:
                    self.oop_at = tile.end_at
                    return

    def _stop(self, t: float, reason: str) -> None:
        super()._stop(t, reason)
        if reason == "OUT_OF_PU":
            self.out_of_pu_block_until = t + OUT_OF_PU_BLOCK

    def advance(self, st: EmulatorState, now: float) -> None:
        """Apply transitions due by ``now``, then write finished features' JSON (none after OUT_OF_PU)."""
        super().advance(st, now)
        self._write_outputs(st, now)

    def _write_outputs(self, st: EmulatorState, now: float) -> None:
        if not self.output_url or now < self.output_check_at:
            return
        upcoming = float("inf")
        cutoff = now if self.oop_at is None else min(now, self.oop_at)
        outputs = evalscript_outputs(self.plan.get("evalscript") or "")
        for tile in self.tiles:
            if tile.written or tile.end_at is None:
                continue
            if tile.end_at <= cutoff:
                self._write_feature(st, tile, outputs)
                tile.written = True
            else:
                upcoming = min(upcoming, tile.end_at)
        self.output_check_at = upcoming

    def _write_feature(self, st: EmulatorState, tile: Tile, outputs: list[tuple[str, list[str]]]) -> None:
        identifier = tile.name if tile.geometry.get("has_identifier") else None
        doc: dict[str, Any] = {"id": tile.id}
        if identifier is not None:
            doc["identifier"] = identifier
        if tile.fails:
            doc["response"] = {"data": None, "status": "FAILED"}
        else:
            doc["response"] = {
                "data": feature_statistics(
                    seed=self.seed,
                    feature_id=tile.id,
                    samples=int(tile.geometry.get("samples", 1)),
                    intervals=[tuple(i) for i in self.plan["intervals"]],  # type: ignore[misc]
                    outputs=outputs,
                    calculations=_obj(self.body.get("calculations")) or {},
                ),
                "status": "OK",
            }
        url = output_path(self.output_url, self.id, tile.id, identifier)
        st.outputs._deliver(
            self, url, json.dumps(doc).encode()
        )  # the data dir, or S3 with the request's keys

    # -------------------------------------------------------------------------------------- actions
    def stat_analyse(self, st: EmulatorState, now: float) -> None:
        """ANALYSE: only a ``CREATED`` request with no user action (else 400); 403 under 1000 PU."""
        if self.status != "CREATED" or self.user_action != "NONE":
            raise self._illegal("ANALYSE")
        check_balance(st)
        self.v2_analyse(st, now)

    def stat_start(self, st: EmulatorState, now: float) -> None:
        """START as a v2 task; 403 under 1000 PU, and a request stopped ``OUT_OF_PU`` cannot restart
        within 60 emulated minutes (400)."""
        if self.status == "STOPPED":
            if self.out_of_pu_block_until is not None and now < self.out_of_pu_block_until:
                wait = (self.out_of_pu_block_until - now) / st.clock.scale
                raise bad_payload(
                    "A request stopped for lack of processing units cannot be restarted within 60 minutes "
                    f"(emulated; {wait:.1f} s of wall-clock time left)."
                )
            check_balance(st)
            self.out_of_pu_block_until = None
        elif self.status in {"CREATED", "ANALYSING", "ANALYSIS_DONE"}:
            check_balance(st)
        self.v2_start(st, now)

    def stat_stop(self, st: EmulatorState, now: float) -> None:
        """STOP (answered 204 in every status): acts in ``ANALYSING`` (after the analysis),
        ``ANALYSIS_DONE``, ``PROCESSING`` or on a START still queued in ``CREATED``; else nothing changes."""
        s = self.status
        if s == "ANALYSING" or (s == "CREATED" and self.start_lag_until is not None):
            self.stop_pending = True  # the analysis completes, then the request stops
        elif s in {"ANALYSIS_DONE", "PROCESSING"}:
            self._stop(now, "USER_ACTION")
        else:
            return  # nothing to stop: 204 and no change (CREATED without START, DONE, FAILED, STOPPED)
        self._set_action("STOP", now)

    # ------------------------------------------------------------------------------------------ views
    def costs(self, now: float) -> float:
        """PUs billed by ``now``, rounded as the views show them."""
        return round(self.cost_pu(now), 3)

    def status_view(self, st: EmulatorState) -> dict[str, Any]:
        """The ``GET .../{id}/status`` body; cost as ``costPu`` (OpenAPI) and ``costPU`` (sentinelhub-py)."""
        now = st.clock.now()
        body: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "completionPercentage": self.completion(now),
            "lastUpdated": _when(st, self, max(self.last_updated_emu, _last_end(self, now))),
            "costPu": self.costs(now),
            "costPU": self.costs(now),
            "created": _iso(self.created_wall),
        }
        if self.error:
            body["error"] = self.error
        if self.status == "STOPPED" and self.stopped_reason:
            body["stoppedStatusReason"] = self.stopped_reason
        return body

    def view(self, st: EmulatorState) -> dict[str, Any]:
        """The ``GET .../{id}`` body: the status body plus ``request``, ``userAction`` and the account."""
        body = self.status_view(st)
        body.update(
            {
                "request": _request_copy(self.body),
                "userAction": self.user_action,
                "userActionUpdated": _when(st, self, self.user_action_emu),
                "domainAccountId": self.account_id,
            }
        )
        return body


def _request_copy(body: dict[str, Any]) -> dict[str, Any]:
    copied = dict(body)
    for key in ("input", "aggregation", "output"):
        if isinstance(copied.get(key), dict):
            copied[key] = dict(copied[key])
    return copied


def _iso(epoch: float) -> str:
    from .state import iso

    return iso(epoch)


def _when(st: EmulatorState, job: Job, emu: float) -> str:
    return _iso(min(time.time(), max(job.created_wall, st.clock.epoch(emu))))


def _last_end(job: Job, now: float) -> float:
    ends = [t.end_at for t in job.tiles if t.end_at is not None and t.end_at <= now]
    return max(ends) if ends else job.last_updated_emu


def _s3_keys(body: Any, *path: str) -> BucketKeys | None:
    """The key pair of the ``s3`` object at ``body[path...]["s3"]`` (an input's or the output's), if any."""
    node = body
    for key in (*path, "s3"):
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return None
    access, secret = node.get("accessKey"), node.get("secretAccessKey")
    if isinstance(access, str) and isinstance(secret, str) and access and secret:
        return BucketKeys(access, secret)
    return None


def check_balance(st: EmulatorState) -> None:
    """Create, analyse and start need at least 1000 PU on the account."""
    st.check_pu_balance("batch statistical requests need")


# --------------------------------------------------------------------------------------------- service
class StatisticalService:
    """The statistical requests of one emulator, behind the emulator's lock and on its clock."""

    def __init__(self, st: EmulatorState) -> None:
        self.st = st

    @property
    def requests(self) -> dict[str, StatRequest]:
        """The emulator's statistical requests by id (in its state: reset and the state file cover them)."""
        return self.st.stat_requests

    def create(self, payload: Any, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST a request: 400 with every payload problem, 403 under 1000 PU; returns its view. Output
        keys stay in memory only."""
        plan = validate_statistical(payload)
        st = self.st
        with st.lock:
            check_balance(st)
            now = st.clock.now()
            settings = st.next_job_settings(
                overrides, "Analysis failed: the input features could not be processed (emulated failure)."
            )
            request_id = str(uuid.UUID(int=st._ids.getrandbits(128), version=4))
            request = StatRequest(
                id=request_id,
                api=3,
                body=json.loads(json.dumps(payload)),
                user_id=st.user_id,
                seed=st._ids.getrandbits(32),
                created_emu=now,
                created_wall=time.time(),
                created_mono=time.monotonic(),
                tiles=[],
                grid_id=-1,
                resolution=0.0,
                tile_px=[0, 0],
                responses=[],
                output_kind="statistical",
                output_url=plan.output_url,
                tile_failure_rate=float(settings.get("tile_failure_rate") or 0.0),
                retry_tile_failure_rate=float(settings.get("retry_tile_failure_rate") or 0.0),
                analysis_error=settings.get("analysis_error"),
                user_action_emu=now,
                last_updated_emu=now,
                plan=plan.stored(),
                account_id=st.account_id,
            )
            if (
                st.outputs.s3 is not None
            ):  # delivery over S3: the request's output keys, else the policy stand-in
                st.outputs.keys[request_id] = _s3_keys(payload, "output") or st.outputs.s3.config.policy_keys
            self.requests[request_id] = request
            st.jobs_created += 1
            log.info("created statistical request %s", request_id)
            st.save()
            return request.view(st)

    def lookup(self, request_id: str) -> StatRequest:
        """As the API sees it: unknown and freshly created (404 fault window) ids are 404."""
        st = self.st
        request = self.requests.get(request_id)
        message = f"Batch statistical request with id {request_id} not found."
        if request is None:
            raise not_found(message)
        window = st.faults.faults.not_found_after_create
        if window and time.monotonic() - request.created_mono < window:
            st.faults.count("404_after_create")
            raise not_found(message)
        request.advance(st, st.clock.now())
        return request

    def get(self, request_id: str) -> StatRequest:
        """The request advanced to now, ignoring the 404 window (control plane and tests)."""
        with self.st.lock:
            request = self.requests.get(request_id)
            if request is None:
                raise KeyError(request_id)
            request.advance(self.st, self.st.clock.now())
            return request

    def view(self, request_id: str) -> dict[str, Any]:
        """The ``GET .../{id}`` body (404 for unknown ids and in the not-found window)."""
        with self.st.lock:
            return self.lookup(request_id).view(self.st)

    def status(self, request_id: str) -> dict[str, Any]:
        """The ``GET .../{id}/status`` body (404 for unknown ids and in the not-found window)."""
        with self.st.lock:
            return self.lookup(request_id).status_view(self.st)

    def action(self, request_id: str, action: str) -> None:
        """POST ``analyse``, ``start`` or ``stop`` to a request as the API sees it."""
        with self.st.lock:
            request = self.lookup(request_id)
            now = self.st.clock.now()
            getattr(request, f"stat_{action}")(self.st, now)
            request.advance(self.st, now)
            self.st.save()

    def list(self, sort: str | None) -> list[dict[str, Any]]:
        """The list call's request views in ``sort`` order (400 for an unknown sort)."""
        st = self.st
        with st.lock:
            return [r.view(st) for r in st.listed(self.requests.values(), sort)]

    def force(self, request_id: str, status: str, error: str | None, reason: str | None) -> dict[str, Any]:
        """Put a request in ``status`` now (control plane); reads the GeoPackage first if that status
        needs features. ``KeyError`` for an unknown id, ``ValueError`` for a status v2 does not have."""
        st = self.st
        with st.lock:
            request = self.get(request_id)
            if status not in V2_STATUSES:
                raise ValueError(f"status must be one of {', '.join(V2_STATUSES)} for a statistical request")
            now = st.clock.now()
            if not request.tiles and status in {"PROCESSING", "DONE", "FAILED", "STOPPED", "ANALYSIS_DONE"}:
                request._load_features(st)
            request.force(st, now, status, error, reason)
            if status == "STOPPED" and request.stopped_reason == "OUT_OF_PU":
                request.out_of_pu_block_until = now + OUT_OF_PU_BLOCK
            request.advance(st, now)
            st.save()
            return request.view(st)

    def configure(self, request_id: str, **changes: Any) -> dict[str, Any]:
        """Change a request's ``tile_failure_rate`` (redrawn while ``PROCESSING``) or ``analysis_error``
        (empty: none); ``KeyError`` for an unknown id, ``ValueError`` for an unknown setting or a rate outside
        [0, 1]."""
        st = self.st
        with st.lock:
            request = self.get(request_id)
            unknown = set(changes) - {"tile_failure_rate", "analysis_error"}
            if unknown:
                raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
            if "tile_failure_rate" in changes:
                rate = float(changes["tile_failure_rate"])
                if not 0 <= rate <= 1:
                    raise ValueError("tile_failure_rate must be within [0, 1]")
                request.tile_failure_rate = rate
                if request.status == "PROCESSING":
                    request.redraw_failures(st.clock.now())
            if "analysis_error" in changes:
                request.analysis_error = changes["analysis_error"] or None
            st.save()
            return request.view(st)


# ----------------------------------------------------------------------------------------------- routes
Handler = Callable[["Request"], Awaitable["Response"]]


def register(app: FastAPI, st: EmulatorState) -> None:
    """Add the Batch Statistical routes and their ``/_emulator/statistical`` control routes to ``app``."""
    from fastapi.responses import JSONResponse, Response

    from .app import _count_tiles, _create_delay, _overrides, paginate, read_payload

    service = StatisticalService(st)
    app.state.statistical = service

    async def create(request: Request) -> Response:
        payload = await read_payload(request)
        await _create_delay(st)
        return JSONResponse(service.create(payload, _overrides(request)), 201)

    async def list_(request: Request) -> Response:
        return JSONResponse(paginate(request, service.list(request.query_params.get("sort"))))

    async def get(request: Request) -> Response:
        return JSONResponse(service.view(request.path_params["id"]))

    async def status(request: Request) -> Response:
        return JSONResponse(service.status(request.path_params["id"]))

    def action(name: str) -> Handler:
        async def handler(request: Request) -> Response:
            service.action(request.path_params["id"], name)
            return Response(status_code=204)

        return handler

    app.add_route(BASE, create, methods=["POST"])
    app.add_route(BASE, list_, methods=["GET"])
    app.add_route(f"{BASE}/{{id}}", get, methods=["GET"])
    app.add_route(f"{BASE}/{{id}}/status", status, methods=["GET"])
    for path, name in (("analyse", "analyse"), ("start", "start"), ("stop", "stop"), ("cancel", "stop")):
        app.add_route(f"{BASE}/{{id}}/{path}", action(name), methods=["POST"])

    def control(fn: Callable[[Request], Awaitable[Any]]) -> Handler:
        async def handler(request: Request) -> Response:
            try:
                result = await fn(request)
            except KeyError as exc:
                raise ApiError(
                    404, f"Unknown statistical request {exc.args[0]}.", "COMMON_NOT_FOUND"
                ) from None
            except (ValueError, TypeError) as exc:
                raise bad_payload(str(exc)) from None
            return JSONResponse(result)

        return handler

    async def c_list(_: Request) -> Any:
        with st.lock:
            return [
                {"id": r.id, "status": service.get(r.id).status, "features": len(r.tiles)}
                for r in list(service.requests.values())
            ]

    async def c_get(request: Request) -> Any:
        r = service.get(request.path_params["id"])
        with st.lock:
            view = r.view(st)
            now = st.clock.now()
            view["_emulator"] = {
                "tile_failure_rate": r.tile_failure_rate,
                "analysis_error": r.analysis_error,
                "features": len(r.tiles),
                "feature_statuses": _count_tiles(r, now),
                "output_root": output_root(r.output_url, r.id) if r.output_url else None,
            }
            return view

    async def c_force(request: Request) -> Any:
        body = await _json_body(request)
        if "status" not in body:
            raise ValueError("status is required")
        return service.force(
            request.path_params["id"], str(body["status"]), body.get("error"), body.get("stoppedStatusReason")
        )

    async def c_configure(request: Request) -> Any:
        return service.configure(request.path_params["id"], **(await _json_body(request)))

    control_base = "/_emulator/statistical"
    app.add_route(control_base, control(c_list), methods=["GET"], include_in_schema=False)
    app.add_route(f"{control_base}/{{id}}", control(c_get), methods=["GET"], include_in_schema=False)
    app.add_route(f"{control_base}/{{id}}/force", control(c_force), methods=["POST"], include_in_schema=False)
    app.add_route(
        f"{control_base}/{{id}}/configure", control(c_configure), methods=["POST"], include_in_schema=False
    )


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("request body must be a JSON object")
    return data


def local_results(data_dir: Path, output_url: str, request_id: str) -> Path:
    """Where the emulator writes a request's JSON files (the ``output_root`` mapped into ``data_dir``)."""
    return local_path(data_dir, output_root(output_url, request_id))
