"""Which tags made a window anomalous: feature contributions folded into tags.

Detectors give a non-negative contribution per feature (``Detector.contributions``);
an operator thinks in tags ("bearing_temp_de is off"), not in 60 feature columns.
So contributions are summed per tag and turned into shares that sum to 1 over
all tags, and each reported tag carries the one feature that moved most, its
value in this window and its normal range, so the alarm reads
"bearing_temp_de (71 %): mean 78.4 degC, normal 61.2..70.9".

A column name is ``"<tag>.<feature>"``. The feature is the part after the LAST
dot: feature names never hold a dot ("mean", "fft_2"), tag ids may ("motor.de").
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def split_feature_name(name: str) -> tuple[str, str]:
    """``"bearing_temp_de.mean"`` -> ``("bearing_temp_de", "mean")``; a name without a dot is a tag of its own."""
    tag, dot, feature = name.rpartition(".")
    return (tag, feature) if dot else (name, name)


class TagGroups:
    """The tag of every feature column, worked out once per feature list.

    Build it once per model and reuse it: ``shares`` is then a single matrix
    product for any number of windows.
    """

    def __init__(self, feature_names: Sequence[str]):
        self.feature_names = list(feature_names)
        split = [split_feature_name(name) for name in self.feature_names]
        self.features = [feature for _, feature in split]
        #: tags in order of first appearance
        self.tags = list(dict.fromkeys(tag for tag, _ in split))
        index = {tag: i for i, tag in enumerate(self.tags)}
        #: the tag number of each feature column, shape (d,)
        self.tag_of = np.array([index[tag] for tag, _ in split], dtype=np.intp)
        self._membership = np.zeros((len(self.feature_names), len(self.tags)))
        self._membership[np.arange(len(self.feature_names)), self.tag_of] = 1.0

    def shares(self, contributions: np.ndarray) -> np.ndarray:
        """Per window, each tag's share of the summed contributions: (n, d) -> (n, tags), rows sum to 1.

        NaN or negative contributions count as 0. A window with no contribution at
        all (a perfect reconstruction, every feature missing) spreads its share
        evenly: no tag stands out.
        """
        contributions = np.atleast_2d(np.asarray(contributions, dtype=np.float64))
        clean = np.where(np.isfinite(contributions) & (contributions > 0), contributions, 0.0)
        per_tag = clean @ self._membership
        total = per_tag.sum(axis=1, keepdims=True)
        even = np.full_like(per_tag, 1.0 / max(len(self.tags), 1))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, per_tag / total, even)

    def leading_feature(self, contributions_row: np.ndarray) -> np.ndarray:
        """For each tag, the column index of its largest-contributing feature, shape (tags,)."""
        clean = np.where(np.isfinite(contributions_row) & (contributions_row > 0), contributions_row, 0.0)
        # Sort by (tag, contribution): the last column of each tag's run is its largest.
        order = np.lexsort((clean, self.tag_of))
        last_of_tag = np.r_[self.tag_of[order][1:] != self.tag_of[order][:-1], True]
        leading = np.empty(len(self.tags), dtype=np.intp)
        leading[self.tag_of[order][last_of_tag]] = order[last_of_tag]
        return leading

    def top(
        self,
        contributions_row: np.ndarray,
        values_row: np.ndarray,
        low: np.ndarray,
        high: np.ndarray,
        k: int,
    ) -> list[dict]:
        """The ``k`` tags with the largest shares of one window, largest first (see ``top_contributions``)."""
        contributions_row = np.asarray(contributions_row, dtype=np.float64)
        shares = self.shares(contributions_row)[0]
        leading = self.leading_feature(contributions_row)
        # Stable sort: equal shares keep the configured tag order.
        ranked = np.argsort(-shares, kind="stable")[: max(k, 0)]
        return [
            {
                "tag": self.tags[t],
                "contribution": float(shares[t]),
                "feature": self.features[leading[t]],
                "value": _number(values_row[leading[t]]),
                "normal_range": [_number(low[leading[t]]), _number(high[leading[t]])],
            }
            for t in ranked
        ]


def top_contributions(
    contributions_row: np.ndarray,
    feature_names: Sequence[str],
    values_row: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    k: int = 3,
) -> list[dict]:
    """The ``k`` tags contributing most to one window's score, largest first.

    Each entry: ``{"tag", "contribution"`` (the tag's share, 0..1; shares of all
    tags sum to 1), ``"feature"`` (the tag's largest-contributing feature, e.g.
    "mean"), ``"value"`` (that feature in this window; None if missing),
    ``"normal_range"`` ([low, high] of that feature in training; None where
    unknown)``}``. Scoring many windows of one model: build a ``TagGroups`` once.
    """
    return TagGroups(feature_names).top(contributions_row, values_row, low, high, k)


def _number(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
