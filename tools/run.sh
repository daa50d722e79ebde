#!/usr/bin/env bash
# The main job, set-up included: start a web server on host loopback, then run
# curl inside a fresh network namespace served by usernet; the container
# reaches the host's 127.0.0.1 through the gateway address 10.0.2.2.
# Any other command: tools/run.sh -- CMD [ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
if [ "${1:-}" = "--" ]; then
    shift
    exec .venv/bin/usernet run -- "$@"
fi
dir=$(mktemp -d)
trap 'kill $srv 2>/dev/null || true; rm -rf "$dir"' EXIT
echo "hello from the host, through usernet" > "$dir/index.html"
.venv/bin/python -m http.server --bind 127.0.0.1 --directory "$dir" 18081 >/dev/null 2>&1 &
srv=$!
for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18081/ && break; sleep 0.1; done
set -x
.venv/bin/usernet run -- sh -c 'ip -4 addr show tap0; ping -c 3 10.0.2.2; curl -sS http://10.0.2.2:18081/'
