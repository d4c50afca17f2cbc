#!/usr/bin/env bash
# Set up (Debian packages, pybk with its test extras) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh "[test]"
python3 -m ruff check .
scripts/lint-imports
exec python3 -m pytest "$@"
