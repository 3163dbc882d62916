#!/usr/bin/env bash
# From a fresh machine: set up, then run the whole test suite (real data from ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
