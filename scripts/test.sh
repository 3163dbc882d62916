#!/usr/bin/env bash
# From a fresh machine: set up, then run the whole test suite (real data from ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Style is part of the suite: one formatter, one linter, the versions pinned in the dev extras.
.venv/bin/ruff format --check --quiet src tests bench
.venv/bin/ruff check --quiet src tests bench
exec .venv/bin/python -m pytest "$@"
