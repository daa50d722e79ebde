#!/usr/bin/env bash
# The benchmarks (set-up included). Prints tables; see docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
.venv/bin/python bench/parser.py "$@"
