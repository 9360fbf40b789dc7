#!/usr/bin/env bash
# Every benchmark (triggerer scale, polls, parse cost, hook, emulator, httpx vs aiohttp, request budget), one command:
#   bash benchmarks/run_all.sh            # full run (~10 min on 2 cores); rewrites the tables in docs/benchmarks.md
#   bash benchmarks/run_all.sh --quick    # no 10,000-trigger run, fewer repeats (~4 min); tables only printed
#   bash benchmarks/run_all.sh --only scale,polls
# The venvs are the ones .ci/test builds (Airflow 3.3.2 in .venv, 2.11.2 in .venv-airflow2; the latter ships
# aiohttp, which the provider never depends on). Everything runs on 127.0.0.1 and ends by count or time.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/env.sh
make_env .venv 3.3.2
make_env .venv-airflow2 2.11.2
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true  # the client-per-trigger baseline holds a socket per trigger
BENCH_COMMAND="bash benchmarks/run_all.sh${*:+ $*}" exec .venv/bin/python benchmarks/run_all.py \
  --python2 .venv-airflow2/bin/python "$@"
