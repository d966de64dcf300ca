#!/usr/bin/env bash
# Lints, type-checks and tests the Python client (clients/python): ruff check, ruff format
# --check, mypy --strict and pytest. The tests start real memring binaries (shard nodes,
# routers, the control plane) on free 127.0.0.1 ports, from $MEMRING_BIN_DIR, else
# $CARGO_TARGET_DIR/release, else target/release: build them first (`make run` or
# `cargo build --release --bins`).
#
# The virtualenv lives in ~/.cache/memring/py-venv (or $MEMRING_PY_VENV); it is created when
# missing and pip runs only when the client's pyproject.toml changed or something is missing.
# Extra arguments go to pytest (e.g. `scripts/test-python.sh -k retries -x`).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CLIENT="$ROOT/clients/python"
VENV="${MEMRING_PY_VENV:-$HOME/.cache/memring/py-venv}"
PYTHON="${PYTHON:-python3}"

die() { echo "test-python: $*" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "test-python: creating the virtualenv $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV" || die "could not create $VENV (on Debian: apt-get install python3-venv)"
fi
PY="$VENV/bin/python"

# Install when the client is not installed from this checkout, a tool is missing, or
# pyproject.toml changed since the last install.
stamp="$VENV/.memring-client-pyproject"
want="$(sha256sum "$CLIENT/pyproject.toml" | cut -d' ' -f1) $CLIENT"
installed_here() {
  "$PY" - "$CLIENT" <<'PYEOF' 2>/dev/null
import os, sys
import httpx, pytest, pytest_asyncio, mypy, ruff  # noqa: F401
import memring
sys.exit(0 if os.path.realpath(memring.__file__).startswith(os.path.realpath(sys.argv[1])) else 1)
PYEOF
}
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! installed_here; then
  echo "test-python: installing clients/python[dev] into $VENV"
  "$PY" -m pip install --quiet --disable-pip-version-check -e "$CLIENT[dev]" \
    || die "pip install -e clients/python[dev] failed"
  echo "$want" >"$stamp"
fi

cd "$CLIENT"
failed=()
step() {
  local name=$1
  shift
  echo "== $name"
  if ! "$@"; then failed+=("$name"); fi
}
step "ruff check" "$VENV/bin/ruff" check .
step "ruff format --check" "$VENV/bin/ruff" format --check .
step "mypy --strict" "$VENV/bin/mypy" --strict
step "pytest" "$VENV/bin/pytest" "$@"

if [ ${#failed[@]} -gt 0 ]; then
  echo "test-python: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "test-python: all passed"
