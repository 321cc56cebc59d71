"""Backup chain: supercapacitor -> UPS/rectifier battery -> generator, and load swings.

Supercapacitor physics (REFERENCE section 5): stored energy 1/2 C V^2, so the energy usable
down to the converter's cut-off Vmin is E = 1/2 C (V^2 - Vmin^2); state of charge by energy
(V^2 - Vmin^2) / (Vmax^2 - Vmin^2); matched-load maximum power V^2 / (4 ESR); n cells in
series C = C_cell / n. Ride-through t = eta x E / P_load. The battery must bridge generator
start + transfer: NFPA 110 Type 10 = power back within 10 s.

NaN is unknown and propagates; element-wise functions take scalars or arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from models._arrays import FloatOrArray, floats, ratio, scalar_or_array

NFPA110_TYPE10_S = 10.0


def series_capacitance_f(cell_capacitance_f: ArrayLike, cells_in_series: ArrayLike) -> FloatOrArray:
    """Capacitance (F) of ``n`` equal cells in series = C_cell / n."""
    return scalar_or_array(ratio(cell_capacitance_f, cells_in_series))


def supercap_usable_energy_j(
    capacitance_f: ArrayLike, voltage_v: ArrayLike, vmin_v: ArrayLike
) -> FloatOrArray:
    """Energy (J) a supercapacitor can deliver down to Vmin: 1/2 C (V^2 - Vmin^2).

    Pass the measured voltage for the energy available now, Vmax for the rated figure
    (50 F from 54 V to 40 V: 32.9 kJ). 0 when V <= Vmin; NaN when an input is NaN.
    """
    v, vmin = floats(voltage_v), floats(vmin_v)
    energy = 0.5 * floats(capacitance_f) * (v * v - vmin * vmin)
    return scalar_or_array(np.maximum(energy, 0.0))  # NaN stays NaN


def supercap_soc_pct(voltage_v: ArrayLike, vmax_v: ArrayLike, vmin_v: ArrayLike) -> FloatOrArray:
    """State of charge by usable energy (%) = 100 (V^2 - Vmin^2) / (Vmax^2 - Vmin^2).

    Clipped to 0..100 (a cell just above Vmax reads 100). NaN when V is NaN or Vmax <= Vmin.
    """
    v, vmax, vmin = floats(voltage_v), floats(vmax_v), floats(vmin_v)
    soc = ratio(v * v - vmin * vmin, vmax * vmax - vmin * vmin)
    return scalar_or_array(100.0 * np.clip(soc, 0.0, 1.0))


def supercap_max_power_kw(voltage_v: ArrayLike, esr_mohm: ArrayLike) -> FloatOrArray:
    """Maximum power (kW) into a matched load: V^2 / (4 ESR) (maximum power transfer).

    At the measured voltage; it falls with V as the module discharges. NaN when ESR <= 0.
    """
    v = floats(voltage_v)
    esr_ohm = floats(esr_mohm) / 1000.0
    return scalar_or_array(ratio(v * v, 4.0 * esr_ohm) / 1000.0)


def ride_through_s(
    usable_energy_j: ArrayLike, load_kw: ArrayLike, efficiency: ArrayLike
) -> FloatOrArray:
    """Seconds a store carries a load: t = eta x E / P_load.

    ``efficiency`` is that of the conversion between store and load (1.0 = ideal; a DC/DC
    stage is typically 0.9-0.97 [?], so configure it). +inf at no load (<= 0 kW); NaN when an
    input is NaN.
    """
    load_w = floats(load_kw) * 1000.0
    energy_j = floats(efficiency) * floats(usable_energy_j)
    seconds = np.full(np.broadcast_shapes(load_w.shape, energy_j.shape), np.inf)
    np.divide(energy_j, load_w, out=seconds, where=load_w > 0)
    return scalar_or_array(np.where(np.isnan(load_w) | np.isnan(energy_j), np.nan, seconds))


@dataclass(frozen=True)
class RideThrough:
    """Whether the stored energy bridges the gap until the generator carries the load.

    ``bridge_s``: supercap + battery seconds at the live load. ``required_s``: generator start
    + transfer. ``shortfall_s``: how many seconds are missing (0 when it bridges, NaN when
    unknown). ``bridges``: True only when known to bridge.
    """

    bridge_s: FloatOrArray
    required_s: FloatOrArray
    shortfall_s: FloatOrArray
    bridges: NDArray[np.bool_] | bool


def backup_chain(
    supercap_s: ArrayLike,
    battery_s: ArrayLike,
    generator_start_s: ArrayLike = NFPA110_TYPE10_S,
    transfer_s: ArrayLike = 0.0,
) -> RideThrough:
    """Check the chain supercap -> battery -> generator against the generator's start time.

    The stores discharge one after the other, so their seconds add (the supercap's fraction of
    a second covers the first transient, the UPS/rectifier battery the rest). NFPA 110 Type 10
    counts its 10 s at the transfer switch's load terminals, so it already includes the
    transfer: add ``transfer_s`` only when the configured start time excludes it.
    ``battery_s`` is the UPS/rectifier's estimated runtime (runtime_min x 60).
    """
    bridge, required = np.broadcast_arrays(
        floats(supercap_s) + floats(battery_s), floats(generator_start_s) + floats(transfer_s)
    )
    shortfall = np.maximum(required - bridge, 0.0)  # NaN stays NaN
    return RideThrough(
        bridge_s=scalar_or_array(bridge),
        required_s=scalar_or_array(required),
        shortfall_s=scalar_or_array(shortfall),
        bridges=scalar_or_array(shortfall == 0.0),
    )


def power_ramp_kw_per_s(ts_s: ArrayLike, power_kw: ArrayLike) -> FloatOrArray:
    """Steepest rack power swing (kW/s) in a window: max |dP/dt| between consecutive samples.

    ``ts_s`` ascending seconds along the last axis of ``power_kw``; intervals with a NaN end
    are skipped. A sample interval longer than the swing understates it: measure at the PDU's
    fastest rate. NaN when no interval is known.
    """
    p = floats(power_kw)
    dt_s = np.diff(floats(ts_s), axis=-1)
    dp_kw = np.abs(np.diff(p, axis=-1))
    rate = np.full(np.broadcast_shapes(dp_kw.shape, dt_s.shape), np.nan)
    np.divide(dp_kw, dt_s, out=rate, where=dt_s > 0)
    known = ~np.isnan(rate)
    steepest = np.max(np.where(known, rate, -np.inf), axis=-1, initial=-np.inf)
    return scalar_or_array(np.where(known.any(axis=-1), steepest, np.nan))


def power_swing_kw(power_kw: ArrayLike) -> FloatOrArray:
    """Size (kW) of the load swing in a window = max - min of the known samples (last axis).

    NaN when no sample is known.
    """
    p = floats(power_kw)
    known = ~np.isnan(p)
    high = np.max(np.where(known, p, -np.inf), axis=-1, initial=-np.inf)
    low = np.min(np.where(known, p, np.inf), axis=-1, initial=np.inf)
    return scalar_or_array(np.where(known.any(axis=-1), high - low, np.nan))


def smoothing_margin_kw(max_power_kw: ArrayLike, swing_kw: ArrayLike) -> FloatOrArray:
    """Supercap power left after absorbing a load swing (kW) = max power - swing.

    The supercap supplies (or takes) the step while the upstream converter ramps, so it must
    deliver the whole swing: negative = the swing exceeds what it can smooth. Use
    ``supercap_max_power_kw`` at Vmin (the worst case) or the module's rated power.
    """
    return scalar_or_array(floats(max_power_kw) - floats(swing_kw))
