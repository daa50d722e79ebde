"""The layering rule, checked by reading the source (DESIGN.md section 2).

    wire  <-  stack  <-  host  <-  cli layer (tap, netns, api, cli, publish)

Imports point one way. Every module under ``usernet/`` is parsed with ``ast``
and every import in it -- top level or inside a function, absolute or
relative -- is resolved to a full module name and checked against the rules
below. And importing ``usernet`` (or its hot path) must stay light: no scapy,
no dpkt, no asyncio (checked in a fresh interpreter).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "usernet"
CLI_LAYER = {"usernet.tap", "usernet.netns", "usernet.api", "usernet.cli", "usernet.publish",
             "usernet.services", "usernet.slirp4netns", "usernet.sandbox", "usernet.serve",
             "usernet.rtnl", "usernet.diagnose", "usernet.__main__", "usernet.networks"}
IO_MODULES = {"asyncio", "socket", "os", "time", "select", "selectors", "uvloop", "subprocess"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, name: str, is_package: bool) -> set:
    """Every module ``source`` imports (``from a import b`` gives ``a`` and ``a.b``)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def all_modules() -> dict:
    mods = {}
    for path in sorted(PKG.rglob("*.py")):
        name = module_name(path)
        mods[name] = imports_of(path.read_text(), name, path.name == "__init__.py")
    return mods


MODULES = all_modules()


def in_package(mod: str, pkg: str) -> bool:
    return mod == pkg or mod.startswith(pkg + ".")


def violations(layer: str, forbidden) -> list:
    """(module, import) pairs in ``layer`` that hit ``forbidden(import) -> bool``."""
    return sorted((mod, imp) for mod, imps in MODULES.items() if in_package(mod, layer)
                  for imp in imps if forbidden(imp))


def is_cli_layer(imp: str) -> bool:
    return any(in_package(imp, m) for m in CLI_LAYER)


def is_io(imp: str) -> bool:
    return imp.split(".")[0] in IO_MODULES


def test_the_walk_sees_the_layers():
    """The walker finds the modules and resolves relative imports (or the rules below
    would pass vacuously)."""
    assert "usernet.wire.frame" in MODULES and "usernet.stack.gateway" in MODULES
    assert "usernet.wire.tcp" in MODULES["usernet.wire.frame"]  # from .tcp import ...
    assert "usernet.wire" in MODULES["usernet.wire.tcp"]  # from . import ParseError
    assert "usernet.wire.frame" in MODULES["usernet.stack.gateway"]  # from ..wire.frame import
    assert imports_of("from ..host import driver\nimport asyncio.events", "usernet.stack.x",
                      False) == {"usernet.host", "usernet.host.driver", "asyncio.events"}


def test_wire_imports_no_upper_layer_and_no_io():
    """wire/ is bytes <-> headers: nothing from stack, host or the CLI layer, and no
    I/O, clock or event loop modules."""
    assert violations("usernet.wire", lambda i: in_package(i, "usernet.stack")
                      or in_package(i, "usernet.host") or is_cli_layer(i) or is_io(i)) == []


def test_stack_is_sans_io():
    """stack/ imports nothing from host or the CLI layer, and never asyncio, socket,
    os, time, select, selectors, uvloop or subprocess (time is an argument)."""
    assert violations("usernet.stack", lambda i: in_package(i, "usernet.host")
                      or is_cli_layer(i) or is_io(i)) == []


def test_host_does_not_import_the_top_layer():
    """host/ is driven by the top layer (CLI, API, services), never the other way
    round: it offers plain methods and errors, the top layer turns them into API
    replies."""
    assert violations("usernet.host", is_cli_layer) == []


def test_the_top_layer_rule_bites():
    """The rule above would catch the import it exists for."""
    imps = imports_of("from ..api import ApiError", "usernet.host.forward", False)
    assert any(is_cli_layer(i) for i in imps)


@pytest.mark.parametrize("module", ["usernet", "usernet.wire.frame"])
def test_import_is_light(module):
    """Importing usernet (or the hot-path parser) pulls in no scapy, dpkt or asyncio."""
    code = (f"import sys, {module}; "
            "heavy = [m for m in ('scapy', 'dpkt', 'asyncio') if m in sys.modules]; "
            "assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
