#!/usr/bin/env python3
"""Compiled hot modules (mypyc, Cython) against the pure-Python stack, back to back.

    .venv/bin/python -m pip install mypy cython     # the experiment's tools, not usernet's
    .venv/bin/python bench/compiled_ab.py            # build them, bench/stack_rr.py A/B (~3 min)
    .venv/bin/python bench/compiled_ab.py --e2e      # + bench/cpu_split.py on the builds (as root)
    .venv/bin/python bench/compiled_ab.py --builds typed --e2e   # pure and the typed build only
    .venv/bin/python bench/compiled_ab.py --unit     # + tests/unit against the mypyc build

usernet ships pure Python; this script measures what compiling the per-packet modules would buy
(issue 12), so the decision can be re-checked when the code changes. It needs gcc, the Python
headers (Debian: python3-dev) and mypy + Cython in this interpreter; without them it says so
(docs/performance.md has the results: "Compiled against pure", "Typed Cython").

Copies of this working tree go into a scratch directory (--dir, default a temporary one):

    pure    as it is
    mypyc   the hot modules compiled by mypyc, after the edits mypyc needs (below)
    cython  the same modules compiled by Cython as they are (pure-Python mode, no .pxd)
    typed   tcp, tcpnat, flows, timers and wire/frame compiled by Cython with a .pxd beside each
            that makes every slotted class an extension type with one object field per slot
            (written here from the classes' __slots__; TcpNat, which has none, gets slots
            from the attributes its methods set), so `self.x` is a field read

mypyc compiles a class to a native class whose attributes have the type mypy infers, and checks
that type at run time. usernet initialises many attributes to None and later stores numbers
there, which Python allows and a native class refuses; so the mypyc copy is edited
mechanically first: every attribute set to None (or a class attribute set to None) is declared
`Any`, `TcpConnection.__init__` gets `-> None` (so mypy infers its integer attributes: the
sequence numbers become native integers), the gateway's per-instance rebinding of a method
becomes a plain attribute, and each line mypy still rejects gets `# type: ignore`. flows.py is
left out (mypyc does not compile its class-body tuple assignments). The edits are made in the
scratch copy only.

`--builds` picks among them (default all four; pure is always built).

Prints bench/stack_rr.py's CPU us per transaction for each build, interleaved, `--reps` times,
the median and the ratio to pure; `--e2e` then runs bench/cpu_split.py with the three builds
(provider CPU per transaction and per GB through a real TAP and sockets).
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
# The per-packet modules (bench/cpu_split.py's profile: the TCP path, the frame codec, the gateway)
HOT = ["usernet/stack/tcp.py", "usernet/stack/tcpnat.py", "usernet/stack/gateway.py",
       "usernet/stack/timers.py", "usernet/wire/frame.py", "usernet/wire/checksum.py",
       "usernet/wire/vnet.py"]
# Cython also takes the host side as it is
CYTHON_EXTRA = ["usernet/stack/flows.py", "usernet/host/driver.py", "usernet/host/tcp.py"]
# The typed Cython build: the modules whose classes carry the per-packet state (gateway.py has no
# slots: compiled as it is, its attribute reads would be slower than the interpreter's)
TYPED = ["usernet/stack/tcp.py", "usernet/stack/tcpnat.py", "usernet/stack/flows.py",
         "usernet/stack/timers.py", "usernet/wire/frame.py"]
MYPY_FLAGS = ["--ignore-missing-imports", "--follow-imports=silent",
              "--disable-error-code", "annotation-unchecked"]


def need(kinds) -> str | None:
    if not shutil.which("gcc"):
        return "no gcc (Debian: apt-get install gcc)"
    if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        return "no Python.h (Debian: apt-get install python3-dev)"
    tools = [("mypy", "mypy")] if "mypyc" in kinds else []
    tools += [("Cython", "cython")] if {"cython", "typed"} & set(kinds) else []
    for mod, pkg in tools:
        try:
            __import__(mod)
        except ImportError:
            return f"no {pkg} in {PY} ({PY} -m pip install {pkg}; not a usernet dependency)"
    return None


def copy_tree(dst: str) -> None:
    """The working tree's files (tracked and new, as git lists them; no .venv, no build output)."""
    files = subprocess.run(["git", "ls-files", "-z", "-c", "-o", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for f in files:
        src = os.path.join(ROOT, f)
        if not f or not os.path.isfile(src) or f.endswith((".so", ".c")):
            continue
        os.makedirs(os.path.join(dst, os.path.dirname(f)), exist_ok=True)
        shutil.copy2(src, os.path.join(dst, f))


def declare_none_attrs_any(path: str) -> int:
    """Every attribute some method of a class sets to None is declared `Any` where it is first
    stored (`self.x: Any = ...`; a chain `self.a = self.b = v` becomes one line each), and a
    class-body `X = None` becomes `X: Any = None`."""
    src = open(path).read()
    lines = src.split("\n")
    tree = ast.parse(src)
    edits: dict[int, list[str]] = {}

    def is_none(v) -> bool:
        return isinstance(v, ast.Constant) and v.value is None

    for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
        for st in cls.body:
            if isinstance(st, ast.Assign) and is_none(st.value) \
                    and all(isinstance(t, ast.Name) for t in st.targets):
                ind = re.match(r"\s*", lines[st.lineno - 1]).group(0)
                edits[st.lineno] = [f"{ind}{t.id}: Any = None" for t in st.targets]
        stores = []   # (line, statement, [attr names]) for every `self.x = ...` in the methods
        for fn in cls.body:
            if isinstance(fn, ast.FunctionDef):
                for st in ast.walk(fn):
                    if isinstance(st, (ast.Assign, ast.AnnAssign)):
                        ts = st.targets if isinstance(st, ast.Assign) else [st.target]
                        names = [t.attr for t in ts if isinstance(t, ast.Attribute)
                                 and isinstance(t.value, ast.Name) and t.value.id == "self"]
                        if names:
                            stores.append((st.lineno, st, names, len(names) == len(ts)))
        stores.sort(key=lambda x: x[0])
        nullable = {n for _, st, names, _ in stores if is_none(st.value) for n in names}
        done: set[str] = set()
        for ln, st, names, whole in stores:
            first = [n for n in names if n in nullable and n not in done]
            done.update(names)
            if not first:
                continue
            if isinstance(st, ast.AnnAssign) or not whole or st.end_lineno != st.lineno:
                print(f"compiled_ab: {path}:{ln}: left as it is", file=sys.stderr)
                continue
            ind = re.match(r"\s*", lines[ln - 1]).group(0)
            val = ast.get_source_segment(src, st.value)
            tail = lines[ln - 1][st.end_col_offset:]
            out = []
            for i, n in enumerate(names):
                ann = ": Any" if n in first else ""
                out.append(f"{ind}self.{n}{ann} = {val if i == 0 else 'self.' + names[0]}")
            out[0] += tail
            edits[ln] = out
    for ln in sorted(edits, reverse=True):
        lines[ln - 1:ln] = edits[ln]
    out = "\n".join(lines)
    if edits and not re.search(r"^from typing import .*\bAny\b", out, re.M):
        first_imp = next(n for n in ast.parse(out).body
                         if isinstance(n, (ast.Import, ast.ImportFrom))
                         and not (isinstance(n, ast.ImportFrom) and n.module == "__future__"))
        ol = out.split("\n")
        ol.insert(first_imp.lineno - 1, "from typing import Any")
        out = "\n".join(ol)
    open(path, "w").write(out)
    return len(edits)


def sub(path: str, old: str, new: str) -> None:
    s = open(path).read()
    if old not in s:
        raise SystemExit(f"compiled_ab: the mypyc edit for {path} no longer applies "
                         f"(the source moved): {old.strip()[:70]!r}")
    open(path, "w").write(s.replace(old, new, 1))


def prepare_mypyc(d: str) -> None:
    g = os.path.join(d, "usernet/stack/gateway.py")
    # a native class cannot rebind a method per instance: call through a plain attribute
    sub(g, "            self._ipv6_input = self._ipv6_disabled",
        "            self._ipv6_in = self._ipv6_disabled")
    sub(g, "            self._ipv6_input(p, frame, now, csum_ok)",
        "            self._ipv6_in(p, frame, now, csum_ok)")
    sub(g, "        if cfg.enable_ipv6:\n            self._init_ipv6(cfg)",
        "        self._ipv6_in: Any = self._ipv6_input\n        if cfg.enable_ipv6:\n"
        "            self._init_ipv6(cfg)")
    t = os.path.join(d, "usernet/stack/tcp.py")
    s = open(t).read()
    s2 = re.sub(r"(class TcpConnection\b.*?def __init__\(.*?\))(:)", r"\1 -> None\2", s, count=1,
                flags=re.S)
    if s2 == s:
        raise SystemExit("compiled_ab: TcpConnection.__init__ not found")
    open(t, "w").write(s2)
    for m in HOT + ["usernet/stack/flows.py"]:
        declare_none_attrs_any(os.path.join(d, m))
    for _ in range(4):
        r = subprocess.run([PY, "-m", "mypy"] + MYPY_FLAGS + HOT, cwd=d, capture_output=True, text=True)
        bad = sorted({(f, int(n)) for f, n in re.findall(r"^(\S+\.py):(\d+): error:", r.stdout, re.M)})
        if not bad:
            return
        for f, n in bad:
            p = os.path.join(d, f)
            ls = open(p).read().split("\n")
            if ls[n - 1].rstrip().endswith("\\") or "# type: ignore" in ls[n - 1]:
                raise SystemExit(f"compiled_ab: cannot silence mypy at {f}:{n}:\n{r.stdout[-2000:]}")
            ls[n - 1] += "  # type: ignore"
            open(p, "w").write("\n".join(ls))
    raise SystemExit(f"compiled_ab: mypy still rejects the mypyc copy:\n{r.stdout[-2000:]}")


def self_attrs(cls: ast.ClassDef) -> list[str]:
    """The attributes a class's methods assign on self, in order of appearance."""
    out: list[str] = []
    for node in ast.walk(cls):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        while targets:
            t = targets.pop()
            if isinstance(t, (ast.Tuple, ast.List)):
                targets.extend(t.elts)
            elif isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) \
                    and t.value.id == "self" and t.attr not in out:
                out.append(t.attr)
    return out


def prepare_typed(d: str) -> list[str]:
    """Write NAME.pxd beside each hot module with slotted classes; returns the modules to build.

    Each slotted class (TcpNat: its assigned attributes, as slots) becomes `cdef class` with one
    `cdef public object` per slot; a slotted base in the same module is kept as the base."""
    for rel in TYPED:
        tree = ast.parse(open(os.path.join(d, rel)).read())
        lines: list[str] = []
        slotted: set[str] = set()
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            slots = next((ast.literal_eval(b.value) for b in cls.body if isinstance(b, ast.Assign)
                          and getattr(b.targets[0], "id", "") == "__slots__"), None)
            if slots is None and cls.name == "TcpNat":
                slots = self_attrs(cls)
            if slots is None:
                continue
            bases = [b.id for b in cls.bases if isinstance(b, ast.Name) and b.id in slotted]
            slotted.add(cls.name)
            lines.append(f"cdef class {cls.name}" + (f"({bases[0]})" if bases else "") + ":")
            lines += [f"    cdef public object {', '.join(slots[i:i + 8])}"
                      for i in range(0, len(slots), 8)] or ["    pass"]
        if lines:
            with open(os.path.join(d, rel[:-3] + ".pxd"), "w") as f:
                f.write("\n".join(lines) + "\n")
    return TYPED


def build(d: str, kind: str) -> None:
    if kind == "mypyc":
        prepare_mypyc(d)
        cmd = [PY, "-m", "mypyc"] + MYPY_FLAGS + HOT
    elif kind == "typed":
        cmd = [os.path.join(os.path.dirname(PY), "cythonize"), "-i", "-3", "-q", "-j", "2"] \
            + prepare_typed(d)
    else:
        cmd = [os.path.join(os.path.dirname(PY), "cythonize"), "-i", "-3", "-q"] + HOT + CYTHON_EXTRA
    r = subprocess.run(cmd, cwd=d, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"compiled_ab: {kind} build failed:\n{(r.stdout + r.stderr)[-3000:]}")


def stack_rr(d: str, args: list[str]) -> float:
    out = subprocess.run([PY, os.path.join(d, "bench", "stack_rr.py")] + args, cwd=d,
                         capture_output=True, text=True, check=True, timeout=600).stdout
    return float(out.split()[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="scratch directory (kept); default a temporary one, removed")
    ap.add_argument("--reps", type=int, default=8, help="interleaved stack_rr runs per build")
    ap.add_argument("--flows", type=int, default=1, help="passed to stack_rr")
    ap.add_argument("--e2e", action="store_true", help="also bench/cpu_split.py on the builds (root)")
    ap.add_argument("--e2e-args", default="--tests rr,redis,crr,rev,c2h --runs 4 --duration 3")
    ap.add_argument("--unit", action="store_true", help="also run tests/unit against the mypyc build")
    ap.add_argument("--builds", default="mypyc,cython,typed",
                    help="compiled builds beside pure, comma-separated (mypyc, cython, typed)")
    a = ap.parse_args()
    why = need(a.builds.split(","))
    if why:
        print(f"compiled_ab: cannot build: {why}", file=sys.stderr)
        return 2
    base = a.dir or tempfile.mkdtemp(prefix="usernet-compiled-")
    try:
        kinds = ["pure"] + [k for k in a.builds.split(",") if k in ("mypyc", "cython", "typed")]
        dirs = {k: os.path.join(base, k) for k in kinds}
        for k, d in dirs.items():
            if os.path.exists(d):
                shutil.rmtree(d)
            copy_tree(d)
            if k != "pure":
                print(f"building {k} in {d} ...", file=sys.stderr, flush=True)
                build(d, k)
        args = ["--flows", str(a.flows)] + (["--n", str(max(1000, 20000 // a.flows))] if a.flows > 1 else [])
        res: dict[str, list[float]] = {k: [] for k in dirs}
        for i in range(a.reps):
            order = list(dirs.items())
            for k, d in (order[::-1] if i % 2 else order):
                res[k].append(stack_rr(d, args))
            print(f"rep {i + 1}: " + "  ".join(f"{k} {v[-1]:.1f}" for k, v in res.items()),
                  file=sys.stderr, flush=True)
        print(f"bench/stack_rr.py {' '.join(args)}: CPU us per transaction, {a.reps} interleaved runs")
        for k, v in res.items():
            ratios = [x / p for x, p in zip(v, res["pure"])]
            print(f"{k:7} median {statistics.median(v):6.1f}  [{min(v):.1f}-{max(v):.1f}]  "
                  f"/ pure, median of per-run ratios {statistics.median(ratios):.3f}")
        if a.unit and "mypyc" in dirs:
            r = subprocess.run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit"],
                               cwd=dirs["mypyc"], capture_output=True, text=True, timeout=1800)
            tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-500:]
            print(f"tests/unit against the mypyc build: {tail}")
        if a.e2e:
            wrappers = []
            for k, d in dirs.items():
                w = os.path.join(base, f"usernet-{k}")
                with open(w, "w") as f:
                    f.write(f"#!/bin/sh\ncd {d} && exec {PY} -m usernet \"$@\"\n")
                os.chmod(w, 0o755)
                wrappers += ["--usernet", f"{k}={w}"]
            subprocess.run([PY, os.path.join(HERE, "cpu_split.py")] + wrappers + a.e2e_args.split(),
                           check=True)
    finally:
        if not a.dir:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
