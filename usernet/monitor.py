"""``usernet stats`` and ``usernet flows``: a running usernet, for people and scripts.

Both ask a running usernet over its API socket (``stats`` and the
``list_flows`` extension, :mod:`usernet.api`) and print aligned tables, or
the reply as JSON with ``--json``. ``--watch [SECS]`` redraws every SECS
seconds (default 1) in place, with rates since the last refresh: bytes/s per
flow, new flows/s, counter increments/s; ``--count N`` stops after N
refreshes.

Which usernet: ``--api-socket PATH``; else found among the running
processes (:func:`find_api_socket`): a usernet (``usernet run``/``attach``,
the slirp4netns entry point, or Podman's slirp4netns when it is usernet)
started with an API socket (``--api-socket``/``-a``). ``--pid PID`` picks the
one that is PID, is PID's parent (the command of ``usernet run``), or serves
PID's network (its target PID); without ``--pid`` there must be exactly one.
usernet keeps no registry of its own: the process table is the one list that
cannot go stale.
"""

from __future__ import annotations

import json
import os
import sys
import time

WATCH_DEFAULT = 1.0
# Counters whose sum is "flows opened" (new flows/s in --watch).
FLOW_OPEN_COUNTERS = ("tcp_syn_connect", "tcp_inbound_open", "udp_flow_open", "icmp_flow_open")
# What stats shows first, whatever its value: what the stack holds now.
GAUGES = ("tcp_flows", "tcp_connecting", "udp_flows", "icmp_flows", "frag_in_progress",
          "neighbours6", "dns_pending")


class MonitorError(Exception):
    """One line for the user: which usernet could not be found or asked, and what to do."""


# ------------------------------------------------------------ finding it
def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def _is_usernet(argv: list[str]) -> bool:
    """A usernet serving a TAP: the python module, the console scripts, or
    the slirp4netns entry point (whatever Podman calls it)."""
    if not argv:
        return False
    text = " ".join(argv[:4])
    if "usernet" not in text:
        return False
    return any(w in argv for w in ("run", "attach", "slirp4netns")) or \
        any(os.path.basename(a).startswith("usernet-slirp4netns") for a in argv[:3]) or \
        "slirp4netns" in os.path.basename(argv[0])


def _api_socket_arg(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--":
            break
        for opt in ("--api-socket", "-a"):
            if a == opt and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(opt + "=") or (opt == "-a" and a.startswith("-a") and len(a) > 2
                                            and not a.startswith("--")):
                return a[len(opt) + 1:] if a.startswith(opt + "=") else a[2:]
    return None


def _target_pid(argv: list[str]) -> int | None:
    """The PID operand of attach / slirp4netns (the first all-digit argument after the command)."""
    for a in argv[2:]:
        if a == "--":
            return None
        if a.isdigit():
            return int(a)
    return None


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def instances() -> list[dict]:
    """Running usernets with an API socket: [{pid, socket, target}]."""
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        pid = int(d)
        argv = _cmdline(pid)
        if not _is_usernet(argv):
            continue
        path = _api_socket_arg(argv)
        if path is None:
            continue
        if not os.path.isabs(path):
            try:
                path = os.path.join(os.readlink(f"/proc/{pid}/cwd"), path)
            except OSError:
                continue
        out.append({"pid": pid, "socket": path, "target": _target_pid(argv)})
    return sorted(out, key=lambda i: i["pid"])


def find_api_socket(pid: int | None = None) -> str:
    found = instances()
    if pid is not None:
        parent = _ppid(pid)
        match = [i for i in found if pid in (i["pid"], i["target"]) or i["pid"] == parent]
        if not match:
            raise MonitorError(f"no usernet with an API socket serves pid {pid} (start it with "
                               "--api-socket PATH, or give --api-socket)")
        return match[0]["socket"]
    if not found:
        raise MonitorError("no running usernet with an API socket found (start it with "
                           "--api-socket PATH, or give --api-socket / --pid)")
    if len(found) > 1:
        which = ", ".join(f"pid {i['pid']} ({i['socket']})" for i in found)
        raise MonitorError(f"{len(found)} usernets are running: {which}; choose with --pid or "
                           "--api-socket")
    return found[0]["socket"]


def ask(path: str, req: dict) -> dict:
    from .api import request
    try:
        reply = request(path, req)
    except FileNotFoundError:
        raise MonitorError(f"API socket {path}: no such file (is usernet running with "
                           f"--api-socket {path}?)") from None
    except ConnectionRefusedError:
        raise MonitorError(f"API socket {path}: connection refused (the usernet that made it "
                           "has exited)") from None
    except OSError as e:
        raise MonitorError(f"API socket {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise MonitorError(f"API socket {path}: {e}") from None
    if "error" in reply:
        raise MonitorError(f"API socket {path}: {reply['error'].get('desc', reply['error'])}")
    return reply.get("return", {})


# -------------------------------------------------------------- rendering
def human(n: float) -> str:
    """Bytes with a binary suffix: 1023, 1.0K, 12.3M."""
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def table(header: list[str], rows: list[list], right: set[int] = frozenset()) -> str:
    """Columns padded to their widest cell; ``right``: indexes aligned right (numbers)."""
    cells = [header] + [[("-" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for r in cells:
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return "\n".join(lines)


def render_flows(ret: dict, prev: dict | None, dt: float | None) -> str:
    flows = ret.get("flows", [])
    rate = prev is not None and dt
    header = ["PROTO", "DIR", "CONTAINER", "REMOTE", "HOST", "STATE", "TX", "RX", "TX_PKTS",
              "RX_PKTS", "AGE", "IDLE", "RETRANS"]
    if rate:
        header += ["TX/S", "RX/S"]
        flows = sorted(flows, key=lambda f: -_flow_rate(f, prev, dt))
    rows = []
    for f in flows:
        # The host socket's end that tells flows apart: ours for an outbound
        # flow (its ephemeral port, as ss shows it), the client for a forward.
        host = f.get("host_local") if f.get("direction") == "out" else f.get("host_peer")
        r = [f["proto"], f["direction"], f["container"], f["remote"], host, f["state"],
             human(f["tx_bytes"]), human(f["rx_bytes"]), f["tx_packets"], f["rx_packets"],
             f"{f['age']:.1f}", f"{f['idle']:.1f}", f["retransmits"]]
        if rate:
            p = prev.get((f["proto"], f["id"]))
            tx = (f["tx_bytes"] - p["tx_bytes"]) / dt if p else f["tx_bytes"] / dt
            rx = (f["rx_bytes"] - p["rx_bytes"]) / dt if p else f["rx_bytes"] / dt
            r += [human(max(0, tx)), human(max(0, rx))]
        rows.append(r)
    shown = len(flows)
    total = ret.get("total", shown)
    foot = f"{total} flow{'' if total == 1 else 's'}" + (f" ({shown} shown)" if shown < total else "")
    return table(header, rows, right=set(range(6, len(header)))) + "\n" + foot


def _flow_rate(f: dict, prev: dict, dt: float) -> float:
    p = prev.get((f["proto"], f["id"]))
    cur = f["tx_bytes"] + f["rx_bytes"]
    return (cur - (p["tx_bytes"] + p["rx_bytes"] if p else 0)) / dt


def render_stats(stats: dict, prev: dict | None, dt: float | None, show_all: bool) -> str:
    rate = prev is not None and dt
    header = ["COUNTER", "VALUE"] + (["PER_S"] if rate else [])
    rows = []
    gauges = [g for g in GAUGES if g in stats]
    names = gauges + sorted(k for k in stats if k not in GAUGES)
    for k in names:
        v = stats[k]
        if not isinstance(v, (int, float)):
            continue
        if not show_all and not v and k not in GAUGES:
            continue
        r = [k, v]
        if rate:
            r.append("" if k in GAUGES else f"{(v - prev.get(k, 0)) / dt:.1f}")
        rows.append(r)
    return table(header, rows, right={1, 2})


def new_flows(stats: dict) -> int:
    return sum(stats.get(k, 0) for k in FLOW_OPEN_COUNTERS)


# ------------------------------------------------------------------- main
def run(args, out=None) -> int:
    out = out or sys.stdout
    path = args.api_socket or find_api_socket(args.pid)
    what = args.command
    watch = args.watch
    count = args.count
    tty = out.isatty()
    prev_flows = prev_stats = None
    prev_t = None
    n = 0
    while True:
        t = time.monotonic()
        stats = ask(path, {"execute": "stats"})
        ret = ask(path, {"execute": "list_flows", "arguments": {"limit": args.limit}}) \
            if what == "flows" else None
        dt = t - prev_t if prev_t is not None else None
        if args.json:
            text = json.dumps(ret if what == "flows" else stats, sort_keys=True,
                              indent=None if watch is not None else 2)
        else:
            if what == "flows":
                text = render_flows(ret, prev_flows, dt)
            else:
                text = render_stats(stats, prev_stats, dt, args.all)
            if watch is not None:
                head = f"usernet {what}: {path}  every {watch:g}s"
                if dt:
                    head += f"  new flows/s {(new_flows(stats) - new_flows(prev_stats)) / dt:.1f}"
                text = head + "\n" + text
        if watch is not None and tty and not args.json:
            out.write("\x1b[H\x1b[2J")       # home, clear: redraw in place
        out.write(text + "\n")
        out.flush()
        n += 1
        if watch is None or (count is not None and n >= count):
            return 0
        if what == "flows":
            prev_flows = {(f["proto"], f["id"]): f for f in ret.get("flows", [])}
        prev_stats = stats
        prev_t = t
        time.sleep(max(0.0, watch - (time.monotonic() - t)))
