# Shared by .ci/test, .ci/demo, .ci/lock and .ci/run: find or install uv, and build a project venv for one Airflow
# line from its committed lock file. Needs only python3 (3.11+) and the package index. Sourced, not executed.

PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "Python 3.11+ is required (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
}
# uv must use the interpreters on this machine, never download one
export UV_PYTHON_DOWNLOADS=never

# What the locks cover: the supported Airflow lines (tested versions) and Python minors.
LOCK_AIRFLOW_LINES="3.3.2 2.11.2"
LOCK_PYTHONS="3.11 3.12"

ensure_uv() {
  if command -v uv >/dev/null 2>&1; then UV=$(command -v uv); return; fi
  if [ ! -x .venv-tools/bin/uv ]; then
    echo "==> installing uv into .venv-tools" >&2
    "$PY" -m venv .venv-tools
    .venv-tools/bin/python -m pip install -q uv
  fi
  UV="$PWD/.venv-tools/bin/uv"
}

# lock_file AIRFLOW PYTHON_MINOR: the committed lock of that pair.
lock_file() { echo ".ci/locks/airflow-$1-py$2.txt"; }

# exclusions_for AIRFLOW: the requirements from .ci/locks/exclusions.txt that apply to that Airflow version.
exclusions_for() {
  local airflow="$1" prefix req
  sed -e 's/#.*//' .ci/locks/exclusions.txt | while IFS= read -r line; do
    [ -n "${line// /}" ] || continue
    prefix="${line%%:*}"; req="${line#*:}"; req="${req// /}"
    if [ "$prefix" = "*" ] || [[ "$airflow" == "$prefix"* ]]; then echo "$req"; fi
  done
}

# python_minor PYTHON: "3.11" for that interpreter.
python_minor() { "$1" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'; }

# make_env DIR AIRFLOW_VERSION [PYTHON]: a venv with exactly the locked dependencies of that Airflow line and this
# project (editable, extras test+lint+distributed). With LATEST=1: the newest versions the index resolves today instead (only
# the exclusions applied), in DIR-latest, to find upstream breakage on purpose.
make_env() {
  local dir="$1" airflow="$2" python="${3:-$PY}" minor lock stamp
  ensure_uv
  minor="$(python_minor "$python")"
  lock="$(lock_file "$airflow" "$minor")"
  if [ "${LATEST:-0}" = "1" ]; then
    dir="$dir-latest"
    echo "==> LATEST=1: $dir gets the newest resolvable versions (not the lock $lock)" >&2
    [ -x "$dir/bin/python" ] || "$UV" venv -q --python "$python" "$dir"
    exclusions_for "$airflow" > "$dir/exclusions.txt"
    VIRTUAL_ENV="$PWD/$dir" "$UV" pip install -q --refresh --upgrade --constraint "$dir/exclusions.txt" \
      "apache-airflow==$airflow" -e ".[test,lint,distributed]"
    ENV_DIR="$dir"
    return
  fi
  if [ ! -f "$lock" ]; then
    echo "No lock file $lock for Airflow $airflow on Python $minor (locked: Airflow $LOCK_AIRFLOW_LINES," \
      "Python $LOCK_PYTHONS). Use a locked pair, or add it to .ci/env.sh and run: bash .ci/lock" >&2
    exit 2
  fi
  stamp="$dir/.stamp-$(cat "$lock" pyproject.toml | "$PY" -c 'import hashlib,sys; print(hashlib.sha1(sys.stdin.buffer.read()).hexdigest()[:12])')"
  ENV_DIR="$dir"
  if [ -f "$stamp" ]; then return; fi
  echo "==> preparing $dir (Airflow $airflow, Python $minor) from $lock" >&2
  [ -x "$dir/bin/python" ] || "$UV" venv -q --python "$python" "$dir"
  VIRTUAL_ENV="$PWD/$dir" "$UV" pip sync -q "$lock"
  VIRTUAL_ENV="$PWD/$dir" "$UV" pip install -q --no-deps -e .
  rm -f "$dir"/.stamp-*
  touch "$stamp"
}

# latest_report DIR AIRFLOW: after a LATEST=1 run, what differs from the lock (the suspects of a breakage).
latest_report() {
  local dir="$1" airflow="$2" lock
  lock="$(lock_file "$airflow" "$(python_minor "$dir/bin/python")")"
  echo "==> LATEST=1, Airflow $airflow: versions that differ from $lock (the suspects when this run broke):"
  VIRTUAL_ENV="$PWD/$dir" "$UV" pip freeze --exclude-editable | sort > "$dir/freeze.txt"
  grep -E '^[A-Za-z0-9_.-]+==' "$lock" | sed 's/ .*//' | sort > "$dir/lock.txt"
  "$PY" - "$dir/lock.txt" "$dir/freeze.txt" <<'PYEOF'
import re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
def read(p):
    return {norm(l.split("==")[0]): l.split("==")[1].split(";")[0].strip() for l in open(p) if "==" in l}
lock, now = read(sys.argv[1]), read(sys.argv[2])
rows = [(n, lock.get(n, "-"), now.get(n, "-")) for n in sorted(set(lock) | set(now)) if lock.get(n) != now.get(n)]
for n, a, b in rows:
    print(f"    {n}: lock {a} -> now {b}")
print(f"    ({len(rows)} differ)" if rows else "    (none: the lock is current)")
PYEOF
}
