"""Label matchers, as Alertmanager writes them: what silences and notification routes select
alerts by (``device=cdu-1``, ``rule=~leak|pump_.*``, ``severity!=warning``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal


@dataclass(frozen=True)
class Matcher:
    """``name`` is a label, or ``rule``; ``=`` equal, ``=~`` a full regex match (RE2-like
    Python syntax), ``!=`` and ``!~`` their negations."""

    name: str
    value: str
    op: Literal["=", "!=", "=~", "!~"] = "="

    def matches(self, rule: str, labels: Mapping[str, str]) -> bool:
        got = rule if self.name in ("rule", "alertname") else labels.get(self.name, "")
        hit = (re.fullmatch(self.value, got) is not None if self.op in ("=~", "!~")
               else got == self.value)  # fmt: skip
        return hit if self.op in ("=", "=~") else not hit


MATCHER = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(=~|!~|!=|=)(.*)$")


@lru_cache(maxsize=4096)  # a rule's matchers are asked of every series it may watch
def parse_matcher(text: str) -> Matcher:
    """``device=cdu-1``, ``rule=~leak|pump_.*``, ``row!=B``; ValueError on anything else."""
    m = MATCHER.match(text.strip())
    if m is None:
        raise ValueError(f"'{text}' is not a matcher: write name=value, name!=value, "
                         "name=~regex or name!~regex")
    return checked(Matcher(m.group(1), m.group(3), m.group(2)))  # type: ignore[arg-type]


def a_matcher(text: str) -> str:
    """``text`` if it is a matcher (a pydantic validator); ValueError with one line if not."""
    parse_matcher(text)
    return text


def checked(matcher: Matcher) -> Matcher:
    if matcher.op in ("=~", "!~"):
        try:
            re.compile(matcher.value)
        except re.error as e:
            raise ValueError(f"matcher {matcher.name}{matcher.op}: bad regex: {e}") from None
    return matcher
