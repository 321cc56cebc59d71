"""Liquid and air cooling capacity: heat balance, coolant properties, CDU loops, ASHRAE classes.

Heat balance: Q [kW] = m_dot [kg/s] x cp [kJ/(kg K)] x dT [K], with m_dot = flow x density.
Coolant density and cp come from CoolProp (``Water``; ``INCOMP::MPG[0.25]`` = 25 % propylene
glycol by mass, "PG25") at 2 bar and the measured temperature.

CoolProp evaluates one state per call (about 6 us for PG25, 100 us for water), too slow for
10,000 racks every tick (1.3 s measured in benchmarks/model.py), and importing it takes ~5 s.
Each fluid is therefore tabulated from CoolProp at 1 K steps from 0 to 100 C
(``models.coolant_table``, checked against CoolProp by the tests) and read with
``np.interp``. Linear interpolation over 1 K is within
1e-5 (relative) of CoolProp for density, cp and their product, far below sensor error; a
table, unlike evaluating unique rounded temperatures, costs the same every tick whatever the
spread of temperatures. Temperatures outside the table give NaN rather than an extrapolation.

NaN is unknown and propagates; +inf means a limit does not apply; -1 in an index array
means "none".
"""

from __future__ import annotations

from functools import cache
from types import MappingProxyType

import numpy as np
from numpy.typing import ArrayLike, NDArray

from models import coolant_table
from models._arrays import FloatOrArray, Floats, floats, gather, group_sum, scalar_or_array

COOLPROP_FLUID = MappingProxyType(coolant_table.COOLPROP_FLUID)
TABLE_TEMP_C = np.array(coolant_table.TEMP_C)
TABLE_TEMP_C.setflags(write=False)
_DENSITY, _CP, _RHO_CP = 0, 1, 2  # rows of a property table

# ASHRAE TC9.9 liquid-cooling classes: upper limit of facility water supply temperature (C).
ASHRAE_SUPPLY_LIMIT_C = MappingProxyType(
    {"W17": 17.0, "W27": 27.0, "W32": 32.0, "W40": 40.0, "W45": 45.0, "W+": np.inf}
)
ASHRAE_SUPPLY_MIN_C = 2.0


def _unknown_fluid(fluid: str) -> ValueError:
    return ValueError(f"fluid '{fluid}' is not one of {sorted(COOLPROP_FLUID)}")


@cache
def _property_table(fluid: str) -> Floats:
    """Rows: density (kg/m3), cp (kJ/(kg K)) and their product (kJ/(m3 K)) of ``fluid`` at
    TABLE_TEMP_C and 2 bar, from CoolProp (models.coolant_table)."""
    if fluid not in COOLPROP_FLUID:
        raise _unknown_fluid(fluid)
    rho = np.array(coolant_table.DENSITY_KG_M3[fluid])
    cp = np.array(coolant_table.CP_KJ_PER_KG_K[fluid])
    table = np.stack([rho, cp, rho * cp])
    table.setflags(write=False)
    return table


def _fluid_property(temp_c: ArrayLike, fluid: str | ArrayLike, row: int) -> Floats:
    """One tabulated property at ``temp_c``; ``fluid`` is one name or one name per element."""
    t = floats(temp_c)
    if isinstance(fluid, str):
        return np.interp(t, TABLE_TEMP_C, _property_table(fluid)[row], np.nan, np.nan)
    names = np.asarray(fluid)
    t = np.broadcast_to(t, np.broadcast_shapes(t.shape, names.shape))
    out = np.full(t.shape, np.nan)
    covered = np.zeros(t.shape, dtype=bool)
    for name in COOLPROP_FLUID:  # one pass per fluid (two of them), not per rack
        here = names == name
        if here.any():
            table = _property_table(name)[row]
            out[here] = np.interp(t[here], TABLE_TEMP_C, table, np.nan, np.nan)
            covered |= here
    if not covered.all():
        raise _unknown_fluid(str(names[~covered].flat[0]))
    return out


def fluid_density_kg_m3(temp_c: ArrayLike, fluid: str | ArrayLike) -> FloatOrArray:
    """Coolant density (kg/m3) at ``temp_c`` and 2 bar, from CoolProp ('water' or 'PG25')."""
    return scalar_or_array(_fluid_property(temp_c, fluid, _DENSITY))


def fluid_cp_kj_per_kg_k(temp_c: ArrayLike, fluid: str | ArrayLike) -> FloatOrArray:
    """Coolant specific heat cp (kJ/(kg K)) at ``temp_c`` and 2 bar, from CoolProp."""
    return scalar_or_array(_fluid_property(temp_c, fluid, _CP))


def allowed_delta_t_k(supply_temp_c: ArrayLike, return_limit_c: ArrayLike) -> FloatOrArray:
    """Temperature rise (K) the coolant may take = return limit - supply, never below 0."""
    return scalar_or_array(np.maximum(floats(return_limit_c) - floats(supply_temp_c), 0.0))


def liquid_capacity_kw(
    flow_lpm: ArrayLike, supply_temp_c: ArrayLike, delta_t_k: ArrayLike, fluid: str | ArrayLike
) -> FloatOrArray:
    """Heat (kW) a coolant flow carries over a temperature rise: Q = flow x rho x cp x dT.

    Density and cp at the supply temperature (where the flow is metered); over a 10 K rise cp
    changes by < 0.3 %. With ``delta_t_k`` the allowed rise (``allowed_delta_t_k``) this is
    the capacity; with the measured return - supply it is the heat carried now. NaN when any
    input is NaN or the temperature is outside 0..100 C.
    """
    t = floats(supply_temp_c)
    m3_per_s = floats(flow_lpm) / 60_000.0
    return scalar_or_array(m3_per_s * _fluid_property(t, fluid, _RHO_CP) * floats(delta_t_k))


def flow_lpm_per_kw(
    supply_temp_c: ArrayLike, delta_t_k: ArrayLike, fluid: str | ArrayLike
) -> FloatOrArray:
    """Coolant flow (L/min) needed per kW of heat: 60 / (rho [kg/L] x cp x dT).

    PG25 at 30 C and 10 K: 1.50 L/min per kW; water: 1.44 (REFERENCE section 2). NaN when
    dT <= 0 or an input is NaN.
    """
    t = floats(supply_temp_c)
    kj_per_l_k = _fluid_property(t, fluid, _RHO_CP) / 1000.0
    dt = floats(delta_t_k)
    return scalar_or_array(60.0 / np.where(dt > 0, kj_per_l_k * dt, np.nan))


def heat_to_liquid_kw(power_kw: ArrayLike, capture_ratio: ArrayLike) -> FloatOrArray:
    """Heat (kW) a rack puts into its liquid loop = heat capture ratio x rack power (HCR)."""
    return scalar_or_array(floats(capture_ratio) * floats(power_kw))


def air_residual_kw(power_kw: ArrayLike, capture_ratio: ArrayLike) -> FloatOrArray:
    """Heat (kW) a rack leaves to room air = (1 - heat capture ratio) x rack power."""
    return scalar_or_array((1.0 - floats(capture_ratio)) * floats(power_kw))


def _rack_kw_from_heat_kw(heat_left_kw: ArrayLike, heat_share: ArrayLike) -> Floats:
    """Rack kW that adds ``heat_left_kw`` on a path taking ``heat_share`` of it.

    +inf where the share is 0 (the path never sees the rack's heat), NaN where it is NaN.
    """
    share = floats(heat_share)
    left = floats(heat_left_kw)
    out = np.full(np.broadcast_shapes(left.shape, share.shape), np.inf)
    np.divide(left, share, out=out, where=share > 0)
    return np.where(np.isnan(share), np.nan, out)


def liquid_headroom_kw(liquid_left_kw: ArrayLike, capture_ratio: ArrayLike) -> FloatOrArray:
    """Rack kW headroom from liquid capacity left = (capacity - heat now) / capture ratio.

    A rack growing by dP adds capture x dP to its liquid. +inf when the capture ratio is 0
    (the rack's heat never reaches the liquid); negative when already over; NaN when unknown.
    """
    return scalar_or_array(_rack_kw_from_heat_kw(liquid_left_kw, capture_ratio))


def air_headroom_kw(air_left_kw: ArrayLike, capture_ratio: ArrayLike) -> FloatOrArray:
    """Rack kW headroom from the air allowance left = (allowance - residual) / (1 - capture).

    +inf when the capture ratio is 1 (no heat to air); negative when already over.
    """
    return scalar_or_array(_rack_kw_from_heat_kw(air_left_kw, 1.0 - floats(capture_ratio)))


def cdu_capacity_kw(
    rated_kw: ArrayLike,
    max_flow_lpm: ArrayLike,
    design_supply_c: ArrayLike,
    design_dt_k: ArrayLike,
    fluid: str | ArrayLike,
    pumps_running: ArrayLike,
    pumps_required: ArrayLike,
    leak: ArrayLike,
) -> FloatOrArray:
    """Heat capacity (kW) a CDU offers now: its rating, derated by what it has lost.

    The rating is the nameplate heat capacity, capped by what its maximum secondary flow
    carries at the loop's design rise (Q = flow x rho cp x dT at the design supply
    temperature; ``max_flow_lpm`` NaN: the rating alone). Never the flow it runs now:
    variable-speed pumps run far below their maximum at part load. Live derating: 0 while
    its leak sensor trips (it is isolated), and pumps_running / pumps_required (at most 1)
    when it runs fewer pumps than its full flow needs. NaN when its pumps or leak state are
    unknown.
    """
    rated = floats(rated_kw)
    by_flow = floats(liquid_capacity_kw(max_flow_lpm, design_supply_c, design_dt_k, fluid))
    nameplate = np.where(np.isnan(floats(max_flow_lpm)), rated, np.minimum(rated, by_flow))
    pumps = floats(pumps_running) / floats(pumps_required)
    factor = np.where(floats(leak) >= 1, 0.0, np.clip(pumps, 0.0, 1.0))
    factor = np.where(np.isnan(floats(leak)) | np.isnan(pumps), np.nan, factor)
    return scalar_or_array(nameplate * factor)


def largest_cdu(cdu_capacity_kw: ArrayLike, cdu_loop: ArrayLike, n_loops: int) -> NDArray[np.intp]:
    """Per loop, the index of its largest CDU (the one N+1 redundancy reserves), -1 if none."""
    capacity = np.where(np.isnan(floats(cdu_capacity_kw)), np.inf, floats(cdu_capacity_kw))
    loop = np.asarray(cdu_loop, dtype=np.intp)
    order = np.lexsort((-capacity, loop))  # by loop, largest first
    loops, first = np.unique(loop[order], return_index=True)
    out = np.full(n_loops, -1, dtype=np.intp)
    out[loops] = order[first]
    return out


def loop_capacity_kw(
    cdu_rated_kw: ArrayLike, cdu_loop: ArrayLike, n_loops: int, redundant_cdus: ArrayLike
) -> Floats:
    """Heat capacity (kW) of each CDU loop with its redundancy kept: lose the largest CDUs.

    ``cdu_loop[i]`` = loop index of CDU i; ``redundant_cdus`` per loop = 0 for N, 1 for N+1
    (the loop must carry its heat with its ``redundant_cdus`` largest CDUs lost). Pass 0 kW
    for a CDU known to be out of service. A loop with no more CDUs than redundant ones has 0.
    """
    rated = floats(cdu_rated_kw)
    loop = np.asarray(cdu_loop, dtype=np.intp)
    order = np.lexsort((-rated, loop))  # by loop, largest CDU first within each loop
    loop_sorted = loop[order]
    first = np.searchsorted(loop_sorted, loop_sorted)  # position of each loop's largest CDU
    rank = np.arange(loop_sorted.size) - first  # 0 = largest CDU of its loop
    spare = np.broadcast_to(np.asarray(redundant_cdus, dtype=np.intp), (n_loops,))
    kept = rank >= np.append(spare, 0)[loop_sorted]
    return group_sum(np.where(kept, rated[order], 0.0), loop_sorted, n_loops)


def loop_heat_kw(rack_heat_kw: ArrayLike, rack_loop: ArrayLike, n_loops: int) -> Floats:
    """Heat (kW) on each loop = sum of its racks' heat to liquid (energy conservation).

    ``rack_loop[i]`` = loop index of rack i (-1: none). NaN for a loop with any NaN rack.
    The CDU's own measurement, ``liquid_capacity_kw(flow, supply, return - supply, fluid)``,
    is the alternative when its flow and temperatures are good.
    """
    return group_sum(rack_heat_kw, rack_loop, n_loops)


def rack_loop_headroom_kw(
    loop_pool_kw: ArrayLike, rack_loop: ArrayLike, capture_ratio: ArrayLike
) -> Floats:
    """Per rack: rack kW it could add if it alone grew into its loop's pool (heat kW left).

    +inf for a rack without a loop (-1) or with capture ratio 0. Racks on one loop share the
    pool: do not add these figures up (see ``RackHeadroom.loop_pool_kw``).
    """
    return _rack_kw_from_heat_kw(gather(loop_pool_kw, rack_loop), capture_ratio)


def supply_within_class(supply_temp_c: ArrayLike, class_limit_c: ArrayLike) -> np.ndarray:
    """True where the facility water supply is within its ASHRAE TC9.9 liquid class.

    Class limits: ``ASHRAE_SUPPLY_LIMIT_C`` (W17..W45, W+ unbounded), lower bound 2 C for all
    classes. ASHRAE defines the classes on facility water supply (the CDU's facility side).
    NaN (unknown) gives False, "not shown to be within": where unknown must be told apart,
    test ``np.isnan(supply_temp_c)`` as ``rack_headroom`` does.
    """
    t = floats(supply_temp_c)
    return (t >= ASHRAE_SUPPLY_MIN_C) & (t <= floats(class_limit_c))
