"""The fast reading of site files (rapidyaml) gives exactly PyYAML's data, or gives way to it.

For every text: either `read_plain_yaml` answers None (PyYAML then reads the file, and names
the line of any mistake), or it answers what PyYAML's reading (`_read_exact`: safe loader,
duplicate keys, tags, depth and secrets checked) answers. Checked on hand-picked YAML 1.1
traps, on the mutated site files of the config fuzz, and on random data written by PyYAML in
every style; and the fast reading must really be taken for the files people have.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aidc.core.config import MAX_DEPTH, MAX_NODES, ConfigError, _read_exact, secret_value
from aidc.core.fastyaml import _LONGEST_WORD, read_plain_yaml
from aidc.core.sitegen import generate
from tests.test_config_fuzz import BASES, mutated

ROOT = Path(__file__).resolve().parent.parent


def exact(text: str, base: Path) -> object:
    try:
        return _read_exact("site.yaml", text, base, "expected a mapping")[1]
    except ConfigError:
        return ConfigError


def fast(text: str, base: Path) -> object:
    return read_plain_yaml(text, MAX_NODES, MAX_DEPTH, lambda v: secret_value(v, base))


def same(a: object, b: object) -> bool:
    """Equal, with NaN equal to itself and bool not equal to int (True == 1 in Python)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return type(a) is type(b) and a == b


def check(text: str, base: Path) -> object:
    """The fast answer, after checking it against PyYAML's."""
    got, want = fast(text, base), exact(text, base)
    assert got is None or same(got, want), (text, got, want)
    return got


TRAPS = [  # (YAML, whether the fast reading can vouch for it)
    ("a: NO\n", False), ("a: 'NO'\n", True), ("a: [x, NO]\n", False), ("a:\n  NO\n", False),
    ("a: {b: 'NO'}\n", True), ("a: '1.5'\nb: 1.5\n", False), ("'1': x\n", True),
    ("1: x\n", False), ("a: 1e3\n", True), ("a: 1.0e+3\n", True), ("a: +1\n", False),
    ("a: '010'\n", True), ("a: 010\n", False), ("a: 0x1F\n", False), ("a: 1_000\n", False),
    ("a: 12:30\n", False), ("a: 2024-01-01\n", False), ("a: .inf\n", False), ("a: ~\n", False),
    ("a: Null\n", False), ("a: null\n", True), ("a:\n", True), ("a: ''\n", False),
    ("a: \"\\u00e9\\n\"\n", True), ("a: |\n  x\n  y\n", True), ("a: x\n  NO\n", True),
    ('a: "x]]]"\nb: [[[1]]]\n', True), ('a: "x\\"]"\n', True), ("a: b\na: c\n", False),
    ("a: &x 1\nb: *x\n", False), ("a: !!str 1\n", False), ("<<: {a: 1}\n", False),
    ("? [a]\n: b\n", False), ("{[a]: b}\n", False), ("a: [\n", False), ("a:\tb\n", False),
    ("a: 1\n---\nb: 2\n", False), ("- a\n", False), ("a: 'it''s'\n", True),
    ("a: x # comment: NO\n", True), ("a: \"${AIDC_TEST_SECRET}\"\n", True),
    ("a: \"${AIDC_UNSET_VARIABLE}\"\n", False), ("a: 5\nb: -0.5\nc: true\nd: [1, {e: f}]\n", True),
    ("a: FALSE\n", False), ("FALSE: a\n", False), ("a: Falsey\nb: nothing\n", True),
    ("a: [offset, 'off']\n", True), ("a: \"x\\ty\"\nb: Off\n", False), ("a: file:x\n", False),
    ("a: [{i\n  b: c}]\n", False), ("a: [{i b: c}]\n", True), ("'x y': 1\n", True),
    ("a: {" + "k" * 600 + ": 1}\n", False),
]  # fmt: skip


@pytest.mark.parametrize(("text", "vouched"), TRAPS)
def test_a_yaml_11_trap_is_read_as_pyyaml_reads_it_or_left_to_pyyaml(text, vouched, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("AIDC_TEST_SECRET", "s3cret")
    assert (check(text, tmp_path) is not None) == vouched


def test_no_word_yaml_11_types_is_longer_than_the_fast_reading_looks_at():
    for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items():
        for _, regexp in resolvers if first and first.isalpha() else ():
            longest = re._parser.parse(regexp.pattern, regexp.flags).getwidth()[1]
            assert longest <= _LONGEST_WORD, (first, regexp.pattern)


@pytest.mark.parametrize("depth", range(MAX_DEPTH - 3, MAX_DEPTH + 3))
def test_nesting_at_the_limit_is_never_let_through(depth, tmp_path):
    for text in ("a: " + "[" * depth + "1" + "]" * depth + "\n",
                 "a: " + "{b: " * depth + "1" + "}" * depth + "\n",
                 "a:\n" + "".join(" " * (i + 1) + "b:\n" for i in range(depth))):
        check(text, tmp_path)


def test_the_files_people_have_are_read_fast(tmp_path):
    assert check(BASES["demo"], ROOT / "site_configs") is not None
    assert check(BASES["minimal"], ROOT / "tests" / "cases" / "valid_minimal") is not None
    assert check(generate(racks=400, seed=3), tmp_path) is not None  # rows 'NO', 'ON'...


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=mutated())
def test_a_mutated_site_file_reads_as_pyyaml_reads_it(raw):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return  # refused before any reading
    check(text, ROOT / "site_configs")


SCALARS = st.one_of(
    st.sampled_from(["yes", "No", "on", "OFF", "~", "null", "", "1_0", "0x1f", "010", "1e3",
                     "1.5", ".inf", "-.nan", "12:30", "2024-01-02", "NO", "y", "=", "<<",
                     "a: b", "- x", "#x", "x #y", "'", '"', "\\", "]]", "{", "é", "\n"]),
    st.text(max_size=8), st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(),
)
DATA = st.dictionaries(st.text(min_size=1, max_size=6), st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(min_size=1, max_size=6), inner, max_size=4), max_leaves=20), max_size=6)


@settings(max_examples=300, deadline=None)
@given(data=DATA, flow=st.sampled_from([None, True, False]),
       style=st.sampled_from([None, "'", '"']))
def test_data_written_by_pyyaml_in_any_style_reads_back_the_same(data, flow, style, tmp_path_factory):
    text = yaml.safe_dump(data, default_flow_style=flow, default_style=style, allow_unicode=True)
    check(text, tmp_path_factory.getbasetemp())
