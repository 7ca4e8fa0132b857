"""`edgewatch bench-analytics` and `edgewatch bench-gpu`: the figures of stream 1
(fast rules), stream 2 (windows, features, detectors) and the LSTM autoencoder
on a GPU, written to BENCHMARKS.md.

The measurements themselves live next to the code they measure
(edgewatch.bench_features, bench_rules, bench_detectors, bench_gpu); this module
runs them in one go and writes one section per run, naming the machine.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from edgewatch.bench import machine_description, print_rows, replace_section


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def run_analytics(output: Path, console: Console, quick: bool = False) -> list[tuple[str, str, str, str]]:
    from edgewatch.bench_detectors import bench_detectors
    from edgewatch.bench_features import bench_features
    from edgewatch.bench_rules import bench_fast_rules

    rows: list[tuple[str, str, str, str]] = []
    console.print("fast rules: 100 assets x 20 tags at 10 Hz, 0.5 s batches ...")
    for row in bench_fast_rules(seconds=60 if quick else 180):
        rows.append(
            (
                f"fast path, {row['measure']}",
                f"p99 {row['p99_ms']:.3f} ms",
                f"p50 {row['p50_ms']:.3f} ms, max {row['max_ms']:.1f} ms; {_n(row['samples_per_s'])} samples/s over {row['batches']:,} batches",
                "reading to evidence p99 <= 5 ms" if row["measure"].startswith("Pipeline") else ("" if "stream 2" not in row["measure"] else "runs after the evidence is sent"),
            )
        )
    console.print("windows and features: 100 assets x 20 tags at 10 Hz, scales 1s, 10s, 1m ...")
    for row in bench_features(seconds=60 if quick else 120, repeats=1 if quick else 3):
        rows.append((row["what"], f"{_n(row['samples/s'])} samples/s", f"{_n(row['windows/s'])} windows/s", ""))
    console.print("detectors: 176 features (a pump's 11 tags x 16), 5,000 training windows, one thread ...")
    for row in bench_detectors(features=176, train_windows=2000 if quick else 5000, min_s=0.3 if quick else 1.0):
        learn = f", score+learn {_n(row['learn_windows_per_s'])}/s" if "learn_windows_per_s" in row else ""
        rows.append(
            (
                f"{row['detector']}, batch {row['batch']}",
                f"{_n(row['model_windows_per_s'])} windows/s",
                f"calibrated, one thread; raw score {_n(row['score_windows_per_s'])}/s{learn}; fit+calibrate {row['fit_s']:.2f} s",
                "",
            )
        )
    print_rows("stream 1 and stream 2", rows, console)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Measured {when} with `edgewatch bench-analytics{' --quick' if quick else ''}` on: {machine_description(kafka=False)}.",
        "Time is CPU time of one core where the measure says one thread; other work on the machine inflates max and p99.",
    ]
    replace_section(output, "analytics", lines, rows, "## Fast rules, windows, features and detectors (`edgewatch bench-analytics`)")
    return rows


def write_gpu_section(results_json: Path, output: Path, console: Console) -> list[tuple[str, str, str, str]]:
    """Render the JSON of `python -m edgewatch.bench_gpu --out FILE` (run where the GPU is)."""
    doc = json.loads(results_json.read_text())
    machine, config = doc["machine"], doc["config"]
    rows = []
    for result in doc["results"]:
        target = ""
        if result["batch"] >= 1024:
            target = f"GPU >= 20x one CPU core: {'met' if result['speedup'] >= 20 else 'NOT met'}"
        rows.append(
            (
                f"{result['mode']}, batch {result['batch']}",
                f"{result['speedup']:.1f}x",
                f"GPU {_n(result['gpu_seq_per_s'])} seq/s, one CPU core {_n(result['cpu_seq_per_s'])} seq/s",
                target,
            )
        )
    tolerance = doc.get("tolerance", {})
    for key, what in (("cpu_vs_cuda", "one model, 4,096 sequences"), ("cpu_vs_cuda_histories", "histories of 4 assets")):
        check = doc.get(key) or {}
        scores = check.get("scores", {})
        if scores:
            rows.append(
                (
                    f"CPU vs CUDA scores, {what}",
                    f"max rel. diff {scores['max_rel_diff']:.2e}",
                    f"tolerance {tolerance.get('rtol', '?')} relative + {tolerance.get('atol', '?')} absolute; "
                    f"worst {scores['worst_vs_tolerance']:.2f} of it",
                    "within" if check.get("within_tolerance") else "OUTSIDE the stated tolerance",
                )
            )
    print_rows("LSTM autoencoder, GPU vs one CPU core", rows, console)
    lines = [
        f"Measured with `python -m edgewatch.bench_gpu --features {config['features']} --out {results_json.name}` on: "
        f"{machine.get('gpu')} and one thread of {machine.get('cpu_model')} ({machine.get('cpu_count')} threads); "
        f"torch {machine.get('torch')}, Python {machine.get('python')}; rendered with `edgewatch bench-gpu {results_json}`.",
        f"Model: sequences of {config['sequence_length']} windows x {config['features']} features, LSTM hidden {config['hidden']}. "
        "train = optimizer steps; infer = score_sequences from host float64 (independent sequences); "
        "forward = the network alone on device-resident input; history = score(X) of one asset's history, end to end.",
    ]
    name = f"gpu-{config['features']}"
    replace_section(output, name, lines, rows, f"## LSTM autoencoder on a GPU, {config['features']} features (`edgewatch.bench_gpu`)")
    return rows


def default_output() -> Path:
    from edgewatch.localkafka import REPO

    return Path(os.environ.get("EDGEWATCH_BENCHMARKS", REPO / "BENCHMARKS.md"))
