"""The model's formulas against hand-computed cases (numbers and arithmetic written here)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.backup import (
    backup_chain,
    power_ramp_kw_per_s,
    power_swing_kw,
    ride_through_s,
    series_capacitance_f,
    smoothing_margin_kw,
    supercap_max_power_kw,
    supercap_soc_pct,
    supercap_usable_energy_j,
)
from models.cooling import (
    ASHRAE_SUPPLY_LIMIT_C,
    air_headroom_kw,
    air_residual_kw,
    allowed_delta_t_k,
    cdu_capacity_kw,
    flow_lpm_per_kw,
    fluid_cp_kj_per_kg_k,
    fluid_density_kg_m3,
    heat_to_liquid_kw,
    largest_cdu,
    liquid_capacity_kw,
    liquid_headroom_kw,
    loop_capacity_kw,
    loop_heat_kw,
    rack_loop_headroom_kw,
    supply_within_class,
)
from models.headroom import LIMITS, binding_limit, rack_headroom
from models.power import (
    PHASES_DC,
    ab_feed_capacity_kw,
    failover_moved_kw,
    feed_capacity_kw,
    modular_capacity_kw,
    phase_headroom_kw,
    rack_upstream_headroom_kw,
    source_load_kw,
    source_pools,
)
from models.pue import (
    conversion_loss_kw,
    energy_kwh_from_counter,
    energy_kwh_from_power,
    interval_pue,
    measured_share,
    partial_pue,
    power_coverage_ratio,
    pue,
    pue_category,
)
from models.whatif import WHATIF_LIMITS, place_racks

approx = pytest.approx
NAN = math.nan
INF = math.inf

# ------------------------------------------------------------------------------- PUE


def test_pue_instantaneous_scalar_and_array():
    # 1 200 kW facility / 1 000 kW IT = 1.2
    assert pue(1200.0, 1000.0) == approx(1.2)
    assert isinstance(pue(1200.0, 1000.0), float)
    # [1 100/1 000, 1 150/1 000] = [1.1, 1.15]
    assert pue(np.array([1100.0, 1150.0]), 1000.0) == approx([1.1, 1.15])


def test_pue_nan_or_non_positive_it_is_nan():
    out = pue([1200.0, NAN, 1200.0, 1200.0], [NAN, 1000.0, 0.0, -5.0])
    assert np.isnan(out).all()


def test_pue_category_by_measurement_point():
    assert pue_category("ups_output") == 1
    assert pue_category("rectifier_output") == 1
    assert pue_category("pdu_output") == 2
    assert pue_category("it_input") == 3
    with pytest.raises(ValueError, match="pdu_output"):
        pue_category("server_fans")


def test_energy_from_irregular_power_samples():
    # 0..1800 s at 100 kW: 100 x 0.5 h = 50 kWh; 1800..3600 s, 100 -> 200 kW: 150 x 0.5 = 75
    assert energy_kwh_from_power([0.0, 1800.0, 3600.0], [100.0, 100.0, 200.0]) == approx(125.0)
    # irregular: 0..600 s at 60 kW = 10 kWh; 600..3600 s at 60 kW = 50 kWh -> 60 kWh
    assert energy_kwh_from_power([0.0, 600.0, 3600.0], [60.0, 60.0, 60.0]) == approx(60.0)


def test_energy_from_power_excludes_nan_gaps_and_reports_coverage():
    ts = [0.0, 900.0, 1800.0, 3600.0]
    kw = [100.0, NAN, 100.0, 100.0]
    # 0..900 and 900..1800 touch the NaN: left out; 1800..3600: 100 kW x 0.5 h = 50 kWh
    assert energy_kwh_from_power(ts, kw) == approx(50.0)
    # 1 800 s integrated of a 3 600 s span = 0.5
    assert power_coverage_ratio(ts, kw) == approx(0.5)
    assert np.isnan(energy_kwh_from_power(ts, [NAN, 1.0, NAN, NAN]))


def test_energy_from_power_many_series_at_once():
    ts = [0.0, 3600.0]
    kw = np.array([[10.0, 30.0], [NAN, 5.0]])  # (10 + 30) / 2 x 1 h = 20 kWh; unknown
    out = energy_kwh_from_power(ts, kw)
    assert out[0] == approx(20.0) and np.isnan(out[1])


def test_energy_from_counter_with_reset_and_missing_reading():
    # steps: 1010.5-1000 = 10.5; (NaN skipped) 1025-1010.5 = 14.5; reset 1025 -> 3: counts 3;
    # 13-3 = 10 -> 10.5 + 14.5 + 3 + 10 = 38 kWh
    assert energy_kwh_from_counter([1000.0, 1010.5, NAN, 1025.0, 3.0, 13.0]) == approx(38.0)
    assert np.isnan(energy_kwh_from_counter([NAN, 5.0, NAN]))
    # two meters at once: 20 - 10 = 10; 7 - 1 = 6
    assert energy_kwh_from_counter(np.array([[10.0, 20.0], [1.0, 7.0]])) == approx([10.0, 6.0])


def test_interval_pue_from_counters_with_a_reset():
    # facility: 12 + 12 + reset to 6 (counts 6) + 12 = 42 kWh; IT: 10 + 10 + 10 + 5 = 35 kWh
    facility = energy_kwh_from_counter([2000.0, 2012.0, 2024.0, 6.0, 18.0])
    it = energy_kwh_from_counter([1000.0, 1010.0, 1020.0, 1030.0, 1035.0])
    assert facility == approx(42.0) and it == approx(35.0)
    # 42 / 35 = 1.2
    assert interval_pue(facility, it) == approx(1.2)
    assert np.isnan(interval_pue(facility, NAN))


def test_partial_pue_conversion_loss_and_measured_share():
    # cooling pPUE: (1 000 + 80) / 1 000 = 1.08
    assert partial_pue(1000.0, 80.0) == approx(1.08)
    # rectifier: 104 kW in - 100 kW out = 4 kW lost
    assert conversion_loss_kw(104.0, 100.0) == approx(4.0)
    # 95 kW metered, 5 kW declared lighting: 95 / 100 = 0.95
    assert measured_share(95.0, 5.0) == approx(0.95)
    assert np.isnan(partial_pue(0.0, 80.0))
    assert np.isnan(conversion_loss_kw(NAN, 100.0))
    assert np.isnan(measured_share(NAN, 5.0))


# ------------------------------------------------------------------------------- power


def test_feed_capacity_three_phase_reference_32_8_kw():
    # sqrt(3) x 415 V x 60 A x 0.95 x 0.8 = 32 777.3 W (REFERENCE: 32.8 kW per feed)
    assert feed_capacity_kw(60.0, 415.0, 3, 0.95, 0.8) == approx(32.7773, abs=1e-4)
    assert feed_capacity_kw(60.0, 415.0, 3, 0.95, 0.8) == approx(32.8, abs=0.05)


def test_feed_capacity_single_phase_dc_and_unknown_code():
    out = feed_capacity_kw(
        [32.0, 60.0, 60.0, 60.0], [230.0, 400.0, 415.0, NAN], [1, PHASES_DC, 2, 3], 0.95, 0.8
    )
    assert out[0] == approx(5.5936)  # 230 V x 32 A x 0.95 x 0.8 = 5 593.6 W
    assert out[1] == approx(19.2)  # DC: 400 V x 60 A x 0.8 = 19 200 W (PF ignored)
    assert np.isnan(out[2])  # phase code 2 does not exist
    assert np.isnan(out[3])  # unknown voltage


def test_ab_feeds_use_the_weaker_single_feed():
    cap_a = feed_capacity_kw(60.0, 415.0, 3, 0.95, 0.8)  # 32.777 kW
    cap_b = feed_capacity_kw(48.0, 415.0, 3, 0.95, 0.8)  # sqrt(3) x 415 x 48 x 0.95 x 0.8 = 26.222
    assert ab_feed_capacity_kw(cap_a, cap_b) == approx(26.2219, abs=1e-4)  # never A + B
    # no feed B (NaN): feed A alone
    assert ab_feed_capacity_kw([32.0, 32.0], [NAN, 40.0]) == approx([32.0, 32.0])


def test_phase_headroom_worst_phase_of_surviving_feed():
    current_a = np.array([[20.0, 22.0, 18.0], [10.0, NAN, NAN], [20.0, NAN, 18.0]])
    current_b = np.array([[19.0, 21.0, 17.0], [0.0, NAN, NAN], [19.0, 21.0, 17.0]])
    out = phase_headroom_kw(
        current_a, current_b, [60.0, 32.0, 60.0], [415.0, 230.0, 415.0], [3, 1, 3], 0.95, 0.8
    )
    # rack 0: I_A + I_B = [39, 43, 35] A, limit 0.8 x 60 = 48 A, worst phase 43 -> 5 A spare;
    #   sqrt(3) x 415 V x 5 A x 0.95 = 3 414.3 W
    assert out[0] == approx(3.41431, abs=1e-5)
    # rack 1 (single phase, no feed B): 0.8 x 32 = 25.6 A - 10 A = 15.6 A; 230 x 15.6 x 0.95
    #   = 3 408.6 W (unused columns ignored)
    assert out[1] == approx(3.4086)
    # rack 2: L2 of feed A unknown -> unknown
    assert np.isnan(out[2])


def test_phase_headroom_negative_when_a_phase_is_over():
    # 30 + 25 = 55 A > 48 A: -7 A x sqrt(3) x 415 x 0.95 = -4 780.0 W
    out = phase_headroom_kw([[30.0, 5.0, 5.0]], [[25.0, 5.0, 5.0]], 60.0, 415.0, 3, 0.95, 0.8)
    assert out[0] == approx(-4.78003, abs=1e-5)


def test_source_load_sums_its_feeds():
    # feeds 0,1 on source 0 (120 + 80 = 200 kW), feed 2 on source 1 (NaN), feed 3 unassigned
    load = source_load_kw([120.0, 80.0, NAN, 50.0], [0, 0, 1, -1], 2)
    assert load[0] == approx(200.0) and np.isnan(load[1])


def test_modular_capacity_follows_its_modules():
    # 13 x 60 kW, N+1 (one spare), busbar 780 kW: 13 OK -> 12 x 60 = 720; 11 OK -> 600;
    # 12 OK -> 660 (the spare is gone, one module's worth too); 0 OK -> 0 (never negative);
    # not modular -> its rating; modules unknown -> unknown
    out = modular_capacity_kw([780.0] * 5 + [750.0], [60.0] * 5 + [NAN],
                              [13.0, 11.0, 12.0, 0.0, NAN, NAN], [1, 1, 1, 1, 1, 0])
    assert out[:4] == approx([720.0, 600.0, 660.0, 0.0])
    assert np.isnan(out[4]) and out[5] == 750.0
    # capped by the busbar: 14 modules OK of an N+0 system of 60 kW = 840 > 780
    assert modular_capacity_kw(780.0, 60.0, 14.0, 0) == 780.0


def test_failover_moves_each_dual_corded_rack_onto_its_surviving_feed():
    # rack 0: 100 kW, 40 % on A (source 0), 60 % on B (source 1);
    # rack 1: 50 kW, half on A (source 1), half on B (source 2);
    # rack 2: 30 kW, A only on source 0; rack 3: both feeds on source 2 (moves nothing)
    moved = failover_moved_kw([100.0, 50.0, 30.0, 80.0], [0.4, 0.5, 1.0, 0.5],
                              [0, 1, 0, 2], [1, 2, -1, 2], 3)
    # source 1 fails: source 0 gains rack 0's B share 60 kW, source 2 gains rack 1's A 25 kW
    assert moved[:, 1] == approx([60.0, 0.0, 25.0])
    # source 0 fails: source 1 gains rack 0's A share 40 kW; source 2 fails: 1 gains 25 kW
    assert moved[:, 0] == approx([0.0, 40.0, 0.0])
    assert moved[:, 2] == approx([0.0, 25.0, 0.0])


def test_source_pools_after_the_worst_single_failure():
    # capacities 500, 500, 500; loads 200, 350, 100; moved as above
    moved = failover_moved_kw([100.0, 50.0, 30.0, 80.0], [0.4, 0.5, 1.0, 0.5],
                              [0, 1, 0, 2], [1, 2, -1, 2], 3)
    pools = source_pools([500.0, 500.0, 500.0], [200.0, 350.0, 100.0], moved)
    # normal: 300, 150, 400. Source 0 with 1 lost: 300 - 60 = 240 (worst, by source 1)
    # source 1: with 0 lost 150 - 40 = 110, with 2 lost 150 - 25 = 125 -> 110 (by source 0)
    # source 2: with 1 lost 400 - 25 = 375 (by source 1)
    assert pools.left_normal_kw == approx([300.0, 150.0, 400.0])
    assert pools.left_after_failure_kw == approx([240.0, 110.0, 375.0])
    assert pools.worst_failure.tolist() == [1, 0, 1]
    assert pools.left_by_failure_kw[0] == approx([INF, 240.0, 300.0, 300.0])
    # a source onto which no failure moves anything: the "nothing failed" column binds (-1)
    alone = source_pools([500.0, 500.0], [100.0, 100.0], np.zeros((2, 2)))
    assert alone.worst_failure.tolist() == [-1, -1]
    # unknown load: its row is unknown
    unknown = source_pools([500.0, 500.0], [NAN, 100.0], np.zeros((2, 2)))
    assert np.isnan(unknown.left_after_failure_kw[0]) and unknown.left_after_failure_kw[1] == 400.0


def test_rack_upstream_holds_after_either_source_fails():
    moved = failover_moved_kw([100.0, 50.0, 30.0, 80.0], [0.4, 0.5, 1.0, 0.5],
                              [0, 1, 0, 2], [1, 2, -1, 2], 3)
    left = source_pools([500.0, 500.0, 500.0], [200.0, 350.0, 100.0], moved).left_by_failure_kw
    up = rack_upstream_headroom_kw(left, [0, 1, 0, 2], [1, 2, -1, 2], [0.4, 0.5, 1.0, 0.5])
    # rack 0 (sources 0 and 1): source 1 fails -> all its growth on 0: 240; source 0 fails ->
    # all on 1: 110; source 2 fails or none -> 40 % on 0: 300 / 0.4 = 750, 60 % on 1:
    # min(125, 150) / 0.6 = 208.3 -> 110
    assert up[0] == approx(110.0)
    # rack 1 (1 and 2): 2 fails -> 125 on 1; 1 fails -> 375 on 2; 0 fails -> half on 1:
    # 110 / 0.5 = 220 -> 125
    assert up[1] == approx(125.0)
    # rack 2 (A only, source 0): all of it on 0 whatever fails: min(240, 300, 300) = 240
    assert up[2] == approx(240.0)
    # rack 3 (both feeds on source 2): all on 2 under every failure: 375
    assert up[3] == approx(375.0)
    # an unknown share or pool: unknown
    assert np.isnan(rack_upstream_headroom_kw(left, [0], [1], [NAN])[0])


# ------------------------------------------------------------------------------- cooling


@pytest.mark.parametrize("fluid", ["water", "PG25"])
def test_the_coolant_table_is_coolprop(fluid):
    from models import coolant_table

    rho, cp = coolant_table.from_coolprop(fluid)  # CoolProp itself, now
    assert coolant_table.DENSITY_KG_M3[fluid] == approx(rho, rel=1e-12)
    assert coolant_table.CP_KJ_PER_KG_K[fluid] == approx(cp, rel=1e-12)


def test_coolant_properties_match_reference_table():
    # REFERENCE section 2 (CoolProp 8, 2 bar)
    assert fluid_density_kg_m3(30.0, "water") == approx(995.7, abs=0.1)
    assert fluid_cp_kj_per_kg_k(30.0, "water") == approx(4.180, abs=0.001)
    assert fluid_density_kg_m3(30.0, "PG25") == approx(1014.9, abs=0.1)
    assert fluid_cp_kj_per_kg_k(30.0, "PG25") == approx(3.945, abs=0.001)
    assert fluid_density_kg_m3(45.0, "PG25") == approx(1007.2, abs=0.1)
    assert fluid_cp_kj_per_kg_k(45.0, "PG25") == approx(3.981, abs=0.001)
    # between table points (30.5 C) the value lies between its neighbours
    rho = fluid_density_kg_m3([30.0, 30.5, 31.0], "water")
    assert rho[0] > rho[1] > rho[2]


def test_pg25_needs_more_flow_per_kw_than_water_at_10_k():
    # water 30 C: 60 / (0.99569 kg/L x 4.1796 x 10 K) = 1.4418 L/min per kW -> 1.44
    # PG25 30 C: 60 / (1.01490 kg/L x 3.9446 x 10 K) = 1.4987 L/min per kW -> 1.50
    water = flow_lpm_per_kw(30.0, 10.0, "water")
    pg25 = flow_lpm_per_kw(30.0, 10.0, "PG25")
    assert round(water, 2) == 1.44 and round(pg25, 2) == 1.50
    assert water == approx(1.4418, abs=2e-4) and pg25 == approx(1.4987, abs=2e-4)
    # per-element fluids give the same figures
    mixed = flow_lpm_per_kw([30.0, 30.0], 10.0, np.array(["water", "PG25"]))
    assert mixed == approx([water, pg25])


def test_liquid_capacity_from_flow():
    # 150 L/min PG25 at 45 C, 10 K: 2.5 L/s x 1.00721 kg/L = 2.5180 kg/s;
    #   x 3.9806 kJ/(kg K) x 10 K = 100.23 kW (REFERENCE: a 100 kW rack ~ 150 L/min)
    assert liquid_capacity_kw(150.0, 45.0, 10.0, "PG25") == approx(100.23, abs=0.01)
    # dT from a return limit: 55 C - 45 C = 10 K; a supply above the limit allows 0 K
    assert allowed_delta_t_k([45.0, 57.0], 55.0) == approx([10.0, 0.0])
    out = liquid_capacity_kw([NAN, 150.0, 150.0], [45.0, NAN, 120.0], 10.0, "PG25")
    assert np.isnan(out).all()  # unknown flow, unknown temperature, outside the table
    with pytest.raises(ValueError, match="PG25"):
        liquid_capacity_kw(150.0, 45.0, 10.0, "R134a")


def test_heat_split_between_liquid_and_air():
    # 100 kW at capture 0.85: 85 kW to liquid, 15 kW to air
    assert heat_to_liquid_kw(100.0, 0.85) == approx(85.0)
    assert air_residual_kw(100.0, 0.85) == approx(15.0)
    # 85 kW liquid left at capture 0.85: 85 / 0.85 = 100 kW rack; 15 kW air left / 0.15 = 100
    assert liquid_headroom_kw(85.0, 0.85) == approx(100.0)
    assert air_headroom_kw(15.0, 0.85) == approx(100.0)
    assert liquid_headroom_kw(85.0, 0.0) == INF  # its heat never reaches the liquid
    assert air_headroom_kw(15.0, 1.0) == INF
    assert np.isnan(liquid_headroom_kw(NAN, 0.85))


def test_loop_capacity_loses_the_largest_cdu_under_n_plus_1():
    cap = loop_capacity_kw(
        [400.0, 400.0, 400.0, 600.0, 300.0, 500.0, 500.0, 250.0],
        [0, 0, 0, 1, 1, 2, 2, 3],
        4,
        [1, 1, 0, 1],
    )
    # loop 0 N+1: 3 x 400 - 400 = 800; loop 1 N+1: 600 + 300 - 600 = 300;
    # loop 2 N: 500 + 500 = 1 000; loop 3 N+1 with one CDU: 0
    assert cap == approx([800.0, 300.0, 1000.0, 0.0])


def test_cdu_capacity_is_rated_never_the_flow_it_runs_now():
    # 600 kW nameplate; 900 L/min max of PG25 at 35 C over 10 K carries
    # 900 / 60 000 m3/s x (1011.2 kg/m3 x 3.9603 kJ/(kg K)) x 10 K = 600.7 kW: the nameplate binds
    rated = cdu_capacity_kw([600.0] * 6, [900.0, 600.0, NAN, 900.0, 900.0, 900.0], 35.0, 10.0,
                            "PG25", [2.0, 2.0, 2.0, 1.0, 0.0, 2.0], [1.0, 1.0, 1.0, 2.0, 1.0, 1.0],
                            [0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    assert rated[0] == 600.0
    # a 600 L/min maximum caps it at 600 / 900 x 600.7 = 400.5 kW; no max flow: the nameplate
    assert rated[1] == approx(400.5, abs=0.2) and rated[2] == 600.0
    # one of the two pumps its full flow needs: half; no pump: 0; a leak isolates it: 0
    assert rated[3] == 300.0 and rated[4] == 0.0 and rated[5] == 0.0
    unknown = cdu_capacity_kw(600.0, NAN, 35.0, 10.0, "PG25", NAN, 1.0, 0.0)
    assert np.isnan(unknown)


def test_largest_cdu_of_each_loop():
    # loop 0: CDUs 0 (400), 1 (600); loop 1: CDU 2 (300); loop 2: none
    assert largest_cdu([400.0, 600.0, 300.0], [0, 0, 1], 3).tolist() == [1, 2, -1]


def test_loop_heat_and_rack_share():
    # loop 0: 85 + 90 = 175 kW; loop 1: 40 + NaN -> unknown; rack 4 has no loop
    heat = loop_heat_kw([85.0, 90.0, 40.0, NAN, 10.0], [0, 0, 1, 1, -1], 2)
    assert heat[0] == approx(175.0) and np.isnan(heat[1])
    # pool 90 heat kW at capture 0.9 -> 100 kW rack; no loop -> +inf
    assert rack_loop_headroom_kw([90.0], [0, -1], 0.9) == approx([100.0, INF])


def test_ashrae_supply_class():
    w32 = ASHRAE_SUPPLY_LIMIT_C["W32"]
    assert w32 == 32.0 and ASHRAE_SUPPLY_LIMIT_C["W45"] == 45.0
    ok = supply_within_class([31.0, 32.0, 33.0, NAN, 1.5], w32)
    # within up to 32 C; above is out; unknown is not shown within; below 2 C is out
    assert ok.tolist() == [True, True, False, False, False]
    assert supply_within_class(60.0, ASHRAE_SUPPLY_LIMIT_C["W+"])


# ------------------------------------------------------------------------------- headroom


def _site_headroom():
    """Six racks, three sources, four loops; each rack shows one case (see the tests)."""
    cap_a = feed_capacity_kw(60.0, 415.0, 3, 0.95, 0.8)  # 32.777 kW
    cap_b = feed_capacity_kw(48.0, 415.0, 3, 0.95, 0.8)  # 26.222 kW
    rack_liquid = liquid_capacity_kw(150.0, 45.0, 10.0, "PG25")  # 100.23 kW
    return rack_headroom(
        power_kw=[20.0, 100.0, 50.0, NAN, NAN, 80.0],
        power_kw_peak=[20.0, 110.0, 50.0, NAN, NAN, 80.0],
        design_kw=[80.0, 250.0, 150.0, 100.0, 100.0, 200.0],
        feed_capacity_kw=[ab_feed_capacity_kw(cap_a, cap_b), 300.0, 300.0, 300.0, 300.0, 300.0],
        phase_headroom_kw=[INF, INF, INF, NAN, NAN, INF],
        capture_ratio=[0.8, 0.9, 0.85, 0.8, 0.8, 0.9],
        air_allowance_kw=[INF, 30.0, INF, INF, INF, INF],
        rack_liquid_capacity_kw=[INF, INF, INF, INF, INF, rack_liquid],
        feed_a_source=[0, 0, 0, 0, 2, 1],
        feed_b_source=[1, 1, 1, -1, -1, -1],
        feed_a_share=[0.5, 0.5, 0.5, 1.0, 1.0, 1.0],
        source_capacity_kw=[1000.0, 1000.0, 1000.0],
        source_load_kw=[700.0, 600.0, NAN],
        rack_loop=[2, 0, 1, 2, 3, 2],
        loop_capacity_kw=loop_capacity_kw(
            [400.0, 400.0, 400.0, 2000.0, 2000.0, 2000.0], [0, 0, 0, 1, 2, 3], 4, [1, 0, 0, 0]
        ),  # [800, 2000, 2000, 2000]
        loop_heat_kw=[700.0, 500.0, 500.0, NAN],
        loop_supply_temp_c=[30.0, 33.0, 40.0, NAN],
        loop_supply_limit_c=[32.0, 32.0, 45.0, 32.0],
    )


def test_rack_limited_by_its_weaker_feed():
    h = _site_headroom()
    # feed B 26.222 kW is the weaker: 26.222 - 20 kW = 6.222 kW (design: 80 - 20 = 60)
    assert h.limit_kw("feed")[0] == approx(6.2219, abs=1e-4)
    assert h.limit_kw("design")[0] == approx(60.0)
    assert h.headroom_kw[0] == approx(6.2219, abs=1e-4)
    assert h.limiting[0] == "feed"
    assert h.complete[0]


def test_rack_limited_by_cdu_loop_after_n_plus_1_loss():
    h = _site_headroom()
    # loop 0: 3 x 400 kW N+1 -> 800 kW; 800 - 700 kW heat = 100 kW pool; / 0.9 = 111.11 kW
    # (without the N+1 loss: (1 200 - 700) / 0.9 = 555.6 kW would be promised)
    assert h.loop_pool_kw[0] == approx(100.0)
    assert h.limit_kw("loop")[1] == approx(111.111, abs=1e-3)
    # load is the 110 kW peak, not the 100 kW now: design 250 - 110 = 140
    assert h.limit_kw("design")[1] == approx(140.0)
    # air: 30 kW - 0.1 x 110 = 19 kW left / 0.1 = 190 kW
    assert h.limit_kw("air")[1] == approx(190.0)
    # upstream: racks 0-2 put half of 20 + 110 + 50 = 180 kW on each of sources 0 and 1;
    # source 1 lost -> source 0 carries 700 + 90: 210 left; source 0 lost -> 1000 - 600 - 90
    # = 310 on source 1: a rack of them may grow by 210 kW, whichever fails
    assert h.limit_kw("upstream")[1] == approx(210.0)
    assert h.sources.left_after_failure_kw[:2] == approx([210.0, 310.0])
    assert h.limiting[1] == "loop"
    assert h.headroom_kw[1] == approx(111.111, abs=1e-3)


def test_rack_limited_by_w32_supply_class():
    h = _site_headroom()
    # loop 1 supplies 33 C > W32 (32 C): headroom 0 although design leaves 100 kW
    assert h.limit_kw("supply_class")[2] == 0.0
    assert h.limit_kw("design")[2] == approx(100.0)
    assert h.headroom_kw[2] == 0.0
    assert h.limiting[2] == "supply_class"
    # racks on loops within their class are not limited by it
    assert h.limit_kw("supply_class")[0] == INF


def test_rack_limited_by_its_own_coolant_flow():
    h = _site_headroom()
    # 100.23 kW flow capacity - 0.9 x 80 kW = 28.23 kW left / 0.9 = 31.37 kW rack
    assert h.limit_kw("liquid_rack")[5] == approx(31.37, abs=0.01)
    assert h.limiting[5] == "liquid_rack"


def test_a_metered_manifold_heat_replaces_the_capture_estimate():
    common = {"power_kw": [80.0], "design_kw": [200.0], "feed_capacity_kw": [300.0],
                  "phase_headroom_kw": [INF], "capture_ratio": [0.9], "air_allowance_kw": [INF],
                  "rack_liquid_capacity_kw": [100.0], "feed_a_source": [-1], "feed_b_source": [-1],
                  "feed_a_share": [1.0], "source_capacity_kw": [], "source_load_kw": [], "rack_loop": [-1],
                  "loop_capacity_kw": [], "loop_heat_kw": [], "loop_supply_temp_c": [],
                  "loop_supply_limit_c": []}  # fmt: skip
    # metered 81 kW in the manifold (more than 0.9 x 80 = 72): (100 - 81) / 0.9 = 21.11
    h = rack_headroom(**common, rack_liquid_heat_kw=[81.0])
    assert h.limit_kw("liquid_rack")[0] == approx(21.111, abs=1e-3)
    # a meter that did not answer: unknown, not the estimate
    h = rack_headroom(**common, rack_liquid_heat_kw=[NAN])
    assert np.isnan(h.limit_kw("liquid_rack")[0]) and not h.complete[0]


def test_nan_inputs_make_their_limits_unknown_and_the_design_still_bounds():
    h = _site_headroom()
    # rack 3: power unknown -> design, feed, phase unknown; known: upstream 210 (A only, on
    # source 0), loop 2: (2 000 - 500) / 0.8 = 1 875. The design rating still bounds a rack
    # of unknown load: at most 100 kW, never the 210 kW of the upstream pool
    unknown = dict(zip(LIMITS, h.unknown[3]))
    assert unknown["design"] and unknown["feed"] and unknown["phase"]
    assert not unknown["upstream"] and not unknown["loop"]
    assert h.limit_kw("upstream")[3] == approx(210.0)
    assert (h.headroom_kw[3], h.limiting[3]) == (100.0, "design")
    assert not h.complete[3]  # 100 kW is an upper bound
    # rack 4: source load, loop heat and supply unknown too: only the design bound is left
    assert (h.headroom_kw[4], h.limiting[4]) == (100.0, "design") and not h.complete[4]
    # pools: source 2 unknown, loop 3 unknown
    assert h.sources.left_after_failure_kw == approx([210.0, 310.0, NAN], nan_ok=True)
    assert np.isnan(h.loop_pool_kw[3])


def test_headroom_is_negative_when_a_rack_is_over():
    h = rack_headroom(
        power_kw=[130.0],
        design_kw=[120.0],
        feed_capacity_kw=[200.0],
        phase_headroom_kw=[INF],
        capture_ratio=[1.0],
        air_allowance_kw=[INF],
        rack_liquid_capacity_kw=[INF],
        feed_a_source=[-1],
        feed_b_source=[-1],
        feed_a_share=[1.0],
        source_capacity_kw=[],
        source_load_kw=[],
        rack_loop=[-1],
        loop_capacity_kw=[],
        loop_heat_kw=[],
        loop_supply_temp_c=[],
        loop_supply_limit_c=[],
    )
    # 120 - 130 = -10 kW; no source, no loop: those limits do not apply (+inf)
    assert h.headroom_kw[0] == approx(-10.0) and h.limiting[0] == "design"
    assert h.limit_kw("upstream")[0] == INF and h.limit_kw("supply_class")[0] == INF


def test_binding_limit_ties_and_open_rows():
    best, name = binding_limit([[5.0, 5.0], [INF, INF], [NAN, INF], [NAN, 3.0]], ("a", "b"))
    assert best[0] == 5.0 and name[0] == "a"  # ties go to the first
    assert best[1] == INF and name[1] == "none"
    assert np.isnan(best[2]) and name[2] == "unknown"
    assert best[3] == 3.0 and name[3] == "b"


# ------------------------------------------------------------------------------- what-if


def _six_racks(**overrides):
    row = {
        "feed_capacity_kw": 130.0,
        "source_pool_kw": 400.0,
        "loop_pool_kw": 500.0,
        "loop_supply_temp_c": 30.0,
        "loop_supply_limit_c": 32.0,
        "air_allowance_kw": 15.0,
    }
    return place_racks(6, 120.0, 0.9, **(row | overrides))


def test_whatif_fits_3_of_6_racks():
    p = _six_racks()
    # upstream: floor(400 / 120) = 3; loop: floor(500 / (0.9 x 120 = 108)) = 4;
    # feed 120 <= 130 and air 0.1 x 120 = 12 <= 15: no limit
    assert p.racks_fit_by_limit.tolist() == [INF, INF, 3.0, 4.0, INF]
    assert p.racks_fit == 3 and p.first_to_break == "upstream"
    assert not p.feasible and p.complete
    # pools after 3 racks: 400 - 360 = 40 kW; 500 - 3 x 108 = 176 heat kW
    assert p.source_pool_left_kw == approx(40.0)
    assert p.loop_pool_left_kw == approx(176.0)


def test_whatif_feasible_and_what_breaks_first_anyway():
    p = _six_racks(source_pool_kw=1000.0)
    # upstream floor(1 000 / 120) = 8, loop 4: the loop breaks first at 4 of 6
    assert p.racks_fit == 4 and p.first_to_break == "loop"
    p = _six_racks(source_pool_kw=1000.0, loop_pool_kw=720.0)
    # loop floor(720 / 108) = 6 (6.67): all 6 fit; upstream at 8 and loop at 6 -> loop closest
    assert p.feasible and p.racks_fit == 6 and p.first_to_break == "loop"


def test_whatif_feed_and_air_not_given_are_not_checked():
    p = _six_racks(feed_capacity_kw=None, air_allowance_kw=None)
    # never "all fit": they were not asked about, and the answer does not depend on them
    assert p.not_checked == ("feed", "air")
    assert p.racks_fit == 3 and p.first_to_break == "upstream" and p.complete
    assert _six_racks().not_checked == ()


def test_whatif_per_rack_limits_are_all_or_none():
    assert _six_racks(feed_capacity_kw=32.78).racks_fit == 0  # 120 kW > one 32.8 kW feed
    assert _six_racks(feed_capacity_kw=32.78).first_to_break == "feed"
    assert _six_racks(air_allowance_kw=10.0).first_to_break == "air"  # 12 kW residual > 10
    p = _six_racks(loop_supply_temp_c=33.0)  # W32 loop at 33 C
    assert p.racks_fit == 0 and p.first_to_break == "supply_class"


def test_whatif_exact_multiple_is_not_lost_to_rounding():
    # 0.3 / 0.1 = 2.9999999999999996 in floating point: still 3 racks
    p = place_racks(
        3,
        0.1,
        0.0,
        feed_capacity_kw=1.0,
        source_pool_kw=0.3,
        loop_pool_kw=0.0,
        loop_supply_temp_c=NAN,
        loop_supply_limit_c=INF,
    )
    assert p.racks_fit_by_limit[WHATIF_LIMITS.index("upstream")] == 3.0


def test_whatif_unknown_pool_is_not_feasible():
    p = _six_racks(source_pool_kw=1000.0, loop_pool_kw=NAN)
    # loop unknown: 6 fit the known limits (upstream 8) but that is only an upper bound
    assert p.racks_fit == 6 and not p.complete and not p.feasible
    assert np.isnan(p.loop_pool_left_kw)


def test_whatif_many_rows_at_once():
    p = place_racks(
        6,
        120.0,
        0.9,
        feed_capacity_kw=130.0,
        source_pool_kw=np.array([400.0, 1000.0, 1000.0]),
        loop_pool_kw=np.array([500.0, 720.0, 100.0]),
        loop_supply_temp_c=30.0,
        loop_supply_limit_c=32.0,
    )
    # rows: min(3, 4) = 3; min(8, 6) = 6; min(8, floor(100/108) = 0) = 0
    assert p.racks_fit.tolist() == [3.0, 6.0, 0.0]
    assert p.feasible.tolist() == [False, True, False]
    assert p.first_to_break.tolist() == ["upstream", "loop", "loop"]


def test_whatif_draws_from_headroom_pools():
    h = _site_headroom()
    # new racks fed from sources 0 and 1, half each: 210 kW of them hold after either fails
    # (rack_upstream_headroom_kw of a new rack); loop 0 (pool 100 heat kW): 120 kW racks at
    # 0.9 capture: upstream floor(210 / 120) = 1, loop floor(100 / 108) = 0 -> loop breaks
    pool = rack_upstream_headroom_kw(h.sources.left_by_failure_kw, [0], [1], [0.5])[0]
    assert pool == approx(210.0)
    p = place_racks(
        2,
        120.0,
        0.9,
        feed_capacity_kw=130.0,
        source_pool_kw=pool,
        loop_pool_kw=h.loop_pool_kw[0],
        loop_supply_temp_c=30.0,
        loop_supply_limit_c=32.0,
    )
    assert p.racks_fit == 0 and p.first_to_break == "loop"


# ------------------------------------------------------------------------------- backup


def test_supercap_reference_50_f_54_to_40_v():
    # 1/2 x 50 F x (54^2 - 40^2) = 25 x (2 916 - 1 600) = 25 x 1 316 = 32 900 J
    energy = supercap_usable_energy_j(50.0, 54.0, 40.0)
    assert energy == approx(32900.0)
    # 32 900 J / 100 000 W = 0.329 s (eta = 1)
    assert ride_through_s(energy, 100.0, 1.0) == approx(0.329)
    # through a 95 % converter: 0.95 x 32 900 / 100 000 = 0.31255 s
    assert ride_through_s(energy, 100.0, 0.95) == approx(0.31255)


def test_supercap_state_now():
    # at 47 V: 25 x (2 209 - 1 600) = 15 225 J; SoC (2 209 - 1 600) / 1 316 = 46.28 %
    assert supercap_usable_energy_j(50.0, 47.0, 40.0) == approx(15225.0)
    assert supercap_soc_pct(47.0, 54.0, 40.0) == approx(46.276, abs=1e-3)
    # below Vmin: nothing usable, SoC 0; above Vmax: 100 %
    assert supercap_usable_energy_j(50.0, 39.0, 40.0) == 0.0
    assert supercap_soc_pct([39.0, 55.0], 54.0, 40.0) == approx([0.0, 100.0])
    assert np.isnan(supercap_usable_energy_j(50.0, NAN, 40.0))
    assert np.isnan(supercap_usable_energy_j(NAN, 47.0, 40.0))
    assert np.isnan(supercap_usable_energy_j(50.0, 47.0, NAN))
    assert np.isnan(supercap_soc_pct(NAN, 54.0, 40.0))


def test_supercap_max_power_and_series_capacitance():
    # 54^2 / (4 x 0.010 ohm) = 2 916 / 0.04 = 72 900 W
    assert supercap_max_power_kw(54.0, 10.0) == approx(72.9)
    # 18 cells of 3 000 F in series: 3 000 / 18 = 166.67 F
    assert series_capacitance_f(3000.0, 18) == approx(166.6667, abs=1e-4)
    assert np.isnan(supercap_max_power_kw(54.0, NAN))


def test_ride_through_edge_cases():
    out = ride_through_s([32900.0, 32900.0, NAN], [0.0, NAN, 100.0], 1.0)
    assert out[0] == INF  # no load drains nothing
    assert np.isnan(out[1]) and np.isnan(out[2])


def test_backup_chain_against_nfpa_110_type_10():
    chain = backup_chain([0.329, 0.329, 0.329], [300.0, 6.0, NAN])
    # 0.329 + 300 s >= 10 s: bridges; 0.329 + 6 = 6.329 s: 10 - 6.329 = 3.671 s short;
    # unknown battery: shortfall unknown, not shown to bridge
    assert chain.required_s == approx([10.0, 10.0, 10.0])
    assert chain.shortfall_s[:2] == approx([0.0, 3.671])
    assert np.isnan(chain.shortfall_s[2])
    assert chain.bridges.tolist() == [True, False, False]
    # a start time that excludes the transfer: 10 s + 0.5 s transfer vs 10.329 s: 0.171 s short
    late = backup_chain(0.329, 10.0, transfer_s=0.5)
    assert late.shortfall_s == approx(0.171) and not late.bridges


def test_load_swings_against_supercap_smoothing():
    ts = [0.0, 0.1, 0.2, 0.3, 0.4]
    kw = [50.0, 50.0, 110.0, NAN, 60.0]
    # 50 -> 110 kW in 0.1 s = 600 kW/s (the NaN sample's intervals are skipped)
    assert power_ramp_kw_per_s(ts, kw) == approx(600.0)
    # swing 110 - 50 = 60 kW; 72.9 kW supercap power - 60 = 12.9 kW margin
    assert power_swing_kw(kw) == approx(60.0)
    assert smoothing_margin_kw(72.9, 60.0) == approx(12.9)
    assert np.isnan(power_ramp_kw_per_s([0.0, 1.0], [NAN, 5.0]))
    assert np.isnan(power_swing_kw([NAN, NAN]))
    # many racks at once
    both = power_swing_kw(np.array([[1.0, 4.0], [2.0, 2.0]]))
    assert both == approx([3.0, 0.0])


def test_unknown_fluid_in_a_per_rack_array_is_named():
    with pytest.raises(ValueError, match="'glycol'"):
        flow_lpm_per_kw([30.0, 30.0], 10.0, np.array(["water", "glycol"]))


def test_headroom_arrays_have_one_row_per_rack():
    h = _site_headroom()
    assert h.limits_kw.shape == (6, len(LIMITS))
    assert h.headroom_kw.shape == h.limiting.shape == h.complete.shape == (6,)
    assert h.unknown.shape == (6, len(LIMITS))
