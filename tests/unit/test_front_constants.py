"""The compiled slirp4netns front repeats a few of the Python side's constants (it runs before
any Python does); each ``#define`` that names its source must equal that source."""

import importlib
import os
import re

import pytest

SOURCE = os.path.join(os.path.dirname(__file__), "..", "..", "usernet", "slirp4netns_front.c")
# "#define NAME VALUE  /* usernet/module.py PYNAME ... */"
DEFINE = re.compile(r"^#define (\w+) (\d+)\s+/\* usernet/([\w/]+)\.py (\w+)", re.M)
# Scaled: the C side counts milliseconds or microseconds where Python has seconds.
SCALE = {"_MS": 1000, "_US": 1_000_000}


def _defines():
    with open(SOURCE) as f:
        return DEFINE.findall(f.read())


def test_the_front_names_the_constants_it_shares():
    names = {d[0] for d in _defines()}
    assert {"MIN_MTU", "API_LISTEN_BACKLOG", "CHILD_TIMEOUT_MS", "DAEMON_PROTOCOL",
            "DAEMON_TIMEOUT_MS", "API_HANDOVER_LINGER_US", "VNET_HDR_LEN"} <= names, names


@pytest.mark.parametrize("name,value,module,pyname", _defines(), ids=lambda v: str(v))
def test_each_shared_constant_matches(name, value, module, pyname):
    mod = importlib.import_module("usernet." + module.replace("/", "."))
    expected = getattr(mod, pyname)
    scale = next((k for suffix, k in SCALE.items() if name.endswith(suffix)), 1)
    assert int(value) == round(expected * scale), (name, value, module, pyname, expected)
