"""3. DAG parse cost: what the provider's operator/sensor modules and the example DAGs add to a DAG parse.

Each measurement is a fresh (cold) Python process of the given venv that imports, timing each step:

1. the bare Airflow entry point (``import airflow.sdk`` on 3.x, ``import airflow`` on 2.11);
2. a trivial DAG (``DAG, BaseOperator, BaseSensorOperator, Param, task`` from ``common.compat.sdk``, one
   DAG with one task): what any DAG file costs, Airflow's share;
3. ``airflow_provider_sentinel_batch.operators.batch`` and ``.sensors.batch``;
4. every ``dags_examples/*.py`` file, executed as a module (what the DAG processor does).

Extra = steps 2-4 over step 1, and steps 3-4 alone (over a trivial DAG). It also lists the HTTP/OAuth/retry/emulator modules that steps 2-4 pulled
in (they must stay lazy), and runs once with ``python -X importtime`` for the biggest imports of steps 3-4.

    python benchmarks/bench_parse.py --python .venv/bin/python --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, emit

#: Must not be imported just by parsing a DAG (they load when a task or trigger runs).
WATCHED = (
    "httpx",
    "httpcore",
    "requests",
    "requests_oauthlib",
    "oauthlib",
    "tenacity",
    "aiohttp",
    "fastapi",
    "starlette",
    "uvicorn",
    "airflow_provider_sentinel_batch.auth",
    "airflow_provider_sentinel_batch.retry",
    "airflow_provider_sentinel_batch.hooks.sentinel_batch",
    "airflow_provider_sentinel_batch.hooks.async_client",
    "airflow_provider_sentinel_batch.triggers.batch",
    "airflow_provider_sentinel_batch.emulator",
)

CHILD = r"""
import importlib.util, json, os, sys, time
from datetime import datetime

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

watched = json.loads(sys.argv[1]); dags = json.loads(sys.argv[2]); airflow3 = sys.argv[3] == "3"
marks = [(time.perf_counter(), rss())]
if airflow3:
    import airflow.sdk  # noqa
else:
    import airflow  # noqa
marks.append((time.perf_counter(), rss()))
before = set(sys.modules)
from airflow.providers.common.compat.sdk import DAG, BaseOperator, BaseSensorOperator, Param, task  # noqa
with DAG("bench_trivial", schedule=None, start_date=datetime(2024, 1, 1)):
    BaseOperator(task_id="t")
marks.append((time.perf_counter(), rss()))
after_trivial = set(sys.modules)
import airflow_provider_sentinel_batch.operators.batch  # noqa
import airflow_provider_sentinel_batch.sensors.batch  # noqa
marks.append((time.perf_counter(), rss()))
per_file = []
for i, path in enumerate(dags):
    start = time.perf_counter()
    spec = importlib.util.spec_from_file_location(f"bench_dag_{i}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    per_file.append((time.perf_counter() - start) * 1000)
marks.append((time.perf_counter(), rss()))
def loaded(names):
    return sorted({w for w in watched if any(m == w or m.startswith(w + ".") for m in names)})
print("CHILD " + json.dumps({
    "steps_ms": [(b[0] - a[0]) * 1000 for a, b in zip(marks, marks[1:])],
    "rss_mib": [(b[1] - a[1]) / 2**20 for a, b in zip(marks, marks[1:])],
    "per_file_ms": per_file,
    "watched_by_airflow": loaded(after_trivial - before),
    "watched_by_provider": loaded(set(sys.modules) - after_trivial),
}))
"""


def _child_env() -> dict[str, str]:
    home = tempfile.mkdtemp(prefix="bench-parse-home-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "PYTHONDONTWRITEBYTECODE": "",
        }
    )
    return env


def run_once(python: str, dags: list[str], airflow3: bool, importtime: bool = False) -> Any:
    cmd = [python]
    if importtime:
        cmd += ["-X", "importtime"]
    cmd += ["-c", CHILD, json.dumps(WATCHED), json.dumps(dags), "3" if airflow3 else "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(), cwd=ROOT, timeout=300)
    for line in proc.stdout.splitlines():
        if line.startswith("CHILD "):
            result = json.loads(line[len("CHILD ") :])
            if importtime:
                result["importtime"] = _top_imports(proc.stderr)
            return result
    raise RuntimeError(f"parse child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def _top_imports(stderr: str, top: int = 8) -> list[dict[str, Any]]:
    """Top-level imports of steps 3-4 (after the compat names), by cumulative microseconds."""
    rows = []
    started = False
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not match:
            continue
        cumulative, indent, name = int(match.group(2)), len(match.group(3)), match.group(4)
        if name.startswith("airflow_provider_sentinel_batch") and not started:
            started = True
        if started and indent <= 1:
            rows.append({"module": name, "cumulative_ms": cumulative / 1000})
    rows.sort(key=lambda r: r["cumulative_ms"], reverse=True)
    return rows[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    version = subprocess.run(
        [args.python, "-c", "import importlib.metadata as m; print(m.version('apache-airflow'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    airflow3 = not version.startswith("2.")
    dags = sorted(str(p) for p in (ROOT / "dags_examples").glob("*.py"))
    # the examples that need Airflow 3 (asset watchers) import airflow.sdk directly: not parsed on Airflow 2
    dags = [d for d in dags if airflow3 or "from airflow.sdk import" not in Path(d).read_text()]
    run_once(args.python, dags, airflow3)  # warm the page cache and the .pyc files; not counted
    runs = [run_once(args.python, dags, airflow3) for _ in range(args.runs)]
    profile = run_once(args.python, dags, airflow3, importtime=True)

    def median_step(i: int, key: str = "steps_ms") -> float:
        return statistics.median(r[key][i] for r in runs)

    extra = [sum(r["steps_ms"][1:]) for r in runs]
    provider = [sum(r["steps_ms"][2:]) for r in runs]
    emit(
        {
            "airflow": version,
            "runs": args.runs,
            "dag_files": [Path(d).name for d in dags],
            "bare_import_ms": median_step(0),
            "trivial_dag_ms": median_step(1),
            "provider_modules_ms": median_step(2),
            "example_dags_ms": median_step(3),
            "per_file_ms": {
                Path(d).name: statistics.median(r["per_file_ms"][i] for r in runs) for i, d in enumerate(dags)
            },
            "extra_ms_median": statistics.median(extra),
            "extra_ms_min": min(extra),
            "extra_ms_max": max(extra),
            "provider_and_dags_ms_median": statistics.median(provider),
            "provider_and_dags_ms_max": max(provider),
            "extra_rss_mib": statistics.median(sum(r["rss_mib"][1:]) for r in runs),
            "provider_and_dags_rss_mib": statistics.median(sum(r["rss_mib"][2:]) for r in runs),
            "watched_by_airflow": runs[0]["watched_by_airflow"],
            "watched_by_provider": sorted({w for r in runs for w in r["watched_by_provider"]}),
            "top_imports": profile["importtime"],
        }
    )


if __name__ == "__main__":
    main()
