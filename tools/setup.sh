#!/usr/bin/env bash
# Set up a development machine from nothing: system packages (when root), the
# virtual environment in .venv, usernet installed editable with its test extras.
# Idempotent: a second run only checks. Used by `make run`, `make test` and CI.
set -euo pipefail
cd "$(dirname "$0")/.."

# busybox-static (not busybox, which it replaces): the Podman test's image is made of it.
# podman runc: the real rootless Podman test (tests/integration/test_podman.py).
# gcc libc6-dev: the compiled front of usernet-slirp4netns (below).
APT_PACKAGES=(gcc libc6-dev iproute2 util-linux uidmap curl iperf3 dnsutils iputils-ping busybox-static procps slirp4netns passt ncat tcpdump
              podman runc)

need_apt=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing ${need_apt[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    else
        echo "setup: missing system packages (install them as root): ${need_apt[*]}" >&2
    fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    "$PY" -m venv .venv
fi
stamp=.venv/.usernet-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing usernet and test dependencies into .venv" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -U pip >/dev/null
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    touch "$stamp"
fi

# usernet-slirp4netns's compiled front (usernet/slirp4netns_front.c): the network is ready, for
# Podman, a few milliseconds after exec instead of after a Python start (~0.1 s); it then execs
# this .venv's Python. It replaces the pip-made script of the same name (rebuilt whenever pip
# rewrites that, or the source changes); without a C compiler the Python entry point stays.
front=.venv/bin/usernet-slirp4netns
if command -v cc >/dev/null; then
    if [ ! -f .venv/.front-built ] || [ usernet/slirp4netns_front.c -nt .venv/.front-built ] \
        || [ "$(head -c 2 "$front" 2>/dev/null)" = "#!" ]; then
        cc -O2 -Wall -Wextra -o "$front.tmp" -DUSERNET_PYTHON="\"$PWD/.venv/bin/python\"" \
            usernet/slirp4netns_front.c
        mv "$front.tmp" "$front"
        touch .venv/.front-built
    fi
else
    echo "setup: no C compiler (cc): usernet-slirp4netns stays the Python entry point" >&2
fi
