#!/usr/bin/env bash
# From a fresh machine: set up, then run the whole test suite (real data from ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The report is checked in a real browser (tests/test_cli.py): Debian's chromium and its driver, installed
# where apt-get can; elsewhere that test is skipped and says why.
if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
    >/dev/null 2>&1 || echo "chromium could not be installed: the browser test will be skipped"
fi
# Style is part of the suite: one formatter, one linter, the versions pinned in the dev extras.
.venv/bin/ruff format --check --quiet src tests bench
.venv/bin/ruff check --quiet src tests bench
exec .venv/bin/python -m pytest "$@"
