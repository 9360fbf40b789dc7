#!/usr/bin/env bash
# Drive the emulator with the official sentinelhub-py client in throwaway virtualenvs (the SDK is never a
# dependency of this package): v1 SentinelHubBatch needs sentinelhub==3.11.1 (v1 was removed in 3.11.2),
# v2 BatchProcessClient runs on the newest release (locked in .ci/locks/sdk-*.txt, refreshed by .ci/lock). Usage: bash tests/emulator/sdk/run_sdk_compat.sh [pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
WORK="${SDK_VENV_DIR:-${TMPDIR:-/tmp}/sentinel-batch-sdk-compat}"
PYTHON="${SDK_PYTHON:-3.11}"
status=0
for name in v1 v2; do
  venv="$WORK/$name"
  if [ ! -x "$venv/bin/python" ]; then
    uv venv -q --python "$PYTHON" "$venv"
  fi
  uv pip sync -q --python "$venv/bin/python" "$ROOT/.ci/locks/sdk-$name-py3.11.txt"
  uv pip install -q --python "$venv/bin/python" --no-deps -e "$ROOT"
  echo "== sentinelhub $("$venv/bin/python" -c 'import sentinelhub; print(sentinelhub.__version__)') ($name)"
  # --confcutdir keeps the Airflow-importing tests/conftest.py out: these venvs have no Airflow.
  (cd "$ROOT" && "$venv/bin/python" -m pytest tests/emulator/sdk -m sdk --confcutdir=tests/emulator \
     -p no:cacheprovider -o addopts="" -q "$@") || status=1
done
exit $status
