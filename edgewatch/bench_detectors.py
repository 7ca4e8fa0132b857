"""Detector benchmark: fit time and scoring throughput on a synthetic plant.

Each detector is trained on ``train_windows`` windows of ``features`` features
(``plant_windows``: tags that follow a daily-like load cycle and each other), then
scores batches of 1, 64 and 1024 windows. One CPU thread for everything
(torch.set_num_threads(1) when torch is there), so figures compare detectors and
show what one core of an edge box does. Batch 1 is the stream's case: one
window of one asset at a time; 1024 is a replay or a backfill.

Per detector and batch size:

* ``score``: the detector's raw score alone (windows/s);
* ``model``: ``CalibratedModel.score``: raw score, contributions, p-values
  (what the worker calls);
* ``learn`` (online detectors): ``CalibratedModel.score_and_learn``, the online
  detector's stream step.

``plant_windows`` is also the synthetic plant of the detector contract tests.
Run: ``python -m edgewatch.bench_detectors``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
from scipy.signal import lfilter

#: tag ids of the synthetic plant, repeated with a number when more are needed.
PLANT_TAGS = ["bearing_temp_de", "bearing_temp_nde", "motor_current", "flow", "pressure_out", "vibration_rms", "speed", "oil_temp"]
#: features per tag, in this order, extended with further FFT bands when more are needed.
PLANT_FEATURES = ["mean", "std", "max", "min", "rms", "fft_1", "fft_2", "fft_3"]
#: windows per load cycle (a "day" of windows).
CYCLE_WINDOWS = 120
BATCH_SIZES = (1, 64, 1024)


def plant_names(n_tags: int, features_per_tag: int) -> list[str]:
    """``"<tag>.<feature>"`` column names of the synthetic plant."""
    tags = [PLANT_TAGS[i] if i < len(PLANT_TAGS) else f"{PLANT_TAGS[i % len(PLANT_TAGS)]}_{i // len(PLANT_TAGS)}" for i in range(n_tags)]
    features = [PLANT_FEATURES[j] if j < len(PLANT_FEATURES) else f"fft_{j - 4}" for j in range(features_per_tag)]
    return [f"{tag}.{feature}" for tag in tags for feature in features]


def plant_windows(windows: int, n_tags: int = 6, features_per_tag: int = 4, seed: int = 0, start: int = 0) -> tuple[np.ndarray, list[str]]:
    """Normal window features of one synthetic asset: (windows x n_tags*features_per_tag) and the names.

    A load follows a daily-like cycle of ``CYCLE_WINDOWS`` windows with slow
    random wander; each tag's level follows the load with its own gain, plus
    noise shared by all tags (the asset as a whole) and its own; each feature is
    an affine function of its tag's level plus a little noise. So features are
    correlated within a tag, tags with each other, and all of them with the load:
    a fault that moves one tag off the load breaks those relations. The plant's
    constants are fixed; ``seed`` draws the noise, ``start`` is the index of the
    first window, so held-out data continues the same cycle.
    """
    constants = np.random.default_rng(12345)
    base = constants.uniform(20, 80, n_tags)
    gain = constants.uniform(5, 25, n_tags)
    tag_noise = constants.uniform(0.5, 1.5, n_tags)
    offset = constants.uniform(-5, 5, features_per_tag)
    slope = constants.uniform(0.5, 1.5, (n_tags, features_per_tag))
    feature_noise = constants.uniform(0.2, 0.6, (n_tags, features_per_tag))

    rng = np.random.default_rng(seed)
    t = np.arange(start, start + windows)
    # Wander around the cycle: AR(1), standard deviation about 0.02 of full load.
    wander = lfilter([1.0], [1.0, -0.9], rng.normal(0, 0.01, windows))
    load = 0.6 + 0.3 * np.sin(2 * np.pi * t / CYCLE_WINDOWS) + wander
    shared = rng.normal(size=windows)
    level = base + gain * load[:, None] + tag_noise * (0.6 * shared[:, None] + 0.8 * rng.normal(size=(windows, n_tags)))
    X = offset + slope * level[:, :, None] + feature_noise * rng.normal(size=(windows, n_tags, features_per_tag))
    return X.reshape(windows, n_tags * features_per_tag), plant_names(n_tags, features_per_tag)


def _throughput(call, X: np.ndarray, batch: int, min_s: float) -> float:
    """Windows per second of ``call`` on consecutive batches of ``X``, for at least ``min_s``."""
    batches = [X[i : i + batch] for i in range(0, X.shape[0] - batch + 1, batch)] or [X[:batch]]
    call(batches[0])  # warm caches and lazy imports
    done, calls, started = 0, 0, time.perf_counter()
    while True:
        chunk = batches[calls % len(batches)]
        call(chunk)
        done += chunk.shape[0]
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_s and calls >= 3:
            return done / elapsed


def bench_detectors(
    features: int = 60,
    train_windows: int = 5000,
    detectors: dict[str, dict] | None = None,
    min_s: float = 1.0,
    seed: int = 0,
) -> list[dict]:
    """Fit and score every available detector; one dict per detector and batch size.

    ``features``: columns, in tags of 6 features (a multiple of 6 gives exactly
    that many). ``detectors``: name -> constructor settings (default: every detector in
    ``detectors.DETECTORS`` with its defaults; the LSTM only if torch imports).
    Each row: detector, settings, fit_s (fit + calibration), batch and
    score / model / learn windows per second (learn: online detectors only).
    """
    from detectors import DETECTORS, detector_class
    from detectors.model import CalibratedModel, fit_calibrated

    chosen = detectors if detectors is not None else {name: {} for name in DETECTORS}
    per_tag = min(6, features)
    X, names = plant_windows(train_windows + 2048, n_tags=max(1, features // per_tag), features_per_tag=per_tag, seed=seed)
    history, fresh = X[:train_windows], X[train_windows:]
    rows = []
    with one_thread():
        for name, settings in chosen.items():
            try:
                cls = detector_class(name)
            except ImportError:
                continue  # torch missing: the LSTM is optional
            if name == "lstm_autoencoder":
                settings = {"device": "cpu", **settings}
            started = time.perf_counter()
            model, _ = fit_calibrated(cls(**settings), history, names, false_alarm_rate=0.001, seed=seed)
            fit_s = time.perf_counter() - started
            for batch in BATCH_SIZES:
                row = {
                    "detector": name,
                    "settings": settings,
                    "features": len(names),
                    "train_windows": train_windows,
                    "fit_s": round(fit_s, 3),
                    "batch": batch,
                    "score_windows_per_s": round(_throughput(model.detector.score, fresh, batch, min_s)),
                    "model_windows_per_s": round(_throughput(model.score, fresh, batch, min_s)),
                }
                if model.detector.learns_online:
                    # A separate model learns, so the one above scores the same at every batch size.
                    learner = CalibratedModel.start_online(cls(**settings), names, 0.001, warmup=0, seed=seed)
                    learner.learn(history[:1000])
                    row["learn_windows_per_s"] = round(_throughput(learner.score_and_learn, fresh, batch, min_s))
                rows.append(row)
    return rows


@contextmanager
def one_thread() -> Iterator[None]:
    """BLAS / OpenMP pools (threadpoolctl, which scikit-learn brings) and torch limited to one thread."""
    from threadpoolctl import threadpool_limits

    try:
        import torch
    except ImportError:
        torch = None  # the LSTM is optional
    saved = torch.get_num_threads() if torch else None
    with threadpool_limits(limits=1):
        if torch:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if torch:
                torch.set_num_threads(saved)


def main() -> None:
    """Print the benchmark table."""
    from rich.console import Console
    from rich.table import Table

    from edgewatch.bench import machine_description

    console = Console(width=max(100, Console().width))
    console.print(f"Synthetic plant, 60 features, 5,000 training windows, one CPU thread; {machine_description(kafka=False)}")
    table = Table(
        title="edgewatch detectors",
        caption="fit: fit + calibrate; windows/s: score = raw score, model = CalibratedModel.score "
        "(raw, p-value, contributions), learn = score_and_learn (online detectors)",
    )
    for column in ("detector", "fit", "batch", "score/s", "model/s", "learn/s"):
        table.add_column(column, justify="left" if column == "detector" else "right", no_wrap=True)
    for row in bench_detectors():
        learn = f"{row['learn_windows_per_s']:,}" if "learn_windows_per_s" in row else ""
        table.add_row(
            row["detector"],
            f"{row['fit_s']:.2f} s",
            str(row["batch"]),
            f"{row['score_windows_per_s']:,}",
            f"{row['model_windows_per_s']:,}",
            learn,
        )
    console.print(table)


if __name__ == "__main__":
    main()
