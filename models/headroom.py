"""Per-rack kW headroom: the minimum over every limit, and the name of the one that binds.

All racks at once (one element per rack, no per-rack Python). The limits, in ``LIMITS``
order, each as rack kW the rack could still add:

- ``design``: rack design rating - load;
- ``feed``: weaker single feed's derated capacity - load (NEC 210.20(A), A/B feeds);
- ``phase``: worst phase of the surviving feed (``power.phase_headroom_kw``);
- ``upstream``: if this rack alone grew, held on its rectifiers/UPS after the worst single
  source failure (``power.rack_upstream_headroom_kw``, N-1);
- ``liquid_rack``: the rack's own manifold capacity left / capture ratio;
- ``loop``: its CDU loop's pool left (N+1: largest CDU lost) / capture ratio, if this rack
  alone grew;
- ``air``: the rack's air allowance left / (1 - capture ratio);
- ``supply_class``: 0 when the loop's facility water supply is outside its ASHRAE TC9.9
  class (no more load may be added), +inf (no bound) when within.

Load is the short-window peak of rack power when given (``power_kw_peak``, e.g. the max over
the last minutes): capacity must hold the GPU load swings, not their average.

Unknown inputs: a limit whose input is NaN is NaN (unknown) for that rack. ``headroom_kw`` is
the minimum over the *known* limits and ``limiting`` names it; when some limit is unknown the
figure is an upper bound, and ``complete`` is False. The design limit always bounds: with the
rack's load unknown, the headroom is at most its design rating. A limit that does not apply
to a rack (no feed B, no loop, no manifold, no air allowance, capture 0 or 1) is +inf.
Negative headroom = the rack is already over that limit.

Shared limits (upstream, loop) are also returned as pools per source and per loop, so that a
planner adding racks draws from the pool (``whatif.place_racks``) and is never promised the
same kW twice by adding up per-rack "alone" figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from models._arrays import Floats, floats, gather
from models.cooling import (
    air_headroom_kw,
    air_residual_kw,
    heat_to_liquid_kw,
    liquid_headroom_kw,
    rack_loop_headroom_kw,
    supply_within_class,
)
from models.power import (
    SourcePools,
    failover_moved_kw,
    rack_upstream_headroom_kw,
    source_pools,
)

LIMITS: tuple[str, ...] = (
    "design",
    "feed",
    "phase",
    "upstream",
    "liquid_rack",
    "loop",
    "air",
    "supply_class",
)
UNKNOWN = "unknown"  # every limit unknown (or the known ones all +inf)
NO_LIMIT = "none"  # every limit known and +inf


@dataclass(frozen=True)
class RackHeadroom:
    """Headroom of every rack, limit by limit, and the shared pools behind it.

    ``limits_kw``: (racks, len(LIMITS)) kW per limit, NaN unknown, +inf not applicable.
    ``headroom_kw``: (racks,) min over known limits; NaN when none is known.
    ``limiting``: (racks,) name from LIMITS of the binding limit, or 'unknown' / 'none'.
    ``sources``: electrical kW left on each rectifier/UPS, normally and after each single
    source failure (``power.SourcePools``).
    ``loop_pool_kw``: (loops,) heat kW left on each CDU loop with its redundancy kept.
    """

    limits_kw: Floats
    headroom_kw: Floats
    limiting: NDArray[np.str_]
    sources: SourcePools
    loop_pool_kw: Floats

    def limit_kw(self, name: str) -> Floats:
        """The (racks,) column of one limit, by its name in LIMITS."""
        return self.limits_kw[:, LIMITS.index(name)]

    @property
    def unknown(self) -> NDArray[np.bool_]:
        """(racks, len(LIMITS)) True where that limit could not be evaluated (NaN input)."""
        return np.isnan(self.limits_kw)

    @property
    def complete(self) -> NDArray[np.bool_]:
        """(racks,) True where every limit is known, so ``headroom_kw`` is exact."""
        return ~self.unknown.any(axis=1)


def _left_kw(capacity_kw: ArrayLike, used_kw: ArrayLike) -> Floats:
    """Capacity - use; an infinite (not applicable) capacity stays infinite whatever the use."""
    cap = floats(capacity_kw)
    return np.where(np.isposinf(cap), np.inf, cap - floats(used_kw))


def _supply_class_kw(supply_temp_c: Floats, limit_c: Floats, has_loop: NDArray[np.bool_]) -> Floats:
    """0 outside the ASHRAE class, +inf within it or without a loop, NaN when unknown."""
    within = np.where(supply_within_class(supply_temp_c, limit_c), np.inf, 0.0)
    return np.where(has_loop, np.where(np.isnan(supply_temp_c), np.nan, within), np.inf)


def binding_limit(limits_kw: ArrayLike, names: tuple[str, ...]) -> tuple[Floats, NDArray[np.str_]]:
    """Minimum over the known limits of each row, and the name of the limit reaching it.

    ``limits_kw`` has shape (..., len(names)). NaN entries (unknown) are skipped; ties go to
    the first name. A row with no finite known limit gives NaN / 'unknown' if any limit is
    unknown, else +inf / 'none'.
    """
    by_limit = np.moveaxis(floats(limits_kw), -1, 0)  # one row per limit: element-wise below
    best = np.fmin.reduce(by_limit, axis=0)  # skips NaN; NaN only when every limit is
    code = np.zeros(best.shape, dtype=np.intp)
    for k in range(len(names) - 1, -1, -1):  # over the few limits, never over racks
        code = np.where(by_limit[k] == best, k, code)
    any_unknown = np.logical_or.reduce(np.isnan(by_limit), axis=0)
    open_ended = ~(best < np.inf)  # +inf or NaN: no finite known limit
    best = np.where(open_ended & any_unknown, np.nan, best)
    code = np.where(open_ended, np.where(any_unknown, len(names), len(names) + 1), code)
    return best, np.array(names + (UNKNOWN, NO_LIMIT))[code]


def rack_headroom(
    *,
    power_kw: ArrayLike,
    design_kw: ArrayLike,
    feed_capacity_kw: ArrayLike,
    phase_headroom_kw: ArrayLike,
    capture_ratio: ArrayLike,
    air_allowance_kw: ArrayLike,
    rack_liquid_capacity_kw: ArrayLike,
    feed_a_source: ArrayLike,
    feed_b_source: ArrayLike,
    feed_a_share: ArrayLike,
    source_capacity_kw: ArrayLike,
    source_load_kw: ArrayLike,
    rack_loop: ArrayLike,
    loop_capacity_kw: ArrayLike,
    loop_heat_kw: ArrayLike,
    loop_supply_temp_c: ArrayLike,
    loop_supply_limit_c: ArrayLike,
    power_kw_peak: ArrayLike | None = None,
    rack_liquid_heat_kw: ArrayLike | None = None,
) -> RackHeadroom:
    """kW headroom of every rack over the limits in LIMITS, the binding one, and the pools.

    Per rack, shape (racks,):

    - ``power_kw``: IT power now (feed A + feed B); ``power_kw_peak``: its short-window max.
      Load = the larger of the two known values (either alone when the other is NaN).
    - ``design_kw``: the rack's design rating.
    - ``feed_capacity_kw``: the weaker single feed (``power.ab_feed_capacity_kw``).
    - ``phase_headroom_kw``: ``power.phase_headroom_kw`` (+inf when not metered per phase).
    - ``capture_ratio``: heat to liquid / rack power.
    - ``air_allowance_kw``: air cooling allowed for the residual heat (+inf: none set).
    - ``rack_liquid_capacity_kw``: the rack manifold's heat capacity at its maximum flow
      (``cooling.liquid_capacity_kw``; +inf when the rack declares none).
    - ``rack_liquid_heat_kw``: heat in its manifold now (flow x rho cp x dT where metered,
      else capture x load; NaN: a meter that did not answer). Not given: capture x load.
    - ``feed_a_source``, ``feed_b_source``: index of each feed's source (-1: no such feed);
      ``feed_a_share``: the share of the rack's load on feed A (1 with one feed).
    - ``rack_loop``: index of the rack's CDU loop (-1: none).

    Per source, shape (sources,): ``source_capacity_kw`` usable now (a modular source's
    from its modules, ``power.modular_capacity_kw``); ``source_load_kw`` its measured output.

    Per loop, shape (loops,): ``loop_capacity_kw`` with redundancy kept
    (``cooling.loop_capacity_kw``); ``loop_heat_kw`` heat on it now (its CDUs' measured heat,
    or ``cooling.loop_heat_kw`` of its racks); ``loop_supply_temp_c`` facility water supply;
    ``loop_supply_limit_c`` its ASHRAE class limit (``cooling.ASHRAE_SUPPLY_LIMIT_C``).

    NaN anywhere is unknown; the module docstring says how that is reported.
    """
    load_kw = floats(power_kw)
    if power_kw_peak is not None:
        load_kw = np.fmax(load_kw, floats(power_kw_peak))
    capture = floats(capture_ratio)
    loop = np.asarray(rack_loop, dtype=np.intp)
    a, b = np.asarray(feed_a_source, dtype=np.intp), np.asarray(feed_b_source, dtype=np.intp)

    moved = failover_moved_kw(load_kw, feed_a_share, a, b, len(floats(source_capacity_kw)))
    sources = source_pools(source_capacity_kw, source_load_kw, moved)
    loop_pool = floats(loop_capacity_kw) - floats(loop_heat_kw)
    liquid_heat = heat_to_liquid_kw(load_kw, capture)
    if rack_liquid_heat_kw is not None:
        liquid_heat = floats(rack_liquid_heat_kw)
    liquid_left = _left_kw(rack_liquid_capacity_kw, liquid_heat)
    air_left = _left_kw(air_allowance_kw, air_residual_kw(load_kw, capture))
    supply_c = gather(loop_supply_temp_c, loop, absent=np.nan)
    design = floats(design_kw)

    columns = (
        design - load_kw,
        floats(feed_capacity_kw) - load_kw,
        floats(phase_headroom_kw),
        rack_upstream_headroom_kw(sources.left_by_failure_kw, a, b, feed_a_share),
        liquid_headroom_kw(liquid_left, capture),
        rack_loop_headroom_kw(loop_pool, loop, capture),
        air_headroom_kw(air_left, capture),
        _supply_class_kw(supply_c, gather(loop_supply_limit_c, loop), loop >= 0),
    )
    shape = load_kw.shape
    # one contiguous row per limit; limits_kw is its (racks, limits) transposed view
    limits = np.stack([np.broadcast_to(c, shape) for c in columns], axis=0).T
    headroom, limiting = binding_limit(limits, LIMITS)
    # the design limit always bounds: a rack of unknown load can add at most its rating
    design_binds = np.isnan(load_kw) & ~(headroom <= design)
    headroom = np.where(design_binds, design, headroom)
    limiting = np.where(design_binds, "design", limiting)
    return RackHeadroom(limits, headroom, limiting, sources, loop_pool)
