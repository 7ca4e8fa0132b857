"""Simulated history: what `edgewatch connect` would deliver from `edgewatch
simulate`, computed directly (no servers, no clock), for training and tests.

The simulator's values depend only on the seed and the event time, so a day of
history takes seconds and matches what the live connectors read at those instants.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from connectors.simulator.plant import PlantSimulation
from connectors.simulator.serve import SIMULATED_TYPES
from stream.config import ModbusSource, OpcUaSource, ServiceConfig, TagConfig
from stream.history import DEFAULT_BATCH_S, HistoryError
from stream.wire import ReadingBatch


def tag_period_us(config: ServiceConfig, tag: TagConfig) -> int:
    """How often the live connectors deliver a sample of ``tag`` from the simulator.

    Features such as FFT bands depend on the sampling rate, so simulated history
    must be sampled as the connectors will read the tag live: OPC UA tags at
    the simulator's update rate (or the item's slower sampling interval), Modbus
    tags at their poll group's interval.
    """
    simulator_period_s = 1.0 / config.simulator.rate_hz
    source = tag.source
    if isinstance(source, ModbusSource):
        connection = next(c for c in config.connections.modbus if c.id == source.modbus)
        period_s = connection.poll_groups[source.poll_group] if source.poll_group else connection.poll_interval_s
    elif isinstance(source, OpcUaSource):
        # (the connection's publishing interval batches notifications; it does not thin samples)
        sampling_ms = source.sampling_interval_ms if source.sampling_interval_ms is not None else 0.0
        period_s = max(simulator_period_s, sampling_ms / 1000.0)
    else:
        period_s = simulator_period_s
    return max(1, int(round(max(period_s, simulator_period_s) * 1e6)))


def simulated_history(
    config: ServiceConfig,
    asset_ids: Sequence[str],
    start_us: int,
    duration_s: float,
    *,
    faults: Sequence = (),
    seed: int | None = None,
    batch_s: float = DEFAULT_BATCH_S,
) -> Iterator[ReadingBatch]:
    """Batches of the simulated plant for ``asset_ids`` over ``duration_s`` from
    ``start_us``, each tag sampled at its live rate, ``batch_s`` of one asset per
    batch, assets interleaved in event-time order. ``faults`` as for
    ``PlantSimulation`` (times relative to ``start_us``)."""
    assets = [config.asset(a) for a in asset_ids]
    missing = [a for a, cfg in zip(asset_ids, assets) if cfg is None]
    if missing:
        raise HistoryError(f"asset(s) {', '.join(missing)} are not in the configuration")
    simulation = PlantSimulation(
        [(a.id, SIMULATED_TYPES[a.type]) for a in assets],
        faults=faults,
        seed=config.simulator.seed if seed is None else seed,
        start_us=start_us,
        load_cycle_period_s=config.simulator.load_cycle_period_s,
    )
    plans = []
    for asset in assets:
        signals = simulation.signals(asset.id)
        tags = [t for t in asset.tags if t.id in signals]
        if not tags:
            raise HistoryError(f'asset "{asset.id}": none of its tags is a signal of a simulated {asset.type}')
        plans.append((asset, tags, np.array([tag_period_us(config, t) for t in tags], dtype=np.int64)))
    batch_us = int(batch_s * 1e6)
    end_us = start_us + int(duration_s * 1e6)
    # The simulation is vectorised: sample a minute of every asset at once, then
    # cut it into connector-sized batches (one asset, batch_s each), interleaved
    # across assets in event-time order as the connectors would send them.
    chunk_us = max(batch_us, (60_000_000 // batch_us) * batch_us)
    seq = 0
    for c0 in range(start_us, end_us, chunk_us):
        c1 = min(c0 + chunk_us, end_us)
        per_asset = []
        for asset, tags, periods in plans:
            ts_parts, index_parts = [], []
            for i, period in enumerate(periods):
                first = -(-c0 // period) * period  # first multiple of the period at or after c0
                ts = np.arange(first, c1, period, dtype=np.int64)
                ts_parts.append(ts)
                index_parts.append(np.full(ts.shape, i, dtype=np.uint16))
            ts_all = np.concatenate(ts_parts)
            tag_index = np.concatenate(index_parts)
            values, quality = simulation.sample(asset.id, ts_all)
            value = np.empty(ts_all.shape, dtype=np.float64)
            qual = np.empty(ts_all.shape, dtype=np.uint32)
            for i, tag in enumerate(tags):
                mask = tag_index == i
                value[mask] = values[tag.id][mask]
                qual[mask] = quality[tag.id][mask]
            order = np.argsort(ts_all, kind="stable")
            ts_all, tag_index, value, qual = ts_all[order], tag_index[order], value[order], qual[order]
            cuts = np.searchsorted(ts_all, np.arange(c0 + batch_us, c1, batch_us))
            per_asset.append((asset, [t.id for t in tags], np.split(np.arange(len(ts_all)), cuts), ts_all, tag_index, value, qual))
        n_batches = max(len(item[2]) for item in per_asset)
        for k in range(n_batches):
            for asset, tag_ids, pieces, ts_all, tag_index, value, qual in per_asset:
                if k >= len(pieces) or len(pieces[k]) == 0:
                    continue
                rows = pieces[k]
                seq += 1
                yield ReadingBatch.from_columns(asset.id, tag_ids, tag_index[rows], ts_all[rows], value[rows], qual[rows], seq=seq)
