# Shared by .ci/test, .ci/demo and .ci/run: find or install uv, and build a project venv for one Airflow line.
# Needs only python3 (3.11+) and network access to PyPI. Sourced, not executed.

PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "Python 3.11+ is required (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
}

ensure_uv() {
  if command -v uv >/dev/null 2>&1; then UV=$(command -v uv); return; fi
  if [ ! -x .venv-tools/bin/uv ]; then
    echo "==> installing uv into .venv-tools" >&2
    "$PY" -m venv .venv-tools
    .venv-tools/bin/python -m pip install -q uv
  fi
  UV="$PWD/.venv-tools/bin/uv"
}

# make_env DIR AIRFLOW_VERSION EXTRAS: a venv with that Airflow and this project (editable) installed.
make_env() {
  local dir="$1" airflow="$2" extras="${3:-test}"
  ensure_uv
  local stamp="$dir/.stamp-$airflow-$extras-$(cat pyproject.toml | "$PY" -c 'import hashlib,sys; print(hashlib.sha1(sys.stdin.buffer.read()).hexdigest()[:12])')"
  if [ -f "$stamp" ]; then return; fi
  echo "==> preparing $dir (Airflow $airflow, extras [$extras])" >&2
  [ -x "$dir/bin/python" ] || "$UV" venv -q --python "$PY" "$dir"
  VIRTUAL_ENV="$PWD/$dir" "$UV" pip install -q "apache-airflow==$airflow" -e ".[$extras]"
  rm -f "$dir"/.stamp-*
  touch "$stamp"
}
