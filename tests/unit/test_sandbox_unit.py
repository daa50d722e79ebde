"""usernet/sandbox.py without privileges: the seccomp filter as built and as
loaded (in a throwaway interpreter: loading one needs only NO_NEW_PRIVS),
what the sandbox plans to keep, and that every module imported lazily is
preloaded before the sandbox closes."""

import ast
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from usernet import sandbox

ROOT = Path(__file__).resolve().parents[2]

try:
    import pyseccomp  # noqa: F401
    HAVE_SECCOMP = True
except (ImportError, RuntimeError):
    HAVE_SECCOMP = False
need_seccomp = pytest.mark.skipif(not HAVE_SECCOMP, reason="pyseccomp/libseccomp missing")


def _pfc() -> str:
    with tempfile.TemporaryFile(mode="w+") as t:
        sandbox.build_filter().export_pfc(t)
        t.seek(0)
        return t.read()


@need_seccomp
def test_filter_allows_the_list_and_refuses_the_rest():
    pfc = _pfc()
    allowed = {line.split('"')[1] for line in pfc.splitlines() if "filter for syscall" in line}
    for name in ("read", "writev", "epoll_wait", "sendmmsg", "recvmmsg", "accept4", "connect",
                 "futex", "openat", "unlink", "pidfd_send_signal", "wait4", "exit_group",
                 "io_uring_enter", "clone", "clone3"):
        assert name in allowed, name
    for name in ("execve", "execveat", "fork", "vfork", "mount", "umount2", "pivot_root",
                 "unshare", "setns", "ptrace", "bpf", "io_uring_setup", "io_uring_register",
                 "chmod", "setuid", "capset", "seccomp", "init_module", "kexec_load"):
        assert name not in allowed, name
    # Everything else: EPERM (errno 1), not a kill.
    assert "# default action\n  action ERRNO(1);" in pfc, pfc[-300:]
    # clone only for threads (CLONE_THREAD = 0x10000), clone3 "not implemented".
    clone = pfc[pfc.index('syscall "clone" '):].split("filter for syscall", 1)[0]
    assert "if ($a0.lo32 & 0x00010000 == 65536)" in clone, clone
    clone3 = pfc[pfc.index('syscall "clone3"'):].splitlines()
    assert clone3[2].strip() == "action ERRNO(38);", clone3[:3]


LOADED = r"""
import errno, json, os, socket, sys, threading
from usernet import sandbox
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
sandbox.preload()
sandbox.enable_seccomp()
res = {}
def attempt(name, fn):
    try:
        fn(); res[name] = "ok"
    except OSError as e:
        res[name] = errno.errorcode[e.errno]
attempt("exec", lambda: os.execv("/bin/true", ["true"]))
attempt("fork", os.fork)
attempt("mkdir", lambda: os.mkdir(sys.argv[1] + "/d"))
attempt("open", lambda: open(sys.argv[1] + "/f", "w").close())
attempt("unlink", lambda: os.unlink(sys.argv[1] + "/f"))
def conn():
    c = socket.create_connection(srv.getsockname(), timeout=5)
    a, _ = srv.accept(); c.sendall(b"x"); assert a.recv(1) == b"x"; c.close(); a.close()
attempt("connect", conn)
out = []
t = threading.Thread(target=out.append, args=(1,)); t.start(); t.join()
res["thread"] = "ok" if out == [1] else "no"
with open("/proc/self/status") as f:
    res["status"] = {l.split(":")[0]: l.split(":")[1].strip() for l in f
                     if l.startswith(("Seccomp:", "NoNewPrivs:"))}
print(json.dumps(res))
"""


@need_seccomp
def test_filter_loaded_refuses_exec_and_fork_keeps_threads_sockets_files(tmp_path):
    """In a fresh interpreter (the filter cannot be unloaded): execve and fork
    are EPERM, mkdir too; threads (clone3 ENOSYS -> glibc falls back to
    clone with CLONE_THREAD), loopback TCP and open/unlink still work."""
    r = subprocess.run([sys.executable, "-c", LOADED, str(tmp_path)], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.splitlines()[-1])
    assert (res["exec"], res["fork"], res["mkdir"]) == ("EPERM",) * 3, res
    assert (res["open"], res["unlink"], res["connect"], res["thread"]) == ("ok",) * 4, res
    assert res["status"] == {"Seccomp": "2", "NoNewPrivs": "1"}, res


def test_plan_follows_resolv_conf_symlinks(tmp_path):
    """resolv.conf -> ../run/resolve/stub.conf: the link is recreated as is and
    the target's own directory kept (read-only)."""
    (tmp_path / "run" / "resolve").mkdir(parents=True)
    (tmp_path / "run" / "resolve" / "stub.conf").write_text("nameserver 127.0.0.53\n")
    (tmp_path / "etc").mkdir()
    os.symlink("../run/resolve/stub.conf", tmp_path / "etc" / "resolv.conf")
    real = os.path.realpath(tmp_path)
    plan = sandbox.make_plan(resolv_conf=str(tmp_path / "etc" / "resolv.conf"), cwd="/")
    assert plan.keep == (sandbox.Keep(f"{real}/run/resolve"),)
    assert plan.symlinks == ((f"{real}/etc/resolv.conf", "../run/resolve/stub.conf"),)


def test_plan_keeps_a_file_in_etc_alone():
    """A resolv.conf living in /etc is kept alone: the rest of /etc
    (/etc/shadow is readable by uid 0 without capabilities) stays out."""
    plan = sandbox.make_plan(resolv_conf="/etc/passwd", cwd="/")
    assert plan.keep == (sandbox.Keep("/etc/passwd"),)


def test_plan_api_socket_relative_proc_and_missing(tmp_path):
    plan = sandbox.make_plan(resolv_conf=str(tmp_path / "nope.conf"), api_socket="sub/api.sock",
                             proc_pid=1234, cwd=str(tmp_path))
    real = os.path.realpath(tmp_path)
    assert set(plan.keep) == {sandbox.Keep(f"{real}/sub", writable=True),
                              sandbox.Keep("/proc/1234/net")}
    assert plan.cwd == str(tmp_path)
    assert sandbox.make_plan(resolv_conf=None, cwd="/").keep == ()


def test_apply_without_flags_does_nothing():
    class Args:
        enable_sandbox = enable_seccomp = False
    assert sandbox.apply(Args()) == {"sandbox": False, "seccomp": False}


# Imported inside functions only on paths that run before the sandbox (the
# attach child, argument parsing, set-up): not needed afterwards.
BEFORE_SANDBOX_ONLY = {"usernet.rtnl", "pwd", "shutil", "subprocess", "tempfile", "uvloop",
                       "resource", "importlib", "pyseccomp",
                       # the stats/flows client: its own process, never sandboxed
                       "usernet.monitor",
                       # the daemon and its clients: never sandboxed (refused with --daemon)
                       "usernet.daemon", "usernet.runwait"}


def _function_level_imports():
    found = set()
    for path in sorted((ROOT / "usernet").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        pkg = ".".join(rel.parts[:-1]) if rel.name != "__init__" else ".".join(rel.parts[:-1])
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom):
                    if node.level:
                        base = pkg.split(".")[:len(pkg.split(".")) - (node.level - 1)]
                        mod = ".".join(base + ([node.module] if node.module else []))
                    else:
                        mod = node.module
                    found.add(mod)
    return found - BEFORE_SANDBOX_ONLY


def test_lazy_imports_are_preloaded():
    """Every module usernet imports inside a function is loaded once the CLI
    is imported and sandbox.preload() has run: after the sandbox, an import
    that reaches the disk fails."""
    mods = sorted(_function_level_imports())
    assert "usernet.host.icmp" in mods  # the walk sees driver.py's lazy import
    code = ("import json, sys, usernet.cli, usernet.sandbox as s; s.preload(); "
            f"print(json.dumps([m for m in {mods!r} if m not in sys.modules]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
