"""The emulated loads: a heat pump and an EV charger beside the household, energy = ∫ power."""

from __future__ import annotations

from meterchain.bridge.modbus import LoadProfile
from meterchain.bridge.modbus.simulation import JOULES_PER_WH

DAY = 86_400
T0 = 1_767_225_600  # 2026-01-01 00:00 UTC


def _mean_power(profile: LoadProfile, start: int, end: int) -> float:
    imported, exported = profile.energy_j(start, end, 3)
    return (imported - exported) / (end - start)


def test_a_heat_pump_runs_more_in_the_cold_night_than_in_the_afternoon() -> None:
    hp = LoadProfile(seed=33, base_load_w=30, peak_load_w=0, pv_peak_w=0, heat_pump_w=2400)
    nights = sum(_mean_power(hp, T0 + d * DAY + 2 * 3600, T0 + d * DAY + 6 * 3600)
                 for d in range(14))
    afternoons = sum(_mean_power(hp, T0 + d * DAY + 14 * 3600, T0 + d * DAY + 18 * 3600)
                     for d in range(14))
    assert nights > 1.5 * afternoons > 0
    assert max(hp.power_w(t, 3) for t in range(T0, T0 + DAY, 60)) <= 2400 + 30 + 3


def test_an_ev_charger_charges_on_some_evenings_at_its_power_and_is_idle_otherwise() -> None:
    ev = LoadProfile(seed=44, base_load_w=5, peak_load_w=0, pv_peak_w=0, ev_charge_w=11_000)
    daily_kwh = [ev.energy_j(T0 + d * DAY, T0 + (d + 1) * DAY, 3)[0] / 3_600_000 for d in range(28)]
    charging_days = [kwh for kwh in daily_kwh if kwh > 5]
    assert 5 <= len(charging_days) <= 23  # about half the days
    assert all(kwh < 1 for kwh in daily_kwh if kwh <= 5)  # standby only
    mornings = [ev.power_w(T0 + d * DAY + 9 * 3600, 3) for d in range(28)]
    assert max(mornings) < 20  # sessions are in the evening


def test_a_household_without_appliances_has_no_kettle_spikes() -> None:
    quiet = LoadProfile(seed=7, base_load_w=30, peak_load_w=0, pv_peak_w=0)
    assert {quiet.power_w(t, 3) for t in range(T0, T0 + DAY, 60)} <= {29, 30, 31}


def test_energy_of_an_interval_matches_the_power_the_meter_reports() -> None:
    """15 minutes at the reported power: the meter's energy is the integral, to the watt-hour."""
    profile = LoadProfile(seed=3, pv_peak_w=6000, heat_pump_w=2000, ev_charge_w=7000)
    for start in range(T0, T0 + DAY, 900):
        imported, exported = profile.energy_j(start, start + 900, 3)
        integral = sum(profile.power_w(t, 3) * 60 for t in range(start, start + 900, 60))
        assert imported - exported == integral
        assert abs(integral) / JOULES_PER_WH <= 25_000 * 900 / 3600
