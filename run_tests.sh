#!/usr/bin/env bash
# The test command: sets up .venv (see tools/venv.sh) and runs the suite.
#   bash run_tests.sh            # all tests
#   bash run_tests.sh -k decode  # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source tools/venv.sh
exec "$PY" -m pytest -q "$@"
