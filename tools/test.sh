#!/usr/bin/env bash
# The whole test suite, set-up included: unit tests (no privileges) and
# integration tests (real namespaces; need root or /dev/net/tun 0666).
# Extra arguments go to pytest, e.g. tools/test.sh -k tcp -x
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
exec .venv/bin/python -m pytest -ra "$@"
