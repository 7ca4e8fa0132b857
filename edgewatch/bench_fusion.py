"""Fusion cost: one update of one asset's fault filter, in microseconds.

An update is what the worker does per closed 1 s window of an asset: hand the
new score messages to ``AssetFusion.observe_scores`` (and rule events and the
window's bad-sample share, when there are any) and call ``step``. The evidence
is shaped like the real thing: an 11-tag pump (the simulator's tags), three
detectors (isolation forest, LSTM autoencoder, half-space trees) at three
scales, so every update carries three 1 s scores, every 10th three more 10 s
scores and every 60th three 1 min scores as well (nine at once). P-values are
uniform (normal operation) except in fault episodes (a few minutes of bearing
wear, then of cavitation: anomalous p-values, the fault's primary tags on top),
and now and then a rule event arrives. The messages are built before timing.

Rows: the whole update (observe + step), ``step`` alone, and the updates that
carried nine scores. p99 and max on a shared machine include scheduling noise;
p50 is the code's cost. Target: well under 1 ms per update.

Run: ``python -m edgewatch.bench_fusion [--updates 20000] [--no-write]``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rich.console import Console

from stream.config import AssetConfig
from stream.fusion import AssetFusion, FaultNetwork, FusionSettings

PUMP_TAGS = (
    "flow",
    "suction_pressure",
    "discharge_pressure",
    "motor_current",
    "speed",
    "bearing_temp_de",
    "bearing_temp_nde",
    "motor_winding_temp",
    "seal_leak_flow",
    "vibration_rms",
    "vibration_kurtosis",
)
DETECTORS = ("isolation_forest", "lstm_autoencoder", "halfspace_trees")
#: 2026-03-14T08:15:00Z
START_US = 1_773_476_100_000_000
S = 1_000_000
EPISODES = (  # (start, end) in updates, primary tags
    (3_000, 3_300, ("vibration_kurtosis", "vibration_rms", "bearing_temp_de")),
    (11_000, 11_240, ("suction_pressure", "discharge_pressure", "vibration_rms")),
)


def _score(asset_id: str, detector: str, scale: str, end_us: int, p: float, tops, rng) -> dict:
    shares = rng.dirichlet(np.ones(len(PUMP_TAGS)))
    shares = np.sort(shares)[::-1][: len(tops)]
    return {
        "schema_version": 1,
        "kind": "score",
        "asset_id": asset_id,
        "asset_type": "pump",
        "detector": detector,
        "model_version": 3,
        "scale": scale,
        "window_end_us": end_us,
        "raw_score": 0.0,
        "p_value": p,
        "score": 1.0 - p,
        "threshold": 0.999,
        "false_alarm_rate": 0.001,
        "anomalous": p <= 0.001,
        "top_tags": [
            {"id": t, "contribution": float(c), "feature": "mean", "value": 1.2, "normal_range": [0.0, 1.0]} for t, c in zip(tops, shares)
        ],
        "replayed": False,
    }


def build_updates(n: int, asset_id: str = "pump-1", seed: int = 0) -> list[tuple[int, list[dict], list[tuple], float | None]]:
    """(event time, score messages, rule events, bad fraction) per update."""
    rng = np.random.default_rng(seed)
    updates = []
    for k in range(n):
        end = START_US + (k + 1) * S
        fault = next((tops for start, stop, tops in EPISODES if start <= k < stop), None)
        scales = ["1s"] + (["10s"] if k % 10 == 9 else []) + (["1m"] if k % 60 == 59 else [])
        messages = []
        for scale in scales:
            for detector in DETECTORS:
                if fault is not None:
                    p, tops = float(10 ** rng.uniform(-6, -2)), fault
                else:
                    p, tops = float(rng.uniform()), tuple(rng.choice(PUMP_TAGS, 3, replace=False))
                messages.append(_score(asset_id, detector, scale, end, p, tops, rng))
        rules = []
        if rng.uniform() < 0.01:
            tag = str(rng.choice(PUMP_TAGS))
            rules = [("limit", tag, "high", "active", end), ("limit", tag, "high", "cleared", end + S // 2)]
        bad = float(rng.uniform(0, 0.2)) if rng.uniform() < 0.01 else None
        updates.append((end, messages, rules, bad))
    return updates


def run_bench_fusion(updates: int = 20_000, output: Path | None = None, console: Console | None = None, seed: int = 0) -> list[tuple[str, str, str, str]]:
    """Time ``updates`` fusion updates of one pump; print the figures and, with ``output``,
    write them to the "fusion" section of that file (BENCHMARKS.md)."""
    from edgewatch.bench import machine_description, print_rows, replace_section

    console = console or Console()
    asset = AssetConfig(id="pump-1", type="pump", tags=[{"id": t, "normal_range": [0.0, 1.0]} for t in PUMP_TAGS])
    settings = FusionSettings()
    fusion = AssetFusion(asset, FaultNetwork.for_asset_type("pump", settings), settings)
    plan = build_updates(updates, asset.id, seed)
    for end, messages, rules, bad in build_updates(200, asset.id, seed + 1):  # warm-up: caches, first transitions
        fusion.observe_scores(messages)
        fusion.step(end - 10**9)
    fusion = AssetFusion(asset, fusion.network, settings)

    total = np.empty(updates)
    step_only = np.empty(updates)
    nine = []
    named = 0
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()  # a collection in the middle of one update is the runtime's cost, not fusion's
    try:
        for i, (end, messages, rules, bad) in enumerate(plan):
            t0 = clock()
            fusion.observe_scores(messages)
            if rules:
                fusion.observe_rules(rules)
            if bad is not None:
                fusion.observe_quality(bad)
            t1 = clock()
            result = fusion.step(end)
            t2 = clock()
            total[i] = (t2 - t0) / 1e3
            step_only[i] = (t2 - t1) / 1e3
            if len(messages) == 9:
                nine.append(total[i])
            named += result.top_state != "normal"
    finally:
        gc.enable()

    def figures(values) -> tuple[str, str]:
        values = np.asarray(values)
        p50, p99 = np.percentile(values, [50, 99])
        return f"p50 {p50:,.1f} µs", f"p99 {p99:,.1f} µs, mean {values.mean():,.1f} µs, max {values.max():,.0f} µs"

    rows = [
        (f"one update: observe 3-9 scores + step ({updates:,} updates)", *figures(total), "target well under 1 ms"),
        ("step alone (filter, evidence counts, result and message)", *figures(step_only), ""),
        (f"updates with 9 scores (1 s, 10 s and 1 min windows closing together, {len(nine)})", *figures(nine), ""),
        ("updates per second, one core (1 / mean)", f"{1e6 / total.mean():,.0f}", "", ""),
    ]
    print_rows("fusion", rows, console)
    machine = machine_description(kafka=False)
    console.print(f"on {machine}; {named:,} of {updates:,} updates named a fault (the two fault episodes and their onsets)")
    if output is not None:
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        lines = [
            "Reproduce: `scripts/bootstrap.sh && .venv/bin/edgewatch bench-fusion` (no Kafka; under a minute).",
            f"Measured {when} on: {machine}.",
            f"One pump (11 tags), three detectors at 1 s / 10 s / 1 min scales, {updates:,} updates of one 1 s window each, "
            "one thread, garbage collector off while timing; p-values uniform except two fault episodes.",
        ]
        replace_section(output, "fusion", lines, rows, "## Bayesian fusion (`edgewatch bench-fusion`)")
        console.print(f"written to {output}")
    return rows


def main(argv: list[str]) -> None:
    from edgewatch.bench_analytics import default_output

    parser = argparse.ArgumentParser(prog="python -m edgewatch.bench_fusion", description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=20_000, help="fusion updates to time (default 20,000)")
    parser.add_argument("--output", type=Path, default=None, help="the file to write the section into (default BENCHMARKS.md)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    run_bench_fusion(args.updates, None if args.no_write else (args.output or default_output()))


if __name__ == "__main__":
    main(sys.argv[1:])
