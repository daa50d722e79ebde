#!/usr/bin/env bash
# The benchmarks (set-up included). Prints tables; see docs/performance.md.
#   tools/bench.sh [--quick]            the parser bench, then the whole path (root only, ~15 min;
#                                       --quick: ~2 min) vs slirp4netns, pasta and veth
#   tools/bench.sh parser [ARGS]        bench/parser.py only
#   tools/bench.sh whole-path [ARGS]    bench/whole_path.py only (e.g. --only rr,ping)
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
case "${1:-}" in
    parser) shift; exec .venv/bin/python bench/parser.py "$@" ;;
    whole-path) shift; exec .venv/bin/python bench/whole_path.py "$@" ;;
esac
.venv/bin/python bench/parser.py "$@"
echo
if [ "$(id -u)" = 0 ]; then
    .venv/bin/python bench/whole_path.py "$@"
else
    echo "bench: skipping bench/whole_path.py (it makes its namespaces and a veth pair as root)" >&2
fi
