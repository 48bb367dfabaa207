#!/usr/bin/env bash
# The test suite on a fresh machine: set up .venv, then pytest (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/venv.sh
exec .venv/bin/python -m pytest --durations=15 "$@"
