"""`python -m edgewatch.bench_gpu`: LSTM autoencoder throughput, one CPU core vs CUDA.

Measures, in sequences per second, at batch sizes 1, 64, 1024 and 8192:

* ``train``: optimizer steps (forward + masked MSE + backward + Adam), batches
  gathered by index from rows resident on the device, exactly as ``fit`` does;
* ``infer``: ``LstmAutoencoderDetector.score_sequences`` end to end, the worker's
  path: independent sequences of raw float64 features from host memory (batch x
  sequence_length x features), scaling, forward pass, scores and contributions
  back in host memory (``micro_batch`` = the batch size);
* ``history``: ``LstmAutoencoderDetector.score`` end to end on one asset's
  history of ``batch`` rows of raw float64 features in host memory (the offline
  replay / backtest path): ``batch`` sequences, one ending at each row, gathered
  on the device from rows sent once (``micro_batch`` = the batch size);
* ``forward``: the network alone on scaled float32 sequences already on the device.

The CPU runs on ONE thread (``torch.set_num_threads(1)``): the figure to size an
edge box per core. Each measurement warms up first, then times a fixed number of
iterations (fewer at huge CPU batches so the run stays bounded: the whole script
takes a few minutes on an H100 machine), repeats that and takes the median; CUDA
is timed with ``torch.cuda.synchronize()`` around the timed region.

Also trains one model on CUDA, saves it, and scores the same sequences with it on
CUDA and on the CPU: the max relative score difference is printed against the
tolerance the detector claims (``CPU_CUDA_RTOL`` / ``CPU_CUDA_ATOL``); the same
for histories (``score_histories`` of a few assets, CUDA vs CPU).

Only numpy, torch and ``detectors`` are imported, so it runs wherever torch does
(``PYTHONPATH=. python3 -m edgewatch.bench_gpu``), without the service's other
dependencies. ``--quick`` runs a small CPU-only version in seconds (a smoke test).
The summary table is the last thing printed; ``--out`` writes every number as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from detectors.lstm_autoencoder import (
    CPU_CUDA_ATOL,
    CPU_CUDA_RTOL,
    LstmAutoencoder,
    LstmAutoencoderDetector,
    compare_to_tolerance,
    exact_float32,
    reference_check,
    sliding_sequences,
    train_step,
)

BATCHES = (1, 64, 1024, 8192)
QUICK_BATCHES = (1, 64, 256)
MODES = ("train", "infer", "history", "forward")

# Timed iterations per repeat, by device and mode, for each batch size. CPU at
# 8192 takes ~0.1-1 s per iteration on one core, hence the small counts there.
ITERATIONS = {
    "cuda": {
        "train": {1: 100, 64: 100, 1024: 50, 8192: 20},
        "infer": {1: 200, 64: 200, 1024: 50, 8192: 10},
        "history": {1: 200, 64: 200, 1024: 50, 8192: 20},
        "forward": {1: 200, 64: 200, 1024: 100, 8192: 20},
    },
    "cpu": {
        "train": {1: 50, 64: 20, 1024: 5, 8192: 3},
        "infer": {1: 100, 64: 30, 1024: 5, 8192: 3},
        "history": {1: 100, 64: 30, 1024: 5, 8192: 3},
        "forward": {1: 100, 64: 30, 1024: 5, 8192: 3},
    },
}
QUICK_ITERATIONS = {"train": 3, "infer": 3, "history": 3, "forward": 3}
REPEATS = {"cuda": 5, "cpu": 3}
#: a CPU measurement whose warm-up shows one repeat would exceed this gets fewer iterations.
CPU_SECONDS_PER_REPEAT = 8.0


# -- synthetic plant ---------------------------------------------------------------------


def synthetic_plant(n_rows: int, n_features: int, seed: int, fault: tuple[int, int] | None = None) -> np.ndarray:
    """Window features of one asset: a few shared drivers (periodic, like a duty
    cycle) seen by every feature with its own offset, gain and lag, plus noise.
    ``fault=(first, last)`` decouples the first feature from the drivers there."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_rows) + rng.uniform(0, 1000)
    periods = np.array([40.0, 11.0, 97.0])
    mix = np.random.default_rng(1234).normal(size=(n_features, len(periods)))  # the same plant for every seed
    lags = np.random.default_rng(1235).integers(0, 4, n_features)
    offsets = 10 ** np.random.default_rng(1236).uniform(0, 3, n_features)
    gains = offsets * 0.1
    X = np.empty((n_rows, n_features))
    for j in range(n_features):
        drivers = np.sin(2 * np.pi * (t[:, None] - lags[j]) / periods)
        X[:, j] = offsets[j] + gains[j] * (drivers @ mix[j]) / np.sqrt(len(periods))
    X += rng.normal(0, 0.05, X.shape) * gains
    if fault is not None:
        first, last = fault
        X[first:last, 0] = offsets[0] + gains[0] * np.sin(2 * np.pi * t[first:last] / 17)
    return X


# -- timing ------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, batch: int, iterations: int, repeats: int, warmup: int) -> dict:
    """Median sequences/s over ``repeats`` runs of ``iterations`` calls of ``fn``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == "cpu":
        # Bound the run: estimate one call from a timed warm-up call.
        start = time.perf_counter()
        fn()
        one_call = time.perf_counter() - start
        iterations = max(1, min(iterations, int(CPU_SECONDS_PER_REPEAT / max(one_call, 1e-9))))
    rates = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        _sync(device)
        rates.append(batch * iterations / (time.perf_counter() - start))
    return {"seq_per_s": statistics.median(rates), "all_seq_per_s": rates, "iterations": iterations, "repeats": repeats}


def bench_device(device: torch.device, model_path: Path, args, batches: tuple[int, ...], log) -> dict:
    """Every (batch, mode) on one device -> {(batch, mode): measurement}."""
    d, T, H = args.features, args.sequence_length, args.hidden
    generator = torch.Generator().manual_seed(args.seed)
    results = {}
    repeats = 2 if args.quick else REPEATS[device.type]
    warmup = 1 if args.quick or device.type == "cpu" else 5
    detector = LstmAutoencoderDetector.load(model_path, device=str(device.type))
    raw_pool = synthetic_plant(max(batches) + T, d, seed=args.seed + 1)
    raw_pool[::97, 3 % d] = np.nan  # a few gaps, as in service
    for batch in batches:
        iterations = {mode: (QUICK_ITERATIONS[mode] if args.quick else ITERATIONS[device.type][mode].get(batch, 3)) for mode in MODES}

        # train: a fresh model and optimizer, batches gathered from device-resident rows like fit.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            model = LstmAutoencoder(d, H)
        model = model.to(device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        rows = torch.randn(max(4 * batch, 4096) + T, d, generator=generator).to(device)
        observed = torch.ones_like(rows)
        starts = torch.randint(0, rows.shape[0] - T, (batch,), generator=generator).to(device)
        index = starts[:, None] + torch.arange(T, device=device)

        def one_train_step():
            return train_step(model, optimizer, rows[index], observed[index])

        with exact_float32(device, deterministic=True):
            results[(batch, "train")] = measure(one_train_step, device, batch, iterations["train"], repeats, warmup)
        log(f"  {device.type:4s} batch {batch:5d} train   {results[(batch, 'train')]['seq_per_s']:14,.0f} seq/s")

        # infer: the worker's call, host numpy in and out.
        sequences = np.ascontiguousarray(sliding_sequences(raw_pool, T)[T : T + batch])
        detector.micro_batch = batch
        results[(batch, "infer")] = measure(lambda: detector.score_sequences(sequences), device, batch, iterations["infer"], repeats, warmup)
        log(f"  {device.type:4s} batch {batch:5d} infer   {results[(batch, 'infer')]['seq_per_s']:14,.0f} seq/s")

        # history: one asset's rows, host numpy in and out, a sequence ending at each row.
        history = np.ascontiguousarray(raw_pool[T : T + batch])
        results[(batch, "history")] = measure(lambda: detector.score(history), device, batch, iterations["history"], repeats, warmup)
        log(f"  {device.type:4s} batch {batch:5d} history {results[(batch, 'history')]['seq_per_s']:14,.0f} seq/s")

        # forward: the network alone on device-resident scaled sequences.
        scaled = torch.randn(batch, T, d, generator=generator).to(device)
        net = detector.model

        def one_forward():
            with torch.inference_mode():
                return net(scaled)

        with exact_float32(device):
            results[(batch, "forward")] = measure(one_forward, device, batch, iterations["forward"], repeats, warmup)
        log(f"  {device.type:4s} batch {batch:5d} forward {results[(batch, 'forward')]['seq_per_s']:14,.0f} seq/s")
        del model, optimizer, rows, observed, scaled
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def history_check(model_path: Path, histories: list[np.ndarray], device: str = "cuda", reference_device: str = "cpu", micro_batch: int | None = None) -> dict:
    """``score_histories`` of the same assets with one saved model on two devices:
    the worst score and contribution differences against the claimed tolerance
    (checks the history path's transfers and gathers on the device, not only the
    arithmetic)."""
    tested = LstmAutoencoderDetector.load(model_path, device=device, micro_batch=micro_batch)
    reference = LstmAutoencoderDetector.load(model_path, device=reference_device, micro_batch=micro_batch)
    got, want = tested.score_histories(histories), reference.score_histories(histories)

    result = {
        "device": str(tested.device),
        "reference_device": str(reference.device),
        "assets": len(histories),
        "rows": int(sum(len(X) for X in histories)),
        "micro_batch": tested.micro_batch,
        "scores": compare_to_tolerance(np.concatenate([s for s, _ in got]), np.concatenate([s for s, _ in want])),
        "contributions": compare_to_tolerance(np.concatenate([c for _, c in got]), np.concatenate([c for _, c in want])),
    }
    result["within_tolerance"] = result["scores"]["worst_vs_tolerance"] <= 1.0  # the claim is about scores, as in reference_check
    return result


# -- the run -----------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m edgewatch.bench_gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write every number to this JSON file")
    parser.add_argument("--features", type=int, default=60, help="features per window (columns of X)")
    parser.add_argument("--sequence-length", type=int, default=16, help="windows per sequence")
    parser.add_argument("--hidden", type=int, default=32, help="LSTM hidden size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="CPU only, small batches, few iterations: a smoke test in seconds")
    args = parser.parse_args(argv)
    for name in ("features", "sequence_length", "hidden"):
        if getattr(args, name) < (2 if name == "sequence_length" else 1):
            parser.error(f"--{name.replace('_', '-')} is too small")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()

    def log(text: str) -> None:
        print(text, flush=True)

    use_cuda = torch.cuda.is_available() and not args.quick
    batches = QUICK_BATCHES if args.quick else BATCHES
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        machine = {
            "cpu_model": cpu_model(),
            "cpu_threads_used": 1,
            "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if use_cuda else None,
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if use_cuda else None,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        }
        config = {"features": args.features, "sequence_length": args.sequence_length, "hidden": args.hidden, "batches": list(batches), "quick": args.quick, "seed": args.seed}
        log(f"LSTM autoencoder bench: {args.features} features, sequence_length {args.sequence_length}, hidden {args.hidden}")
        log(f"CPU: {machine['cpu_model']} (1 thread of {machine['cpu_count']}); GPU: {machine['gpu'] or 'none'}; torch {torch.__version__}")
        if not use_cuda:
            log("CUDA: " + ("skipped (--quick)" if args.quick else "torch sees no GPU, CPU figures only"))

        with tempfile.TemporaryDirectory(prefix="edgewatch-bench-gpu-") as tmp:
            # One trained model, on CUDA when there is one: both devices score it.
            train_device = "cuda" if use_cuda else "cpu"
            n_rows = 400 if args.quick else 20_000
            log(f"training the reference model on {train_device} ({n_rows} windows)...")
            trainer = LstmAutoencoderDetector(
                sequence_length=args.sequence_length,
                hidden_size=args.hidden,
                epochs=1 if args.quick else 3,
                device=train_device,
                batch_size=256,
            )
            train_start = time.perf_counter()
            trainer.fit(synthetic_plant(n_rows, args.features, seed=args.seed), [f"tag{j}.mean" for j in range(args.features)], seed=args.seed)
            fit_seconds = time.perf_counter() - train_start
            model_path = Path(tmp) / "lstm.pt"
            trainer.save(model_path)
            log(f"  fit: {fit_seconds:.1f} s, final loss {trainer.history[-1]:.4f}")

            devices = [torch.device("cpu")] + ([torch.device("cuda")] if use_cuda else [])
            measured = {}
            for device in devices:
                log(f"timing on {device.type}...")
                measured[device.type] = bench_device(device, model_path, args, batches, log)

            device_check = history_device_check = None
            if use_cuda:
                check_rows = synthetic_plant(4096, args.features, seed=args.seed + 2, fault=(2000, 2100))
                check_rows[::53, 1 % args.features] = np.nan
                device_check = reference_check(model_path, sliding_sequences(check_rows, args.sequence_length), device="cuda", reference_device="cpu")
                # Histories of several assets (one shorter than a sequence, one of a
                # single row), micro-batches shared between them, rows sent in pieces.
                histories = [
                    check_rows,
                    synthetic_plant(5, args.features, seed=args.seed + 3),
                    synthetic_plant(1, args.features, seed=args.seed + 4),
                    synthetic_plant(20_000, args.features, seed=args.seed + 5, fault=(9000, 9100)),
                ]
                history_device_check = history_check(model_path, histories, device="cuda", reference_device="cpu", micro_batch=1000)

        rows = []
        for batch in batches:
            for mode in MODES:
                cpu = measured["cpu"][(batch, mode)]
                gpu = measured.get("cuda", {}).get((batch, mode))
                rows.append(
                    {
                        "batch": batch,
                        "mode": mode,
                        "cpu_seq_per_s": cpu["seq_per_s"],
                        "gpu_seq_per_s": gpu["seq_per_s"] if gpu else None,
                        "speedup": gpu["seq_per_s"] / cpu["seq_per_s"] if gpu else None,
                        "cpu": cpu,
                        "gpu": gpu,
                    }
                )
        report = {
            "machine": machine,
            "config": config,
            "reference_fit": {"device": train_device, "windows": n_rows, "seconds": fit_seconds, "loss_per_epoch": trainer.history},
            "results": rows,
            "cpu_vs_cuda": device_check,
            "cpu_vs_cuda_histories": history_device_check,
            "tolerance": {"rtol": CPU_CUDA_RTOL, "atol": CPU_CUDA_ATOL},
            "wall_s": time.perf_counter() - started,
        }
        if args.out:
            args.out.write_text(json.dumps(report, indent=2))
            log(f"wrote {args.out}")

        if device_check:
            scores = device_check["scores"]
            verdict = "within" if device_check["within_tolerance"] else "OUTSIDE"
            log(
                f"CPU vs CUDA, one CUDA-trained model, {device_check['sequences']} sequences: max relative score difference "
                f"{scores['max_rel_diff']:.2e}, max absolute {scores['max_abs_diff']:.2e} "
                f"({verdict} the claimed {CPU_CUDA_RTOL:g} relative + {CPU_CUDA_ATOL:g} absolute; worst ratio to it {scores['worst_vs_tolerance']:.3f})"
            )
        if history_device_check:
            verdict = "within" if history_device_check["within_tolerance"] else "OUTSIDE"
            log(
                f"CPU vs CUDA, histories of {history_device_check['assets']} assets, {history_device_check['rows']} rows: max relative score "
                f"difference {history_device_check['scores']['max_rel_diff']:.2e} ({verdict} the claimed tolerance; worst ratio to it "
                f"{history_device_check['scores']['worst_vs_tolerance']:.3f}, contributions {history_device_check['contributions']['worst_vs_tolerance']:.3f})"
            )
        print(format_table(rows, machine), flush=True)
        return report
    finally:
        torch.set_num_threads(threads_before)


def format_table(rows: list[dict], machine: dict) -> str:
    lines = [
        f"sequences/s; cpu = 1 thread of {machine['cpu_model']}; gpu = {machine['gpu'] or 'none'}",
        f"{'batch':>6}  {'mode':<8}{'cpu seq/s':>14}{'gpu seq/s':>14}{'speedup':>10}",
    ]
    for row in rows:
        gpu = f"{row['gpu_seq_per_s']:14,.0f}" if row["gpu_seq_per_s"] is not None else f"{'-':>14}"
        speedup = f"{row['speedup']:9.1f}x" if row["speedup"] is not None else f"{'-':>10}"
        lines.append(f"{row['batch']:>6}  {row['mode']:<8}{row['cpu_seq_per_s']:14,.0f}{gpu}{speedup}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
