"""Raw detector scores -> tail probabilities against normal operation.

A raw score means nothing on its own: an isolation forest's 0.62 and an
autoencoder's 3.1 are on different scales, and even one detector's scale moves
with every retraining. So each model is calibrated on the raw scores of NORMAL
windows it did not train on (a conformal split: scores of windows a model
trained on are optimistically low). The p-value of a new window is the chance
that a normal window scores at least as high:

    p(s) = P(normal score >= s)

Why this is worth the trouble:

* a threshold becomes an expected false-alarm rate: calling a window anomalous
  when p <= 0.001 raises about one false alarm per 1000 normal windows, whatever
  the detector and whatever the asset;
* p-values of different detectors (and scales) are on one scale, so fusion can
  combine them (multiply, Fisher, min with a Bonferroni factor) later.

Inside the calibration range p is the conformal estimate
``(1 + #{calibration >= s}) / (n + 1)``, exact at every calibration score and
linear in between, which keeps it continuous. Beyond the highest calibration
score an empirical estimate can only say "below 1/(n+1)", which would give
every fault the same p and let no alarm say how far out it is. There the tail
is an exponential fitted to how far the top ``k`` calibration scores exceed
the (k+1)-th (peaks over threshold; the exponential is the generalised Pareto
with shape 0, the light-tailed case, and it needs one parameter that ``k``
points estimate stably). A fault far beyond anything seen gets p far below
1/(n+1), and two faults stay ordered by how far out they are. p is continuous
and non-increasing in s everywhere.

The estimate leans conservative (fewer false alarms than asked for, not more):
interpolating between calibration scores stays above the conformal step
function, and the tail starts from the conformal 2/(n+1) at the highest score,
so far out it overstates the true tail probability by about a factor of 2.
Choose a false-alarm rate well above 1/(n+1) and the threshold sits in the
empirical part, where it is accurate to about 1/(n+1).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

_FORMAT = "edgewatch.tail_calibrator"
_VERSION = 1
#: recent scores kept for ``update`` (the last of ``fit``'s too); the oldest go first.
DEFAULT_CAPACITY = 2000
#: the calibration curve keeps at most this many points; the top half is kept exact.
DEFAULT_MAX_KNOTS = 1024


class CalibrationError(ValueError):
    """The calibrator was used wrongly (no scores yet, a false-alarm rate out of range)."""


def default_tail_size(n: int) -> int:
    """How many top calibration scores the exponential tail is fitted to.

    About sqrt(n) (at least 10): enough points for a stable mean exceedance, few
    enough that they all lie in the tail. Always leaves one score as the threshold.
    """
    return max(0, min(n - 1, max(10, int(math.sqrt(n)))))


class TailCalibrator:
    """Empirical tail probability of a raw score among normal scores, with an exponential tail.

    ``fit(scores)`` calibrates on raw scores of held-out normal windows;
    ``update(scores)`` is for the online detector, which has no held-out set: it
    keeps the last ``capacity`` scores and recalibrates on them (lazily, on the
    next query). Most recent rather than a uniform sample of all history because
    an online detector's score scale moves as it learns, so only its recent
    scores describe how it scores now.

    NaN scores ("the detector cannot judge yet") are left out of calibration and
    get p = 1.

    >>> import numpy as np
    >>> calibrator = TailCalibrator().fit(np.random.default_rng(0).normal(size=999))
    >>> float(calibrator.p_value(np.array([-10.0]))[0]), float(calibrator.p_value(np.array([10.0]))[0]) < 1e-6
    (1.0, True)
    >>> round(float(calibrator.p_value(np.array([calibrator.threshold(0.01)]))[0]), 6)
    0.01
    """

    def __init__(self, tail_size: int | None = None, capacity: int = DEFAULT_CAPACITY, max_knots: int = DEFAULT_MAX_KNOTS):
        if tail_size is not None and tail_size < 1:
            raise CalibrationError(f"tail_size must be at least 1 (or None for about sqrt(n)), got {tail_size}")
        if capacity < 2:
            raise CalibrationError(f"capacity must be at least 2 scores, got {capacity}")
        if max_knots < 4:
            raise CalibrationError(f"max_knots must be at least 4, got {max_knots}")
        self.tail_size = tail_size
        self.capacity = capacity
        self.max_knots = max_knots
        self._reservoir: deque[float] = deque(maxlen=capacity)  # in arrival order
        self._reservoir_sorted = np.empty(0)  # the same scores, ascending
        self._stale = False
        self._n = 0  # calibration scores behind the current curve
        self._knot_score = np.empty(0)  # ascending
        self._knot_p = np.empty(0)  # strictly decreasing, first = 1
        self._tail_scale = math.nan  # exponential scale beyond the top knot

    # -- calibrating -------------------------------------------------------------------

    def fit(self, scores: np.ndarray) -> "TailCalibrator":
        """Calibrate on raw scores of normal windows the detector did not train on (time order)."""
        scores = _finite(scores)
        self._keep_recent(scores[-self.capacity :])
        self._fit_curve(np.sort(scores))
        self._stale = False
        return self

    def update(self, scores: np.ndarray) -> None:
        """Add recent raw scores (online use); the curve is rebuilt from the last ``capacity`` scores."""
        finite = _finite(scores)
        if finite.size > 16:
            self._reservoir.extend(finite.tolist())
            self._keep_recent(np.fromiter(self._reservoir, dtype=np.float64, count=len(self._reservoir)))
        else:
            # The stream's case, a window or a few at a time: keep the sorted copy
            # sorted by moving single entries instead of sorting it all again.
            ordered = self._reservoir_sorted
            for score in finite.tolist():
                if len(self._reservoir) == self.capacity:
                    ordered = np.delete(ordered, np.searchsorted(ordered, self._reservoir[0]))
                self._reservoir.append(score)
                ordered = np.insert(ordered, np.searchsorted(ordered, score), score)
            self._reservoir_sorted = ordered
        self._stale = self._stale or finite.size > 0

    def _keep_recent(self, scores: np.ndarray) -> None:
        self._reservoir = deque(scores.tolist(), maxlen=self.capacity)
        self._reservoir_sorted = np.sort(scores)

    def _refresh(self) -> None:
        if self._stale:
            self._fit_curve(self._reservoir_sorted)
            self._stale = False

    def _fit_curve(self, ordered: np.ndarray) -> None:
        """Build the curve and its tail from calibration scores sorted ascending."""
        n = ordered.size
        self._n = n
        if n == 0:
            self._knot_score, self._knot_p, self._tail_scale = np.empty(0), np.empty(0), math.nan
            return
        first = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # first index of each distinct score
        values = ordered[first]
        # p at a calibration score v: (1 + #{calibration >= v}) / (n + 1).
        p = (1.0 + n - first) / (n + 1.0)
        k = min(self.tail_size, n - 1) if self.tail_size is not None else default_tail_size(n)
        self._tail_scale = _exponential_scale(ordered, k)
        if values.size > self.max_knots:
            # Thin the bulk evenly in rank; keep the top exact, where alarms are decided.
            exact = self.max_knots // 2
            bulk = np.round(np.linspace(0, values.size - exact - 1, self.max_knots - exact)).astype(np.intp)
            keep = np.unique(np.concatenate([bulk, np.arange(values.size - exact, values.size)]))
            values, p = values[keep], p[keep]
        self._knot_score, self._knot_p = values, p

    # -- using it ----------------------------------------------------------------------

    @property
    def n(self) -> int:
        """How many calibration scores the current curve stands on."""
        self._refresh()
        return self._n

    @property
    def fitted(self) -> bool:
        return self.n > 0

    def p_value(self, scores: np.ndarray) -> np.ndarray:
        """P(normal score >= s) for each raw score s; 1 for NaN (no verdict)."""
        self._require_fitted()
        s = np.asarray(scores, dtype=np.float64)
        top_score, top_p = self._knot_score[-1], self._knot_p[-1]
        p = np.ones(s.shape)
        inside = s <= top_score  # False for NaN
        beyond = s > top_score
        p[inside] = np.interp(s[inside], self._knot_score, self._knot_p)
        p[beyond] = top_p * np.exp(-(s[beyond] - top_score) / self._tail_scale)
        return p

    def threshold(self, false_alarm_rate: float) -> float:
        """The raw score whose p-value equals ``false_alarm_rate`` (scores at or above it alarm)."""
        self._require_fitted()
        if not 0.0 < false_alarm_rate <= 1.0:
            raise CalibrationError(f"false_alarm_rate must be in (0, 1], got {false_alarm_rate}")
        top_score, top_p = self._knot_score[-1], self._knot_p[-1]
        if false_alarm_rate >= top_p:
            # p is strictly decreasing over the knots, so reversed it is increasing: interp inverts it.
            return float(np.interp(false_alarm_rate, self._knot_p[::-1], self._knot_score[::-1]))
        return float(top_score + self._tail_scale * math.log(top_p / false_alarm_rate))

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise CalibrationError(
                "the calibrator holds no scores: fit() it on raw scores of held-out normal windows "
                "(or update() it with an online detector's scores) before asking for p-values"
            )

    # -- persistence -------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-safe state: the curve, its tail and the recent scores ``update`` continues from."""
        self._refresh()
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "tail_size": self.tail_size,
            "capacity": self.capacity,
            "max_knots": self.max_knots,
            "n": self._n,
            "knot_score": self._knot_score.tolist(),
            "knot_p_value": self._knot_p.tolist(),
            "tail_scale": None if math.isnan(self._tail_scale) else self._tail_scale,
            "recent_scores": list(self._reservoir),
        }

    @classmethod
    def from_dict(cls, doc: dict) -> "TailCalibrator":
        if doc.get("format") != _FORMAT or doc.get("version") != _VERSION:
            raise CalibrationError(
                f"not a version {_VERSION} tail calibrator document (format {doc.get('format')!r}, "
                f"version {doc.get('version')!r}): retrain the model with this edgewatch"
            )
        calibrator = cls(doc["tail_size"], doc["capacity"], doc["max_knots"])
        calibrator._keep_recent(np.array(doc["recent_scores"], dtype=np.float64))
        calibrator._n = int(doc["n"])
        calibrator._knot_score = np.array(doc["knot_score"], dtype=np.float64)
        calibrator._knot_p = np.array(doc["knot_p_value"], dtype=np.float64)
        calibrator._tail_scale = math.nan if doc["tail_scale"] is None else float(doc["tail_scale"])
        return calibrator


def _finite(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    return scores[np.isfinite(scores)]


def _exponential_scale(ordered: np.ndarray, k: int) -> float:
    """Maximum-likelihood exponential scale of the top ``k`` exceedances over the (k+1)-th highest score.

    When the top scores tie (a detector with a coarse score), the exceedances
    carry no scale; then the spread of all scores per score stands in, so a
    score above them all still falls off with distance instead of at once.
    """
    n = ordered.size
    if k >= 1:
        scale = float(np.mean(ordered[n - k :] - ordered[n - k - 1]))
        if scale > 0:
            return scale
    spread = float(ordered[-1] - ordered[0]) / n
    if spread > 0:
        return spread
    return 1e-9 * max(abs(float(ordered[-1])), 1.0)
