"""A small plant whose fault alarms come on cue, for alarm tests through the real
broker and offline: generic machines with noisy readings, and a temperature
transmitter that sticks (flat line) for a stated span of event time. Fusion
calls a stuck transmitter a sensor fault, with no trained model needed."""

from __future__ import annotations

import numpy as np

from stream.config import ServiceConfig
from stream.wire import ReadingBatch

#: 2025-11-13: an event time well in the past
T0_US = 1_763_000_000_000_000
TAGS = ("load", "temperature", "vibration_rms", "vibration_kurtosis")
RATE_HZ = 10
BATCH_S = 0.5


def plant_doc(prefix: str, bootstrap: str, n_assets: int, area_of=lambda i: "line-1", run_state: bool = False, **sections) -> dict:
    """The configuration document (kafka, worker, assets) of the plant; ``run_state``:
    each machine also has a ``run_state`` tag (1 running, 0 stopped) mapped as its
    machine state."""
    doc = {
        "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": prefix, "partitions": 1},
        "worker": {"app_id": f"{prefix}-worker", "session_timeout_s": 6},
        "assets": [
            {
                "id": f"machine-{i:02d}",
                "type": "generic",
                "area": area_of(i),
                "tags": [
                    {"id": tag, "flatline_after_s": 5.0} if tag == "temperature" else {"id": tag}
                    for tag in TAGS
                ]
                + ([{"id": "run_state"}] if run_state else []),
            }
            for i in range(n_assets)
        ],
        **sections,
    }
    if run_state:
        doc.setdefault("alarms", {})["assets"] = {
            f"machine-{i:02d}": {"machine_state": {"tag": "run_state", "states": {"running": [1], "stopped": [0]}}} for i in range(n_assets)
        }
    return doc


def plant_batches(
    config: ServiceConfig,
    seconds: float,
    stuck: tuple[float, float] | None = None,
    assets=None,
    seed: int = 0,
    start_s: float = 0.0,
    replayed: bool = False,
    stopped: tuple[float, float] | None = None,
):
    """Reading batches of every asset (interleaved in event time) from ``start_s`` to
    ``start_s + seconds``; between stuck = (from_s, to_s) the temperature holds still;
    ``replayed``: batches marked as backfill; ``stopped`` = (from_s, to_s): run_state
    reads 0 then (1 otherwise), for machines that have the tag."""
    rng = np.random.default_rng(seed)
    ids = [a.id for a in config.assets] if assets is None else list(assets)
    steps = int(round(BATCH_S * RATE_HZ))
    base = {"load": 60.0, "temperature": 45.0, "vibration_rms": 2.0, "vibration_kurtosis": 3.0}
    noise = {"load": 2.0, "temperature": 0.3, "vibration_rms": 0.1, "vibration_kurtosis": 0.2}
    n_batches = int(round(seconds / BATCH_S))
    first = int(round(start_s / BATCH_S))
    for b in range(first, first + n_batches):
        t_s = b * BATCH_S + np.arange(steps) / RATE_HZ
        for seq_offset, asset_id in enumerate(ids):
            values = {tag: base[tag] + noise[tag] * rng.standard_normal(steps) for tag in TAGS}
            if stuck is not None:
                held = (t_s >= stuck[0]) & (t_s < stuck[1])
                values["temperature"][held] = base["temperature"] + 0.123
            tags = list(TAGS)
            if any(t.id == "run_state" for t in config.asset(asset_id).tags):
                tags.append("run_state")
                off = (t_s >= stopped[0]) & (t_s < stopped[1]) if stopped is not None else np.zeros(steps, dtype=bool)
                values["run_state"] = np.where(off, 0.0, 1.0)
            ts_us = T0_US + np.round(t_s * 1e6).astype(np.int64)
            yield ReadingBatch.from_columns(
                asset_id,
                tags,
                np.tile(np.arange(len(tags)), steps),
                np.repeat(ts_us, len(tags)),
                np.stack([values[tag] for tag in tags], axis=1).ravel(),
                replayed=replayed,
                seq=b * len(ids) + seq_offset,
            )
