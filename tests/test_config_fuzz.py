"""Site files mutated at random: each is either valid, or refused by `aidc check` with exit 2
and one line ``FILE:LINE: ...``; never a traceback, never a hang.

Hostile files found by hand are kept as cases in tests/cases/hostile_*; hypothesis looks for
more by mutating the valid ones: lines deleted, doubled or truncated; values replaced by
numbers out of range, other types, tags, anchors and aliases; bytes that are not UTF-8.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aidc.cli import main

ROOT = Path(__file__).resolve().parent.parent
BASES = {
    "minimal": (ROOT / "tests" / "cases" / "valid_minimal" / "site.yaml").read_text(),
    "demo": (ROOT / "site_configs" / "demo.yaml").read_text(),
}
REFUSAL = re.compile(r"error: site\.yaml:\d+: [^\n]+\n")
JUNK = ["-1", "0", "1e999", "-1e308", ".inf", ".nan", "1e308", "''", "[]", "{}", "null",
        "!!python/object:os.system x", "!custom x", "&a [1, 2]", "*a", "yes", "no",
        "'${AIDC_FUZZ_UNSET}'", "'file:/nonexistent/secret'", "\"\\u0000\"", "[[[[[[[[]]]]]]]]",
        "999999999999999999999999", "ups-1", "pdu-1", "R1", "A"]  # fmt: skip


@st.composite
def mutated(draw) -> bytes:
    lines = BASES[draw(st.sampled_from(sorted(BASES)))].splitlines()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "double", "truncate", "value", "key", "bytes"]))
        if op == "delete":
            del lines[i]
        elif op == "double":
            lines.insert(i, lines[i])
        elif op == "truncate":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif op == "value":  # the value after some "key: "
            spots = [m.end() for m in re.finditer(r"\w: ", lines[i])]
            if spots:
                at = draw(st.sampled_from(spots))
                rest = re.match(r"[^,}\]]*", lines[i][at:]).end()
                lines[i] = lines[i][:at] + draw(st.sampled_from(JUNK)) + lines[i][at + rest:]
        elif op == "key":
            lines[i] = re.sub(r"\b[a-z_]+(?=: )", draw(st.sampled_from(
                ["id", "kind", "port", "nonsense", "<<", "racks"])), lines[i], count=1)
        if not lines:
            lines = [""]
    text = "\n".join(lines).encode()
    if draw(st.booleans()) and draw(st.booleans()):  # a quarter: bytes that are not UTF-8
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from([b"\xff", b"\xc3(", b"\x00", b"\xfe\xff"])) + text[at:]
    return text


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(text=mutated())
def test_a_mutated_site_file_is_valid_or_refused_in_one_line(text, tmp_path_factory, capsys,
                                                             reliability):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "site.yaml").write_bytes(text)
    crashed = False
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        try:
            code = main(["check", "site.yaml"])
        except SystemExit as e:
            code = e.code
        except Exception:
            crashed = True
            raise
        finally:
            reliability.count("site files: mutated (hypothesis)", "files", 1, tracebacks=crashed)
    out = capsys.readouterr()
    if code == 0:
        assert out.out.startswith("site.yaml: ok")
        return
    unclear = code != 2 or not REFUSAL.fullmatch(out.err)
    reliability.count("site files: mutated (hypothesis)", "files", 0, unclear_refusals=unclear)
    assert code == 2, out.err
    assert REFUSAL.fullmatch(out.err), out.err
