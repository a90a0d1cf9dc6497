#!/usr/bin/env bash
# Create the virtualenv and install what is missing. Idempotent: a second run takes well under a
# second (it compares a stamp of pyproject.toml). Used by `just run`, `just test` and CI.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${DARKROOM_VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.darkroom-installed"
want="$(cat pyproject.toml clients/python/pyproject.toml | sha256sum | cut -d' ' -f1)"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "Darkroom needs Python 3.11 or newer (found: $("$PYTHON" --version 2>&1))." >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtualenv in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing Python packages into $VENV (first time: about 2 minutes)"
  # torch first and pinned: an open range would pull the newest release plus several GB of CUDA
  # packages. On a CPU-only machine with a local CPU wheel this takes that wheel.
  if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==2.13.0"
  fi
  # The client SDK first: the server depends on it (the CLI's client commands, the MCP tools).
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -e ./clients/python
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -e ".[test]"
  echo "$want" > "$stamp"
fi
