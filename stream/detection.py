"""Stream 2 for one asset: event-time windows -> features -> detectors -> scores.

``AssetDetection`` is plain Python with no Kafka in it: the worker calls it for
live data and ``stream.replay`` for history, so what is scored offline is what
runs online. Per closed window it gives a ``features`` message and, per
detector that covers the window's scale, a ``score`` message (calibrated
p-value, verdict, top tags with value and normal range).

Detectors:

* trained models from the registry (``isolation_forest``, ``lstm_autoencoder``),
  found per asset, else per asset type (``type:pump``); their columns are
  matched to this asset's features by name ("<tag>.<feature>"), so a type model
  serves assets whose tag lists differ a little (a missing feature is NaN, which
  detectors read as "no evidence");
* the online detector (``halfspace_trees``) for every asset from its first
  minutes: it scores each window, then learns it unless it called it anomalous
  (a fault must not become the new normal while it lasts).

The LSTM autoencoder's sequences are queued in a :class:`SequenceQueue` shared
by all assets and scored in micro-batches (one forward pass for many assets),
which is what makes the GPU pay off; the driver flushes the queue.

State kept in memory only: open windows, the online detectors and the last
sequence rows. A restarted worker starts them afresh (the first window after a
restart may be partial; it says how many samples it holds).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from stream.config import AssetConfig, ServiceConfig
from stream.features import FeatureSpec, compute_features, detector_matrix, features_message
from stream.windows import AssetWindows, ClosedWindow
from stream.wire import SCHEMA_VERSION, utc_iso

log = logging.getLogger(__name__)

ONLINE_DETECTOR = "halfspace_trees"
#: the online detector does not learn windows this unusual (p-value at or below):
#: half-space trees adapt within a few hundred windows, so learning the first
#: minutes of a fault would make it normal while it still lasts (measured on the
#: simulator: a cavitation scored p 0.0006 at onset and was "normal" a minute later).
#: 0.01 rather than the alarm rate, since the scores near onset sit just above it.
ONLINE_LEARN_GUARD_P = 0.01


@dataclass
class ScaledModel:
    """One trained model serving one asset at one scale."""

    detector: str
    scale: str
    version: int
    model: object  # detectors.model.CalibratedModel
    #: for each model feature, its column in this asset's feature vector (-1: the asset lacks it)
    columns: np.ndarray | None = None

    def align(self, X: np.ndarray) -> np.ndarray:
        if self.columns is None:
            return X
        aligned = X[:, np.maximum(self.columns, 0)]
        aligned[:, self.columns < 0] = np.nan
        return aligned


def column_map(model_names: Sequence[str], asset_names: Sequence[str]) -> np.ndarray | None:
    """Where each of the model's features sits in the asset's vector; None when identical."""
    if list(model_names) == list(asset_names):
        return None
    position = {name: i for i, name in enumerate(asset_names)}
    return np.array([position.get(name, -1) for name in model_names], dtype=np.intp)


@dataclass
class WindowResult:
    """What one closed window produced (the matrices are kept for training and replay)."""

    scale: str
    window: ClosedWindow
    features: np.ndarray  # (n_tags, len(spec.per_tag))


@dataclass
class DetectionOutput:
    features: list[dict] = field(default_factory=list)
    scores: list[dict] = field(default_factory=list)
    windows: list[WindowResult] = field(default_factory=list)

    def extend(self, other: "DetectionOutput") -> None:
        self.features.extend(other.features)
        self.scores.extend(other.scores)
        self.windows.extend(other.windows)


def score_message(
    asset: AssetConfig,
    detector: str,
    version: int,
    window: ClosedWindow,
    raw: float,
    p_value: float,
    false_alarm_rate: float,
    top_tags: list[dict],
) -> dict:
    """The message for the scores topic (schema stream/schemas/scores.schema.json)."""
    p_value = float(min(max(p_value, 0.0), 1.0))
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "score",
        "asset_id": asset.id,
        "asset_type": asset.type,
        "detector": detector,
        "model_version": int(version),
        "scale": window.scale,
        "window_start": utc_iso(window.start_us),
        "window_end": utc_iso(window.end_us),
        "window_end_us": int(window.end_us),
        "raw_score": float(raw) if np.isfinite(raw) else 0.0,
        "p_value": p_value,
        "score": 1.0 - p_value,
        "threshold": 1.0 - false_alarm_rate,
        "false_alarm_rate": false_alarm_rate,
        "anomalous": bool(p_value <= false_alarm_rate),
        "top_tags": [
            {
                "id": t["tag"],
                "contribution": float(min(max(t["contribution"], 0.0), 1.0)),
                "feature": t["feature"],
                "value": t["value"],
                "normal_range": t["normal_range"],
            }
            for t in top_tags
        ],
        "replayed": bool(window.replayed),
    }


@dataclass
class _PendingSequence:
    detection: "AssetDetection"
    model: ScaledModel
    window: ClosedWindow
    sequence: np.ndarray  # (T, d), aligned to the model
    row: np.ndarray  # (d,) the window's own (aligned) feature vector


class SequenceQueue:
    """Sequences waiting for the LSTM autoencoder, from all assets, scored in micro-batches."""

    def __init__(self, micro_batch: int = 1024):
        self.micro_batch = micro_batch
        self._pending: list[_PendingSequence] = []

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, item: _PendingSequence) -> None:
        self._pending.append(item)

    def flush(self) -> list[dict]:
        """Score everything queued; return the score messages in queue order."""
        pending, self._pending = self._pending, []
        if not pending:
            return []
        by_model: dict[int, list[int]] = {}
        for i, item in enumerate(pending):
            by_model.setdefault(id(item.model.model), []).append(i)
        messages: list[dict | None] = [None] * len(pending)
        for indices in by_model.values():
            scaled = pending[indices[0]].model
            calibrated = scaled.model
            sequences = np.stack([pending[i].sequence for i in indices])
            raw_all, contrib_all = [], []
            for start in range(0, len(sequences), self.micro_batch):
                raw, contrib = calibrated.detector.score_sequences(sequences[start : start + self.micro_batch])
                raw_all.append(raw)
                contrib_all.append(contrib)
            raw = np.concatenate(raw_all)
            contrib = np.concatenate(contrib_all)
            p = calibrated.calibrator.p_value(raw)
            for j, i in enumerate(indices):
                item = pending[i]
                top = item.detection.top_tags(calibrated, contrib[j], item.row)
                messages[i] = score_message(
                    item.detection.asset, scaled.detector, scaled.version, item.window, raw[j], p[j], calibrated.false_alarm_rate, top
                )
        return [m for m in messages if m is not None]


class AssetDetection:
    """Windows, features and detectors of one asset."""

    def __init__(
        self,
        asset: AssetConfig,
        config: ServiceConfig,
        spec: FeatureSpec,
        models: Sequence[ScaledModel] = (),
        sequences: SequenceQueue | None = None,
        online: bool = True,
        score: bool = True,
    ):
        from stream.config import duration_us

        self.asset = asset
        self.spec = spec
        self.n_tags = len(asset.tags)
        self.windows = AssetWindows(self.n_tags, config.windows.scales, duration_us(config.windows.grace))
        self.vector_names = spec.vector_names([t.id for t in asset.tags])
        self.detector_scales = {s.name for s in config.detector_scales} if score else set()
        self.top_k = config.detectors.top_tags
        self.false_alarm_rate = config.detectors.false_alarm_rate
        self.models: dict[str, list[ScaledModel]] = {}
        for model in models:
            model.columns = column_map(model.model.feature_names, self.vector_names)
            self.models.setdefault(model.scale, []).append(model)
        self.sequences = sequences
        self._sequence_rows: dict[int, np.ndarray] = {}  # id(ScaledModel) -> last T-1 aligned rows
        self.online: dict[str, object] = {}
        hst = config.detectors.halfspace_trees
        if online and hst.enabled:
            from detectors.halfspace import HalfSpaceTreesDetector
            from detectors.model import CalibratedModel

            for scale in config.detector_scales:
                detector = HalfSpaceTreesDetector(n_trees=hst.n_trees, height=hst.height, window_size=hst.window_size, seed=0)
                self.online[scale.name] = CalibratedModel.start_online(
                    detector, self.vector_names, self.false_alarm_rate, warmup=hst.warmup_windows
                )

    # -- driving -------------------------------------------------------------------

    def process(self, ts_us: np.ndarray, tag_position: np.ndarray, value: np.ndarray, good: np.ndarray, replayed: bool) -> DetectionOutput:
        return self._handle(self.windows.add(ts_us, tag_position, value, good, replayed))

    def flush(self) -> DetectionOutput:
        """Close every open window (the end of an offline replay)."""
        return self._handle(self.windows.flush())

    def _handle(self, closed: list[ClosedWindow]) -> DetectionOutput:
        out = DetectionOutput()
        if not closed:
            return out
        by_scale: dict[str, list[int]] = {}
        for i, window in enumerate(closed):
            by_scale.setdefault(window.scale, []).append(i)
        results: list[WindowResult | None] = [None] * len(closed)
        scores: list[list[dict]] = [[] for _ in closed]
        for scale, indices in by_scale.items():
            windows = [closed[i] for i in indices]
            feats = compute_features(windows, self.n_tags, self.spec)
            for j, i in enumerate(indices):
                results[i] = WindowResult(scale, closed[i], feats[j])
            if scale in self.detector_scales:
                X = detector_matrix(feats, self.spec)
                for j, message in self._score(scale, windows, X):
                    scores[indices[j]].append(message)
        for i, result in enumerate(results):
            out.windows.append(result)
            out.features.append(features_message(self.asset, result.window, result.features, self.spec))
            out.scores.extend(scores[i])
        return out

    def _score(self, scale: str, windows: list[ClosedWindow], X: np.ndarray):
        # the trained detectors' verdict per window, which the online detector heeds
        trained_p = np.ones(len(windows))
        for scaled in self.models.get(scale, ()):
            aligned = scaled.align(X)
            calibrated = scaled.model
            if getattr(calibrated.detector, "sequential", False) and self.sequences is not None:
                self._queue_sequences(scaled, windows, aligned)
                continue
            result = calibrated.score(aligned)
            trained_p = np.minimum(trained_p, result.p_value)
            for j, window in enumerate(windows):
                top = self.top_tags(calibrated, result.contributions[j], aligned[j])
                yield j, score_message(
                    self.asset, scaled.detector, scaled.version, window, result.raw[j], result.p_value[j], calibrated.false_alarm_rate, top
                )
        online = self.online.get(scale)
        if online is not None:
            # Score each window before learning it, one at a time: a batch of
            # windows closed together must not vouch for itself.
            for j, window in enumerate(windows):
                row = X[j : j + 1]
                result = online.score(row, contributions=online.ready)
                if online.ready:
                    p = float(result.p_value[0])
                    top = self.top_tags(online, result.contributions[0], row[0])
                    yield j, score_message(self.asset, ONLINE_DETECTOR, 0, window, result.raw[0], p, online.false_alarm_rate, top)
                    if p <= ONLINE_LEARN_GUARD_P:
                        continue  # do not learn what looks like a fault
                if trained_p[j] <= ONLINE_LEARN_GUARD_P:
                    # Nor what a trained model calls a fault, even while warming up: an
                    # online detector (re)started during a fault (a worker restart, a new
                    # asset) would otherwise learn the fault as normal and call the
                    # return to normal an anomaly (measured: a misalignment alarm after
                    # a cavitation ended, raised by a restart 140 s into the fault).
                    continue
                online.learn(row, result.raw)

    def _queue_sequences(self, scaled: ScaledModel, windows: list[ClosedWindow], aligned: np.ndarray) -> None:
        length = scaled.model.detector.sequence_length
        previous = self._sequence_rows.get(id(scaled))
        if previous is None:
            # The first windows: pad by repeating the first row, as the detector's own score() does.
            previous = np.repeat(aligned[:1], length - 1, axis=0)
        rows = np.concatenate([previous, aligned])
        start = len(previous)  # always length - 1
        for j, window in enumerate(windows):
            end = start + j + 1
            self.sequences.add(_PendingSequence(self, scaled, window, rows[end - length : end], aligned[j]))
        self._sequence_rows[id(scaled)] = rows[-(length - 1) :].copy()

    def top_tags(self, calibrated, contributions: np.ndarray, row: np.ndarray) -> list[dict]:
        low, high = calibrated.normal_range()
        return calibrated.tag_groups.top(contributions, row, low, high, self.top_k)

    @property
    def late_samples(self) -> dict[str, int]:
        return dict(self.windows.late_samples)
