"""What an emulated meter measures: a household load with rooftop PV, and the meter's counters.

Pure code: time is always passed in (UTC integer seconds), nothing here reads a clock or a port.
Power is constant within each ``step_s`` step (one minute by default), so the energy counters are
the exact integral of the power the meter reports: import and export in integer joules (W*s).
The same seed gives the same day, whatever order the steps are asked in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from meterchain.bridge.modbus.registers import RegisterMap

_MASK64 = (1 << 64) - 1
JOULES_PER_WH = 3600
JOULES_PER_KWH = 3_600_000


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _unit(seed: int, stream: int, index: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, stream, index): order-independent randomness."""
    return _splitmix64((seed * 1_000_003 + stream) * 0x100000001B3 + index) / 2**64


@dataclass(frozen=True)
class LoadProfile:
    """Net power over the day: base load, morning/evening peaks, appliances, PV, and optionally a
    heat pump and an EV charger (a meter of its own: set the household parts to 0).

    Local time is taken as UTC (solar time is close enough for a demo). Positive power is import.
    """

    seed: int = 1
    base_load_w: int = 250
    peak_load_w: int = 1800
    pv_peak_w: int = 4500
    step_s: int = 60
    heat_pump_w: int = 0  # compressor power; runs more in the cold hours of the night
    ev_charge_w: int = 0  # wallbox power; an evening session on about half the days

    def _load_w(self, step: int, hour: float) -> float:
        # Morning peak around 7:30, evening peak around 19:30: people at home, cooking.
        shape = math.exp(-((hour - 7.5) / 1.2) ** 2) + 1.3 * math.exp(-((hour - 19.5) / 2.0) ** 2)
        load = self.base_load_w + self.peak_load_w * shape * (0.5 + _unit(self.seed, 1, step))
        if self.peak_load_w > 0 and _unit(self.seed, 2, step) > 0.93:  # kettle, oven, washer
            load += 1500 + 1500 * _unit(self.seed, 3, step)
        return load + self._heat_pump_w(step, hour) + self._ev_w(step, hour)

    def _heat_pump_w(self, step: int, hour: float) -> float:
        if self.heat_pump_w <= 0:
            return 0.0
        block = step * self.step_s // 900  # the compressor runs whole quarter hours
        cold = 0.5 + 0.5 * math.cos(2 * math.pi * (hour - 4.0) / 24)  # coldest around 4:00
        if _unit(self.seed, 50, block) >= 0.2 + 0.5 * cold:
            return 0.0
        return self.heat_pump_w * (0.8 + 0.2 * _unit(self.seed, 51, block))

    def _ev_w(self, step: int, hour: float) -> float:
        if self.ev_charge_w <= 0:
            return 0.0
        day = step * self.step_s // 86_400
        if _unit(self.seed, 60, day) >= 0.5:
            return 0.0
        begin = 17.0 + 4.0 * _unit(self.seed, 61, day)
        return float(self.ev_charge_w) if begin <= hour < begin + 1.0 + 3.0 * _unit(
            self.seed, 62, day) else 0.0

    def _pv_w(self, step: int, hour: float) -> float:
        if not 6.0 < hour < 20.0 or self.pv_peak_w <= 0:
            return 0.0
        clouds = 0.35 + 0.65 * _unit(self.seed, 4, (step * self.step_s) // 900)  # per 15 min
        return self.pv_peak_w * math.pow(math.sin(math.pi * (hour - 6.0) / 14.0), 1.5) * clouds

    def phase_power_w(self, t: int, phases: int) -> tuple[int, ...]:
        """Net active power per phase (W) during the step that contains second ``t``."""
        step = t // self.step_s
        hour = (step * self.step_s % 86_400) / 3600
        load = self._load_w(step, hour)
        pv = self._pv_w(step, hour)
        if phases == 1:
            return (round(load - pv),)
        # Loads sit unevenly on the phases; a three-phase inverter feeds all three alike.
        weights = [0.5 + _unit(self.seed, 5 + i, step // 15) for i in range(phases)]
        total = sum(weights)
        return tuple(round(load * w / total - pv / phases) for w in weights)

    def power_w(self, t: int, phases: int) -> int:
        """Net active power of the meter (sum of phases) at second ``t``."""
        return sum(self.phase_power_w(t, phases))

    def energy_j(self, start: int, end: int, phases: int) -> tuple[int, int]:
        """Exact (import, export) energy in joules over [start, end): the integral of power_w."""
        imported = exported = 0
        t = start
        while t < end:
            step_end = min(end, (t // self.step_s + 1) * self.step_s)
            power = self.power_w(t, phases)
            if power >= 0:
                imported += power * (step_end - t)
            else:
                exported += -power * (step_end - t)
            t = step_end
        return imported, exported


@dataclass
class MeterFaults:
    """Faults a test can switch on: a silent meter, or answers with a corrupted CRC."""

    silent: bool = False
    bad_crc: bool = False


@dataclass
class MeterState:
    """One meter's counters and live values; advances only forward in time."""

    register_map: RegisterMap
    device_id: int
    baudrate: int
    serial_number: int
    profile: LoadProfile
    started_at: int
    import_j: int = 0
    export_j: int = 0
    faults: MeterFaults = field(default_factory=MeterFaults)

    def __post_init__(self) -> None:
        self._last = self.started_at

    @property
    def phases(self) -> int:
        return len(self.register_map.phases)

    def advance(self, now: int) -> None:
        """Integrate power up to ``now``; a clock that goes back leaves the counters alone."""
        if now > self._last:
            imported, exported = self.profile.energy_j(self._last, now, self.phases)
            self.import_j += imported
            self.export_j += exported
            self._last = now

    def values(self, now: int) -> dict[str, float | int]:
        """Every value the meter shows at ``now``, named as in the register maps."""
        self.advance(now)
        names = self.register_map.phases
        powers = self.profile.phase_power_w(now, self.phases)
        step = now // self.profile.step_s
        seed = self.profile.seed
        values: dict[str, float | int] = {}
        volts = []
        for i, (phase, power) in enumerate(zip(names, powers, strict=True)):
            voltage = 230.0 + 4.0 * (_unit(seed, 20 + i, step) - 0.5)
            power_factor = 0.92 + 0.07 * _unit(seed, 30 + i, step)
            apparent = abs(power) / power_factor
            reactive = math.sqrt(max(apparent**2 - power**2, 0.0))
            values[f"voltage_{phase}"] = voltage
            values[f"current_{phase}"] = apparent / voltage
            values[f"power_{phase}"] = float(power)
            values[f"apparent_power_{phase}"] = apparent
            values[f"reactive_power_{phase}"] = reactive
            values[f"power_factor_{phase}"] = math.copysign(power_factor, power)
            values[f"phase_angle_{phase}"] = math.degrees(math.acos(power_factor))
            volts.append(voltage)
        values["power_total"] = float(sum(powers))
        values["apparent_power_total"] = sum(values[f"apparent_power_{p}"] for p in names)
        values["average_voltage"] = sum(volts) / len(volts)
        currents = [values[f"current_{p}"] for p in names]
        values["sum_current"] = sum(currents)
        values["average_current"] = sum(currents) / len(currents)
        if self.phases == 3:
            line = [v * math.sqrt(3) for v in volts]
            values.update(voltage_l1_l2=line[0], voltage_l2_l3=line[1], voltage_l3_l1=line[2])
            values["average_line_voltage"] = sum(line) / 3
        values["frequency"] = 50.0 + 0.1 * (_unit(seed, 40, step) - 0.5)
        values["import_energy"] = self.import_j / JOULES_PER_KWH
        values["export_energy"] = self.export_j / JOULES_PER_KWH
        values["total_energy"] = (self.import_j + self.export_j) / JOULES_PER_KWH
        values["serial_number"] = self.serial_number
        values["modbus_address"] = float(self.device_id)
        values["baud_code"] = float(self.register_map.baud_codes.get(self.baudrate, 0))
        values["network_parity_stop"] = 0.0  # 8N1
        return values
