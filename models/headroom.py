"""Per-rack kW headroom: the minimum over every limit, and the name of the one that binds.

All racks at once (one element per rack, no per-rack Python). The limits, in ``LIMITS``
order, each as rack kW the rack could still add:

- ``design``: rack design rating - load;
- ``feed``: weaker single feed's derated capacity - load (NEC 210.20(A), A/B feeds);
- ``phase``: worst phase of the surviving feed (``power.phase_headroom_kw``);
- ``upstream_alone``: the pool left on its rectifier/UPS, if this rack alone grew;
- ``liquid_rack``: the rack's own coolant flow capacity left / capture ratio;
- ``loop_alone``: its CDU loop's pool left (N+1: largest CDU lost) / capture ratio, if this
  rack alone grew;
- ``air``: the rack's air allowance left / (1 - capture ratio);
- ``supply_class``: 0 when the loop's facility water supply is outside its ASHRAE TC9.9
  class (no more load may be added), +inf (no limit) when within.

Load is the short-window peak of rack power when given (``power_kw_peak``, e.g. the max over
the last minutes): capacity must hold the GPU load swings, not their average.

Unknown inputs: a limit whose input is NaN is NaN (unknown) for that rack. ``headroom_kw`` is
the minimum over the *known* limits and ``limiting`` names it; when some limit is unknown the
figure is an upper bound, and ``complete`` is False with ``unknown`` saying which. A limit
that does not apply to a rack (no feed B, no loop, no air allowance, capture 0 or 1) is +inf.
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
from models.power import rack_upstream_headroom_kw, source_headroom_kw

LIMITS: tuple[str, ...] = (
    "design",
    "feed",
    "phase",
    "upstream_alone",
    "liquid_rack",
    "loop_alone",
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
    ``source_pool_kw``: (sources,) electrical kW left on each rectifier/UPS.
    ``loop_pool_kw``: (loops,) heat kW left on each CDU loop with its redundancy kept.
    """

    limits_kw: Floats
    headroom_kw: Floats
    limiting: NDArray[np.str_]
    source_pool_kw: Floats
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
    source_rating_kw: ArrayLike,
    source_load_kw: ArrayLike,
    rack_loop: ArrayLike,
    loop_capacity_kw: ArrayLike,
    loop_heat_kw: ArrayLike,
    loop_supply_temp_c: ArrayLike,
    loop_supply_limit_c: ArrayLike,
    power_kw_peak: ArrayLike | None = None,
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
    - ``rack_liquid_capacity_kw``: the rack's own coolant flow capacity
      (``cooling.liquid_capacity_kw``; +inf when only the loop limits it).
    - ``feed_a_source``, ``feed_b_source``: index of each feed's source (-1: no such feed).
    - ``rack_loop``: index of the rack's CDU loop (-1: none).

    Per source, shape (sources,): ``source_rating_kw`` usable (redundancy already removed);
    ``source_load_kw`` its measured output, or ``power.source_load_kw`` of its feeds.

    Per loop, shape (loops,): ``loop_capacity_kw`` with redundancy kept
    (``cooling.loop_capacity_kw``); ``loop_heat_kw`` heat on it now (``cooling.loop_heat_kw``
    of its racks, or the CDUs' measured heat); ``loop_supply_temp_c`` facility water supply;
    ``loop_supply_limit_c`` its ASHRAE class limit (``cooling.ASHRAE_SUPPLY_LIMIT_C``).

    NaN anywhere is unknown; the module docstring says how that is reported.
    """
    load_kw = floats(power_kw)
    if power_kw_peak is not None:
        load_kw = np.fmax(load_kw, floats(power_kw_peak))
    capture = floats(capture_ratio)
    loop = np.asarray(rack_loop, dtype=np.intp)

    source_pool = floats(source_headroom_kw(source_rating_kw, source_load_kw))
    loop_pool = floats(loop_capacity_kw) - floats(loop_heat_kw)
    liquid_left = _left_kw(rack_liquid_capacity_kw, heat_to_liquid_kw(load_kw, capture))
    air_left = _left_kw(air_allowance_kw, air_residual_kw(load_kw, capture))
    supply_c = gather(loop_supply_temp_c, loop, absent=np.nan)

    columns = (
        floats(design_kw) - load_kw,
        floats(feed_capacity_kw) - load_kw,
        floats(phase_headroom_kw),
        rack_upstream_headroom_kw(source_pool, feed_a_source, feed_b_source),
        liquid_headroom_kw(liquid_left, capture),
        rack_loop_headroom_kw(loop_pool, loop, capture),
        air_headroom_kw(air_left, capture),
        _supply_class_kw(supply_c, gather(loop_supply_limit_c, loop), loop >= 0),
    )
    shape = load_kw.shape
    # one contiguous row per limit; limits_kw is its (racks, limits) transposed view
    limits = np.stack([np.broadcast_to(c, shape) for c in columns], axis=0).T
    headroom, limiting = binding_limit(limits, LIMITS)
    return RackHeadroom(limits, headroom, limiting, source_pool, loop_pool)
