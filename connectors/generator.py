"""A simple in-process plant: plausible readings for every configured tag, with
faults injected on a schedule. Enough to drive the demo, the benchmark and the
tests until the OPC UA / Modbus simulator arrives.

Each tag follows a slow load cycle inside its normal range plus noise; a fault
ramps one tag past its high limit over a few seconds and holds it there.
Generation is vectorised: one numpy call per asset and batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream.config import AssetConfig, ServiceConfig, TagConfig
from stream.wire import ReadingBatch


@dataclass(frozen=True)
class Fault:
    """Drive ``tag_id`` of ``asset_id`` past its high limit from ``start_s`` (seconds
    after the generator's start) for ``duration_s`` (None: until the end)."""

    asset_id: str
    tag_id: str
    start_s: float
    duration_s: float | None = None
    ramp_s: float = 3.0

    @classmethod
    def parse(cls, text: str) -> "Fault":
        """'pump-1:bearing_temp@20' or 'pump-1:bearing_temp@20+30' (start 20 s, lasting 30 s)."""
        try:
            target, when = text.split("@", 1)
            asset_id, tag_id = target.split(":", 1)
            start, _, duration = when.partition("+")
            return cls(asset_id, tag_id, float(start.rstrip("s")), float(duration.rstrip("s")) if duration else None)
        except ValueError:
            raise ValueError(
                f"cannot read fault {text!r}: write ASSET:TAG@START_S or ASSET:TAG@START_S+DURATION_S, e.g. pump-1:bearing_temp@20"
            ) from None


def _operating_band(tag: TagConfig) -> tuple[float, float]:
    """Where the tag normally runs: its normal range, else inside its limits, else 0..100."""
    if tag.normal_range:
        return tag.normal_range
    low, high = tag.limits.low, tag.limits.high
    if low is not None and high is not None:
        span = high - low
        return low + 0.3 * span, high - 0.3 * span
    if high is not None:
        return high * 0.5, high * 0.7
    if low is not None:
        return low + 10.0, low + 30.0
    return 40.0, 60.0


class _AssetModel:
    def __init__(self, asset: AssetConfig, rng: np.random.Generator):
        bands = np.array([_operating_band(t) for t in asset.tags])
        self.asset = asset
        self.tags = tuple(t.id for t in asset.tags)
        self.center = bands.mean(axis=1)
        self.half = (bands[:, 1] - bands[:, 0]) / 2
        self.phase = rng.uniform(0, 2 * np.pi, len(self.tags))
        self.period_s = rng.uniform(120, 600, len(self.tags))  # slow load cycle
        self.fault_level = np.array(
            [
                (t.limits.high + 0.2 * max(abs(t.limits.high), 1.0)) if t.limits.high is not None else c + 6 * h
                for t, c, h in zip(asset.tags, self.center, self.half)
            ]
        )


class PlantGenerator:
    """Generates reading batches for all assets of a configuration.

    ``rate_hz`` samples per second per tag. ``start_us`` is the event time of
    the generator's t = 0 (the fault schedule is relative to it).
    """

    def __init__(self, config: ServiceConfig, rate_hz: float = 10.0, faults: list[Fault] = (), seed: int = 0, start_us: int = 0):
        self.rate_hz = rate_hz
        self.start_us = start_us
        self.rng = np.random.default_rng(seed)
        self.models = {a.id: _AssetModel(a, self.rng) for a in config.assets}
        self.faults = list(faults)
        for fault in self.faults:
            model = self.models.get(fault.asset_id)
            if model is None or fault.tag_id not in model.tags:
                raise ValueError(f"fault {fault.asset_id}:{fault.tag_id}: no such asset and tag in the configuration")
        self._next_us = {asset_id: start_us for asset_id in self.models}
        self._seq = {asset_id: 0 for asset_id in self.models}

    def batches_until(self, until_us: int) -> list[ReadingBatch]:
        """All samples from where the previous call stopped up to ``until_us``, one batch per asset."""
        step_us = int(round(1e6 / self.rate_hz))
        out = []
        for asset_id, model in self.models.items():
            first = self._next_us[asset_id]
            n_steps = max(0, (until_us - first) // step_us)
            if n_steps == 0:
                continue
            times = first + step_us * np.arange(n_steps, dtype=np.int64)
            self._next_us[asset_id] = first + step_us * n_steps
            values = self._values(model, times)  # shape (steps, tags)
            n_tags = len(model.tags)
            self._seq[asset_id] += 1
            out.append(
                ReadingBatch.from_columns(
                    asset_id,
                    model.tags,
                    np.tile(np.arange(n_tags), n_steps),
                    np.repeat(times, n_tags),
                    values.ravel(),
                    seq=self._seq[asset_id],
                )
            )
        return out

    def _values(self, model: _AssetModel, times_us: np.ndarray) -> np.ndarray:
        t = (times_us - self.start_us)[:, None] / 1e6
        cycle = np.sin(2 * np.pi * t / model.period_s + model.phase)
        noise = self.rng.normal(0.0, 0.15, size=cycle.shape)
        values = model.center + model.half * (0.6 * cycle + noise)
        for fault in self.faults:
            if fault.asset_id != model.asset.id:
                continue
            col = model.tags.index(fault.tag_id)
            since = t[:, 0] - fault.start_s
            on = since >= 0
            if fault.duration_s is not None:
                on &= since < fault.duration_s
            weight = np.clip(since / fault.ramp_s, 0.0, 1.0) * on
            values[:, col] = (1 - weight) * values[:, col] + weight * model.fault_level[col]
        return values
