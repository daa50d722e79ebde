"""Counters are declared once (usernet/stack/counters.py): an undeclared name
fails, both when code touches it and when the source merely spells it."""

import ast
import re
from pathlib import Path

import pytest

from usernet.stack.counters import DECLARED, PARSE_REASONS, Counters, UnknownCounter, snapshot
from usernet.stack.gateway import Gateway

PKG = Path(__file__).resolve().parents[2] / "usernet"


def test_an_undeclared_counter_raises_on_first_use():
    c = Counters()
    c["rx_frames"] += 1
    assert c["rx_frames"] == 1 and c["tcp_retransmit"] == 0
    with pytest.raises(UnknownCounter):
        c["rx_frame"] += 1          # a typo
    with pytest.raises(UnknownCounter):
        c["no_such_counter"]


def test_the_gateway_counts_into_declared_counters():
    assert isinstance(Gateway().counters, Counters)


def _keys(node):
    """(exact name, None) or (None, pattern with * for the run-time part) for
    a counter key expression; an ``a if c else b`` key gives both arms."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value, None
    elif isinstance(node, ast.IfExp):
        yield from _keys(node.body)
        yield from _keys(node.orelse)
    elif isinstance(node, ast.BinOp):
        left = node.left.value if isinstance(node.left, ast.Constant) else "*"
        right = node.right.value if isinstance(node.right, ast.Constant) else "*"
        yield None, left + right
    elif isinstance(node, ast.JoinedStr):
        yield None, "".join(v.value if isinstance(v, ast.Constant) else "*" for v in node.values)


def _counter_keys():
    """(file, line, name, pattern) for every ``X[key] += n`` in usernet/."""
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Subscript):
                for key, pattern in _keys(node.target.slice):
                    yield path.name, node.lineno, key, pattern


def test_every_counter_spelled_in_the_source_is_declared():
    """A literal counter name anywhere in usernet/ must be declared; a name
    built at run time must match at least one declared name."""
    unknown = []
    seen = 0
    for name, line, key, pattern in _counter_keys():
        seen += 1
        if key is not None:
            if key not in DECLARED:
                unknown.append((name, line, key))
        else:
            rx = re.compile(".*".join(re.escape(p) for p in pattern.split("*")))
            if not any(rx.fullmatch(d) for d in DECLARED):
                unknown.append((name, line, pattern))
    assert seen > 150 and unknown == []


def test_every_parse_error_reason_is_declared():
    """``drop_<reason>`` for each ParseError the wire layer can raise."""
    reasons = set()
    for path in (PKG / "wire").rglob("*.py"):
        reasons.update(re.findall(r'ParseError\("([a-z0-9_]+)"', path.read_text()))
    assert reasons and reasons <= set(PARSE_REASONS)
    assert all("drop_" + r in DECLARED for r in reasons)


def test_snapshot_reports_every_declared_counter():
    c = Counters()
    c["tcp_retransmit"] += 2
    s = snapshot(c)
    assert set(s) >= DECLARED and s["tcp_retransmit"] == 2 and s["rx_frames"] == 0
