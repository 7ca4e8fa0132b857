"""How fast event-time windows and window features run on one core.

Synthetic but realistic input: ``assets`` assets of ``tags`` tags sampled at
``rate_hz`` for ``seconds`` of event time, each tag a sine (its own period and
phase) plus noise, timestamps with a few milliseconds of jitter, one sample in
a thousand with Bad quality. Samples go in the way the connectors send them:
one batch per asset per 0.5 s of event time, time-ordered, all assets in turn.
The input is generated (deterministic seed) before the clock starts.

Times are the CPU time of this process (numpy runs these on one core), the
best of ``repeats`` runs over the whole feed, so that other programs sharing
the machine do not move the figures much. Three figures:

* windows + features, computed once per round: every asset's batch of a round
  is windowed (stream.windows.AssetWindows, the default scales 1s, 10s, 1m),
  then one ``compute_features`` call covers the windows all of them closed;
  this is how a worker that gathers across assets (as for the detectors) runs;
* windows + features per batch: ``compute_features`` after every batch that
  closed something, the worst case of one call per Kafka message;
* windows alone.
"""

from __future__ import annotations

import time

import numpy as np

from stream.config import FeatureSettings, WindowSettings, duration_us
from stream.features import FeatureSpec, compute_features
from stream.windows import AssetWindows

#: 2026-03-14T08:00:00Z, where the synthetic feed starts
START_US = 1_773_475_200_000_000
BATCH_US = 500_000
QUALITY_BAD_SHARE = 0.001


def _feed(assets: int, tags: int, rate_hz: float, seconds: float, seed: int = 7) -> list[list[tuple]]:
    """rounds[r][a] = (ts_us, tag_position, value, good) of asset a's batch in round r."""
    rng = np.random.default_rng(seed)
    period_us = int(round(1e6 / rate_hz))
    n_per_tag = int(seconds * rate_hz)
    grid = START_US + np.arange(n_per_tag, dtype=np.int64) * period_us
    rounds_n = int(np.ceil(seconds * 1e6 / BATCH_US))
    rounds: list[list[tuple]] = [[] for _ in range(rounds_n)]
    for _ in range(assets):
        offset = rng.integers(0, period_us, size=tags)  # tags are not sampled in lockstep
        ts = grid[None, :] + offset[:, None] + rng.integers(-3_000, 3_000, size=(tags, n_per_tag))
        t_s = (ts - START_US) / 1e6
        level = rng.uniform(10, 100, size=(tags, 1))
        amplitude = rng.uniform(0.5, 5, size=(tags, 1))
        period_s = rng.uniform(0.5, 30, size=(tags, 1))
        phase = rng.uniform(0, 2 * np.pi, size=(tags, 1))
        value = level + amplitude * np.sin(2 * np.pi * t_s / period_s + phase) + rng.normal(0, 0.1, size=ts.shape) * amplitude
        tag = np.broadcast_to(np.arange(tags)[:, None], ts.shape)
        good = rng.random(ts.shape) >= QUALITY_BAD_SHARE
        ts, tag, value, good = ts.ravel(), tag.ravel(), value.ravel(), good.ravel()
        order = np.argsort(ts, kind="stable")  # the connectors send a batch time-ordered
        ts, tag, value, good = ts[order], tag[order], value[order], good[order]
        cuts = np.searchsorted(ts, START_US + np.arange(1, rounds_n) * BATCH_US)
        for r, (a, b) in enumerate(zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [ts.shape[0]])))):
            rounds[r].append((ts[a:b].copy(), tag[a:b].astype(np.intp), value[a:b].copy(), good[a:b].copy()))
    return rounds


def _run(rounds, assets: int, tags: int, mode: str) -> tuple[float, int, int]:
    """Feed every batch; returns (seconds, samples fed, windows closed)."""
    settings = WindowSettings()
    spec = FeatureSpec(FeatureSettings())
    windows = [AssetWindows(tags, settings.scales, duration_us(settings.grace)) for _ in range(assets)]
    samples = closed_count = 0
    started = time.process_time()
    for batches in rounds:
        closed_round = []
        for asset_windows, (ts, tag, value, good) in zip(windows, batches):
            closed = asset_windows.add(ts, tag, value, good, False)
            samples += ts.shape[0]
            if closed:
                closed_count += len(closed)
                if mode == "per batch":
                    compute_features(closed, tags, spec)
                elif mode == "per round":
                    closed_round.extend(closed)
        if closed_round:
            compute_features(closed_round, tags, spec)
    return time.process_time() - started, samples, closed_count


def bench_features(assets: int = 100, tags: int = 20, rate_hz: float = 10, seconds: float = 120, repeats: int = 3) -> list[dict]:
    """Windows + features over a synthetic feed; one row per way of running them.

    Rows: {"what": ..., "samples/s": ..., "windows/s": ...}; samples/s counts
    every sample fed (Bad ones too), windows/s every window closed (all scales).
    """
    rounds = _feed(assets, tags, rate_hz, seconds)
    _run(rounds[: max(1, len(rounds) // 10)], assets, tags, "per round")  # warm numpy's caches
    scales = ",".join(scale.name for scale in WindowSettings().scales)
    rows = []
    for mode, what in (
        ("per round", f"windows + features ({scales})"),
        ("per batch", f"windows + features ({scales}), features per batch"),
        ("windows", f"windows alone ({scales})"),
    ):
        runs = [_run(rounds, assets, tags, mode) for _ in range(max(1, repeats))]
        elapsed, samples, closed = min(runs)
        rows.append({"what": what, "samples/s": samples / elapsed, "windows/s": closed / elapsed})
    return rows


def main() -> None:
    assets, tags, rate_hz, seconds = 100, 20, 10, 120
    print(
        f"{assets} assets x {tags} tags at {rate_hz} Hz, {seconds} s of event time, "
        f"0.5 s batches per asset ({assets * tags * rate_hz * seconds:,.0f} samples), CPU time on one core"
    )
    for row in bench_features(assets, tags, rate_hz, seconds):
        print(f"  {row['what']:<50} {row['samples/s']:>14,.0f} samples/s {row['windows/s']:>12,.0f} windows/s")


if __name__ == "__main__":
    main()
