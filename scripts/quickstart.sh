#!/usr/bin/env bash
# From a fresh machine: set up, then simulate a survey, fine-tune the shipped model on it, encode, evaluate, report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ecovae quickstart "$@"
