"""The faults fusion can name, per asset type, and which roles each one moves.

Written here as data because ``stream`` must not import the simulator
(``connectors/``); the signatures are the simulator's (connectors/simulator/
models.py, ``FAULTS`` of each model) translated from tag ids to roles
(stream/fusion/roles.py). ``primary`` roles leave their normal range when the
fault is fully developed; ``secondary`` ones move measurably but may stay in
range.

Two merges, both because the evidence cannot tell them apart:

* misalignment and imbalance are one state, ``misalignment_imbalance``: on every
  asset type they raise the same vibration roles (2x against 1x running speed is
  a spectral line the window features do not resolve). The merged state takes
  what both raise as primary and the rest as secondary.
* both bearing temperatures (drive end, non-drive end) are one role,
  ``bearing_temp``.

Directions matter: bearing wear and misalignment/imbalance raise the same
vibration roles, and only the vibration kurtosis tells them apart (up for the
impacts of a bearing defect, down for a periodic 1x / 2x component), so the
signatures say which way each role moves where the physics fixes it.

Every hidden state of an asset type: ``normal``, its named faults,
``sensor_fault`` (one tag's measurement is wrong, the process is fine) and
``unknown_anomaly`` (something abnormal that matches no signature).

Learned asset types (``fusion.asset_types`` in the config, stream/fusion/settings.py)
have no signature here: their faults are declared by name and learned from labeled
history; until then a learned fault's rows are those of "some abnormal state whose
pattern is not known yet" (``learned_states`` and FaultNetwork's defaults).
"""

from __future__ import annotations

from dataclasses import dataclass

NORMAL = "normal"
SENSOR_FAULT = "sensor_fault"
UNKNOWN_ANOMALY = "unknown_anomaly"

#: the built-in asset types (signatures below); a plant declares others under fusion.asset_types.
ASSET_TYPES: tuple[str, ...] = ("pump", "motor", "fan", "compressor", "generic")
#: the states every asset type has: a declared fault may not take these names.
RESERVED_STATES: tuple[str, ...] = (NORMAL, SENSOR_FAULT, UNKNOWN_ANOMALY)


@dataclass(frozen=True)
class Signature:
    """Roles a fault moves, each as ``"+role"`` (rises), ``"-role"`` (falls) or ``"role"``
    (moves either way, or the direction is not known)."""

    primary: tuple[str, ...]
    secondary: tuple[str, ...] = ()
    #: what an operator reads: why the fault moves these roles
    physics: str = ""

    def roles(self) -> dict[str, tuple[int, int]]:
        """role -> (rank: 0 primary / 1 secondary, direction: +1 rises / -1 falls / 0 either)."""
        out = {}
        for rank, entries in ((1, self.secondary), (0, self.primary)):
            for entry in entries:
                role, direction = split_direction(entry)
                out[role] = (rank, direction)
        return out


def split_direction(entry: str) -> tuple[str, int]:
    """"+vibration" -> ("vibration", 1); "-flow" -> ("flow", -1); "speed" -> ("speed", 0)."""
    if entry[:1] in "+-":
        return entry[1:], 1 if entry[0] == "+" else -1
    return entry, 0


# Vibration: impacts (a bearing defect, cavitation's collapsing bubbles) are
# impulsive and RAISE the kurtosis above the Gaussian 3; a dominant periodic
# component (imbalance at 1x, misalignment at 2x running speed) LOWERS it toward
# a sine's 1.5. That direction is what tells bearing wear from
# misalignment/imbalance when both raise the RMS.
_IMPACTS = ("+vibration", "+vibration_kurtosis")
_PERIODIC = ("+vibration", "-vibration_kurtosis")

#: asset type -> named fault -> the roles it moves.
SIGNATURES: dict[str, dict[str, Signature]] = {
    "pump": {
        "bearing_wear": Signature((*_IMPACTS, "+bearing_temp"), (), "impacts and friction heat at the bearing"),
        "cavitation": Signature(
            ("-suction_pressure", "-discharge_pressure", *_IMPACTS),
            ("-flow", "current", "winding_temp"),
            "low suction pressure: head breaks down, flow and pressure fall and fluctuate, impulsive vibration",
        ),
        "seal_leak": Signature(
            ("+seal_flow",),
            ("-flow", "suction_pressure", "-discharge_pressure", "+current", "+winding_temp"),
            "leak at the mechanical seal: delivered flow and head down, power up",
        ),
        "misalignment_imbalance": Signature(_PERIODIC, ("+bearing_temp",), "1x / 2x vibration, reaction forces heat the bearings"),
        "overheating": Signature(("+winding_temp",), (), "motor cooling lost: winding temperature up"),
    },
    "motor": {
        "bearing_wear": Signature((*_IMPACTS, "+bearing_temp"), (), "impacts and friction heat at the bearing"),
        "misalignment_imbalance": Signature(_PERIODIC, ("+bearing_temp",), "1x / 2x vibration, reaction forces heat the bearings"),
        "overheating": Signature(("+winding_temp",), (), "cooling fan failed or fins clogged: winding temperature up"),
    },
    "fan": {
        "bearing_wear": Signature((*_IMPACTS, "+bearing_temp"), (), "impacts and friction heat at the bearing"),
        "misalignment_imbalance": Signature(_PERIODIC, ("+bearing_temp",), "1x / 2x vibration (dust on the blades, coupling)"),
        "overheating": Signature(("+bearing_temp",), (), "bearing lubrication or cooling lost"),
    },
    "compressor": {
        "bearing_wear": Signature(_IMPACTS, (), "impacts of the rotor bearings"),
        "misalignment_imbalance": Signature(_PERIODIC, (), "1x / 2x vibration"),
        "seal_leak": Signature(
            ("+process_temp",),
            ("+speed", "+current", "suction_pressure", "+oil_temp", "oil_pressure", "vibration"),
            "internal leakage: speed and power up for the same demand, hot recirculated air",
        ),
        "overheating": Signature(("+oil_temp", "+process_temp"), ("-oil_pressure",), "oil cooler failed: oil and discharge temperatures rise, oil thins"),
    },
    "generic": {
        "bearing_wear": Signature((*_IMPACTS, "+process_temp"), (), "impacts and friction heat"),
        "misalignment_imbalance": Signature(_PERIODIC, ("+process_temp",), "1x / 2x vibration, some coupling heat"),
        "overheating": Signature(("+process_temp",), (), "cooling lost"),
    },
}


def states_of(asset_type: str) -> tuple[str, ...]:
    """The hidden states of a built-in asset type, ``normal`` first."""
    return (NORMAL, *SIGNATURES[asset_type], SENSOR_FAULT, UNKNOWN_ANOMALY)


def learned_states(faults) -> tuple[str, ...]:
    """The hidden states of a learned asset type: normal, its declared faults (in the
    config's order), sensor_fault, unknown_anomaly."""
    return (NORMAL, *faults, SENSOR_FAULT, UNKNOWN_ANOMALY)


#: how operators say a state.
_WORDS = {"misalignment_imbalance": "misalignment/imbalance"}


def state_words(state: str) -> str:
    return _WORDS.get(state, state.replace("_", " "))


# ----------------------------------------------------------------- evidence values

#: calibrated p-value levels of one score (edges in FusionSettings.evidence).
LEVELS: tuple[str, ...] = ("normal", "elevated", "anomalous", "extreme")
#: the share of Bad samples in a window.
QUALITY_LEVELS: tuple[str, ...] = ("good", "some_bad", "mostly_bad")
#: fast-rule hits as evidence. ``spike``: a rate-of-change hit on one tag with
#: nothing else involved (an isolated jump is a transmitter far more often than
#: the process); ``rate_of_change``: several tags jumping at once (a trip, a burst).
RULE_KINDS: tuple[str, ...] = ("limit", "rate_of_change", "spike", "flatline", "bad_quality")


# --------------------------------------------------------------- default tables
# The numbers below are the defaults of the conditional probability tables; the
# config (fusion.cpt) replaces any entry. Why these values:

#: P(p-value level | state) for a named fault or an unknown anomaly: a developed
#: fault does not push every window of every detector past the alarm level (slow
#: thermal faults barely move a 1 s window), so "normal" keeps 0.3.
#: The ``normal`` row is not here: calibration fixes it (the p-value is uniform
#: under normal operation), see network.normal_level_row.
LEVEL_ROW_FAULT = (0.30, 0.20, 0.30, 0.20)
#: a broken sensor shows in the detectors less reliably than a process fault
#: (a stuck value is "too quiet", which not every feature catches).
LEVEL_ROW_SENSOR = (0.40, 0.20, 0.25, 0.15)

#: P(role among the top tags of an unusual score | state), named faults. Real
#: detectors put most of a score's attribution on one or two tags (an isolation
#: forest gave bearing wear's kurtosis a 100 % share on the simulator), so a
#: primary role is often missing from the top tags: 0.6, not 0.9. Secondary
#: roles sometimes appear, any other role rarely.
INVOLVED_PRIMARY = 0.60
INVOLVED_SECONDARY = 0.30
INVOLVED_OTHER = 0.05
#: of a role's involvement, the share that goes the way the signature says
#: (a value above its normal range for "+role", below for "-role").
WITH_THE_SIGNATURE = 0.90
#: unknown anomaly and normal (a false alarm blames tags at random): flat, about
#: what 3 top tags out of ~10 roles give. Flat is what makes a pattern that fits
#: no signature land here rather than on the closest fault.
INVOLVED_FLAT = 0.30
#: a sensor fault involves one tag: lower and flat, so a lone role favours it and
#: a broad pattern does not.
INVOLVED_SENSOR = 0.12

#: P(rule hit on a role in one step | state), only hits are evidence (limits are
#: set wide and many tags have none, so silence says little). A broken sensor
#: crosses a limit as easily as a secondary role of a process fault does (a stuck
#: or drifting value ends up anywhere). Per kind:
#: (normal, named fault on a primary role, ...secondary, ...other role, sensor fault, unknown anomaly).
RULE_HIT_DEFAULTS: dict[str, tuple[float, float, float, float, float, float]] = {
    "limit": (0.001, 0.20, 0.05, 0.005, 0.05, 0.02),
    "rate_of_change": (0.001, 0.05, 0.03, 0.005, 0.005, 0.02),
    "spike": (0.001, 0.01, 0.005, 0.002, 0.10, 0.005),
    "flatline": (0.0005, 0.001, 0.001, 0.001, 0.10, 0.002),
    "bad_quality": (0.001, 0.001, 0.001, 0.001, 0.10, 0.002),
}

#: P(bad-sample level | state): (good, some_bad, mostly_bad). Process faults do not
#: make a transmitter drop out; a sensor fault does now and then (dropout), while
#: stuck, drift and spike keep Good quality.
QUALITY_ROW_NORMAL = (0.97, 0.025, 0.005)
QUALITY_ROW_FAULT = (0.96, 0.03, 0.01)
QUALITY_ROW_SENSOR = (0.60, 0.25, 0.15)
QUALITY_ROW_UNKNOWN = (0.93, 0.05, 0.02)
