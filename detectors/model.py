"""A detector with its calibration: what the stream scores windows with.

``CalibratedModel`` joins a fitted ``Detector``, its ``TailCalibrator``, the
feature names it was trained on, the normal range of every feature and the
configured false-alarm rate. ``score(X)`` gives, per window:

* ``raw``: the detector's own score (not comparable across detectors);
* ``p_value``: P(a normal window scores at least this high), see ``calibration``;
* ``score`` = 1 - p_value: 0 = typical, near 1 = beyond anything normal;
* ``anomalous`` = p_value <= false_alarm_rate: the threshold is an expected
  share of false alarms among normal windows;
* ``contributions`` (n, d) and, through ``top_tags``, the tags behind it.

Trained models come from ``fit_calibrated``: fit on the oldest part of the
history, calibrate on the next, optionally validate on the newest. In time order
and never shuffled: neighbouring windows are nearly copies of each other, so a
shuffled split would calibrate on windows the model has as good as seen and
promise fewer false alarms than the plant will get.

The online detector (half-space trees) can also start with no history:
``CalibratedModel.start_online`` gives an empty model, ``score_and_learn`` scores
each batch against what was learned before it, feeds those raw scores to the
calibrator (``TailCalibrator.update``: they are scores of windows the detector
had not learned yet, so they are honest held-out scores) and then learns the
batch. Until ``warmup`` windows are learned, and while the calibrator holds
fewer than ``MIN_CALIBRATION_SCORES`` scores, every p-value is 1 and ``ready``
is False: no verdict, and the stream sends no score (the scores schema has no
null verdict). Note that an online model learns whatever it sees, faults
included: a fault that persists for many reference windows becomes its new
normal, which is what an online detector is for (drift) and its limit.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from detectors import detector_class
from detectors.attribution import TagGroups
from detectors.base import Detector, DetectorError
from detectors.calibration import TailCalibrator
from detectors.scaling import RunningMoments, finite_or_nan, from_json_floats, json_floats, normal_ranges

#: no verdict from a calibrator holding fewer scores (its p-values would be guesses).
MIN_CALIBRATION_SCORES = 30
#: the fewest windows fit_calibrated accepts for fitting.
MIN_FIT_WINDOWS = 10

_FORMAT = "edgewatch.calibrated_model"
_VERSION = 1


@dataclass(frozen=True)
class ScoreResult:
    """Scores of n windows by one model. Arrays are per window, in the order given."""

    raw: np.ndarray
    p_value: np.ndarray
    score: np.ndarray
    anomalous: np.ndarray
    #: (n, d) non-negative, None when scored without contributions
    contributions: np.ndarray | None
    #: False while the model is still warming up: every p-value is then 1 and no verdict stands.
    ready: bool
    _model: "CalibratedModel" = field(repr=False)

    def __len__(self) -> int:
        return self.raw.shape[0]

    def top_tags(self, i: int, X: np.ndarray, k: int = 3) -> list[dict]:
        """The ``k`` tags contributing most to window ``i`` of ``X`` (the matrix scored), largest first.

        Entries as ``detectors.attribution.top_contributions``: tag, contribution
        share, leading feature, its value and its normal range.
        """
        if self.contributions is None:
            raise DetectorError("these scores were computed without contributions: score(X, contributions=True)")
        model = self._model
        return model.tag_groups.top(self.contributions[i], finite_or_nan(X[i]), *model.normal_range(), k)


class CalibratedModel:
    """A fitted detector, its calibrator, feature names, normal ranges and false-alarm rate.

    Make one with ``fit_calibrated`` (any detector) or ``start_online`` (online
    detectors); ``save``/``load`` it as two files: the detector's own file and a
    JSON sidecar with everything else.
    """

    def __init__(
        self,
        detector: Detector,
        calibrator: TailCalibrator,
        feature_names: Sequence[str],
        false_alarm_rate: float,
        normal_low: np.ndarray | None = None,
        normal_high: np.ndarray | None = None,
        *,
        warmup: int = 0,
        learned: int = 0,
        moments: RunningMoments | None = None,
    ):
        if not 0.0 < false_alarm_rate < 0.5:
            raise DetectorError(f"false_alarm_rate must be between 0 and 0.5 (a share of normal windows), got {false_alarm_rate}")
        self.detector = detector
        self.calibrator = calibrator
        self.feature_names = list(feature_names)
        self.false_alarm_rate = float(false_alarm_rate)
        #: training ranges; None for a model that started online (ranges then follow ``moments``)
        self.normal_low = normal_low
        self.normal_high = normal_high
        self.warmup = int(warmup)
        #: windows the detector has learned (training windows included)
        self.learned = int(learned)
        self.moments = moments
        self.tag_groups = TagGroups(self.feature_names)

    # -- making one --------------------------------------------------------------------

    @classmethod
    def start_online(
        cls,
        detector: Detector,
        feature_names: Sequence[str],
        false_alarm_rate: float,
        *,
        warmup: int = 60,
        seed: int = 0,
        capacity: int | None = None,
    ) -> "CalibratedModel":
        """An empty model for an online detector: it learns and calibrates from the stream.

        ``warmup``: windows to learn before any verdict (see the module docstring);
        ``capacity``: recent scores the calibrator keeps (default: its own default).
        """
        if detector.needs_training or not detector.learns_online:
            raise DetectorError(f"{detector.name} must be trained on history: use fit_calibrated, not start_online")
        names = list(feature_names)
        detector.fit(np.empty((0, len(names))), names, seed=seed)
        calibrator = TailCalibrator() if capacity is None else TailCalibrator(capacity=capacity)
        return cls(detector, calibrator, names, false_alarm_rate, warmup=warmup, moments=RunningMoments(len(names)))

    # -- scoring -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.detector.name

    @property
    def ready(self) -> bool:
        """True once verdicts count: enough windows learned and enough calibration scores."""
        return self.learned >= self.warmup and self.calibrator.n >= MIN_CALIBRATION_SCORES

    @property
    def threshold(self) -> float:
        """The raw score at which a window becomes anomalous (NaN while not ready)."""
        return self.calibrator.threshold(self.false_alarm_rate) if self.ready else float("nan")

    def normal_range(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) per feature: training quantiles, or the running range of an online model."""
        if self.normal_low is not None:
            return self.normal_low, self.normal_high
        if self.moments is not None:
            return self.moments.ranges()
        nan = np.full(len(self.feature_names), np.nan)
        return nan, nan

    def score(self, X: np.ndarray, contributions: bool = True) -> ScoreResult:
        """Score windows ``X`` (n, d), columns in ``feature_names`` order. Changes nothing."""
        if contributions:
            raw, parts = self.detector.score_and_contributions(X)
        else:
            raw, parts = self.detector.score(X), None
        return self._result(raw, parts)

    def learn(self, X: np.ndarray, raw: np.ndarray | None = None) -> None:
        """Online detectors: calibrate on the scores of ``X`` (before learning it), then learn it.

        ``raw``: the raw scores of ``X`` when the caller has them already (it just
        scored ``X``), so they are not computed twice. Batch detectors do not
        learn, and their calibration stays the held-out one: this is a no-op for
        them (live windows may hold faults).
        """
        if self.detector.learns_online:
            self._learn(X, self.detector.score(X) if raw is None else raw)

    def score_and_learn(self, X: np.ndarray, contributions: bool = True) -> ScoreResult:
        """``score(X)`` then ``learn(X)``, scoring each window once: the online detector's stream step.

        Every window of the batch is judged against the model as it was before
        the batch. For a batch detector this is just ``score``.
        """
        result = self.score(X, contributions)
        if self.detector.learns_online:
            self._learn(X, result.raw)
        return result

    def _learn(self, X: np.ndarray, raw: np.ndarray) -> None:
        X = np.asarray(X, dtype=np.float64)
        self.calibrator.update(raw)
        self.detector.learn(X)
        if self.moments is not None:
            self.moments.update(X)
        self.learned += X.shape[0]

    def _result(self, raw: np.ndarray, parts: np.ndarray | None) -> ScoreResult:
        raw = np.asarray(raw, dtype=np.float64)
        ready = self.ready
        p_value = self.calibrator.p_value(raw) if ready else np.ones(raw.shape)
        return ScoreResult(
            raw=raw,
            p_value=p_value,
            score=1.0 - p_value,
            anomalous=p_value <= self.false_alarm_rate,
            contributions=parts,
            ready=ready,
            _model=self,
        )

    # -- files -------------------------------------------------------------------------

    @staticmethod
    def file_names(stem: str) -> tuple[str, str]:
        """(detector file, JSON sidecar) names for ``stem``."""
        return f"{stem}.model", f"{stem}.json"

    def save(self, directory: Path, stem: str) -> list[str]:
        """Write ``<stem>.model`` (the detector's own file) and ``<stem>.json``; returns both names."""
        directory = Path(directory)
        model_name, sidecar_name = self.file_names(stem)
        self.detector.save(directory / model_name)
        sidecar = {
            "format": _FORMAT,
            "version": _VERSION,
            "detector": self.detector.name,
            "feature_names": self.feature_names,
            "false_alarm_rate": self.false_alarm_rate,
            "normal_range": None
            if self.normal_low is None
            else {"low": json_floats(self.normal_low), "high": json_floats(self.normal_high)},
            "warmup": self.warmup,
            "learned": self.learned,
            "moments": None if self.moments is None else self.moments.to_dict(),
            "calibrator": self.calibrator.to_dict(),
        }
        (directory / sidecar_name).write_text(json.dumps(sidecar, allow_nan=False) + "\n", encoding="utf-8")
        return [model_name, sidecar_name]

    @classmethod
    def load(cls, directory: Path, stem: str) -> "CalibratedModel":
        """Read a model written by ``save``. Verify the files first (the registry does)."""
        directory = Path(directory)
        model_name, sidecar_name = cls.file_names(stem)
        sidecar = json.loads((directory / sidecar_name).read_text(encoding="utf-8"))
        if sidecar.get("format") != _FORMAT or sidecar.get("version") != _VERSION:
            raise DetectorError(f"{directory / sidecar_name} is not a version {_VERSION} calibrated model file: retrain the model")
        detector = detector_class(sidecar["detector"]).load(directory / model_name)
        if list(detector.feature_names) != sidecar["feature_names"]:
            raise DetectorError(
                f"{directory / model_name} and {sidecar_name} disagree on the feature columns: "
                "the files come from different trainings; retrain the model"
            )
        ranges = sidecar["normal_range"]
        return cls(
            detector,
            TailCalibrator.from_dict(sidecar["calibrator"]),
            sidecar["feature_names"],
            sidecar["false_alarm_rate"],
            None if ranges is None else from_json_floats(ranges["low"]),
            None if ranges is None else from_json_floats(ranges["high"]),
            warmup=sidecar["warmup"],
            learned=sidecar["learned"],
            moments=None if sidecar["moments"] is None else RunningMoments.from_dict(sidecar["moments"]),
        )


def fit_calibrated(
    detector: Detector,
    X: np.ndarray,
    feature_names: Sequence[str],
    false_alarm_rate: float,
    seed: int = 0,
    calibration_fraction: float = 0.25,
    validation_fraction: float = 0.0,
) -> tuple[CalibratedModel, dict]:
    """Fit ``detector`` on normal history ``X`` (windows in event-time order) and calibrate it.

    The rows are split in time order: the oldest part fits the detector, the
    next ``calibration_fraction`` calibrates it (scores of windows it did not
    train on), and the newest ``validation_fraction`` (optional) measures the
    false-alarm rate the plant would see. Returns the model and metrics:
    windows per part, the raw threshold, the fit time and, when validated,
    ``validation_false_alarm_rate`` (compare it with ``false_alarm_rate``).
    """
    X = np.asarray(X, dtype=np.float64)
    names = list(feature_names)
    if X.ndim != 2 or X.shape[1] != len(names):
        raise DetectorError(f"{detector.name}: expected a (windows x {len(names)} features) matrix matching feature_names, got shape {X.shape}")
    if not (0.0 < calibration_fraction < 1.0 and 0.0 <= validation_fraction < 1.0 and calibration_fraction + validation_fraction < 1.0):
        raise DetectorError(
            f"calibration_fraction ({calibration_fraction}) must be in (0, 1) and validation_fraction ({validation_fraction}) "
            "in [0, 1), together below 1: the rest fits the detector"
        )
    n = X.shape[0]
    n_validation = int(round(n * validation_fraction))
    n_calibration = int(round(n * calibration_fraction))
    n_fit = n - n_calibration - n_validation
    if n_fit < MIN_FIT_WINDOWS or n_calibration < MIN_CALIBRATION_SCORES:
        raise DetectorError(
            f"{detector.name}: {n} windows give {n_fit} to fit and {n_calibration} to calibrate; at least "
            f"{MIN_FIT_WINDOWS} and {MIN_CALIBRATION_SCORES} are needed: train on a longer stretch of history"
        )
    started = time.perf_counter()
    detector.fit(X[:n_fit], names, seed=seed)
    fit_s = time.perf_counter() - started
    calibration_end = n_fit + n_calibration
    if detector.sequential:
        # A sequence model judges a window with the windows before it: score the
        # whole history once and keep the held-out rows.
        raw = detector.score(X)
        calibration_raw, validation_raw = raw[n_fit:calibration_end], raw[calibration_end:]
    else:
        calibration_raw = detector.score(X[n_fit:calibration_end])
        validation_raw = detector.score(X[calibration_end:]) if n_validation else np.empty(0)
    calibrator = TailCalibrator().fit(calibration_raw)
    if not calibrator.fitted:
        raise DetectorError(f"{detector.name}: no finite score on the {n_calibration} calibration windows: nothing to calibrate on")
    low, high = normal_ranges(X[:calibration_end])
    model = CalibratedModel(
        detector,
        calibrator,
        names,
        false_alarm_rate,
        low,
        high,
        learned=n_fit if detector.learns_online else 0,
    )
    metrics = {
        "fit_windows": n_fit,
        "calibration_windows": n_calibration,
        "validation_windows": n_validation,
        "false_alarm_rate": float(false_alarm_rate),
        "threshold": model.calibrator.threshold(false_alarm_rate),
        "fit_s": round(fit_s, 6),
    }
    if n_validation:
        metrics["validation_false_alarm_rate"] = float(np.mean(calibrator.p_value(validation_raw) <= false_alarm_rate))
    return model, metrics

