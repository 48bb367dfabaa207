#!/usr/bin/env bash
# Create (or reuse) .venv with the locked dependencies and the package installed in editable mode.
# Re-installs only when requirements/lock.txt or pyproject.toml changed. Source it or run it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
want="$(cat requirements/lock.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.lock-stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing locked dependencies into $VENV (a few minutes the first time)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -c requirements/lock.txt -e ".[dev]"
    echo "$want" > "$VENV/.lock-stamp"
fi
