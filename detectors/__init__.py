"""Anomaly detectors over window features: the models, their calibration and their files.

Knows nothing of Kafka, faust or the network (numpy, scikit-learn, river and,
for the LSTM only, torch). The stream pipeline hands a detector a matrix of
window features (windows x "<tag>.<feature>" columns) and gets back scores.

* ``base``: the ``Detector`` interface (fit, score, contributions, learn, save/load).
* ``isolation_forest``, ``halfspace``, ``lstm_autoencoder``: the detectors;
  ``DETECTORS`` names them, ``detector_class`` imports one when it is needed
  (torch is heavy and optional, so nothing here imports it up front).
* ``scaling``: robust per-feature scaling and the normal ranges operators see.
* ``calibration``: raw scores -> p-values against normal operation, so a
  threshold is a false-alarm rate and detectors can be fused.
* ``attribution``: feature contributions -> the top tags of a window.
* ``model``: a detector with its calibration (``CalibratedModel``, ``fit_calibrated``).
* ``registry``: versioned, checksummed model files on disk, and the models-topic
  announcement of each version.
"""

from __future__ import annotations

import importlib

from detectors.base import Detector, DetectorError

#: detector name (as on the scores topic and in the config) -> "module:Class".
DETECTORS = {
    "isolation_forest": "detectors.isolation_forest:IsolationForestDetector",
    "halfspace_trees": "detectors.halfspace:HalfSpaceTreesDetector",
    "lstm_autoencoder": "detectors.lstm_autoencoder:LstmAutoencoderDetector",
}

#: what to install when a detector's optional dependency is missing.
_INSTALL_HINTS = {
    "torch": "install the optional extra with `pip install 'edgewatch[torch]'`, or set detectors.{name}.enabled: false",
}


def detector_class(name: str) -> type[Detector]:
    """The class of detector ``name``, importing its module now (not before).

    Raises ``DetectorError`` for an unknown name, and ``ImportError`` saying what
    to install when the detector needs a library that is missing (torch for the
    LSTM autoencoder).
    """
    try:
        module_name, class_name = DETECTORS[name].split(":")
    except KeyError:
        raise DetectorError(f"unknown detector {name!r}: choose one of {', '.join(sorted(DETECTORS))}") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        # The module may re-raise the missing import with its own words: look at the cause too.
        missing = (error.name or getattr(error.__cause__, "name", None) or "").split(".")[0]
        if missing in _INSTALL_HINTS:
            raise ImportError(
                f"the {name} detector needs {missing}, which is not installed: " + _INSTALL_HINTS[missing].format(name=name)
            ) from error
        raise
    return getattr(module, class_name)


__all__ = ["DETECTORS", "Detector", "DetectorError", "detector_class"]
