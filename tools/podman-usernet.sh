#!/usr/bin/env bash
# Point the current user's rootless Podman at usernet (and back).
#
#   tools/podman-usernet.sh [install]   network_cmd_path = usernet-slirp4netns in
#                                       ~/.config/containers/containers.conf ([engine])
#   tools/podman-usernet.sh undo        put the file back as it was
#   tools/podman-usernet.sh status      say which network helper Podman will start
#
# Podman starts `network_cmd_path` exactly as it starts slirp4netns, for every container on the
# slirp4netns network (the rootless default of Podman 4; Podman 5 defaults to pasta, so on 5.x
# this also sets [network] default_rootless_network_cmd = "slirp4netns"). The lines written are
# marked "# usernet"; the first install keeps a copy of the file, which undo restores.
# USERNET_SLIRP4NETNS=/path/to/usernet-slirp4netns overrides the helper found.
set -euo pipefail
cd "$(dirname "$0")/.."

conf_dir=${XDG_CONFIG_HOME:-$HOME/.config}/containers
conf=$conf_dir/containers.conf
backup=$conf.usernet-backup
action=${1:-install}

entry=${USERNET_SLIRP4NETNS:-}
if [ -z "$entry" ]; then
    if [ -x "$PWD/.venv/bin/usernet-slirp4netns" ]; then
        entry=$PWD/.venv/bin/usernet-slirp4netns
    else
        entry=$(command -v usernet-slirp4netns || true)
    fi
fi

case "$action" in
install)
    if [ -z "$entry" ] || ! "$entry" --version >/dev/null 2>&1; then
        echo "podman-usernet: usernet-slirp4netns not found or not working (run tools/setup.sh first)" >&2
        exit 1
    fi
    command -v podman >/dev/null || echo "podman-usernet: note: podman is not installed" >&2
    major=$(podman version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)
    mkdir -p "$conf_dir"
    if [ -f "$conf" ] && [ ! -f "$backup" ]; then
        cp -p "$conf" "$backup"
    elif [ ! -f "$conf" ] && [ ! -f "$backup" ]; then
        : > "$backup.absent"
    fi
    python3 - "$conf" "$entry" "${major:-0}" <<'EOF'
import re, sys
path, entry, major = sys.argv[1], sys.argv[2], int(sys.argv[3] or 0)
try:
    lines = open(path).read().splitlines()
except FileNotFoundError:
    lines = []
lines = [l for l in lines if not l.rstrip().endswith("# usernet")]
want = {"engine": f'network_cmd_path = "{entry}"  # usernet'}
if major >= 5:
    want["network"] = 'default_rootless_network_cmd = "slirp4netns"  # usernet'
for table, line in want.items():
    key = line.split("=")[0].strip()
    # An existing setting of the same key is commented out (undo restores the file anyway).
    for i, l in enumerate(lines):
        if re.match(rf"\s*{key}\s*=", l):
            lines[i] = "# " + l + "  # (disabled by usernet)"
    for i, l in enumerate(lines):
        if l.strip() == f"[{table}]":
            lines.insert(i + 1, line)
            break
    else:
        lines += ["", f"[{table}]", line]
open(path, "w").write("\n".join(lines) + "\n")
EOF
    echo "podman-usernet: $conf: network_cmd_path = $entry"
    echo "podman-usernet: check with: podman info --format '{{.Host.Slirp4NetNS.Executable}}'"
    ;;
undo)
    if [ -f "$backup" ]; then
        mv -f "$backup" "$conf"
        echo "podman-usernet: restored $conf"
    elif [ -f "$backup.absent" ]; then
        rm -f "$conf" "$backup.absent"
        echo "podman-usernet: removed $conf (there was none before)"
    else
        echo "podman-usernet: nothing to undo in $conf" >&2
    fi
    ;;
status)
    podman info --format '{{.Host.Slirp4NetNS.Executable}}  {{.Host.Slirp4NetNS.Version}}'
    ;;
*)
    echo "usage: $0 [install|undo|status]" >&2
    exit 1
    ;;
esac
