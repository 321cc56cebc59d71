"""Electrical capacity of rack feeds and of the sources upstream of them.

Capacity rules (NEC 210.20(A) and common A/B practice, see REFERENCE section 3):

- a continuous load may use ``continuous_derating`` (0.8) of a breaker's rating;
- three-phase P = sqrt(3) x V_LL x I x PF, single-phase P = V x I x PF, DC P = V x I;
- with A/B feeds each surviving feed must carry the whole rack, so the rack may use the
  derated capacity of its weaker single feed, never A + B; per phase, I_A + I_B must stay
  within derating x I_breaker of the surviving feed;
- upstream, every rectifier/UPS must carry its load after the loss of any single other
  source (N-1): a dual-corded rack then moves its whole load onto its surviving feed's
  source. A modular source's capacity follows its modules live.

Phases are encoded as integers so they vectorise: 3 = three-phase, 1 = single-phase,
``PHASES_DC`` (0) = DC; any other code gives NaN. NaN is unknown and propagates; -1 in an
index array means "none".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from models._arrays import FloatOrArray, Floats, floats, group_sum, scalar_or_array

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


def modular_capacity_kw(
    rating_kw: ArrayLike, module_kw: ArrayLike, modules_ok: ArrayLike, spare_modules: ArrayLike
) -> FloatOrArray:
    """Usable capacity (kW) of a modular rectifier or UPS, live from its modules.

    = (modules reporting OK - spare modules) x module kW, capped by the system rating (its
    busbar and breaker); never below 0. Spare modules are its redundancy: N+1 keeps one
    module in reserve, so the capacity drops as soon as one more module is lost than it
    spares. A source that is not modular (``module_kw`` NaN) keeps ``rating_kw``. NaN when
    ``modules_ok`` is NaN on a modular source.
    """
    rating, per_module = floats(rating_kw), floats(module_kw)
    by_modules = np.maximum(floats(modules_ok) - floats(spare_modules), 0.0) * per_module
    return scalar_or_array(np.where(np.isnan(per_module), rating, np.minimum(rating, by_modules)))


def failover_moved_kw(
    rack_load_kw: ArrayLike,
    feed_a_share: ArrayLike,
    feed_a_source: ArrayLike,
    feed_b_source: ArrayLike,
    n_sources: int,
) -> Floats:
    """(sources, sources) kW that moves onto source s when source f fails: ``[s, f]``.

    A dual-corded rack whose feeds hang on two sources moves its whole load onto the
    surviving feed when the other feed's source fails (its power supplies share the load
    while both are up). So source s gains, from every rack with one feed on s and the other
    on f, the share that was on f. ``feed_a_share`` is the rack's load on feed A / its load
    (measured); ``rack_load_kw`` the load to hold (its peak). NaN in a rack makes its pair
    of sources NaN. Racks on one source, or with both feeds on the same source, move nothing.
    """
    load, share_a = floats(rack_load_kw), floats(feed_a_share)
    a, b = np.asarray(feed_a_source, dtype=np.intp), np.asarray(feed_b_source, dtype=np.intp)
    dual = (a >= 0) & (b >= 0) & (a != b)
    onto = np.concatenate([a[dual], b[dual]]) * n_sources + np.concatenate([b[dual], a[dual]])
    kw = np.concatenate([(load * (1.0 - share_a))[dual], (load * share_a)[dual]])  # B's onto A,
    moved = np.bincount(onto, weights=kw, minlength=n_sources * n_sources)  # A's onto B
    return moved.reshape(n_sources, n_sources)


@dataclass(frozen=True)
class SourcePools:
    """What is left on every rectifier/UPS, normally and after each single source failure.

    ``left_by_failure_kw``: (sources, sources + 1); ``[s, f]`` is the kW left on s once source
    f failed and its dual-corded racks moved onto s; the last column is "nothing failed";
    ``[s, s]`` is +inf (a source's own failure sets no bound on itself).
    ``left_normal_kw``: (sources,) = capacity - load.
    ``left_after_failure_kw``: (sources,) the worst of its row: what a planner may sign.
    ``worst_failure``: (sources,) the index of the source whose failure leaves the least,
    or -1 when no failure moves load onto it (the "nothing failed" column binds).
    """

    left_by_failure_kw: Floats
    left_normal_kw: Floats
    left_after_failure_kw: Floats
    worst_failure: NDArray[np.intp]


def source_pools(capacity_kw: ArrayLike, load_kw: ArrayLike, moved_kw: ArrayLike) -> SourcePools:
    """Pools of every source after the worst single failure of another one (N-1).

    left[s, f] = usable capacity of s - its load now - the load that moves onto it when f
    fails (``failover_moved_kw``). The worst column of each row is the figure a planner can
    sign: the source then still carries its racks when any one other source is lost. NaN in
    a row (an unknown capacity, load or moved load) makes its worst figure NaN.
    """
    capacity, load, moved = floats(capacity_kw), floats(load_kw), floats(moved_kw)
    n = capacity.shape[0]
    normal = capacity - load
    left = normal[:, None] - np.hstack([moved, np.zeros((n, 1))])
    left[np.arange(n), np.arange(n)] = np.inf
    worst = np.min(left, axis=1) if n else np.zeros(0)  # NaN anywhere in the row: NaN
    column = np.argmin(np.where(np.isnan(left), np.inf, left), axis=1) if n else np.zeros(0, int)
    moves_load = (column < n) & (worst < normal)  # else no failure costs it anything
    worst_failure = np.where(moves_load, column, -1).astype(np.intp)
    return SourcePools(left, normal, worst, worst_failure)


def rack_upstream_headroom_kw(
    left_by_failure_kw: ArrayLike,
    feed_a_source: ArrayLike,
    feed_b_source: ArrayLike,
    feed_a_share: ArrayLike,
) -> Floats:
    """Per rack: the kW it could add if it alone grew, held on every source after any single
    source failure (``SourcePools.left_by_failure_kw``).

    The growth splits over its feeds like its load does (``feed_a_share`` on A). When the
    source of one of its feeds fails, all of it lands on the other: so it must fit, whole,
    in left[a, b] and in left[b, a]; under any other failure (or none) only its share lands
    on each source: growth x share_a <= left[a, f]. A rack with one feed, or both feeds on
    one source, puts all of it on that source under every failure. Racks behind one source
    share its pool: never add these figures up. NaN when a figure it needs is NaN.
    """
    left = floats(left_by_failure_kw)
    n = left.shape[0]
    a, b = np.asarray(feed_a_source, dtype=np.intp), np.asarray(feed_b_source, dtype=np.intp)
    share_a = floats(feed_a_share)
    if n == 0:
        return np.full(a.shape, np.inf)
    unknown_row = np.isnan(left).any(axis=1)
    ordered = np.sort(np.where(np.isnan(left), np.inf, left), axis=1)
    first = np.where(unknown_row, np.nan, ordered[:, 0])
    second = np.where(unknown_row, np.nan, ordered[:, 1])
    first_at = np.argmin(np.where(np.isnan(left), np.inf, left), axis=1)

    def worst_except(s: NDArray[np.intp], f: NDArray[np.intp]) -> Floats:
        """min over failures other than f of left[s, :]: the second best where f is the best."""
        return np.where(first_at[s] == f, second[s], first[s])

    a_ok, b_ok = np.maximum(a, 0), np.maximum(b, 0)
    dual = (a >= 0) & (b >= 0) & (a != b)
    whole_on_a = first[a_ok]  # one feed, or both on one source: all of it, every failure
    other_fails = np.minimum(left[a_ok, b_ok], left[b_ok, a_ok])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        share_b = 1.0 - share_a
        on_a = np.where(share_a > 0, worst_except(a_ok, b_ok) / share_a, np.inf)
        on_b = np.where(share_b > 0, worst_except(b_ok, a_ok) / share_b, np.inf)
    on_a = np.where(np.isnan(share_a), np.nan, on_a)
    on_b = np.where(np.isnan(share_a), np.nan, on_b)
    both = np.minimum(other_fails, np.minimum(on_a, on_b))
    out = np.where(dual, both, whole_on_a)
    return np.where(a >= 0, out, np.inf)


def source_load_kw(feed_power_kw: ArrayLike, feed_source: ArrayLike, n_sources: int) -> Floats:
    """Load (kW) on each source = sum of the PDU feeds it serves (energy conservation).

    ``feed_source[i]`` is the index of the source of feed i (-1: none). A source with any NaN
    feed power is NaN (an unmetered share makes the total unknown). Excludes conversion
    losses between source output and PDU input, so it slightly understates a measured output.
    """
    return group_sum(feed_power_kw, feed_source, n_sources)
