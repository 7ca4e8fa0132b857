"""The simulated plant: asset models + a fault schedule -> measured values with
OPC UA quality, for any instants, in any order.

A measured value is ``model value + measurement noise``, then the sensor faults
of that tag. The noise is *counter-based*: each sample's noise is a hash of
(seed, asset, tag, event time in microseconds) turned into a normal deviate
(clipped at 4 sd, as a real transmitter's noise is bounded). So a value depends
only on the seed and its time: sampling in chunks, one instant at a time, or
twice gives identical results, and two servers asking for the same instant see
the same value. The models' memory (setpoint responses, thermal lags) is
likewise a function of time; see :mod:`models`.

Quality is GOOD except during a dropout sensor fault (BAD_COMMUNICATION_ERROR,
value NaN).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from connectors.base import BAD_COMMUNICATION_ERROR, GOOD
from connectors.simulator.faults import (
    DRIFT_SPAN_S,
    SPIKE_PROBABILITY,
    FaultSpec,
    GroundTruthWriter,
    check_fault,
    ground_truth_records,
    parse_faults,
)
from connectors.simulator.models import DAY_S, MODEL_TYPES, AssetModel, SignalSpec

#: quality of the samples of a tag in a dropout.
DROPOUT_QUALITY = BAD_COMMUNICATION_ERROR
NOISE_CLIP_SD = 4.0

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix_int(z: int) -> int:
    """splitmix64's finaliser on a Python int (for keys)."""
    z = (z + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _key(*parts: int | str) -> int:
    z = 0
    for part in parts:
        value = zlib.crc32(part.encode()) if isinstance(part, str) else int(part) & _MASK
        z = _mix_int(z ^ value)
    return z


def _hash(keys: np.ndarray, t_us: np.ndarray) -> np.ndarray:
    """splitmix64 of state ``key + t * golden``: uint64 of shape keys x times."""
    z = keys.reshape(-1, 1) + t_us.reshape(1, -1).astype(np.int64).view(np.uint64) * np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uniform(keys: np.ndarray, t_us: np.ndarray) -> np.ndarray:
    """Uniform in (0, 1], one per key and time."""
    return ((_hash(keys, t_us) >> np.uint64(11)).astype(np.float64) + 1.0) * (1.0 / 9007199254740992.0)


def _normal(keys: np.ndarray, t_us: np.ndarray) -> np.ndarray:
    """Standard normal (Box-Muller), clipped at +-4, one per key and time."""
    u1 = _uniform(keys, t_us)
    u2 = _uniform(keys ^ np.uint64(0x5DEECE66D), t_us)
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return np.clip(z, -NOISE_CLIP_SD, NOISE_CLIP_SD)


class _Asset:
    def __init__(self, asset_id: str, model: AssetModel, seed: int, faults: list[FaultSpec]):
        self.id = asset_id
        self.model = model
        self.tags = list(model.SIGNALS)
        self.catalogue = model.catalogue
        self.noise_sd = np.array([self.catalogue[t].noise_sd for t in self.tags])
        self.noise_keys = np.array([_key(seed, asset_id, tag, "noise") for tag in self.tags], dtype=np.uint64)
        self.process_keys = {tag: np.array([_key(seed, asset_id, tag, "process")], dtype=np.uint64) for tag in self.tags}
        self.process_faults = [f for f in faults if not f.is_sensor]
        self.sensor_faults = [f for f in faults if f.is_sensor]
        self.spike_keys = [np.array([_key(seed, asset_id, f.tag, "spike", i)], dtype=np.uint64) for i, f in enumerate(self.sensor_faults)]
        self.stuck: dict[int, float] = {}
        model.set_fault_inputs(self.fault_inputs)

    def fault_inputs(self, t_s: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for fault in self.process_faults:
            env = fault.envelope(t_s)
            out[fault.kind] = out[fault.kind] + env if fault.kind in out else env
        return out


class PlantSimulation:
    """Values of every signal of a set of simulated assets, with faults.

    ``assets``: ``(asset_id, asset_type)`` or ``(asset_id, asset_type, params)``;
    types: pump, motor, fan, compressor, generic; ``params`` override a model's
    defaults. ``faults``: FaultSpec, text (``"pump-1:cavitation@60+120"``) or
    mappings, checked against the assets. ``start_us``: the event time (us since
    the epoch) of t = 0, to which fault times are relative.
    ``load_cycle_period_s``: the daily load cycle's period (compress it for demos).
    """

    def __init__(
        self,
        assets: Iterable[Sequence],
        faults: Iterable[FaultSpec | str | Mapping] = (),
        seed: int = 0,
        start_us: int = 0,
        load_cycle_period_s: float = DAY_S,
    ):
        self.seed = int(seed)
        self.start_us = int(start_us)
        self.load_cycle_period_s = float(load_cycle_period_s)
        self.faults = parse_faults(faults)
        self.asset_types: dict[str, str] = {}
        specs = []
        for entry in assets:
            if len(entry) not in (2, 3):
                raise ValueError(f"an asset is (asset_id, asset_type) or (asset_id, asset_type, params), got {entry!r}")
            asset_id, asset_type, params = (*entry, None) if len(entry) == 2 else entry
            if asset_id in self.asset_types:
                raise ValueError(f"asset {asset_id!r} appears twice")
            if asset_type not in MODEL_TYPES:
                raise ValueError(f"asset {asset_id!r}: unknown asset type {asset_type!r}; simulated types: {', '.join(MODEL_TYPES)}")
            self.asset_types[asset_id] = asset_type
            specs.append((asset_id, asset_type, params))
        for fault in self.faults:
            check_fault(fault, self.asset_types)
        self._assets: dict[str, _Asset] = {}
        for asset_id, asset_type, params in specs:
            try:
                model = MODEL_TYPES[asset_type](params, seed=self.seed, load_cycle_period_s=self.load_cycle_period_s, key=zlib.crc32(asset_id.encode()))
            except ValueError as exc:
                raise ValueError(f"asset {asset_id!r}: {exc}") from None
            self._assets[asset_id] = _Asset(asset_id, model, self.seed, [f for f in self.faults if f.asset_id == asset_id])

    # -- description ---------------------------------------------------------

    @property
    def asset_ids(self) -> list[str]:
        return list(self._assets)

    def _asset(self, asset_id: str) -> _Asset:
        try:
            return self._assets[asset_id]
        except KeyError:
            raise KeyError(f"no simulated asset {asset_id!r}; the assets are: {', '.join(self._assets)}") from None

    def model(self, asset_id: str) -> AssetModel:
        return self._asset(asset_id).model

    def signals(self, asset_id: str) -> dict[str, tuple[str, tuple[float, float]]]:
        """tag -> (unit, (low, high) normal range)."""
        return {tag: (spec.unit, spec.normal_range) for tag, spec in self._asset(asset_id).catalogue.items()}

    def catalogue(self, asset_id: str) -> dict[str, SignalSpec]:
        """tag -> SignalSpec (unit, normal range, noise sd, description)."""
        return dict(self._asset(asset_id).catalogue)

    # -- values --------------------------------------------------------------

    def _measured(self, a: _Asset, t_us: np.ndarray, t_s: np.ndarray) -> dict[str, np.ndarray]:
        values, extra = a.model.evaluate(t_s)
        z = _normal(a.noise_keys, t_us) * a.noise_sd[:, None]
        for i, tag in enumerate(a.tags):
            values[tag] += z[i]
        for tag, sd in extra.items():
            if np.any(sd > 0):
                values[tag] += sd * _normal(a.process_keys[tag], t_us)[0]
        return values

    def _stuck_value(self, a: _Asset, index: int, fault: FaultSpec) -> float:
        if index not in a.stuck:
            t0 = np.array([self.start_us + int(round(fault.start_s * 1e6))], dtype=np.int64)
            a.stuck[index] = float(self._measured(a, t0, (t0 - self.start_us) / 1e6)[fault.tag][0])
        return a.stuck[index]

    def sample(self, asset_id: str, times_us) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Measured values (float64) and OPC UA qualities (uint32) of every tag of
        ``asset_id`` at event times ``times_us`` (us since the epoch, 1-D)."""
        a = self._asset(asset_id)
        t_us = np.asarray(times_us, dtype=np.int64).reshape(-1)
        t_s = (t_us - self.start_us) / 1e6
        values = self._measured(a, t_us, t_s)
        quality = {tag: np.full(t_us.shape, GOOD, dtype=np.uint32) for tag in a.tags}
        for i, fault in enumerate(a.sensor_faults):
            on = fault.active(t_s)
            if not on.any():
                continue
            y, q = values[fault.tag], quality[fault.tag]
            low, high = a.catalogue[fault.tag].normal_range
            span = high - low
            if fault.kind == "stuck":
                y[on] = self._stuck_value(a, i, fault)
            elif fault.kind == "drift":
                y[on] += fault.severity * span * (t_s[on] - fault.start_s) / DRIFT_SPAN_S
            elif fault.kind == "spike":
                u = _uniform(a.spike_keys[i], t_us[on])[0]
                hit = u < SPIKE_PROBABILITY
                # u / p is uniform in (0, 1] on a hit: its first half spikes down, the second up
                r = u[hit] / SPIKE_PROBABILITY
                sign = np.where(r > 0.5, 1.0, -1.0)
                idx = np.flatnonzero(on)[hit]
                y[idx] += sign * fault.severity * span * (1.5 + 3.0 * np.abs(r - 0.5))
            elif fault.kind == "dropout":
                y[on] = np.nan
                q[on] = DROPOUT_QUALITY
        return values, quality

    def values_at(self, t_us: int) -> dict[str, dict[str, tuple[float, int]]]:
        """Every asset's (value, quality) per tag at one instant (what a server
        publishes on each update)."""
        t = np.array([int(t_us)], dtype=np.int64)
        out = {}
        for asset_id in self._assets:
            values, quality = self.sample(asset_id, t)
            out[asset_id] = {tag: (float(values[tag][0]), int(quality[tag][0])) for tag in values}
        return out

    # -- schedule and ground truth -------------------------------------------

    def active_faults(self, t_us: int) -> list[FaultSpec]:
        """The faults active at event time ``t_us``."""
        t_s = (int(t_us) - self.start_us) / 1e6
        return [f for f in self.faults if f.start_s <= t_s < f.end_s]

    def ground_truth(self) -> list[dict]:
        """One record per fault episode, ordered by start (see faults.ground_truth_record)."""
        return ground_truth_records(self.faults, self.asset_types, self.start_us)

    def write_ground_truth(self, path: str | Path) -> int:
        """Write the whole schedule's ground truth as JSON Lines; return the number of episodes."""
        with GroundTruthWriter(path) as writer:
            return writer.write_all(self.ground_truth())
