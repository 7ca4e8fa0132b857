"""The one interface every detector implements, batch-first.

A detector sees a matrix ``X`` of shape (windows, features): one row per closed
event-time window of one asset at one scale, in event-time order, one column per
named feature (``"<tag>.<feature>"``, e.g. ``"bearing_temp_de.mean"``). NaN marks
a feature that could not be computed (a gap, only Bad samples); detectors must
accept NaN and treat it as "no evidence", never as zero.

* ``fit(X, feature_names, seed)``: learn normal behaviour from history.
* ``score(X)``: one raw anomaly score per row, higher = more anomalous. Raw
  scores are not comparable between detectors; ``detectors.calibration`` turns
  them into tail probabilities against normal data.
* ``contributions(X)``: per row and feature, a non-negative share of the
  anomaly (reconstruction error, deviation from normal, ...). Attribution
  (``detectors.attribution``) folds these into the top tags an operator sees.
* ``learn(X)``: update from new rows where the model can (online detectors);
  batch models leave it a no-op and say so with ``learns_online = False``.
* ``save(path)`` / ``load(path)``: one file, everything the detector needs.

Detectors know nothing of Kafka, faust or the network.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np


class DetectorError(ValueError):
    """A detector was used wrongly (not fitted, wrong number of features, ...)."""


class Detector(ABC):
    #: the name on the scores topic and in the registry, e.g. "isolation_forest".
    name: ClassVar[str]
    #: True when ``learn`` updates the model; False for models fitted on history only.
    learns_online: ClassVar[bool] = False
    #: True when ``fit`` is required before ``score`` (online detectors start empty).
    needs_training: ClassVar[bool] = True
    #: True when a row's score depends on the rows before it (sequence models).
    sequential: ClassVar[bool] = False

    feature_names: list[str]

    @abstractmethod
    def fit(self, X: np.ndarray, feature_names: Sequence[str], seed: int = 0) -> "Detector":
        """Learn normal behaviour from ``X`` (windows x features, event-time order)."""

    @abstractmethod
    def score(self, X: np.ndarray) -> np.ndarray:
        """Raw anomaly score per row, shape (n,), higher = more anomalous."""

    @abstractmethod
    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Non-negative contribution of each feature to each row's score, shape (n, d)."""

    def learn(self, X: np.ndarray) -> None:
        """Update the model with new rows. Batch models do nothing (learns_online is False)."""

    def score_and_contributions(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``score(X)`` and ``contributions(X)`` together. Detectors that get both from one
        pass (one scaling, one forward pass) override this; callers that need both use it."""
        return self.score(X), self.contributions(X)

    @abstractmethod
    def save(self, path: Path) -> None:
        """Write the fitted detector to one file at ``path``."""

    @classmethod
    @abstractmethod
    def load(cls, path: Path) -> "Detector":
        """Read a detector written by ``save``."""

    # -- helpers for implementations -------------------------------------------------

    def _check_matrix(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise DetectorError(f"{self.name}: expected a 2-D matrix (windows x features), got shape {X.shape}")
        names = getattr(self, "feature_names", None)
        if names is not None and X.shape[1] != len(names):
            raise DetectorError(
                f"{self.name}: the model was trained on {len(names)} features, this matrix has {X.shape[1]}: "
                "align columns with the model's feature_names (stream.features does this by name)"
            )
        return X
