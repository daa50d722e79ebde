#!/usr/bin/env bash
# The benchmarks (set-up included). Prints tables; see docs/performance.md.
#   tools/bench.sh [--quick]            the parser bench, then the whole path (root only, ~15 min;
#                                       --quick: ~2 min) vs slirp4netns, pasta and veth
#   tools/bench.sh parser [ARGS]        bench/parser.py only
#   tools/bench.sh whole-path [ARGS]    bench/whole_path.py only (e.g. --only rr,ping)
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
# The bench's own peers beyond the test suite's (tools/setup.sh has slirp4netns, passt, iperf3):
# redis for the many-client row. Installed without starting Debian's redis service
# (policy-rc.d 101 = "do not start"): the bench runs its own on loopback.
if [ "$(id -u)" = 0 ] && ! command -v redis-benchmark >/dev/null && command -v apt-get >/dev/null; then
    echo "bench: installing redis-server redis-tools" >&2
    made=
    if [ ! -e /usr/sbin/policy-rc.d ]; then   # container images often ship one: keep it
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
        made=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        redis-server redis-tools >/dev/null || echo "bench: redis not installed; its row is skipped" >&2
    if [ -n "$made" ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
fi
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
