"""Electrical capacity of rack feeds and of the sources upstream of them.

Capacity rules (NEC 210.20(A) and common A/B practice, see REFERENCE section 3):

- a continuous load may use ``continuous_derating`` (0.8) of a breaker's rating;
- three-phase P = sqrt(3) x V_LL x I x PF, single-phase P = V x I x PF, DC P = V x I;
- with A/B feeds each surviving feed must carry the whole rack, so the rack may use the
  derated capacity of its weaker single feed, never A + B; per phase, I_A + I_B must stay
  within derating x I_breaker of the surviving feed.

Phases are encoded as integers so they vectorise: 3 = three-phase, 1 = single-phase,
``PHASES_DC`` (0) = DC; any other code gives NaN. NaN is unknown and propagates; -1 in an
index array means "none".
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from models._arrays import FloatOrArray, Floats, floats, gather, group_sum, scalar_or_array

PHASES_DC = 0
SQRT3 = float(np.sqrt(3.0))


def _line_factor(phases: ArrayLike, power_factor: ArrayLike) -> Floats:
    """kW per (V x A): sqrt(3) PF for 3 phases, PF for 1 phase, 1 for DC, NaN otherwise."""
    ph = np.asarray(phases)
    pf = floats(power_factor)
    factor = np.select(
        [ph == 3, ph == 1, ph == PHASES_DC], [SQRT3 * pf, pf, np.ones_like(pf)], default=np.nan
    )
    return factor / 1000.0


def feed_capacity_kw(
    breaker_a: ArrayLike,
    voltage_v: ArrayLike,
    phases: ArrayLike,
    power_factor: ArrayLike,
    derating: ArrayLike,
) -> FloatOrArray:
    """Continuous capacity (kW) of one PDU feed behind its inlet breaker (NEC 210.20(A)).

    3 phases: sqrt(3) x V_LL x I x PF x derating; 1 phase: V x I x PF x derating;
    DC (phases == PHASES_DC == 0): V x I x derating (PF ignored). ``voltage_v`` is line-to-line
    for three phases. An unknown phase code gives NaN.
    """
    kw = floats(breaker_a) * floats(voltage_v) * _line_factor(phases, power_factor)
    return scalar_or_array(kw * floats(derating))


def ab_feed_capacity_kw(cap_a_kw: ArrayLike, cap_b_kw: ArrayLike) -> FloatOrArray:
    """Usable rack capacity (kW) with A/B feeds = the weaker single feed, never A + B.

    The rack must survive the loss of either feed, so its whole load must fit on the feed that
    is left. ``cap_b_kw`` NaN (or +inf) means the rack has no feed B: feed A alone counts.
    NaN when feed A is NaN.
    """
    a, b = floats(cap_a_kw), floats(cap_b_kw)
    return scalar_or_array(np.where(np.isnan(b), a, np.minimum(a, b)))


def phase_headroom_kw(
    feed_a_current_a: ArrayLike,
    feed_b_current_a: ArrayLike,
    breaker_a: ArrayLike,
    voltage_v: ArrayLike,
    phases: ArrayLike,
    power_factor: ArrayLike,
    derating: ArrayLike,
) -> FloatOrArray:
    """Rack kW headroom on its worst phase if one feed is lost (NEC 210.20(A), A/B practice).

    Currents have shape (racks, 3), columns L1, L2, L3 (single-phase and DC feeds use column 0
    only; the other columns are ignored and may be NaN). The surviving feed carries
    I_A + I_B on each phase, which must stay within derating x I_breaker; the spare current of
    the worst phase is turned into kW as if the rack's growth were spread evenly over its
    phases: sqrt(3) x V_LL x dI x PF (3 phases), V x dI x PF (1 phase), V x dI (DC).
    Breaker, voltage, phases, PF and derating (one value per rack) describe the surviving
    feed; with unequal feeds pass those of the weaker one. A rack without feed B passes
    0 A for B. Negative = a phase is already over its limit. NaN when any used phase current
    of either feed is NaN.
    """
    survivor_a = floats(feed_a_current_a) + floats(feed_b_current_a)
    ph = np.asarray(phases)
    worst_a = survivor_a[..., 0]
    for line in (1, 2):  # L2, L3 count on three-phase feeds only; NaN propagates
        worst_a = np.maximum(worst_a, np.where(ph == 3, survivor_a[..., line], -np.inf))
    spare_a = floats(derating) * floats(breaker_a) - worst_a
    return scalar_or_array(spare_a * floats(voltage_v) * _line_factor(ph, power_factor))


def source_headroom_kw(source_rating_kw: ArrayLike, source_load_kw: ArrayLike) -> FloatOrArray:
    """Shared pool (kW) left on each rectifier/UPS = usable rating - load.

    ``source_rating_kw`` is the usable capacity with its redundancy (N+1, 2N) already removed
    (as the site config states it); ``source_load_kw`` its measured output power, or
    ``source_load_kw`` of the PDU feeds it serves when it is not metered. Every rack behind
    the source shares this pool. NaN when the load is NaN.
    """
    return scalar_or_array(floats(source_rating_kw) - floats(source_load_kw))


def source_load_kw(feed_power_kw: ArrayLike, feed_source: ArrayLike, n_sources: int) -> Floats:
    """Load (kW) on each source = sum of the PDU feeds it serves (energy conservation).

    ``feed_source[i]`` is the index of the source of feed i (-1: none). A source with any NaN
    feed power is NaN (an unmetered share makes the total unknown). Excludes conversion
    losses between source output and PDU input, so it slightly understates a measured output.
    """
    return group_sum(feed_power_kw, feed_source, n_sources)


def rack_upstream_headroom_kw(
    source_pool_kw: ArrayLike, feed_a_source: ArrayLike, feed_b_source: ArrayLike | None = None
) -> Floats:
    """Per rack: the upstream pool it could take if it alone grew (kW).

    ``feed_a_source``/``feed_b_source`` index the source of each rack's feeds (-1: no such
    feed). With its feeds on two sources, either source may have to carry the rack's whole
    growth after a failure, so the smaller pool counts. Racks behind the same source share one
    pool: these figures must not be added up (see ``RackHeadroom.source_pool_kw``). NaN when
    a pool the rack draws on is NaN.
    """
    via_a = gather(source_pool_kw, feed_a_source)
    if feed_b_source is None:
        return via_a
    return np.minimum(via_a, gather(source_pool_kw, feed_b_source))
