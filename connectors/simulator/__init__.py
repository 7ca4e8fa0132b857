"""The plant simulator's physics: asset models (pump, motor, fan, compressor,
generic), a fault schedule with ground truth, and ``PlantSimulation``, which
gives every signal's measured value and OPC UA quality at any event time.

Pure numpy and deterministic under a seed; serving the values over OPC UA or
Modbus is someone else's job. Quick start::

    sim = PlantSimulation([("pump-1", "pump")], ["pump-1:cavitation@60+120"], seed=1, start_us=t0)
    values, quality = sim.sample("pump-1", t0 + np.arange(0, 600_000_000, 100_000))
"""

from connectors.simulator.faults import (
    KINDS,
    PROCESS_KINDS,
    SENSOR_KINDS,
    FaultSpec,
    FaultSpecError,
    GroundTruthWriter,
    ground_truth_records,
    parse_faults,
    read_ground_truth,
)
from connectors.simulator.models import (
    MODEL_TYPES,
    AssetModel,
    CentrifugalPump,
    Fan,
    FaultSignature,
    GenericAsset,
    InductionMotor,
    ScrewCompressor,
    SignalSpec,
)
from connectors.simulator.plant import DROPOUT_QUALITY, PlantSimulation

__all__ = [
    "KINDS",
    "PROCESS_KINDS",
    "SENSOR_KINDS",
    "MODEL_TYPES",
    "DROPOUT_QUALITY",
    "AssetModel",
    "CentrifugalPump",
    "Fan",
    "FaultSignature",
    "FaultSpec",
    "FaultSpecError",
    "GenericAsset",
    "GroundTruthWriter",
    "InductionMotor",
    "PlantSimulation",
    "ScrewCompressor",
    "SignalSpec",
    "ground_truth_records",
    "parse_faults",
    "read_ground_truth",
]
