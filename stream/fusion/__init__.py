"""Bayesian fusion: detector scores, fast-rule hits and data quality -> named fault
probabilities per asset, with the evidence that drove them.

    "pump-3: bearing wear 87 % (vibration_kurtosis, bearing_temp_de rose)"

One module per job:

* ``roles``    what a tag measures (vibration, bearing_temp, ...), from its name or the config;
* ``faults``   the faults of each asset type, the roles they move, the default table values;
* ``settings`` ``FusionSettings``, the ``fusion:`` section of the configuration (learned
  asset types included: ``fusion.asset_types``, faults learned from labeled history);
* ``evidence`` scores, rule events and data quality -> one step's evidence counts;
* ``network``  ``FaultNetwork``: the CPTs (Dirichlet counts), learning, feedback, transitions;
* ``asset``    ``AssetFusion``: the forward filter of one asset, its persisted state;
* ``result``   ``FusionResult`` and the operator's line.

numpy only; no Kafka. The worker and the offline replay drive ``AssetFusion``.
"""

from stream.fusion.asset import AssetFusion
from stream.fusion.evidence import StepEvidence
from stream.fusion.faults import NORMAL, SENSOR_FAULT, SIGNATURES, UNKNOWN_ANOMALY, states_of
from stream.fusion.network import FaultNetwork, FeedbackChange
from stream.fusion.result import FusionResult
from stream.fusion.roles import ROLES, role_from_name
from stream.fusion.settings import FusionSettings, LearnedAssetType

__all__ = [
    "AssetFusion",
    "FaultNetwork",
    "FeedbackChange",
    "FusionResult",
    "FusionSettings",
    "LearnedAssetType",
    "NORMAL",
    "ROLES",
    "SENSOR_FAULT",
    "SIGNATURES",
    "StepEvidence",
    "UNKNOWN_ANOMALY",
    "role_from_name",
    "states_of",
]
