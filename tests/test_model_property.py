"""A property of the capacity model on random sites: what-if never accepts a placement that
overloads a source after any single source failure, or a loop after losing its largest CDU.

The vectorised model (models.headroom, models.power, models.whatif) answers; a brute-force
simulation written here in plain Python, failure by failure and rack by rack, checks it.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.cooling import loop_capacity_kw
from models.headroom import rack_headroom
from models.power import rack_upstream_headroom_kw
from models.whatif import place_racks

EPS_KW = 1e-6


@st.composite
def sites(draw):
    n_sources = draw(st.integers(2, 5))
    capacity = draw(st.lists(st.floats(50, 1000), min_size=n_sources, max_size=n_sources))
    n_racks = draw(st.integers(1, 12))
    racks = []
    for _ in range(n_racks):
        a = draw(st.integers(0, n_sources - 1))
        b = draw(st.integers(-1, n_sources - 1))
        share_a = 1.0 if b == -1 else draw(st.floats(0.0, 1.0))
        racks.append((a, b, share_a, draw(st.floats(0.0, 60.0)), draw(st.floats(0.0, 1.0))))
    cdus = draw(st.lists(st.floats(50, 500), min_size=2, max_size=4))
    new_rack_kw = draw(st.floats(1.0, 150.0))
    new_capture = draw(st.floats(0.0, 1.0))
    pair = draw(st.sampled_from([(a, b) for a, b, *_ in racks]))
    return capacity, racks, cdus, new_rack_kw, new_capture, pair


def source_loads_after(capacity, racks, failed: int | None) -> list[float]:
    """Each source's load with ``failed`` out: a dual-corded rack whose other feed is on the
    failed source puts its whole load on this one; racks with both feeds on it drop."""
    loads = [0.0] * len(capacity)
    for a, b, share_a, kw, _ in racks:
        if b == -1 or a == b:
            if a != failed:
                loads[a] += kw
        elif a == failed:
            loads[b] += kw
        elif b == failed:
            loads[a] += kw
        else:
            loads[a] += kw * share_a
            loads[b] += kw * (1 - share_a)
    return loads


def overloaded_sources(capacity, racks, margin_kw=EPS_KW) -> list[tuple[int | None, int]]:
    """(failed source or None, overloaded source) for every single failure: a load above
    its capacity + ``margin_kw``."""
    out = []
    for failed in [None, *range(len(capacity))]:
        for s, load in enumerate(source_loads_after(capacity, racks, failed)):
            if s != failed and load > capacity[s] + margin_kw:
                out.append((failed, s))
    return out


def headroom(capacity, racks, cdus):
    a, b, share, kw, capture = (np.array(x) for x in zip(*racks))
    now = source_loads_after(capacity, racks, None)
    loop_cap = loop_capacity_kw(cdus, [0] * len(cdus), 1, [1])
    return rack_headroom(
        power_kw=kw, design_kw=np.full(len(racks), 1e9), feed_capacity_kw=np.full(len(racks), 1e9),
        phase_headroom_kw=np.full(len(racks), np.inf), capture_ratio=capture,
        air_allowance_kw=np.full(len(racks), np.inf),
        rack_liquid_capacity_kw=np.full(len(racks), np.inf), feed_a_source=a, feed_b_source=b,
        feed_a_share=share, source_capacity_kw=capacity, source_load_kw=now,
        rack_loop=np.zeros(len(racks), dtype=int), loop_capacity_kw=loop_cap,
        loop_heat_kw=[float(np.sum(kw * capture))], loop_supply_temp_c=[30.0],
        loop_supply_limit_c=[32.0],
    )  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sites())
def test_what_if_never_overloads_a_source_after_a_failure_or_a_loop_after_its_largest_cdu(site):
    capacity, racks, cdus, kw, capture, (a, b) = site
    if overloaded_sources(capacity, racks) or sum(r[3] * r[4] for r in racks) > sum(cdus) - max(cdus):
        return  # the site is already over: no placement question to ask
    h = headroom(capacity, racks, cdus)
    pool = rack_upstream_headroom_kw(h.sources.left_by_failure_kw, [a], [b],
                                     [0.5 if b >= 0 else 1.0])[0]
    placed = place_racks(1000, kw, capture, feed_capacity_kw=None, source_pool_kw=pool,
                         loop_pool_kw=h.loop_pool_kw[0], loop_supply_temp_c=30.0,
                         loop_supply_limit_c=32.0)
    n = int(placed.racks_fit)
    new = [(a, b, 0.5 if b >= 0 else 1.0, kw, capture)] * n

    # accepted: no source overloads after any single failure ...
    assert overloaded_sources(capacity, racks + new) == []
    # ... and the loop carries all the heat with its largest CDU lost
    heat = sum(r[3] * r[4] for r in racks + new)
    assert heat <= sum(cdus) - max(cdus) + EPS_KW

    # and it is not timid: one more rack breaks the limit it named first
    more = racks + new + [(a, b, 0.5 if b >= 0 else 1.0, kw, capture)]
    if placed.first_to_break == "upstream":
        assert overloaded_sources(capacity, more, margin_kw=-EPS_KW)
    elif placed.first_to_break == "loop":
        assert sum(r[3] * r[4] for r in more) > sum(cdus) - max(cdus) - EPS_KW
    else:
        assert not math.isfinite(pool) or placed.first_to_break in ("none", "upstream", "loop")
