#!/usr/bin/env bash
# From a fresh machine: set up, then simulate a survey, train a tiny model and encode it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ecovae quickstart "$@"
