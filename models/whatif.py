"""What-if placement: can a row take N new racks of X kW, how many fit, what breaks first.

A pure function over the pools that ``headroom.rack_headroom`` returns, so new racks draw
from the same shared kW as the racks already there. Each limit is counted in racks:

- ``feed``: a new rack fits its own feed only if X <= the weaker feed's derated capacity
  (all or none; a balanced rack loads its phases equally, so the phase check is the same);
- ``air``: (1 - capture) x X within the new rack's air allowance (all or none);
- ``upstream``: floor(source pool / X), the pool held after the worst single source failure
  (``power.rack_upstream_headroom_kw`` of a new rack fed like the row's racks: when the
  source of one feed fails, the other carries all of it);
- ``loop``: floor(loop heat pool / (capture x X)), the loop keeping its CDU redundancy;
- ``supply_class``: none while the loop's facility water supply is outside its ASHRAE class.

``feed`` and ``air`` are checked only when the planner gives the new rack's feed capacity and
air allowance: otherwise they are ``not_checked`` (never "all fit"). Inputs broadcast, so many
candidate rows can be asked at once ("which rows can take six 120 kW racks?"). Unknown (NaN)
inputs make that limit unknown; see ``Placement``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from models._arrays import FloatOrArray, Floats, floats, scalar_or_array
from models.cooling import supply_within_class
from models.headroom import binding_limit

WHATIF_LIMITS: tuple[str, ...] = ("feed", "air", "upstream", "loop", "supply_class")
_WHOLE_RACK_TOLERANCE = 1e-9  # 360 kW / 120 kW must give 3 racks despite rounding


@dataclass(frozen=True)
class Placement:
    """Outcome of placing ``racks_requested`` racks, per candidate row.

    ``racks_fit_by_limit``: (..., len(WHATIF_LIMITS)) racks each limit allows (+inf: no
    limit or not checked, NaN: unknown). ``not_checked``: the limits not asked about. ``racks_fit``: min(requested, known limits), a whole number held in
    a float so that it can be NaN (no known limit is finite and some are unknown); an upper
    bound when ``complete`` is False. ``first_to_break``: the limit allowing the fewest racks
    ('unknown' / 'none' as in ``headroom.binding_limit``). ``feasible``: all requested racks
    fit *and* every limit is known. ``source_pool_left_kw`` / ``loop_pool_left_kw``: the
    pools after placing ``racks_fit`` racks, for the next question.
    """

    racks_requested: int
    racks_fit_by_limit: Floats
    racks_fit: FloatOrArray
    first_to_break: NDArray[np.str_] | str
    complete: NDArray[np.bool_] | bool
    feasible: NDArray[np.bool_] | bool
    source_pool_left_kw: FloatOrArray
    loop_pool_left_kw: FloatOrArray
    not_checked: tuple[str, ...] = ()


def _whole_racks(pool: Floats, per_rack: Floats) -> Floats:
    """How many whole racks of ``per_rack`` a pool holds (0 if negative, +inf if per_rack 0)."""
    out = np.full(np.broadcast_shapes(pool.shape, per_rack.shape), np.inf)
    np.divide(pool, per_rack, out=out, where=per_rack > 0)
    out = np.where(np.isnan(pool) | np.isnan(per_rack), np.nan, out)
    return np.maximum(np.floor(out + _WHOLE_RACK_TOLERANCE), 0.0)


def _all_or_none(fits: NDArray[np.bool_], unknown: NDArray[np.bool_]) -> Floats:
    return np.where(unknown, np.nan, np.where(fits, np.inf, 0.0))


def _supply_class_racks(supply_temp_c: ArrayLike | None, limit_c: ArrayLike) -> Floats:
    """All racks while the loop's supply is within its class, none outside; no bound
    without a loop (None)."""
    if supply_temp_c is None:
        return floats(np.inf)
    supply_c = floats(supply_temp_c)
    return _all_or_none(supply_within_class(supply_c, limit_c), np.isnan(supply_c))


def place_racks(
    racks_requested: int,
    rack_kw: ArrayLike,
    capture_ratio: ArrayLike,
    *,
    feed_capacity_kw: ArrayLike | None,
    source_pool_kw: ArrayLike,
    loop_pool_kw: ArrayLike,
    loop_supply_temp_c: ArrayLike | None,
    loop_supply_limit_c: ArrayLike,
    air_allowance_kw: ArrayLike | None = None,
) -> Placement:
    """Place ``racks_requested`` racks of ``rack_kw`` each into a row: feasible, how many fit,
    which limit breaks first.

    ``feed_capacity_kw``: the weaker feed planned for each new rack (``ab_feed_capacity_kw``;
    None: not checked). ``source_pool_kw``: the kW of new racks the row's sources hold after
    the worst single source failure. ``loop_pool_kw``: ``RackHeadroom.loop_pool_kw`` of the
    row's loop (heat kW). ``loop_supply_temp_c`` / ``loop_supply_limit_c``: the loop's
    facility water supply and ASHRAE class limit. ``air_allowance_kw`` per new rack (+inf:
    all its heat goes to liquid; None: not checked).
    """
    if racks_requested < 0:
        raise ValueError(f"racks_requested must be >= 0, got {racks_requested}")
    not_checked = tuple(name for name, given in (("feed", feed_capacity_kw),
                                                 ("air", air_allowance_kw)) if given is None)
    kw, capture = floats(rack_kw), floats(capture_ratio)
    feed_kw = floats(np.inf if feed_capacity_kw is None else feed_capacity_kw)
    air_kw = floats(np.inf if air_allowance_kw is None else air_allowance_kw)
    source_kw, loop_kw = floats(source_pool_kw), floats(loop_pool_kw)
    liquid_per_rack_kw = capture * kw
    air_per_rack_kw = kw - liquid_per_rack_kw

    counts = (
        _all_or_none(kw <= feed_kw, np.isnan(feed_kw) | np.isnan(kw)),
        _all_or_none(air_per_rack_kw <= air_kw, np.isnan(air_kw) | np.isnan(air_per_rack_kw)),
        _whole_racks(source_kw, kw),
        _whole_racks(loop_kw, liquid_per_rack_kw),
        _supply_class_racks(loop_supply_temp_c, loop_supply_limit_c),
    )
    shape = np.broadcast_shapes(*(c.shape for c in counts))
    by_limit = np.stack([np.broadcast_to(c, shape) for c in counts], axis=-1)
    fewest, first_to_break = binding_limit(by_limit, WHATIF_LIMITS)
    racks_fit = np.minimum(fewest, float(racks_requested))  # NaN stays NaN
    complete = ~np.isnan(by_limit).any(axis=-1)
    return Placement(
        racks_requested=racks_requested,
        racks_fit_by_limit=by_limit,
        racks_fit=scalar_or_array(racks_fit),
        first_to_break=scalar_or_array(first_to_break),
        complete=scalar_or_array(complete),
        feasible=scalar_or_array(complete & (racks_fit >= racks_requested)),
        source_pool_left_kw=scalar_or_array(source_kw - racks_fit * kw),
        loop_pool_left_kw=scalar_or_array(loop_kw - racks_fit * liquid_per_rack_kw),
        not_checked=not_checked,
    )
