"""Power usage effectiveness per ISO/IEC 30134-2 (EN 50600-4-2), and its companions.

PUE = E_facility / E_IT over the same period. The standard figure is an *interval* PUE from
energy (kWh counters preferred, else integrated power); the ratio of instantaneous kW is a
view of it. The category says where IT energy is measured (1: UPS/rectifier output,
2: PDU output, 3: IT equipment input).

NaN is unknown and propagates; element-wise functions take scalars or arrays.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from models._arrays import FloatOrArray, Floats, floats, ratio, scalar_or_array

PUE_CATEGORY: dict[str, int] = {
    "ups_output": 1,
    "rectifier_output": 1,
    "pdu_output": 2,
    "it_input": 3,
}


def pue(facility_kw: ArrayLike, it_kw: ArrayLike) -> FloatOrArray:
    """Instantaneous PUE = facility power / IT power (ISO/IEC 30134-2, as a kW view).

    NaN when either input is NaN or IT power is <= 0. A value below 1 is returned as is: it
    shows inconsistent metering (IT measured upstream of something counted as facility), which
    must stay visible rather than be clipped.
    """
    return scalar_or_array(ratio(facility_kw, it_kw))


def interval_pue(facility_kwh: ArrayLike, it_kwh: ArrayLike) -> FloatOrArray:
    """Interval PUE = E_facility / E_IT over one period (ISO/IEC 30134-2 definition).

    Both energies must cover the same period (1 h, 24 h, 30 d...). NaN when either is NaN or
    E_IT <= 0.
    """
    return scalar_or_array(ratio(facility_kwh, it_kwh))


def pue_category(it_measured_at: str) -> int:
    """ISO/IEC 30134-2 PUE category from where IT energy is measured.

    'ups_output' or 'rectifier_output' -> 1, 'pdu_output' -> 2, 'it_input' -> 3; any other name
    raises ValueError listing the accepted ones.
    """
    try:
        return PUE_CATEGORY[it_measured_at]
    except KeyError:
        raise ValueError(
            f"IT measurement point '{it_measured_at}' is not one of {sorted(PUE_CATEGORY)}"
        ) from None


def _valid_intervals(ts_s: ArrayLike, power_kw: ArrayLike) -> tuple[Floats, Floats, Floats]:
    """Interval lengths (h), mean power (kW) and a 0/1 mask of intervals with both ends known."""
    t, p = floats(ts_s), floats(power_kw)
    dt_h = np.diff(t, axis=-1) / 3600.0
    mean_kw = 0.5 * (p[..., 1:] + p[..., :-1])
    valid = ~np.isnan(mean_kw) & ~np.isnan(dt_h) & (dt_h > 0)
    return np.where(valid, dt_h, 0.0), np.where(valid, mean_kw, 0.0), valid


def energy_kwh_from_power(ts_s: ArrayLike, power_kw: ArrayLike) -> FloatOrArray:
    """Energy (kWh) by trapezoid integration of power samples at irregular times.

    ``ts_s`` are ascending unix seconds along the last axis; ``power_kw`` has the same last
    axis (leading axes are independent series). An interval with NaN at either end (a gap)
    contributes nothing, so the result covers only the known part of the window: compare
    ``power_coverage_ratio`` of facility and IT before dividing them. NaN when no interval is
    known (fewer than two consecutive good samples).
    """
    dt_h, mean_kw, valid = _valid_intervals(ts_s, power_kw)
    energy = np.sum(mean_kw * dt_h, axis=-1)
    return scalar_or_array(np.where(valid.any(axis=-1), energy, np.nan))


def power_coverage_ratio(ts_s: ArrayLike, power_kw: ArrayLike) -> FloatOrArray:
    """Share (0..1) of the sampled time span that ``energy_kwh_from_power`` actually integrated.

    1.0 means no gap. NaN when the span is empty (fewer than two timestamps).
    """
    t = floats(ts_s)
    dt_h, _, _ = _valid_intervals(t, power_kw)
    span_h = (t[..., -1] - t[..., 0]) / 3600.0 if t.shape[-1] else np.nan
    return scalar_or_array(ratio(np.sum(dt_h, axis=-1), span_h))


def energy_kwh_from_counter(counter_kwh: ArrayLike) -> FloatOrArray:
    """Energy (kWh) delivered over a window from successive readings of a kWh counter.

    Sums the steps between consecutive known readings along the last axis (NaN readings are
    skipped, not bridged with zero). A negative step is a counter reset or wrap: the meter
    restarted from zero, so that step counts as the new reading itself (energy between the last
    reading before the reset and the reset is not recoverable and is left out: an undercount
    of at most one sampling interval). NaN when fewer than two readings are known.
    """
    c = floats(counter_kwh)
    n = c.shape[-1]
    known = ~np.isnan(c)
    # index of the last known reading at or before each position (0 when none yet)
    last_known = np.maximum.accumulate(np.where(known, np.arange(n), 0), axis=-1)
    previous = np.take_along_axis(c, last_known, axis=-1)[..., :-1]
    previous = np.where(np.cumsum(known, axis=-1)[..., :-1] > 0, previous, np.nan)
    current = c[..., 1:]
    step = current - previous
    step = np.where(step < 0, current, step)  # reset: counted from zero
    counted = ~np.isnan(step)
    energy = np.sum(np.where(counted, step, 0.0), axis=-1)
    return scalar_or_array(np.where(counted.any(axis=-1), energy, np.nan))


def partial_pue(it_kwh: ArrayLike, subsystem_kwh: ArrayLike) -> FloatOrArray:
    """Partial PUE of one subsystem = (E_IT + E_subsystem) / E_IT (ISO/IEC 30134-2 pPUE).

    E.g. cooling pPUE with the cooling plant's energy, power-distribution pPUE with the
    conversion losses. NaN when either is NaN or E_IT <= 0.
    """
    it = floats(it_kwh)
    return scalar_or_array(ratio(it + floats(subsystem_kwh), it))


def conversion_loss_kw(input_kw: ArrayLike, output_kw: ArrayLike) -> FloatOrArray:
    """Power lost in a rectifier, UPS or transformer = input power - output power (kW).

    Energy conservation; the loss is part of E_facility, not E_IT (ISO/IEC 30134-2). A
    negative result is returned as is: it shows a metering error. NaN when either is NaN.
    """
    return scalar_or_array(floats(input_kw) - floats(output_kw))


def measured_share(metered_kw: ArrayLike, unmetered_declared_kw: ArrayLike) -> FloatOrArray:
    """Share (0..1) of facility power that was measured rather than declared.

    = metered / (metered + declared unmetered loads). The facility power given to ``pue``
    should include the declared loads; this figure says how much of it is a measurement.
    NaN when either is NaN or the total is <= 0.
    """
    metered = floats(metered_kw)
    return scalar_or_array(ratio(metered, metered + floats(unmetered_declared_kw)))
