"""Reading a large site file fast, with exactly PyYAML's answer or none.

PyYAML builds a Python node, two marks and a resolver call for every value, even on libyaml:
9 s for a 10,000-rack site file (650,000 values). Here rapidyaml (C++) parses the file and
writes it out as JSON, and the standard library's C decoder reads that: under a second.

The data must be what PyYAML's safe loader (YAML 1.1) gives, so this reads only what it can
vouch for and answers None for the rest: anchors, aliases, tags, merge keys, complex keys,
tabs, directives or several documents, a duplicate key, nesting or size past the limits, a
plain value YAML 1.1 types other than JSON does (``yes``, ``0x1F``, ``1_000``, ``~``), a
secret that does not resolve, and anything rapidyaml refuses. The caller then reads the file
with PyYAML, which also names the line of any mistake.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import ryml
import yaml

_STR = "tag:yaml.org,2002:str"
# what rapidyaml may read differently from PyYAML, or what only PyYAML's reading checks
_UNSURE_TEXT = ("&", "*", "!", "\t", "\r", "\ufeff", "<<", "\n%", "\n---", "\n...")
_UNSURE_START = ("%", "---", "...")
_COMPLEX_KEY = [re.compile(r"\?(?:[ \n]|\Z)"), re.compile(r"[\]}] *:(?:[ \n]|\Z)")]
_TYPED_FIRST = frozenset(k for k in yaml.resolver.Resolver.yaml_implicit_resolvers if k)
_RESOLVER = yaml.resolver.Resolver()
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_BRACKETS = np.zeros(256, dtype=np.int8)
_BRACKETS[[ord("["), ord("{")]], _BRACKETS[[ord("]"), ord("}")]] = 1, -1
_MARKS = _BRACKETS != 0
_MARKS[ord('"')] = True
# PyYAML refuses an implicit key whose ':' is more than 1024 characters from its start (quotes
# and spaces count): a key past half that is left to PyYAML
LONG_KEY_CHARS = 512
_TYPED = np.zeros(256, dtype=bool)  # first bytes that YAML 1.1's implicit resolvers look at
_TYPED[[ord(c) for c in _TYPED_FIRST]] = True
_WORD = _TYPED & np.array([chr(b).isalpha() for b in range(256)])  # of bool and null words
_LONGEST_WORD = 5  # the longest of them: false (tests/test_fastyaml.py checks PyYAML's)


class _Unsure(Exception):
    """PyYAML's reading might differ: let it read the file."""


@functools.lru_cache(maxsize=4096)
def _yaml11_tag(plain: str) -> str:
    """The tag PyYAML's implicit resolver (YAML 1.1) gives a plain scalar."""
    return _RESOLVER.resolve(yaml.ScalarNode, plain, (True, False))


def _plain_float(token: str) -> Any:
    """A plain scalar rapidyaml wrote as a JSON float: ``1.5`` is a float in YAML 1.1 too,
    ``1e3`` a string."""
    return float(token) if "e" not in token and "E" not in token else _plain_number(token)


def _plain_number(token: str) -> Any:
    tag = _yaml11_tag(token)
    return _CONSTRUCTOR.yaml_constructors[tag](_CONSTRUCTOR, yaml.ScalarNode(tag, token))


def _refuse_constant(token: str) -> Any:
    raise _Unsure(token)


def _mapping(pairs: list[tuple[str, Any]], keys: set[str]) -> dict[str, Any]:
    """A JSON object as a dict, its keys added to ``keys``."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Unsure("a duplicate key")
    keys.update(out)
    return out


def _key_on_one_line(key: str, text: str) -> bool:
    """Whether ``key`` is surely written on one line of ``text``, as YAML's implicit keys must
    be, and short (LONG_KEY_CHARS). rapidyaml also reads a plain key that a flow
    mapping folds over two lines (``{i<newline> manifold: x}`` as 'i manifold'), which PyYAML
    refuses; only a key with a space or a line break can be one."""
    if len(key) > LONG_KEY_CHARS:
        return False
    if " " not in key and "\n" not in key:
        return True
    return re.search(re.escape(key) + "['\"]? *:", text) is not None


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """rapidyaml prints its parse errors to file descriptor 2 before raising; the caller
    words the error itself (with PyYAML's reading), so that line is dropped."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def read_plain_yaml(
    text: str, max_values: int, max_depth: int, secret: Callable[[str], str] | None = None
) -> dict[str, Any] | None:
    """The mapping PyYAML's safe loader would read from ``text``, or None where that cannot
    be vouched for, or where it holds more than ``max_values`` values or may nest deeper than
    ``max_depth`` (the top mapping is depth 1). ``secret`` maps each string value (not keys)
    and raises ValueError when one does not resolve."""
    if (any(s in text for s in _UNSURE_TEXT) or text.startswith(_UNSURE_START)
            or any(r.search(text) for r in _COMPLEX_KEY)
            or yaml.reader.Reader.NON_PRINTABLE.search(text)):
        return None
    try:
        with _quiet_stderr():
            tree = ryml.parse_in_arena(text.encode())
            if tree.size() > max_values:
                return None
            document = ryml.emit_json(tree)
        if _depth(document) > max_depth or any(
            _written_plain(s, text) for s in _maybe_typed(document) if _yaml11_tag(s) != _STR
        ):
            return None
        # integers need no hook: JSON has no leading zeros (YAML 1.1's octal), so json.loads
        # refuses rapidyaml's ``-07``, and quotes its ``010`` (checked as strings above)
        keys: set[str] = set()
        data = json.loads(document, object_pairs_hook=functools.partial(_mapping, keys=keys),
                          parse_float=_plain_float, parse_constant=_refuse_constant)
        if not all(_key_on_one_line(k, text) for k in keys):
            return None
        if secret is not None and ("${" in document or '"file:' in document):
            data = _map_strings(data, secret)
    except (_Unsure, ValueError, RecursionError, ryml.ExceptionBasic):
        return None
    return data if isinstance(data, dict) else None


def _maybe_typed(document: str) -> set[str]:
    """The distinct strings (keys and values) of a JSON document that YAML 1.1 may type when
    written plain (a superset: the caller asks PyYAML's resolver of each): empty, or starting
    where one of its implicit resolvers looks, and no longer than _LONGEST_WORD when that is a
    letter. Picked by their first byte and length in numpy: a Python string for each of a
    large file's 1.3 million took 0.2 s."""
    if "\\" in document:  # escapes (rare): read each string properly
        found = {json.loads(s) for s in re.findall(r'"(?:[^"\\]|\\.)*"', document)}
        return {s for s in found if not s or s[0] in _TYPED_FIRST}
    data = document.encode()
    raw = np.frombuffer(data, dtype=np.uint8)
    quotes = np.flatnonzero(raw == ord('"'))  # no escapes: each opens or closes a string
    if len(quotes) % 2:
        raise _Unsure("a quote that rapidyaml did not escape")
    start, end = quotes[0::2] + 1, quotes[1::2]  # a closing quote follows each start
    first, length = raw[start], end - start
    pick = (length == 0) | _TYPED[first] & ~(_WORD[first] & (length > _LONGEST_WORD))
    return {data[s:e].decode() for s, e in zip(start[pick].tolist(), end[pick].tolist())}


def _depth(document: str) -> int:
    """At most how deep a JSON document nests, a scalar in the top mapping being at depth 2
    (brackets within strings left out). Only quotes and brackets are looked at."""
    if "\\" in document:  # escaped backslashes and quotes would shift the quotes' count
        document = document.replace("\\\\", "").replace('\\"', "")
    raw = np.frombuffer(document.encode(), dtype=np.uint8)
    marks = raw[_MARKS[raw]]
    inside = np.cumsum(marks == ord('"')) % 2 == 1
    return int(np.cumsum(np.where(inside, 0, _BRACKETS[marks])).max(initial=0)) + 1


def _written_plain(value: str, text: str) -> bool:
    """Whether ``value`` (``'NO'`` quoted, for a row) may also stand somewhere in the text as
    a plain scalar, which YAML 1.1 types (False): rapidyaml's JSON does not tell quoted from
    plain strings. Errs towards yes: the caller then reads the file with PyYAML."""
    if not value:
        return True  # '' may be any empty plain value
    for m in re.finditer(rf"{re.escape(value)}(?= *(?:[\n#:,\]}}]|\Z))", text):
        before = text[max(0, m.start() - 80) : m.start()].rstrip(" ")[-1:]
        if before in ("", "\n", "-", ":", "?", ",", "[", "{"):
            return True
    return False


def _map_strings(data: Any, secret: Callable[[str], str]) -> Any:
    """``data`` with ``secret`` applied to every string that is not a key."""
    if isinstance(data, str):
        return secret(data)
    if isinstance(data, dict):
        return {k: _map_strings(v, secret) for k, v in data.items()}
    if isinstance(data, list):
        return [_map_strings(v, secret) for v in data]
    return data
