"""Per-feature scaling of window features, and the normal range operators see.

Window features live in very different units (a bearing temperature in degC next
to an FFT band in mm/s), so a detector compares them only after scaling each to
"spreads away from its normal centre". Three tools:

* ``RobustScaler``: median and IQR learned once from training windows. Median and
  IQR rather than mean and standard deviation because training history holds the
  odd glitch and unnoticed fault, and those must not stretch the yardstick.
* ``RunningMoments``: mean and standard deviation learned one window at a time,
  for the online detector that has no training set.
* ``normal_ranges``: the 0.5 % and 99.5 % quantiles of each feature over normal
  windows, shown next to a value in the top tags of a score.

NaN (a feature missing in a window) is "no evidence": it is skipped when
learning and becomes the centre (0 after scaling) when transforming. Infinite
values are treated the same way: a feature that computes to inf is broken, not
extreme.
"""

from __future__ import annotations

import warnings

import numpy as np

#: the IQR of a normal distribution in standard deviations: IQR / 1.349 estimates sigma.
IQR_TO_SIGMA = 1.349
#: spreads below this share of the centre's size (at least 1 unit) count as zero:
#: a constant feature must not divide by 0, and a deviation from "never moved"
#: should still read as very large.
SPREAD_FLOOR = 1e-6
#: z of the 99.5 % quantile of a normal distribution, for ranges from running moments.
Z_995 = 2.5758293035489004

_FORMAT = "edgewatch.robust_scaler"


def finite_or_nan(X: np.ndarray) -> np.ndarray:
    """``X`` as float64 with every non-finite value (inf, NaN) as NaN."""
    X = np.asarray(X, dtype=np.float64)
    return np.where(np.isfinite(X), X, np.nan)


def spread_floor(center: np.ndarray) -> np.ndarray:
    """The smallest spread a feature centred at ``center`` is given."""
    return SPREAD_FLOOR * np.fmax(np.abs(center), 1.0)  # fmax: a NaN centre gets the floor of 1


def _nan_quantiles(X: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """Quantiles per column ignoring NaN, shape (len(quantiles), d); NaN for columns never seen."""
    out = np.full((len(quantiles), X.shape[1]), np.nan)
    seen = ~np.all(np.isnan(X), axis=0)
    if seen.any() and X.shape[0]:
        out[:, seen] = np.nanquantile(X[:, seen], quantiles, axis=0)
    return out


def normal_ranges(X: np.ndarray, lower_q: float = 0.005, upper_q: float = 0.995) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) per feature: the ``lower_q`` and ``upper_q`` quantiles of normal windows.

    NaN is ignored; a feature with no value in ``X`` gets (NaN, NaN).
    """
    if not 0.0 <= lower_q < upper_q <= 1.0:
        raise ValueError(f"normal range quantiles must satisfy 0 <= lower_q < upper_q <= 1, got {lower_q}, {upper_q}")
    X = finite_or_nan(X)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D matrix (windows x features), got shape {X.shape}")
    low, high = _nan_quantiles(X, [lower_q, upper_q])
    return low, high


def json_floats(values: np.ndarray) -> list[float | None]:
    """A float array as a JSON-safe list: NaN and inf become None."""
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(values, dtype=np.float64)]


def from_json_floats(values: list[float | None]) -> np.ndarray:
    """The inverse of ``json_floats``: None becomes NaN."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


class RobustScaler:
    """``(x - median) / spread`` per feature, NaN -> 0 (the median).

    ``spread`` is IQR / 1.349 (the standard deviation for normally distributed
    data). Where the IQR is 0 (a feature that is constant most of the time and
    moves rarely) the standard deviation is used instead, and below that
    ``spread_floor``, so a constant feature never divides by 0. A feature never
    observed in training keeps a NaN centre and always scales to 0.
    """

    def __init__(self) -> None:
        self.center: np.ndarray | None = None
        self.spread: np.ndarray | None = None

    def fit(self, X: np.ndarray) -> "RobustScaler":
        X = finite_or_nan(X)
        if X.ndim != 2:
            raise ValueError(f"expected a 2-D matrix (windows x features), got shape {X.shape}")
        q25, q50, q75 = _nan_quantiles(X, [0.25, 0.5, 0.75])
        spread = (q75 - q25) / IQR_TO_SIGMA
        floor = spread_floor(q50)
        thin = ~(spread > floor)
        if thin.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: handled below
                spread[thin] = np.nanstd(X[:, thin], axis=0)
        self.center = q50
        self.spread = np.where(spread > floor, spread, floor)
        return self

    @property
    def fitted(self) -> bool:
        return self.center is not None

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Scaled copy of ``X`` (n, d): spreads from the median, 0 where missing."""
        if self.center is None:
            raise ValueError("the scaler is not fitted: call fit(X) on training windows first")
        scaled = (np.asarray(X, dtype=np.float64) - self.center) / self.spread
        scaled[~np.isfinite(scaled)] = 0.0
        return scaled

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).transform(X)

    def to_dict(self) -> dict:
        if self.center is None:
            raise ValueError("the scaler is not fitted: nothing to save")
        return {"format": _FORMAT, "center": json_floats(self.center), "spread": json_floats(self.spread)}

    @classmethod
    def from_dict(cls, doc: dict) -> "RobustScaler":
        if doc.get("format") != _FORMAT:
            raise ValueError(f"not a robust scaler document (format {doc.get('format')!r})")
        scaler = cls()
        scaler.center = from_json_floats(doc["center"])
        scaler.spread = from_json_floats(doc["spread"])
        return scaler


class RunningMoments:
    """Mean and standard deviation per feature over every window learned so far.

    For the online detector, which must scale features before it has seen a
    training set. Cumulative rather than a moving window: the scale should settle
    as evidence grows, because a detector's memory (tree masses, calibration) was
    built on the old scale and a scale that keeps moving would blur it. NaN is
    skipped, so each feature has its own count.
    """

    def __init__(self, n_features: int) -> None:
        self.count = np.zeros(n_features)
        self.mean = np.zeros(n_features)
        self.m2 = np.zeros(n_features)  # sum of squared deviations from the mean

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation, floored (see ``spread_floor``); NaN before 2 values."""
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.sqrt(self.m2 / self.count)
        std = np.maximum(std, spread_floor(self.mean))
        return np.where(self.count >= 2, std, np.nan)

    def update(self, X: np.ndarray) -> None:
        """Merge the windows of ``X`` (n, d) into the moments (Chan et al.'s parallel update)."""
        X = np.asarray(X, dtype=np.float64)
        seen = np.isfinite(X)
        n_b = seen.sum(axis=0, dtype=np.float64)
        mean_b = np.where(seen, X, 0.0).sum(axis=0) / np.maximum(n_b, 1.0)
        m2_b = (np.where(seen, X - mean_b, 0.0) ** 2).sum(axis=0)
        total = self.count + n_b
        delta = mean_b - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            share_b = np.where(total > 0, n_b / total, 0.0)
        self.mean = self.mean + delta * share_b
        self.m2 = self.m2 + m2_b + delta**2 * self.count * share_b
        self.count = total

    def before_each(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of everything seen before each row of ``X``, rows of ``X`` included in order.

        Row i is judged by what was known when it arrived: the state plus rows
        0..i-1 of ``X``. Does not change the state (call ``update`` for that).
        Prefix sums are taken around a shift (the current mean, or the batch's
        first value) so that large offsets with small spread keep their digits.
        """
        X = finite_or_nan(X)
        if X.shape[0] == 1:  # the stream's case: what came before is the state itself
            mean = np.where(self.count > 0, self.mean, np.nan)
            return mean[None, :], self.std[None, :]
        seen = ~np.isnan(X)
        first_value = np.nan_to_num(X[np.argmax(seen, axis=0), np.arange(X.shape[1])]) if len(X) else 0.0
        shift = np.where(self.count > 0, self.mean, first_value)
        shifted = np.where(seen, X - shift, 0.0)
        # Exclusive prefix sums: what came before row i.
        count = self.count + np.cumsum(seen, axis=0) - seen
        total = self.count * (self.mean - shift) + np.cumsum(shifted, axis=0) - shifted
        squares = self.m2 + self.count * (self.mean - shift) ** 2 + np.cumsum(shifted**2, axis=0) - shifted**2
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_shifted = total / count
            var = np.maximum(squares / count - mean_shifted**2, 0.0)
        mean = shift + mean_shifted
        std = np.maximum(np.sqrt(var), spread_floor(mean))
        return np.where(count > 0, mean, np.nan), np.where(count >= 2, std, np.nan)

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) = mean -/+ 2.576 std: the 0.5 %..99.5 % range if the feature were normal."""
        std = self.std
        return self.mean - Z_995 * std, self.mean + Z_995 * std

    def to_dict(self) -> dict:
        return {"count": self.count.tolist(), "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_dict(cls, doc: dict) -> "RunningMoments":
        moments = cls(len(doc["count"]))
        moments.count = np.array(doc["count"], dtype=np.float64)
        moments.mean = np.array(doc["mean"], dtype=np.float64)
        moments.m2 = np.array(doc["m2"], dtype=np.float64)
        return moments
