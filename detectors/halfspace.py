"""Half-space trees: the online detector, learning window by window with no training set.

river's ``HalfSpaceTrees`` (Tan, Ting & Liu 2011) builds random trees of
half-space cuts once and then only counts windows: every ``window_size`` windows
the counts of the latest window become the reference "mass" of each node, and a
window is anomalous when it lands where the reference mass is small. So it
starts on a new asset with no history, follows slow drift (the reference is
always the last ``window_size`` windows), and costs O(trees x height) per window.

Scaling. The trees cut the unit cube, so every feature must lie in [0, 1]. Each
feature is standardised with its running mean and standard deviation
(``RunningMoments``: everything learned so far) and squashed through the
logistic function of z / 2: z = 0 (the mean) maps to 0.5, z = -/+2 to
0.27/0.73, z = -/+6 to 0.05/0.95, and no value ever leaves (0, 1), so an
extreme reading lands near the edge of the cube instead of breaking it. While
learning, a window is scaled with the moments of the windows before it, as the
stream saw it. NaN maps to 0.5 (the middle: no evidence either way), and so
does every feature until it has 2 values.

The width 2 is a trade. river cuts a feature first somewhere between 0.15 and
0.85, so normal windows should fill that middle: a narrower squash piles them
at the edges, where a fault then hides among normal extremes; a wider one
crowds them together and blurs faults that stay inside the normal range but
break the relations between tags. On the synthetic plant of the contract
tests, a one-tag shift of 6 spreads scores above the 99th percentile of normal
windows in 9 of 10 windows with width 2, in 6 of 10 with width 1.

Raw score: river's ``score_one``, in [0, 1], higher = more anomalous. Until the
first ``window_size`` windows are learned there is no reference mass and the
score is NaN ("cannot judge yet"; calibration gives it p = 1).

Contributions: the squared running z of each feature (squared for the same
reason as the isolation forest: one clearly moved feature should outweigh the
everyday wobble of many).

river scores and learns one window at a time, so ``score`` and ``learn`` loop
over rows in Python here, and only here; the rest of edgewatch stays
vectorised. The loop body is one dict per row from precomputed integer keys.

>>> import numpy as np
>>> X = np.random.default_rng(0).normal(size=(300, 3))
>>> detector = HalfSpaceTreesDetector(n_trees=10, height=4, window_size=50, seed=1)
>>> detector = detector.fit(X, ["a.mean", "a.std", "b.mean"])
>>> normal, fault = detector.score(np.array([[0.0, 0.0, 0.0], [6.0, 0.0, -6.0]]))
>>> bool(fault > normal)
True
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Sequence

import numpy as np

from detectors.base import Detector, DetectorError
from detectors.scaling import RunningMoments, finite_or_nan

_FORMAT = "edgewatch.halfspace_trees"
_VERSION = 1


#: z is divided by this before the logistic squash (see the module docstring).
SQUASH_WIDTH = 2.0


def _squash(z: np.ndarray) -> np.ndarray:
    """Logistic of z / SQUASH_WIDTH into (0, 1), NaN -> 0.5; written with tanh so it never overflows."""
    unit = 0.5 + 0.5 * np.tanh((0.5 / SQUASH_WIDTH) * z)
    unit[np.isnan(unit)] = 0.5
    return unit


#: empty trees per (features, trees, height, seed): see _plant_trees
_TREE_TEMPLATES: dict[tuple[int, int, int, int], list] = {}


def _plant_trees(model, n_features: int) -> None:
    """Give a new river HalfSpaceTrees its (empty) trees from a cached template.

    river builds the trees at the first ``learn_one``, and for ~300 features that
    takes about half a second (one pass over every feature's limits per node):
    measured as a 0.5-2 s stall of the worker at every asset's first window, for
    each asset and scale. The trees are random cuts of [0, 1]^d that depend only
    on the feature count, the size and the seed, so every asset can start from a
    copy of the same empty trees (each keeps its own masses). This mirrors
    river 0.26's own construction in ``HalfSpaceTrees.learn_one``; recheck it when
    the pin moves (tests compare the scores with river's own lazy build).
    """
    import copy

    from river.tree.padded import make_padded_tree

    key = (n_features, model.n_trees, model.height, model.seed)
    template = _TREE_TEMPLATES.get(key)
    if template is None:
        template = [
            make_padded_tree(
                limits={i: model.limits[i] for i in range(n_features)},
                height=model.height,
                padding=0.15,
                rng=model.rng,
                r_mass=0,
                l_mass=0,
            )
            for _ in range(model.n_trees)
        ]
        _TREE_TEMPLATES[key] = template
    model.trees = copy.deepcopy(template)
    model._tree_nodes = [list(t.iter_dfs()) for t in model.trees]


class HalfSpaceTreesDetector(Detector):
    """river HalfSpaceTrees on running-standardised, logistic-squashed features.

    ``n_trees`` trees of ``height`` cuts; the reference mass is renewed every
    ``window_size`` windows; ``seed`` fixes the cuts (``fit(..., seed=)`` overrides it).
    """

    name = "halfspace_trees"
    learns_online = True
    needs_training = False

    def __init__(self, n_trees: int = 25, height: int = 8, window_size: int = 100, seed: int = 0):
        if n_trees < 1 or height < 1 or window_size < 1:
            raise DetectorError(f"halfspace_trees: n_trees, height and window_size must be >= 1, got {n_trees}, {height}, {window_size}")
        self.n_trees = int(n_trees)
        self.height = int(height)
        self.window_size = int(window_size)
        self.seed = int(seed)
        self.feature_names = None
        self.moments: RunningMoments | None = None
        self.model = None
        self.learned = 0  # windows learned
        self._keys: list[int] = []

    def fit(self, X: np.ndarray, feature_names: Sequence[str], seed: int | None = None) -> "HalfSpaceTreesDetector":
        """Start afresh on ``feature_names`` and learn ``X`` (may have 0 rows: an empty online model)."""
        from river.anomaly import HalfSpaceTrees

        names = list(feature_names)
        if seed is not None:
            self.seed = int(seed)
        self.feature_names = names
        self.moments = RunningMoments(len(names))
        self.model = HalfSpaceTrees(n_trees=self.n_trees, height=self.height, window_size=self.window_size, seed=self.seed)
        _plant_trees(self.model, len(names))
        self.learned = 0
        # Integer keys: cheaper to hash than names, and river sorts them the same way every time.
        self._keys = list(range(len(names)))
        self.learn(X)
        return self

    def learn(self, X: np.ndarray) -> None:
        """Learn windows in order; each is scaled with the moments of the windows before it."""
        X = self._checked(X)
        if X.shape[0] == 0:
            return
        mean, std = self.moments.before_each(X)
        unit = _squash((finite_or_nan(X) - mean) / std)
        self.moments.update(X)
        learn_one, keys = self.model.learn_one, self._keys
        for row in unit.tolist():
            learn_one(dict(zip(keys, row)))
        self.learned += X.shape[0]

    def score(self, X: np.ndarray) -> np.ndarray:
        """river's anomaly score per window (0..1); NaN before the first ``window_size`` windows are learned."""
        return self._score_z(self._z(X))

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Squared deviation from the running mean in running standard deviations; 0 where missing."""
        return self._contributions_z(self._z(X))

    def score_and_contributions(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = self._z(X)
        return self._score_z(z), self._contributions_z(z)

    def _score_z(self, z: np.ndarray) -> np.ndarray:
        if self.learned < self.window_size:
            return np.full(z.shape[0], np.nan)
        score_one, keys = self.model.score_one, self._keys
        return np.array([score_one(dict(zip(keys, row))) for row in _squash(z).tolist()], dtype=np.float64)

    @staticmethod
    def _contributions_z(z: np.ndarray) -> np.ndarray:
        squared = z**2
        squared[np.isnan(squared)] = 0.0
        return squared

    def _z(self, X: np.ndarray) -> np.ndarray:
        X = self._checked(X)
        return (finite_or_nan(X) - self.moments.mean) / self.moments.std

    def _checked(self, X: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise DetectorError(
                "halfspace_trees: no feature list yet: call fit(X, feature_names) first "
                "(X may have 0 rows to start an online model with no history)"
            )
        return self._check_matrix(X)

    def save(self, path: Path) -> None:
        """One pickle file (river models have no other format). Loading a pickle runs
        code, so load only files whose checksum the model registry has verified."""
        if self.model is None:
            raise DetectorError("halfspace_trees: nothing to save: call fit(X, feature_names) first")
        with open(path, "wb") as file:
            pickle.dump({"format": _FORMAT, "version": _VERSION, "detector": self}, file, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def load(cls, path: Path) -> "HalfSpaceTreesDetector":
        with open(path, "rb") as file:
            doc = pickle.load(file)
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT or doc.get("version") != _VERSION:
            raise DetectorError(f"halfspace_trees: {path} is not a version {_VERSION} half-space trees file: retrain the model")
        return doc["detector"]
