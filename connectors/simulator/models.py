"""Physical models of the plant's assets: what each signal does and why.

Every model is a *pure function of time* for a given seed: ``evaluate(t_s)``
returns the noise-free process values for any array of seconds since the start
of the simulation, in any order and in chunks of any size. Nothing is integrated
sample by sample; the parts that have memory are computed in closed form or on a
fixed absolute time grid:

* **Setpoint changes** (operator or control-system steps of speed or demand,
  every 5-20 min by default, drawn from a seeded stream) pass through a
  first-order lag (the drive's ramp, tens of seconds at most), computed exactly
  as a sum of step responses.
* **The daily load cycle** multiplies the operating level:
  ``level = setpoint * (1 + A * -cos(2 pi t / P))`` (lowest at t = 0, "midnight",
  highest at P/2). Ambient temperature follows the same cycle two hours later.
* **Temperatures** are first-order thermal lags (one thermal mass, one thermal
  resistance to ambient) toward a load-dependent equilibrium. They are computed
  on an absolute grid (1 s by default) in blocks of 128 grid points with the
  exact first-order-hold discretisation, and interpolated to the requested
  times; each block starts from the state stored at its start, so any call
  pattern gives the same result. Time constants are minutes here (real machines
  take tens of minutes) so that demos show them; override with params.

Faults enter a model as *fault inputs*: for each process fault kind an array of
the current severity (0 = healthy) over time, built by :mod:`faults`. The model
turns them into physics: a seal leak is an orifice parallel to the system curve,
cavitation lowers suction pressure and breaks down head, bearing wear adds an
impulsive vibration component and friction heat, and so on.

Vibration is described by two statistics of the (unseen) acceleration signal a
vibration transmitter would report: its RMS velocity and its kurtosis. The
machine's healthy vibration is broadband and Gaussian (kurtosis 3). Fault
components are independent and add: variances add, and the fourth moment of a
sum of independent zero-mean parts is ``sum k_i s_i^4 + 6 sum_{i<j} s_i^2 s_j^2``.
Impulsive components (bearing defects, cavitation bubble collapse) have a high
kurtosis and raise it; periodic ones (imbalance at 1x, misalignment at 2x
running speed, kurtosis 1.5 like a sine) *lower* it below 3.

Each model's catalogue (tag -> unit, normal range, noise) is derived from its
parameters: the steady state is evaluated over the whole operating envelope
(setpoint range x load cycle x ambient swing x control transients), widened by
the clipped measurement noise (4 sd) and a small margin, and rounded outward.
Dynamics never leave that envelope: a first-order lag stays between the extremes
of its input.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping

import numpy as np

G = 9.81  # m/s2
SQRT3 = math.sqrt(3.0)
DAY_S = 86_400.0

#: kurtosis of a sine wave (periodic vibration: imbalance, misalignment).
KURTOSIS_SINE = 1.5
#: kurtosis of the impacts of a rolling-element defect (impulses every ball pass).
KURTOSIS_BEARING_DEFECT = 25.0
#: kurtosis of cavitation bubble-collapse noise.
KURTOSIS_CAVITATION = 15.0

FaultInputs = Mapping[str, "np.ndarray | float"]
FaultInputFn = Callable[[np.ndarray], FaultInputs]


@dataclass(frozen=True)
class SignalSpec:
    """One signal of an asset: unit, the range it stays in during normal
    operation (load cycle and setpoint changes included), the standard deviation
    of its measurement noise (clipped at 4 sd) and what it is."""

    unit: str
    normal_range: tuple[float, float]
    noise_sd: float
    description: str


@dataclass(frozen=True)
class FaultSignature:
    """Which signals a fault kind changes on one asset type.

    ``primary`` leave their normal range at severity 1 (or, for kurtosis, leave
    it clearly); ``secondary`` change measurably (more than the measurement
    noise) but may stay in range. Together they are the attribution ground truth.
    """

    primary: tuple[str, ...]
    secondary: tuple[str, ...] = ()
    physics: str = ""

    @property
    def tags(self) -> tuple[str, ...]:
        return self.primary + self.secondary


def vibration(base_rms, components) -> tuple[np.ndarray, np.ndarray]:
    """RMS and kurtosis of a Gaussian base vibration plus independent components.

    ``components``: iterable of (rms, kurtosis). Variances add; the fourth moment
    of a sum of independent zero-mean parts adds as ``k_a s_a^4 + 6 s_a^2 s_b^2 + k_b s_b^4``.
    """
    var = np.asarray(base_rms, dtype=float) ** 2
    m4 = 3.0 * var**2
    for rms, kurt in components:
        v = np.asarray(rms, dtype=float) ** 2
        m4 = m4 + 6.0 * var * v + kurt * v**2
        var = var + v
    return np.sqrt(var), m4 / var**2


def motor_current(shaft_power_w, motor_efficiency, voltage, no_load_current):
    """Stator current of an induction motor: the magnetising (reactive) current
    in quadrature with the active current that carries the electrical power."""
    active = shaft_power_w / motor_efficiency / (SQRT3 * voltage)
    return np.sqrt(no_load_current**2 + active**2), active


class SetpointSchedule:
    """Setpoint steps and the first-order response that follows them.

    Random steps: intervals uniform in ``interval_s``, values uniform in
    ``value_range`` (quantised to 0.005, at least ``min_step`` from the last one),
    drawn in fixed batches from a seeded generator, so the schedule does not
    depend on how far ahead it was asked for. ``explicit``: [(t_s, value), ...]
    instead (an entry at t <= 0 sets the initial value). ``interval_s=None`` or a
    range of zero width: a constant setpoint.
    """

    _BATCH = 64

    def __init__(self, value_range, interval_s, seed_seq, explicit=None, min_step: float = 0.02, quantum: float = 0.005):
        lo, hi = float(value_range[0]), float(value_range[1])
        if not lo <= hi:
            raise ValueError(f"setpoint_range must be [low, high] with low <= high, got {list(value_range)}")
        self._rng = np.random.default_rng(seed_seq)
        self._min_step, self._quantum = min_step, quantum
        self._complete = True
        if explicit is not None:
            points = sorted((float(t), float(v)) for t, v in explicit)
            if not points:
                raise ValueError("setpoints must hold at least one [t_s, value] pair")
            initial = points[0][1] if points[0][0] <= 0 else hi
            later = [(t, v) for t, v in points if t > 0]
            times, values = [0.0] + [t for t, _ in later], [initial] + [v for _, v in later]
            self.bounds = (min(values), max(values))
        elif interval_s is None or lo == hi:
            times, values = [0.0], [hi]
            self.bounds = (hi, hi)
        else:
            i_lo, i_hi = float(interval_s[0]), float(interval_s[1])
            if not 0 < i_lo <= i_hi:
                raise ValueError(f"setpoint_interval_s must be [min, max] seconds with 0 < min <= max, got {list(interval_s)}")
            self._interval = (i_lo, i_hi)
            self._range = (lo, hi)
            times, values = [0.0], [self._quantise(self._rng.uniform(lo, hi))]
            self._complete = False
            self.bounds = (lo, hi)
        self.times = np.array(times)
        self.values = np.array(values)
        self._responses: dict[float, np.ndarray] = {}

    def _quantise(self, v: float) -> float:
        lo, hi = self._range
        return float(min(max(round(v / self._quantum) * self._quantum, lo), hi))

    def _extend(self, until_s: float) -> None:
        while not self._complete and self.times[-1] <= until_s:
            gaps = self._rng.uniform(*self._interval, self._BATCH)
            raw = self._rng.uniform(*self._range, self._BATCH)
            values, prev = [], float(self.values[-1])
            lo, hi = self._range
            for r in raw:  # a batch of 64 steps: a few times per simulated day
                v = self._quantise(r)
                if abs(v - prev) < self._min_step:
                    v = prev + self._min_step if prev + self._min_step <= hi else prev - self._min_step
                    v = min(max(v, lo), hi)
                values.append(v)
                prev = v
            self.times = np.concatenate([self.times, self.times[-1] + np.cumsum(gaps)])
            self.values = np.concatenate([self.values, values])

    def step_value(self, t_s: np.ndarray) -> np.ndarray:
        """The commanded setpoint (no lag)."""
        t = np.asarray(t_s, dtype=float)
        if t.size:
            self._extend(float(t.max()))
        return self.values[np.searchsorted(self.times, t, side="right") - 1]

    def response(self, t_s: np.ndarray, tau_s: float) -> np.ndarray:
        """The first-order response y' = (setpoint - y) / tau, in steady state at t = 0.

        Between steps k and k+1: ``y = s_k + (y_k - s_k) exp(-(t - t_k) / tau)``,
        with ``y_k`` the response at step k (a short recursion over the steps).
        """
        t = np.asarray(t_s, dtype=float)
        if t.size:
            self._extend(float(t.max()))
        r = self._responses.get(tau_s)
        if r is None or len(r) < len(self.times):
            start = 1 if r is None else len(r)
            r = list(r) if r is not None else [float(self.values[0])]
            for k in range(start, len(self.times)):
                decay = math.exp(-(self.times[k] - self.times[k - 1]) / tau_s)
                r.append(float(self.values[k - 1] + (r[k - 1] - self.values[k - 1]) * decay))
            r = np.array(r)
            self._responses[tau_s] = r
        idx = np.searchsorted(self.times, t, side="right") - 1
        idx = np.maximum(idx, 0)
        s = self.values[idx]
        return s + (r[idx] - s) * np.exp(-(t - self.times[idx]) / tau_s)


class ThermalLags:
    """First-order lags y' = (u - y) / tau of several thermal nodes, on an
    absolute time grid of step ``h`` in blocks of 128 points.

    Exact for an input that is linear between grid points (first-order hold):
    ``y[k] = a y[k-1] + b0 u[k] + b1 u[k-1]`` with ``a = exp(-h/tau)``. Within a
    block the recurrence is solved in closed form with a cumulative sum. The
    state at each block start is kept (a few floats per block), the outputs of
    recent blocks are cached, and values between grid points are interpolated
    linearly; the result depends only on time, never on the call pattern.
    """

    BLOCK = 128
    CACHE_BLOCKS = 64

    def __init__(self, taus_s: list[float], h_s: float, equilibrium: Callable[[np.ndarray], np.ndarray]):
        tau = np.asarray(taus_s, dtype=float)[:, None]
        if np.any(tau < 5 * h_s):
            raise ValueError(f"thermal time constants must be at least 5 grid steps ({5 * h_s} s), got {taus_s}")
        self.h = float(h_s)
        self.equilibrium = equilibrium  # t_grid (n,) -> (nodes, n)
        a = np.exp(-self.h / tau)
        self._a = a
        self._b0 = 1.0 - tau / self.h * (1.0 - a)
        self._b1 = tau / self.h * (1.0 - a) - a
        k = np.arange(self.BLOCK)
        self._a_k = a**k  # a^k
        self._a_k1 = a ** (k + 1)
        self._a_inv = a ** (-k)
        self._starts: list[tuple[np.ndarray, np.ndarray]] = []  # (y, u) just before block b
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def _solve(self, b: int, u: np.ndarray) -> np.ndarray:
        y_prev, u_prev = self._starts[b]
        u_shift = np.concatenate([u_prev[:, None], u[:, :-1]], axis=1)
        v = self._b0 * u + self._b1 * u_shift
        y = self._a_k1 * y_prev[:, None] + self._a_k * np.cumsum(v * self._a_inv, axis=1)
        if len(self._starts) == b + 1:
            self._starts.append((y[:, -1].copy(), u[:, -1].copy()))
        return y

    def _block(self, b: int) -> np.ndarray:
        y = self._cache.get(b)
        if y is not None:
            self._cache.move_to_end(b)
            return y
        if not self._starts:
            u0 = self.equilibrium(np.zeros(1))[:, 0]
            self._starts.append((u0.copy(), u0.copy()))  # warm machine: in equilibrium at t = 0
        # Advance the stored block-start states up to b, many blocks per equilibrium call.
        while len(self._starts) <= b:
            first = len(self._starts) - 1
            count = min(b - first, 64)
            t = (first * self.BLOCK + np.arange(count * self.BLOCK)) * self.h
            u_all = self.equilibrium(t)
            for i in range(count):
                self._solve(first + i, u_all[:, i * self.BLOCK : (i + 1) * self.BLOCK])
        t = (b * self.BLOCK + np.arange(self.BLOCK)) * self.h
        y = self._solve(b, self.equilibrium(t))
        self._cache[b] = y
        while len(self._cache) > self.CACHE_BLOCKS:
            self._cache.popitem(last=False)
        return y

    def at(self, t_s: np.ndarray) -> np.ndarray:
        """Node temperatures at times t_s (>= 0), shape (nodes, n)."""
        g = np.asarray(t_s, dtype=float) / self.h
        g0 = np.floor(g).astype(np.int64)
        frac = g - g0
        lo_b, hi_b = int(g0.min()) // self.BLOCK, (int(g0.max()) + 1) // self.BLOCK
        blocks = np.concatenate([self._block(b) for b in range(lo_b, hi_b + 1)], axis=1)
        i0 = g0 - lo_b * self.BLOCK
        return blocks[:, i0] * (1.0 - frac) + blocks[:, i0 + 1] * frac


def _nice_outward(lo: float, hi: float) -> tuple[float, float]:
    span = hi - lo
    step = 10.0 ** (math.floor(math.log10(span)) - 1)
    return round(math.floor(lo / step) * step, 10), round(math.ceil(hi / step) * step, 10)


class AssetModel:
    """Base of the asset models: operating conditions, thermal lags, catalogue.

    A subclass declares ``SIGNALS`` (tag -> unit, description), ``THERMAL``
    (temperature tag -> name of its time-constant parameter), ``FAULTS`` (fault
    kind -> :class:`FaultSignature`), ``DEFAULTS`` and implements ``_physics``.
    ``params`` override defaults (unknown names are an error); ``seed`` and
    ``key`` (e.g. a hash of the asset id) seed the setpoint schedule.
    """

    asset_type: ClassVar[str] = ""
    SIGNALS: ClassVar[dict[str, tuple[str, str]]] = {}
    THERMAL: ClassVar[dict[str, str]] = {}
    FAULTS: ClassVar[dict[str, FaultSignature]] = {}
    DEFAULTS: ClassVar[dict] = {}
    COMMON_DEFAULTS: ClassVar[dict] = {
        "ambient_temp": 25.0,  # degC, daily mean
        "ambient_swing": 4.0,  # degC, half the day-night difference
        "load_cycle_amplitude": 0.05,  # relative swing of the operating level over the load cycle
        "setpoint_range": (0.85, 1.0),  # fraction of rated (speed or demand)
        "setpoint_interval_s": (300.0, 1200.0),  # random setpoint changes every 5-20 min; None: constant
        "setpoints": None,  # explicit [[t_s, value], ...] instead of random changes
        "setpoint_tau_s": 8.0,  # first-order response of the drive to a setpoint step
        "thermal_grid_s": 1.0,
    }

    def __init__(self, params: Mapping | None = None, seed: int = 0, load_cycle_period_s: float = DAY_S, key: int = 0):
        merged = {**self.COMMON_DEFAULTS, **self.DEFAULTS}
        unknown = sorted(set(params or {}) - set(merged))
        if unknown:
            raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for a {self.asset_type}; valid: {', '.join(sorted(merged))}")
        merged.update(params or {})
        if not load_cycle_period_s > 0:
            raise ValueError(f"load_cycle_period_s must be > 0, got {load_cycle_period_s}")
        self.p = merged
        self.period_s = float(load_cycle_period_s)
        self.setpoint = SetpointSchedule(
            merged["setpoint_range"], merged["setpoint_interval_s"], [int(seed) & 0xFFFFFFFF, int(key) & 0xFFFFFFFF, 1], merged["setpoints"]
        )
        self._fault_inputs: FaultInputFn = lambda t: {}
        self._thermal_tags = list(self.THERMAL)
        self._reset_thermal()
        self._catalogue: dict[str, SignalSpec] | None = None

    # -- operating conditions ------------------------------------------------

    def conditions(self, t_s: np.ndarray) -> dict[str, np.ndarray]:
        """What drives the process at times t_s (s since start, >= 0): the lagged
        setpoint ``sp``, the load cycle ``cyc`` in [-1, 1], ambient temperature
        ``amb`` and ``dsp``, the setpoint's fast-minus-slow response (how far a
        slower controller lags behind a demand step)."""
        t = np.asarray(t_s, dtype=float)
        phase = 2.0 * np.pi * t / self.period_s
        sp = self.setpoint.response(t, self.p["setpoint_tau_s"])
        slow = self.setpoint.response(t, self.p.get("control_tau_s", 40.0))
        return {
            "sp": sp,
            "cyc": -np.cos(phase),
            "amb": self.p["ambient_temp"] - self.p["ambient_swing"] * np.cos(phase - np.pi / 6.0),
            "dsp": sp - slow,
        }

    def _operating_envelope(self) -> dict[str, np.ndarray]:
        lo, hi = self.setpoint.bounds
        grid = np.meshgrid(
            np.linspace(lo, hi, 21),
            np.linspace(-1.0, 1.0, 21),
            [self.p["ambient_temp"] - self.p["ambient_swing"], self.p["ambient_temp"] + self.p["ambient_swing"]],
            [lo - hi, 0.0, hi - lo],
            indexing="ij",
        )
        return dict(zip(("sp", "cyc", "amb", "dsp"), (g.ravel() for g in grid)))

    # -- faults and temperatures ---------------------------------------------

    def set_fault_inputs(self, fn: FaultInputFn) -> None:
        """``fn(t_s) -> {fault kind: severity array}``; the temperatures follow."""
        self._fault_inputs = fn
        self._reset_thermal()

    def _reset_thermal(self) -> None:
        self._thermal = None
        if self._thermal_tags:
            taus = [float(self.p[self.THERMAL[tag]]) for tag in self._thermal_tags]
            self._thermal = ThermalLags(taus, float(self.p["thermal_grid_s"]), self._equilibrium)

    def _equilibrium(self, t_s: np.ndarray) -> np.ndarray:
        _, eq, _ = self._physics(self.conditions(t_s), self._fault_inputs(t_s))
        return np.stack([np.broadcast_to(eq[tag], t_s.shape) for tag in self._thermal_tags])

    # -- evaluation ----------------------------------------------------------

    def _physics(self, c: dict, f: FaultInputs) -> tuple[dict, dict, dict]:
        """(algebraic values, thermal equilibria, extra process-noise sd) at conditions c."""
        raise NotImplementedError

    def _compose(self, values: dict, temps: dict, c: dict, f: FaultInputs) -> None:
        """Signals that depend on (lagged) temperatures; default: none."""

    def evaluate(self, t_s: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Noise-free values of every signal at t_s (s since start; clipped at 0),
        and the sd of extra process fluctuation (cavitation) per signal."""
        t = np.maximum(np.asarray(t_s, dtype=float).reshape(-1), 0.0)
        if t.size == 0:
            return {tag: np.empty(0) for tag in self.SIGNALS}, {}
        c = self.conditions(t)
        f = self._fault_inputs(t)
        values, _, extra = self._physics(c, f)
        temps = {}
        if self._thermal is not None:
            temps = dict(zip(self._thermal_tags, self._thermal.at(t)))
        values.update(temps)
        self._compose(values, temps, c, f)
        out = {tag: np.array(np.broadcast_to(values[tag], t.shape), dtype=np.float64) for tag in self.SIGNALS}
        return out, {k: np.broadcast_to(v, t.shape) for k, v in extra.items()}

    # -- catalogue -----------------------------------------------------------

    def noise_sd(self) -> dict[str, float]:
        raise NotImplementedError

    def _steady_bounds(self) -> dict[str, tuple[float, float]]:
        c = self._operating_envelope()
        values, eq, _ = self._physics(c, {})
        values.update(eq)
        self._compose(values, eq, c, {})
        return {tag: (float(np.min(values[tag])), float(np.max(values[tag]))) for tag in self.SIGNALS}

    @property
    def catalogue(self) -> dict[str, SignalSpec]:
        """tag -> SignalSpec: unit, normal range, noise sd, description."""
        if self._catalogue is None:
            noise = self.noise_sd()
            out = {}
            for tag, (lo, hi) in self._steady_bounds().items():
                sd = noise[tag]
                pad = 4.0 * sd + 0.5 * sd + 0.03 * (hi - lo)
                unit, description = self.SIGNALS[tag]
                out[tag] = SignalSpec(unit, _nice_outward(lo - pad, hi + pad), sd, description)
            self._catalogue = out
        return self._catalogue


def _temp(desc: str) -> tuple[str, str]:
    return ("degC", desc)


_VIB = {
    "vibration_rms": ("mm/s", "RMS vibration velocity (10-1000 Hz): rises with speed, imbalance, misalignment, bearing wear, cavitation"),
    "vibration_kurtosis": ("-", "kurtosis of the vibration signal: 3 when Gaussian, higher for impacts (bearing defects, cavitation), lower for a dominant sine (imbalance, misalignment)"),
}


def _vibration_components(f: FaultInputs, base_rms, ref_rms, s):
    """The vibration parts of the mechanical faults, common to rotating machines.

    * bearing wear: impacts of a spalled race; their variance grows as damage^2
      (6x the base at full damage) and their kurtosis is high.
    * imbalance: a 1x sine whose force grows with speed^2; above resonance the
      velocity grows with speed.
    * misalignment: a 2x sine from the coupling's reaction forces, roughly
      independent of speed.
    """
    wear = f.get("bearing_wear", 0.0)
    return [
        (np.sqrt(6.0) * wear * base_rms, KURTOSIS_BEARING_DEFECT),
        (2.5 * f.get("imbalance", 0.0) * ref_rms * s, KURTOSIS_SINE),
        (2.2 * f.get("misalignment", 0.0) * ref_rms, KURTOSIS_SINE),
    ]


def _kurtosis_noise(kurt) -> np.ndarray:
    """A kurtosis estimate from a window scatters more the higher the kurtosis."""
    return 0.1 * np.sqrt(np.maximum((np.asarray(kurt) / 3.0) ** 2 - 1.0, 0.0))


class CentrifugalPump(AssetModel):
    """A centrifugal water pump on a variable-speed drive.

    * Pump curve ``H = H0 s^2 - k_p Q^2`` (shut-off head scales with speed^2,
      affinity laws), system curve ``H = H_static + k_s Q^2``; the operating point
      is where they cross, so flow grows about with speed and head with speed^2.
    * Suction pressure: static inlet pressure minus the suction line loss (~Q^2).
    * Motor current: hydraulic power ``rho g Q H`` over pump efficiency (best at
      the BEP flow, which scales with speed) and motor efficiency, in quadrature
      with the magnetising current; power grows about with speed^3.
    * Temperatures lag toward ambient + a rise: bearings with speed^1.5 (friction),
      the winding with the copper losses (current^2) plus iron losses.
    * Vibration RMS rises with speed^2 (unbalance forces of a healthy rotor).

    Faults: cavitation (suction pressure falls below the NPSH needed: bubbles
    collapse on the impeller, head breaks down, flow and pressure fluctuate,
    vibration becomes impulsive), seal_leak (an orifice to atmosphere at the seal:
    the pump delivers more, the system gets less, pressure falls, power rises),
    bearing_wear, misalignment, imbalance, overheating (motor cooling fan failed).
    """

    asset_type = "pump"
    SIGNALS = {
        "flow": ("m3/h", "delivered flow (downstream flow meter)"),
        "suction_pressure": ("bar", "suction pressure (gauge)"),
        "discharge_pressure": ("bar", "discharge pressure (gauge)"),
        "motor_current": ("A", "motor phase current"),
        "speed": ("rpm", "shaft speed"),
        "bearing_temp_de": _temp("pump bearing temperature, drive end (coupling side)"),
        "bearing_temp_nde": _temp("pump bearing temperature, non-drive end"),
        "motor_winding_temp": _temp("motor stator winding temperature"),
        "seal_leak_flow": ("L/min", "mechanical seal leakage (leak detection drain)"),
        **_VIB,
    }
    THERMAL = {
        "bearing_temp_de": "bearing_tau_s",
        "bearing_temp_nde": "bearing_tau_s",
        "motor_winding_temp": "winding_tau_s",
    }
    FAULTS = {
        "bearing_wear": FaultSignature(("vibration_rms", "vibration_kurtosis", "bearing_temp_de"), (), "impacts and friction heat at the DE bearing"),
        "cavitation": FaultSignature(
            ("suction_pressure", "discharge_pressure", "vibration_rms", "vibration_kurtosis"),
            ("flow", "motor_current", "motor_winding_temp"),
            "low suction pressure (clogged strainer, low tank): head breakdown, fluctuating flow and pressure, impulsive vibration",
        ),
        "seal_leak": FaultSignature(
            ("seal_leak_flow",),
            ("flow", "suction_pressure", "discharge_pressure", "motor_current", "motor_winding_temp"),
            "orifice at the seal: pump flow up, delivered flow and head down, power up",
        ),
        "misalignment": FaultSignature(
            ("vibration_rms", "vibration_kurtosis", "bearing_temp_de"), ("bearing_temp_nde",), "2x vibration, reaction forces heat the DE bearing most"
        ),
        "imbalance": FaultSignature(("vibration_rms", "vibration_kurtosis"), ("bearing_temp_de", "bearing_temp_nde"), "1x vibration growing with speed"),
        "overheating": FaultSignature(("motor_winding_temp",), (), "motor cooling fan failed: winding thermal resistance up"),
    }
    DEFAULTS = {
        "rated_flow": 100.0,  # m3/h at rated speed (the BEP)
        "rated_head": 50.0,  # m at rated flow
        "rated_speed": 1480.0,  # rpm
        "shutoff_head_ratio": 1.25,  # head at zero flow / rated head
        "static_head_ratio": 0.2,  # static head of the system / rated head
        "suction_static_pressure": 1.45,  # bar, at zero flow
        "suction_loss": 0.15,  # bar, suction line loss at rated flow
        "density": 1000.0,  # kg/m3
        "pump_efficiency": 0.75,  # at the BEP
        "motor_efficiency": 0.93,
        "voltage": 400.0,  # V, line to line
        "no_load_current": 12.0,  # A, magnetising current
        "motor_rated_current": 40.0,  # A (a 22 kW motor)
        "bearing_rise_de": 24.0,  # K above ambient at rated speed
        "bearing_rise_nde": 19.0,
        "winding_rise": 70.0,  # K above ambient at rated motor current
        "bearing_tau_s": 180.0,
        "winding_tau_s": 240.0,
        "vibration_rms": 1.6,  # mm/s at rated speed
        "seal_weep": 0.1,  # L/min, normal leakage of a mechanical seal
        "leak_fraction": 0.15,  # seal leak at severity 1: this fraction of rated flow at rated head
        "setpoint_range": (0.88, 1.0),
    }

    def noise_sd(self):
        p = self.p
        return {
            "flow": 0.005 * p["rated_flow"],
            "suction_pressure": 0.01,
            "discharge_pressure": 0.02,
            "motor_current": 0.01 * p["motor_rated_current"],
            "speed": 0.002 * p["rated_speed"],
            "bearing_temp_de": 0.2,
            "bearing_temp_nde": 0.2,
            "motor_winding_temp": 0.3,
            "seal_leak_flow": 0.01,
            "vibration_rms": 0.03,
            "vibration_kurtosis": 0.1,
        }

    def _operating_point(self, s, cav, leak):
        """Solve pump curve = system curve (+ leak orifice) for head H (m) and flows (m3/h)."""
        p = self.p
        q_r, h_r = p["rated_flow"], p["rated_head"]
        h_static = p["static_head_ratio"] * h_r
        k_s = (h_r - h_static) / q_r**2
        k_p = (p["shutoff_head_ratio"] - 1.0) * h_r / q_r**2
        h0 = p["shutoff_head_ratio"] * h_r * s**2 * (1.0 - 0.12 * cav)  # cavitation: head breakdown
        if not np.any(np.asarray(leak) > 0):
            q = np.sqrt(np.maximum(h0 - h_static, 0.0) / (k_p + k_s))
            return h_static + k_s * q**2, q, np.zeros_like(q)
        c_leak = leak * p["leak_fraction"] * q_r / math.sqrt(h_r)  # orifice: Q_leak = c sqrt(H)
        h0, c_leak = np.broadcast_arrays(h0, c_leak)
        lo, hi = np.full(h0.shape, h_static), np.maximum(h0, h_static)
        for _ in range(48):  # bisection: the pump's surplus head falls monotonically with H
            h = 0.5 * (lo + hi)
            q_total = np.sqrt(np.maximum(h - h_static, 0.0) / k_s) + c_leak * np.sqrt(h)
            above = h0 - k_p * q_total**2 > h
            lo, hi = np.where(above, h, lo), np.where(above, hi, h)
        h = 0.5 * (lo + hi)
        return h, np.sqrt(np.maximum(h - h_static, 0.0) / k_s), c_leak * np.sqrt(h)

    def _physics(self, c, f):
        p = self.p
        s = c["sp"] * (1.0 + p["load_cycle_amplitude"] * c["cyc"])
        cav, leak = f.get("cavitation", 0.0), f.get("seal_leak", 0.0)
        head, q, q_leak = self._operating_point(s, cav, leak)
        q_pump = q + q_leak
        suction = p["suction_static_pressure"] - p["suction_loss"] * (q_pump / p["rated_flow"]) ** 2 - 0.9 * cav
        dp = p["density"] * G * head / 1e5
        q_bep = np.maximum(q_pump / (p["rated_flow"] * s), 0.0)
        eta = p["pump_efficiency"] * np.maximum(1.0 - 0.8 * (q_bep - 1.0) ** 2, 0.3)
        shaft_w = p["density"] * G * q_pump / 3600.0 * head / eta
        current, _ = motor_current(shaft_w, p["motor_efficiency"], p["voltage"], p["no_load_current"])
        wear, mis, imb = f.get("bearing_wear", 0.0), f.get("misalignment", 0.0), f.get("imbalance", 0.0)
        base = p["vibration_rms"] * (0.5 + 0.5 * s**2)
        comps = _vibration_components(f, base, p["vibration_rms"], s) + [(1.2 * cav * base, KURTOSIS_CAVITATION)]
        rms, kurt = vibration(base, comps)
        values = {
            "flow": q,
            "suction_pressure": suction,
            "discharge_pressure": suction + dp,
            "motor_current": current,
            "speed": s * p["rated_speed"],
            "seal_leak_flow": p["seal_weep"] + q_leak * 1000.0 / 60.0,
            "vibration_rms": rms,
            "vibration_kurtosis": kurt,
        }
        amb = c["amb"]
        eq = {
            "bearing_temp_de": amb + p["bearing_rise_de"] * s**1.5 + 35.0 * wear + 14.0 * mis + 2.5 * imb,
            "bearing_temp_nde": amb + p["bearing_rise_nde"] * s**1.5 + 4.0 * mis + 2.5 * imb,
            "motor_winding_temp": amb + p["winding_rise"] * (0.25 + 0.75 * (current / p["motor_rated_current"]) ** 2) + 45.0 * f.get("overheating", 0.0),
        }
        extra = {}
        if np.any(np.asarray(cav) > 0):
            extra = {
                "flow": 0.03 * p["rated_flow"] * cav,
                "discharge_pressure": 0.15 * cav,
                "suction_pressure": 0.05 * cav,
                "motor_current": 0.03 * p["motor_rated_current"] * cav,
            }
        extra["vibration_kurtosis"] = _kurtosis_noise(kurt)
        return values, eq, extra


class InductionMotor(AssetModel):
    """An induction motor on a variable-speed drive, driving a constant-torque
    load (conveyor, mixer) whose torque follows production over the load cycle.

    * Speed follows the speed setpoint (drive ramp); mechanical power = torque x speed.
    * Current: active current of the electrical power in quadrature with the
      magnetising current; power factor = active / total, low at light load.
    * Winding temperature: iron losses (constant) + copper losses (current^2).
    * Bearings: friction heat ~ speed^1.5; the DE bearing also carries the belt /
      coupling load (~ torque).
    """

    asset_type = "motor"
    SIGNALS = {
        "speed": ("rpm", "shaft speed"),
        "motor_current": ("A", "phase current"),
        "power_factor": ("-", "displacement power factor"),
        "winding_temp": _temp("stator winding temperature"),
        "bearing_temp_de": _temp("bearing temperature, drive end"),
        "bearing_temp_nde": _temp("bearing temperature, non-drive end (fan side)"),
        **_VIB,
    }
    THERMAL = {"winding_temp": "winding_tau_s", "bearing_temp_de": "bearing_tau_s", "bearing_temp_nde": "bearing_tau_s"}
    FAULTS = {
        "bearing_wear": FaultSignature(("vibration_rms", "vibration_kurtosis", "bearing_temp_de"), (), "impacts and friction heat at the DE bearing"),
        "misalignment": FaultSignature(
            ("vibration_rms", "vibration_kurtosis", "bearing_temp_de"), ("bearing_temp_nde",), "2x vibration, reaction forces heat the DE bearing most"
        ),
        "imbalance": FaultSignature(("vibration_rms", "vibration_kurtosis"), ("bearing_temp_de", "bearing_temp_nde"), "1x vibration growing with speed"),
        "overheating": FaultSignature(("winding_temp",), (), "cooling fan failed / fins clogged: winding thermal resistance up"),
    }
    DEFAULTS = {
        "rated_power_kw": 45.0,
        "rated_speed": 1485.0,
        "voltage": 400.0,
        "motor_efficiency": 0.94,
        "rated_power_factor": 0.86,
        "no_load_current_ratio": 0.35,  # magnetising current / rated current
        "load_torque": 0.8,  # mean load torque / rated torque
        "load_cycle_amplitude": 0.15,  # torque swing with production
        "winding_rise": 70.0,
        "bearing_rise_de": 20.0,
        "bearing_rise_nde": 15.0,
        "winding_tau_s": 240.0,
        "bearing_tau_s": 180.0,
        "vibration_rms": 1.2,
        "setpoint_range": (0.8, 1.0),
        "setpoint_tau_s": 6.0,
    }

    @property
    def rated_current(self) -> float:
        p = self.p
        return p["rated_power_kw"] * 1e3 / (SQRT3 * p["voltage"] * p["motor_efficiency"] * p["rated_power_factor"])

    def noise_sd(self):
        return {
            "speed": 0.002 * self.p["rated_speed"],
            "motor_current": 0.008 * self.rated_current,
            "power_factor": 0.003,
            "winding_temp": 0.3,
            "bearing_temp_de": 0.2,
            "bearing_temp_nde": 0.2,
            "vibration_rms": 0.03,
            "vibration_kurtosis": 0.1,
        }

    def _physics(self, c, f):
        p = self.p
        s = c["sp"]
        torque = p["load_torque"] * (1.0 + p["load_cycle_amplitude"] * c["cyc"])
        shaft_w = p["rated_power_kw"] * 1e3 * torque * s
        i_r = self.rated_current
        current, active = motor_current(shaft_w, p["motor_efficiency"], p["voltage"], p["no_load_current_ratio"] * i_r)
        base = p["vibration_rms"] * (0.5 + 0.5 * s**2)
        rms, kurt = vibration(base, _vibration_components(f, base, p["vibration_rms"], s))
        wear, mis, imb = f.get("bearing_wear", 0.0), f.get("misalignment", 0.0), f.get("imbalance", 0.0)
        amb = c["amb"]
        values = {
            "speed": s * p["rated_speed"],
            "motor_current": current,
            "power_factor": active / current,
            "vibration_rms": rms,
            "vibration_kurtosis": kurt,
        }
        eq = {
            "winding_temp": amb + p["winding_rise"] * (0.25 + 0.75 * (current / i_r) ** 2) + 45.0 * f.get("overheating", 0.0),
            "bearing_temp_de": amb + p["bearing_rise_de"] * s**1.5 + 6.0 * torque + 35.0 * wear + 14.0 * mis + 2.5 * imb,
            "bearing_temp_nde": amb + p["bearing_rise_nde"] * s**1.5 + 4.0 * mis + 2.5 * imb,
        }
        return values, eq, {"vibration_kurtosis": _kurtosis_noise(kurt)}


class Fan(AssetModel):
    """A centrifugal fan on a variable-speed drive in a fixed duct system.

    Fan laws: airflow ~ speed, pressure rise ~ speed^2, power ~ speed^3; the
    speed follows ventilation demand (load cycle) and setpoint changes. Current
    from air power over fan and motor efficiency, in quadrature with the
    magnetising current. One bearing temperature (friction ~ speed^1.5).
    """

    asset_type = "fan"
    SIGNALS = {
        "speed": ("rpm", "fan speed"),
        "motor_current": ("A", "motor phase current"),
        "airflow": ("m3/h", "volume flow"),
        "differential_pressure": ("Pa", "total pressure rise across the fan"),
        "bearing_temp": _temp("fan bearing temperature"),
        **_VIB,
    }
    THERMAL = {"bearing_temp": "bearing_tau_s"}
    FAULTS = {
        "bearing_wear": FaultSignature(("vibration_rms", "vibration_kurtosis", "bearing_temp"), (), "impacts and friction heat at the bearing"),
        "misalignment": FaultSignature(("vibration_rms", "vibration_kurtosis", "bearing_temp"), (), "2x vibration, reaction forces heat the bearing"),
        "imbalance": FaultSignature(("vibration_rms", "vibration_kurtosis"), ("bearing_temp",), "1x vibration (dust build-up on the blades)"),
        "overheating": FaultSignature(("bearing_temp",), (), "bearing lubrication / cooling lost"),
    }
    DEFAULTS = {
        "rated_airflow": 20000.0,  # m3/h
        "rated_pressure": 1200.0,  # Pa
        "rated_speed": 1470.0,
        "fan_efficiency": 0.72,
        "motor_efficiency": 0.92,
        "voltage": 400.0,
        "no_load_current": 7.0,
        "bearing_rise": 25.0,
        "bearing_tau_s": 180.0,
        "vibration_rms": 1.4,
        "setpoint_range": (0.8, 1.0),
        "load_cycle_amplitude": 0.06,
        "setpoint_tau_s": 10.0,
    }

    def noise_sd(self):
        p = self.p
        return {
            "speed": 0.002 * p["rated_speed"],
            "motor_current": 0.1,
            "airflow": 0.006 * p["rated_airflow"],
            "differential_pressure": 0.006 * p["rated_pressure"],
            "bearing_temp": 0.2,
            "vibration_rms": 0.03,
            "vibration_kurtosis": 0.1,
        }

    def _physics(self, c, f):
        p = self.p
        s = c["sp"] * (1.0 + p["load_cycle_amplitude"] * c["cyc"])
        airflow = p["rated_airflow"] * s
        dp = p["rated_pressure"] * s**2
        shaft_w = airflow / 3600.0 * dp / p["fan_efficiency"]
        current, _ = motor_current(shaft_w, p["motor_efficiency"], p["voltage"], p["no_load_current"])
        base = p["vibration_rms"] * (0.5 + 0.5 * s**2)
        rms, kurt = vibration(base, _vibration_components(f, base, p["vibration_rms"], s))
        values = {
            "speed": s * p["rated_speed"],
            "motor_current": current,
            "airflow": airflow,
            "differential_pressure": dp,
            "vibration_rms": rms,
            "vibration_kurtosis": kurt,
        }
        heat = 35.0 * f.get("bearing_wear", 0.0) + 14.0 * f.get("misalignment", 0.0) + 2.5 * f.get("imbalance", 0.0) + 40.0 * f.get("overheating", 0.0)
        eq = {"bearing_temp": c["amb"] + p["bearing_rise"] * s**1.5 + heat}
        return values, eq, {"vibration_kurtosis": _kurtosis_noise(kurt)}


class ScrewCompressor(AssetModel):
    """An oil-injected rotary screw air compressor on a variable-speed drive.

    * The drive holds discharge pressure at its setpoint by matching speed to air
      demand (``speed = demand / capacity``); demand follows the load cycle and
      steps when consumers switch (the setpoint changes here are demand steps).
      After a step the slower pressure controller lags: pressure dips on a rise
      of demand and overshoots on a fall.
    * Suction pressure (absolute) falls with the inlet filter loss (~ flow^2).
    * Power ~ speed x ln(pressure ratio) plus fixed losses; current as for motors.
    * Injected oil carries the heat of compression to the oil cooler: oil
      temperature lags toward ambient + a load-dependent rise; discharge temperature
      is oil temperature + the remaining compression heating (faster lag).
    * Oil pressure: fed by the separator tank (discharge) pressure, minus the
      oil circuit loss, which is proportional to viscosity (falls as oil heats).

    Faults: seal_leak (worn rotor / shaft seals: compressed air leaks back to
    suction, so the drive runs faster for the same demand, more power, and the
    recirculated hot air heats the discharge), overheating (oil cooler fouled /
    cooling fan failed), bearing_wear, misalignment, imbalance (vibration only:
    the compressor has no bearing temperature sensors).
    """

    asset_type = "compressor"
    SIGNALS = {
        "speed": ("rpm", "motor speed"),
        "suction_pressure": ("bar", "suction pressure after the inlet filter (absolute)"),
        "discharge_pressure": ("bar", "discharge pressure (gauge)"),
        "discharge_temp": _temp("air-oil discharge temperature"),
        "motor_current": ("A", "motor phase current"),
        "oil_pressure": ("bar", "oil injection pressure (gauge)"),
        "oil_temp": _temp("oil temperature after the cooler"),
        **_VIB,
    }
    THERMAL = {"oil_temp": "oil_tau_s", "discharge_temp": "discharge_tau_s"}
    FAULTS = {
        "bearing_wear": FaultSignature(("vibration_rms", "vibration_kurtosis"), (), "impacts of the rotor bearings"),
        "misalignment": FaultSignature(("vibration_rms", "vibration_kurtosis"), (), "2x vibration"),
        "imbalance": FaultSignature(("vibration_rms", "vibration_kurtosis"), (), "1x vibration"),
        "seal_leak": FaultSignature(
            ("discharge_temp",),
            ("speed", "motor_current", "suction_pressure", "oil_temp", "oil_pressure", "vibration_rms"),
            "internal leakage: speed and power up for the same demand, hot recirculated air",
        ),
        "overheating": FaultSignature(("oil_temp", "discharge_temp"), ("oil_pressure",), "oil cooler failed: oil and discharge temperatures rise, oil thins"),
    }
    DEFAULTS = {
        "rated_power_kw": 75.0,
        "rated_speed": 2950.0,
        "pressure_setpoint": 7.5,  # bar g
        "max_speed_ratio": 1.15,
        "inlet_loss": 0.025,  # bar at rated speed
        "motor_efficiency": 0.95,
        "voltage": 400.0,
        "no_load_current": 35.0,
        "pressure_dip": 1.2,  # bar per unit demand step while the controller catches up
        "control_tau_s": 40.0,
        "oil_rise": 45.0,  # K above ambient at rated power
        "compression_rise": 14.0,  # K, discharge above oil temperature
        "oil_circuit_loss": 0.9,  # bar at 60 degC
        "leak_capacity": 0.25,  # capacity lost to the leak at severity 1 (fraction of rated)
        "oil_tau_s": 300.0,
        "discharge_tau_s": 90.0,
        "vibration_rms": 2.0,
        "setpoint_range": (0.55, 0.8),  # air demand / rated capacity
        "load_cycle_amplitude": 0.1,
        "setpoint_tau_s": 5.0,
    }

    def noise_sd(self):
        return {
            "speed": 0.002 * self.p["rated_speed"],
            "suction_pressure": 0.002,
            "discharge_pressure": 0.03,
            "discharge_temp": 0.3,
            "motor_current": 0.6,
            "oil_pressure": 0.03,
            "oil_temp": 0.2,
            "vibration_rms": 0.04,
            "vibration_kurtosis": 0.1,
        }

    def _physics(self, c, f):
        p = self.p
        demand = c["sp"] * (1.0 + p["load_cycle_amplitude"] * c["cyc"])
        leak = f.get("seal_leak", 0.0)
        s_req = demand + p["leak_capacity"] * leak
        s = np.minimum(s_req, p["max_speed_ratio"])
        deficit = s_req - s  # demand the compressor cannot meet: pressure falls
        p_d = p["pressure_setpoint"] - p["pressure_dip"] * c["dsp"] - 6.0 * deficit
        p_s = 1.013 - p["inlet_loss"] * s**2
        ratio = np.log((p_d + 1.013) / p_s) / math.log((p["pressure_setpoint"] + 1.013) / (1.013 - p["inlet_loss"]))
        shaft_w = p["rated_power_kw"] * 1e3 * (0.1 + 0.9 * s) * ratio
        current, _ = motor_current(shaft_w, p["motor_efficiency"], p["voltage"], p["no_load_current"])
        base = p["vibration_rms"] * (0.6 + 0.4 * s**2)
        rms, kurt = vibration(base, _vibration_components(f, base, p["vibration_rms"], s))
        load = shaft_w / (p["rated_power_kw"] * 1e3)
        oil_eq = c["amb"] + p["oil_rise"] * (0.35 + 0.65 * load) + 35.0 * f.get("overheating", 0.0)
        values = {
            "speed": s * p["rated_speed"],
            "suction_pressure": p_s,
            "discharge_pressure": p_d,
            "motor_current": current,
            "vibration_rms": rms,
            "vibration_kurtosis": kurt,
            "_p_d": p_d,
        }
        eq = {"oil_temp": oil_eq, "discharge_temp": oil_eq + p["compression_rise"] * ratio + 25.0 * leak}
        return values, eq, {"vibration_kurtosis": _kurtosis_noise(kurt)}

    def _oil_pressure(self, p_d, oil_temp):
        return p_d - self.p["oil_circuit_loss"] * np.exp(-0.025 * (oil_temp - 60.0))

    def _compose(self, values, temps, c, f):
        values["oil_pressure"] = self._oil_pressure(values.pop("_p_d"), temps["oil_temp"])

    def _steady_bounds(self):
        # Oil pressure mixes the instant discharge pressure with the lagged oil
        # temperature: bound it over every combination of their extremes.
        bounds = super()._steady_bounds()
        (pd_lo, pd_hi), (t_lo, t_hi) = bounds["discharge_pressure"], bounds["oil_temp"]
        bounds["oil_pressure"] = (float(self._oil_pressure(pd_lo, t_lo)), float(self._oil_pressure(pd_hi, t_hi)))
        return bounds


class GenericAsset(AssetModel):
    """A rotating machine of no particular kind: a load in percent, one
    temperature lagging toward ambient + a load-dependent rise, and vibration."""

    asset_type = "generic"
    SIGNALS = {
        "load": ("%", "load"),
        "temperature": _temp("machine temperature"),
        **_VIB,
    }
    THERMAL = {"temperature": "temperature_tau_s"}
    FAULTS = {
        "bearing_wear": FaultSignature(("vibration_rms", "vibration_kurtosis", "temperature"), (), "impacts and friction heat"),
        "misalignment": FaultSignature(("vibration_rms", "vibration_kurtosis"), ("temperature",), "2x vibration, some coupling heat"),
        "imbalance": FaultSignature(("vibration_rms", "vibration_kurtosis"), ("temperature",), "1x vibration"),
        "overheating": FaultSignature(("temperature",), (), "cooling lost"),
    }
    DEFAULTS = {
        "temperature_rise": 35.0,
        "temperature_tau_s": 180.0,
        "vibration_rms": 1.5,
        "setpoint_range": (0.6, 0.9),
        "load_cycle_amplitude": 0.1,
    }

    def noise_sd(self):
        return {"load": 0.3, "temperature": 0.2, "vibration_rms": 0.03, "vibration_kurtosis": 0.1}

    def _physics(self, c, f):
        p = self.p
        level = c["sp"] * (1.0 + p["load_cycle_amplitude"] * c["cyc"])
        base = p["vibration_rms"] * (0.6 + 0.4 * level**2)
        rms, kurt = vibration(base, _vibration_components(f, base, p["vibration_rms"], level))
        heat = 35.0 * f.get("bearing_wear", 0.0) + 14.0 * f.get("misalignment", 0.0) + 2.5 * f.get("imbalance", 0.0) + 40.0 * f.get("overheating", 0.0)
        values = {"load": 100.0 * level, "vibration_rms": rms, "vibration_kurtosis": kurt}
        eq = {"temperature": c["amb"] + p["temperature_rise"] * level + heat}
        return values, eq, {"vibration_kurtosis": _kurtosis_noise(kurt)}


#: asset type (as in the service configuration) -> model class.
MODEL_TYPES: dict[str, type[AssetModel]] = {
    cls.asset_type: cls for cls in (CentrifugalPump, InductionMotor, Fan, ScrewCompressor, GenericAsset)
}
