"""`edgewatch train`: fit the detectors of an asset or an asset type from history.

History (stream.history) is replayed through the worker's own pipeline
(stream.replay) with the detectors off, which yields exactly the window
features the worker will compute live. Per detector and scale the windows are
split in event-time order: the first part fits the model, the next calibrates
its scores into tail probabilities (conformal: windows the model did not see),
and the last part validates: its share of windows called anomalous is the
false-alarm rate to expect on normal data. The models go to the registry as one
new version per detector, made active unless told otherwise.

A target is an asset id (``pump-1``) or an asset type (``type:pump``); a type
model is trained on every configured asset of the type and serves each of them
that has no model of its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from stream.config import AssetConfig, BadQualityRuleSettings, LimitRuleSettings, RuleSettings, RuleSwitch, ServiceConfig
from stream.features import FeatureSpec
from stream.pipeline import Pipeline
from stream.replay import replay
from stream.wire import ReadingBatch, utc_iso

log = logging.getLogger(__name__)

TRAINED_DETECTORS = ("isolation_forest", "lstm_autoencoder")
#: fewer normal windows than this at a scale cannot fit and calibrate a model there
MIN_WINDOWS = 120  # 25 % of them calibrate, and calibration needs at least 30


class TrainingError(ValueError):
    """Training cannot go ahead. The text says what to change."""


def target_assets(config: ServiceConfig, target: str) -> list[AssetConfig]:
    """The configured assets a target covers: ``pump-1`` or ``type:pump``."""
    if target.startswith("type:"):
        kind = target[len("type:") :]
        assets = [a for a in config.assets if a.type == kind]
        if not assets:
            types = ", ".join(sorted({a.type for a in config.assets}))
            raise TrainingError(f"no configured asset has type {kind!r} (types in the configuration: {types})")
        return assets
    asset = config.asset(target)
    if asset is None:
        raise TrainingError(f"no asset {target!r} in the configuration (assets: {', '.join(a.id for a in config.assets)})")
    return [asset]


@dataclass
class FeatureHistory:
    """The window features of one asset at one scale, in event-time order."""

    asset_id: str
    scale: str
    names: list[str]
    window_end_us: np.ndarray
    X: np.ndarray  # (windows, len(names))
    tag_means: np.ndarray  # (windows, tags): each tag's mean per window, for the summary


def collect_features(
    config: ServiceConfig, batches: Iterable[ReadingBatch], assets: Sequence[AssetConfig], on_batch: Callable | None = None
) -> dict[tuple[str, str], FeatureHistory]:
    """Replay history through the pipeline (rules and detectors off) and gather
    the feature vectors per (asset, scale)."""
    from stream.features import detector_matrix

    # Rules off: training wants the windows only, and alerts from history are noise here.
    rules_off = RuleSettings(
        limits=LimitRuleSettings(enabled=False),
        rate_of_change=RuleSwitch(enabled=False),
        flatline=RuleSwitch(enabled=False),
        bad_quality=BadQualityRuleSettings(enabled=False),
    )
    quiet = config.model_copy(update={"rules": rules_off})
    pipeline = Pipeline(quiet, max_future_check=False, detection="features", assets=[a.id for a in assets])
    wanted = {a.id for a in assets}
    result = replay(quiet, (b for b in batches if b.asset_id in wanted), pipeline=pipeline, keep_windows=True, keep_messages=False, on_batch=on_batch)
    spec = FeatureSpec(config.features)
    mean_column = spec.per_tag.index("mean")
    grouped: dict[tuple[str, str], list] = {}
    for asset_id, window_result in result.windows:
        grouped.setdefault((asset_id, window_result.scale), []).append(window_result)
    out = {}
    for (asset_id, scale), items in grouped.items():
        asset = config.asset(asset_id)
        feats = np.stack([item.features for item in items])
        out[(asset_id, scale)] = FeatureHistory(
            asset_id=asset_id,
            scale=scale,
            names=spec.vector_names([t.id for t in asset.tags]),
            window_end_us=np.array([item.window.end_us for item in items], dtype=np.int64),
            X=detector_matrix(feats, spec),
            tag_means=feats[:, :, mean_column],
        )
    return out


def _stack_assets(histories: list[FeatureHistory]) -> tuple[list[str], list[np.ndarray]]:
    """Align several assets' matrices to one column list (the first asset's, then
    any extra names), so a type model sees every tag the type's assets have."""
    names: list[str] = []
    for history in histories:
        names.extend(n for n in history.names if n not in set(names))
    position = {n: i for i, n in enumerate(names)}
    matrices = []
    for history in histories:
        aligned = np.full((len(history.X), len(names)), np.nan)
        aligned[:, [position[n] for n in history.names]] = history.X
        matrices.append(aligned)
    return names, matrices


@dataclass
class TrainedDetector:
    detector: str
    version: int
    path: str
    metrics: dict
    announcement: dict


@dataclass
class TrainingSummary:
    target: str
    assets: list[str]
    trained_from_us: int
    trained_to_us: int
    windows: dict[str, int]
    normal_ranges: dict[str, dict[str, tuple[float, float]]]  # asset -> tag -> (low, high) of the window means
    detectors: list[TrainedDetector] = field(default_factory=list)
    seconds: float = 0.0


def make_detector(config: ServiceConfig, name: str, device: str | None = None):
    from detectors import detector_class

    cls = detector_class(name)
    if name == "isolation_forest":
        s = config.detectors.isolation_forest
        return cls(n_estimators=s.n_estimators, max_samples=s.max_samples)
    if name == "lstm_autoencoder":
        s = config.detectors.lstm_autoencoder
        return cls(
            sequence_length=s.sequence_length, hidden_size=s.hidden_size, epochs=s.epochs, device=device or s.device, micro_batch=s.micro_batch
        )
    raise TrainingError(f"{name} learns online and needs no training; trainable detectors: {', '.join(TRAINED_DETECTORS)}")


def train(
    config: ServiceConfig,
    target: str,
    batches: Iterable[ReadingBatch],
    *,
    detectors: Sequence[str] | None = None,
    registry_dir: str | None = None,
    activate: bool = True,
    seed: int = 0,
    source: str = "history",
    on_batch: Callable | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> TrainingSummary:
    """Fit, calibrate, validate and register the detectors for ``target``."""
    from detectors.model import fit_calibrated
    from detectors.registry import ModelRegistry

    started = time.monotonic()
    assets = target_assets(config, target)
    wanted = list(detectors) if detectors else [
        name for name in TRAINED_DETECTORS if getattr(config.detectors, name).enabled
    ]
    if not detectors and "lstm_autoencoder" in wanted and not _torch_available():
        # An edge image without torch (the Dockerfile leaves it out) still trains the rest.
        log.warning("torch is not installed: the LSTM autoencoder is not trained (pip install 'edgewatch[torch]')")
        wanted.remove("lstm_autoencoder")
    for name in wanted:
        if name not in TRAINED_DETECTORS:
            raise TrainingError(f"unknown detector {name!r}; trainable detectors: {', '.join(TRAINED_DETECTORS)}")
    histories = collect_features(config, batches, assets, on_batch=on_batch)
    if not histories:
        raise TrainingError(f"the history holds no window of {', '.join(a.id for a in assets)}: check the time range and the asset ids")
    first = min(int(h.window_end_us[0]) for h in histories.values())
    last = max(int(h.window_end_us[-1]) for h in histories.values())
    scales = [s.name for s in config.detector_scales]
    windows = {scale: sum(len(h.X) for (a, s), h in histories.items() if s == scale) for scale in scales}
    summary = TrainingSummary(
        target=target,
        assets=[a.id for a in assets],
        trained_from_us=first,
        trained_to_us=last,
        windows=windows,
        normal_ranges=_normal_ranges(config, assets, histories, scales[0]),
    )
    registry = ModelRegistry(registry_dir or config.detectors.registry_dir)
    spec = FeatureSpec(config.features)
    far = config.detectors.false_alarm_rate
    for name in wanted:
        detector_scales = [config.detectors.lstm_autoencoder.scale] if name == "lstm_autoencoder" else scales
        models, metrics = {}, {}
        for scale in detector_scales:
            parts = [histories[(a.id, scale)] for a in assets if (a.id, scale) in histories]
            n = sum(len(p.X) for p in parts)
            if n < MIN_WINDOWS:
                log.warning("%s at %s: only %d windows of history (need %d); skipped", name, scale, n, MIN_WINDOWS)
                metrics[scale] = {"skipped": f"{n} windows, need {MIN_WINDOWS}"}
                continue
            if on_stage:
                on_stage(f"fitting {name} at {scale} on {n} windows")
            names, matrices = _stack_assets(parts)
            model, fit_metrics = fit_calibrated(
                make_detector(config, name), _concat_in_time(matrices), names, far, seed=seed, validation_fraction=0.2
            )
            models[scale] = model
            metrics[scale] = fit_metrics
        if not models:
            continue
        version = registry.save(
            target,
            name,
            models,
            feature_spec={
                "names": spec.per_tag,
                "detector_features": spec.detector_features,
                "autocorr_lag": config.features.autocorr_lag,
                "fft_bands": config.features.fft_bands,
                "window_scales": [s.model_dump() for s in config.windows.scales],
                "grace": config.windows.grace,
            },
            training={
                "from": utc_iso(first),
                "to": utc_iso(last),
                "from_us": first,
                "to_us": last,
                "assets": [a.id for a in assets],
                "windows": {scale: metrics.get(scale, {}).get("windows") for scale in models},
                "source": source,
                "seed": seed,
            },
            metrics=metrics,
        )
        if activate:
            registry.activate(target, name, version.version)
        summary.detectors.append(
            TrainedDetector(name, version.version, str(version.path), metrics, registry.announcement(version))
        )
    summary.seconds = time.monotonic() - started
    return summary


def _torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _concat_in_time(matrices: list[np.ndarray]) -> np.ndarray:
    """One asset: its matrix. Several: interleave them block-wise so that the
    time-ordered split (fit / calibrate / validate) takes the same span of time
    from every asset instead of whole assets."""
    if len(matrices) == 1:
        return matrices[0]
    parts = 20
    blocks = []
    for k in range(parts):
        for m in matrices:
            lo, hi = len(m) * k // parts, len(m) * (k + 1) // parts
            blocks.append(m[lo:hi])
    return np.concatenate(blocks)


def _normal_ranges(config, assets, histories, scale) -> dict[str, dict[str, tuple[float, float]]]:
    out = {}
    for asset in assets:
        history = histories.get((asset.id, scale))
        if history is None:
            continue
        ranges = {}
        for i, tag in enumerate(asset.tags):
            column = history.tag_means[:, i]
            column = column[np.isfinite(column)]
            if column.size:
                ranges[tag.id] = (float(np.quantile(column, 0.005)), float(np.quantile(column, 0.995)))
        out[asset.id] = ranges
    return out
