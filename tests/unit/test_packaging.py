"""Packaging: one version, an SPDX license, a wheel that builds without warnings."""

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import usernet

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_version_is_written_once():
    """usernet/__init__.py holds the version; pyproject reads it from there and
    no other file in the package or the project file spells one."""
    assert "version" not in PYPROJECT["project"]
    assert "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "usernet.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", usernet.__version__)
    spelled = [p for p in [REPO / "pyproject.toml", *sorted((REPO / "usernet").rglob("*.py"))]
               if re.search(r"""(__version__|\bversion)\s*=\s*["']\d""", p.read_text())]
    assert spelled == [REPO / "usernet" / "__init__.py"]


def test_python_m_usernet_reports_that_version():
    out = subprocess.run([sys.executable, "-m", "usernet", "--version"], capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"usernet {usernet.__version__}"


def test_license_is_an_spdx_expression():
    """A plain SPDX string (PEP 639), which needs setuptools 77 or later to build;
    the older ``{text = ...}`` table is deprecated."""
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in PYPROJECT["build-system"]["requires"]


def test_wheel_builds_without_deprecation_warnings(tmp_path):
    """``pip wheel`` (offline: the build backend is in the test extras) prints no
    deprecation warning, and the wheel carries the version and the license."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
         "--no-index", "--disable-pip-version-check", "-w", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "deprecat" not in text.lower(), text
    wheel, = tmp_path.glob("usernet-*.whl")
    assert wheel.name.startswith(f"usernet-{usernet.__version__}-")
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(f"usernet-{usernet.__version__}.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in meta
    assert "pytun" not in meta


def test_every_dependency_is_imported():
    """Each runtime dependency is imported somewhere in usernet/ (python-pytun was
    declared and imported nowhere): nothing is installed for nothing."""
    sources = "\n".join(p.read_text() for p in (REPO / "usernet").rglob("*.py"))
    for requirement in PYPROJECT["project"]["dependencies"]:
        module = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).replace("-", "_")
        assert re.search(rf"^\s*(import|from) {module}\b", sources, re.M), requirement
