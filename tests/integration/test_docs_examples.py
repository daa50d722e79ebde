"""Every shell example in docs/ and README.md runs, as written, and exits 0.

An example is a fenced block opened with ```` ```sh ````. Each runs in ``bash -e -o pipefail``
from the repository's root, with ``.venv/bin`` first on PATH (what ``. .venv/bin/activate``
gives), under a timeout. A block that is not safe or not sensible to run here (it installs
packages, needs a Podman user, runs a benchmark for minutes, or is ``make test`` itself) is
preceded by the marker line

    <!-- not-run: REASON -->

and is skipped, with its reason in the test id's skip message. Any other fence language
(```` ``` ````, ```` ```json ````, ```` ```toml ````) is not a shell example and is not run.
Examples bind fixed host loopback ports (8731-8734, 18081), as a reader would.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, need_root, need_tun

MARKER = re.compile(r"<!--\s*not-run:\s*(.+?)\s*-->")
TIMEOUT = 180


def examples():
    """(file:line, code, skip reason or None) of each ```sh block."""
    files = [Path(REPO) / "README.md"] + sorted((Path(REPO) / "docs").glob("*.md"))
    out = []
    for path in files:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            if lines[i].strip() == "```sh":
                start = i
                j = i + 1
                while j < len(lines) and lines[j].strip() != "```":
                    j += 1
                prev = lines[start - 1].strip() if start else ""
                m = MARKER.fullmatch(prev)
                rel = path.relative_to(REPO)
                out.append((f"{rel}:{start + 1}", "\n".join(lines[start + 1:j]) + "\n",
                            m.group(1) if m else None))
                i = j + 1
            else:
                i += 1
    return out


EXAMPLES = examples()


def test_the_walk_finds_the_examples():
    """The extractor sees blocks (or every test below would pass vacuously), each marked
    block has a reason, and README's two commands are there."""
    assert len(EXAMPLES) >= 10
    assert all(reason for _w, _c, reason in EXAMPLES if reason is not None)
    readme = [c for w, c, _r in EXAMPLES if w.startswith("README.md")]
    assert readme[0].split()[:2] == ["make", "run"], readme[:1]
    assert any(c.split()[:2] == ["make", "test"] for c in readme)


@need_root
@need_tun
@pytest.mark.integration
@pytest.mark.parametrize("where,code,reason", EXAMPLES, ids=[w for w, _c, _r in EXAMPLES])
def test_example_runs(where, code, reason, tmp_path):
    if reason is not None:
        pytest.skip(f"not-run: {reason}")
    env = dict(os.environ, PATH=os.path.join(REPO, ".venv", "bin") + os.pathsep
               + os.environ.get("PATH", ""), VIRTUAL_ENV=os.path.join(REPO, ".venv"),
               TMPDIR=str(tmp_path))
    env.pop("PYTHONPATH", None)
    r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
                       start_new_session=True)
    assert r.returncode == 0, (f"{where}: exit status {r.returncode}\n--- code\n{code}"
                               f"--- stdout\n{r.stdout[-2000:]}--- stderr\n{r.stderr[-2000:]}")
