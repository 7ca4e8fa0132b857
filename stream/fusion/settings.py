"""The fusion section of the configuration: transitions, evidence, priors, feedback,
CPT overrides, tag roles and learned asset types.

In the plant file (the worker wires it under ``fusion:``)::

    fusion:
      transitions:
        onset_per_s: 1.0e-5      # P(an abnormal state begins) per second, per state
        recovery_per_s: 0.01     # P(back to normal) per second
        switch_per_s: 0.002      # P(one abnormal state turns out to be another) per second
      evidence:
        freshness_windows: 2     # a score counts while younger than 2 of its window lengths
        elevated_p: 0.01         # p-value level edges
        anomalous_p: 0.001       #   (set to detectors.false_alarm_rate)
        extreme_p: 1.0e-5
        max_log_evidence_per_step: 8
      feedback:
        weight: 1.0              # pseudo-counts one operator feedback adds
        max_share: 0.2           # feedback counts per CPT row <= 0.2 x its prior strength
      cpt:                       # replace entries of the default tables, per asset type
        pump:
          involvement:           # P(role among the top tags | state)
            bearing_wear: {bearing_temp: 0.9}     # split rose/fell as the default row does
            cavitation: {flow: {rose: 0.05, fell: 0.5}}
            unknown_anomaly: {"*": 0.35}          # "*": every role
          score_level:           # P(p-value level | state); a partial row rescales the rest
            overheating: {normal: 0.5, elevated: 0.2, anomalous: 0.2, extreme: 0.1}
          rule_hit:              # P(a rule hit on a role in one step | state)
            flatline: {sensor_fault: {"*": 0.2}}
          data_quality:          # P(share of Bad samples | state)
            sensor_fault: {good: 0.5, some_bad: 0.3, mostly_bad: 0.2}
      tag_roles:                 # what a tag measures, where its name does not say
        pump-3: {TT_104: bearing_temp}          # by asset id ...
        pump: {FT_201: seal_flow}               # ... or by asset type
      asset_types:               # asset types of the plant's own, learned from labeled history
        reactor_unit:            # assets[].type may name it
          faults:                # fault -> what an operator reads (config order = state order)
            idv01: "A/C feed ratio step"
            idv02: "B composition step"
          roles: tags            # tags: every tag of the type's assets is its own role;
                                 # names (default): the name heuristic and tag_roles

Every number has its reason next to it; the default tables are in
stream/fusion/faults.py.

A learned asset type has no built-in signature: its faults start as "some abnormal
state whose pattern is not known yet" (the unknown anomaly's tables, with a weak
prior: ``priors.learned_fault_share``) and take their pattern from labeled history
(FaultNetwork.learn_from_labeled, Diagnosis.learn_from_labeled). With ``roles: tags``
the network's role vocabulary is the tag ids of the type's assets, so the attribution
pattern (which tags the detectors blame, rose / fell) is learned tag by tag; a
chemical process unit whose tags all read as ``other`` by name needs that.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from stream.config import _Section
from stream.fusion.faults import ASSET_TYPES, LEVELS, QUALITY_LEVELS, RESERVED_STATES, RULE_KINDS, learned_states, states_of
from stream.fusion.roles import ROLES

Role = Literal[ROLES]  # type: ignore[valid-type]

#: the CPT nodes an override may name, and what their rows hold.
CPT_NODES = ("score_level", "involvement", "rule_hit", "data_quality")
#: "*" in an involvement or rule_hit row: every role.
ALL_ROLES = "*"


class FusionTransitions(_Section):
    """How the hidden state may change between two steps; per second, so that the
    step size matters (a 60 s step allows 60 times the change of a 1 s step).

    These are filter settings, not the plant's true fault rates: the onset
    probability sets how much evidence it takes to believe a fault, the recovery
    probability how fast belief returns to normal once evidence stops.
    """

    #: P(a given abnormal state begins) per second, from normal. 1e-5: from a calm
    #: normal state one clear window cannot carry a fault alone (see max_log_evidence_per_step).
    onset_per_s: float = Field(1e-5, gt=0, lt=0.1)
    #: P(an abnormal state ends) per second. 0.01: with no evidence either way, belief
    #: in a fault halves in about 70 s; it also caps how sure the filter gets
    #: (P(normal) never falls far below 1 % per second of step), so it can come back.
    recovery_per_s: float = Field(0.01, gt=0, lt=1)
    #: P(an abnormal state turns into another) per second, shared among the others.
    #: 0.002: a first wrong name (e.g. misalignment before the bearing temperature
    #: rose) is corrected within a few windows of better evidence, not only via normal.
    switch_per_s: float = Field(0.002, ge=0, lt=1)

    @model_validator(mode="after")
    def _sane(self) -> "FusionTransitions":
        if self.onset_per_s >= self.recovery_per_s:
            raise ValueError(
                f"onset_per_s ({self.onset_per_s}) must be below recovery_per_s ({self.recovery_per_s}): "
                "otherwise the filter expects the asset to be faulty most of the time"
            )
        return self


class FusionEvidence(_Section):
    """How scores, rule hits and data quality become evidence."""

    #: a score counts (and is shown as a driver) while its window ended less than this
    #: many of its window lengths ago; older, it is left out, never read as normal.
    #: 2: a score arrives one grace period after its window; one more length covers a
    #: late one without letting yesterday's minute speak for today.
    freshness_windows: float = Field(2.0, ge=1.0, le=20.0)
    #: p-value level edges. p > elevated_p: normal; <= elevated_p: elevated;
    #: <= anomalous_p: anomalous (set it to detectors.false_alarm_rate); <= extreme_p: extreme.
    elevated_p: float = Field(0.01, gt=0, lt=1)
    anomalous_p: float = Field(0.001, gt=0, lt=1)
    extreme_p: float = Field(1e-5, gt=0, lt=1)
    #: P(level | normal) is what calibration promises (the bin widths: 0.009, 0.00099,
    #: 1e-5) but never less than these floors, because calibration holds only for
    #: operating points like the training data's. Measured on the simulator's pump
    #: trained on 6 h and run on another day (new setpoints, tests/test_fault_alarms.py):
    #: the 1 s forest gave p <= 0.01 in 14 % of normal windows (60 % in the first two
    #: minutes, at a load below any in training) and p <= 0.001 in 3 %. With the
    #: promised widths those windows read as strong fault evidence and raised an
    #: "unknown anomaly" alarm on every such start; with these floors an elevated
    #: window is weak evidence (x2 against a fault's 0.2), an anomalous one moderate
    #: (x15) and an extreme one (p <= 1e-5, the typical fault window) strong (x200).
    normal_elevated_floor: float = Field(0.10, ge=0, lt=0.5)
    normal_anomalous_floor: float = Field(0.02, ge=0, lt=0.5)
    #: calibration sets hold ~10^4 windows, and new operating points reach further into
    #: the tail, so P(extreme | normal) is taken as at least this, not 1e-5.
    calibration_floor: float = Field(1e-3, gt=0, lt=0.01)
    #: consecutive windows shorter than this are not independent observations (slow
    #: process dynamics, detectors with memory): a score of a shorter window counts
    #: length / this. 2 s: a 1 s window counts half, 10 s and 1 min windows fully.
    #: The detectors may give runs of up to 3 anomalous 1 s windows in normal operation
    #: (tests/test_fault_detection.py); at full weight three would carry a fault alone.
    independent_after_s: float = Field(2.0, gt=0, le=3600)
    #: a top tag with at least this share of a score's attribution counts as fully
    #: involved; a smaller share counts in proportion. 0.15: above the 1/n share
    #: that an 11-tag asset's tags get when nothing stands out.
    full_involvement_share: float = Field(0.15, gt=0, le=1)
    #: an elevated (not anomalous) score's top tags count this much of an anomalous one's.
    elevated_attribution: float = Field(0.5, ge=0, le=1)
    #: a window's share of Bad samples above this is "some_bad" (0: any Bad sample) ...
    some_bad_above: float = Field(0.0, ge=0, lt=1)
    #: ... and above this "mostly_bad".
    mostly_bad_above: float = Field(0.5, gt=0, lt=1)
    #: a rule condition that stays active counts as one observation per this many
    #: seconds of event time (at most one per step).
    rule_interval_s: float = Field(1.0, gt=0)
    #: the most one step's evidence may favour any state over normal, in nats (natural
    #: log of the likelihood ratio). The detectors and scales read the same samples, so
    #: their evidence is far from independent; summed as if it were, one odd window
    #: would carry a fault alone. 8 nats (x3000): from a calm normal state (onset 1e-5/s)
    #: one window, however extreme, leaves a fault below 5 %; a clear fault passes 80 %
    #: within 3-4 windows of 1 s.
    max_log_evidence_per_step: float = Field(8.0, gt=0, le=50)

    @model_validator(mode="after")
    def _ordered(self) -> "FusionEvidence":
        if not self.extreme_p < self.anomalous_p < self.elevated_p:
            raise ValueError(
                f"p-value edges must go extreme_p < anomalous_p < elevated_p, got "
                f"{self.extreme_p} / {self.anomalous_p} / {self.elevated_p}"
            )
        if not self.some_bad_above < self.mostly_bad_above:
            raise ValueError(f"some_bad_above ({self.some_bad_above}) must be below mostly_bad_above ({self.mostly_bad_above})")
        return self


class FusionPriors(_Section):
    """How much the default tables weigh, as Dirichlet pseudo-counts per CPT row: a row
    learned from labeled history moves once the labels outnumber these."""

    #: P(level | abnormal state) rows: judgement, not measurement, so they yield to a
    #: few hundred labeled windows.
    score_level: float = Field(100.0, gt=0)
    #: P(level | normal): calibration measured it on thousands of normal windows.
    calibrated_normal: float = Field(10_000.0, gt=0)
    involvement: float = Field(50.0, gt=0)
    #: rule hits are rare events (probabilities of 0.001): a weaker prior would let
    #: the first labeled hit move them tenfold.
    rule_hit: float = Field(1000.0, gt=0)
    data_quality: float = Field(100.0, gt=0)
    #: a fault of a learned asset type (fusion.asset_types) starts as "some abnormal state
    #: whose pattern is not known yet": its rows take this share of the strengths above
    #: (0.1: score_level 10, involvement 5, rule_hit 100, data_quality 10 pseudo-counts).
    #: The default row is a placeholder, not judgement, so labeled history should own it
    #: soon: a labeled 1 s step adds about 0.5 of a count to its level and involvement
    #: rows and one rule observation, so after 200-300 labeled steps the history holds
    #: over 90 % of those rows and about 70 % of the rule-hit rows. Much weaker would let
    #: a handful of records decide a direction. (The feedback cap of these rows stays
    #: that of a full-strength row: feedback.max_share of the strengths above.)
    learned_fault_share: float = Field(0.1, gt=0, le=1)


class FusionFeedback(_Section):
    """Operator feedback ("false_alarm", "confirmed:<fault>") as bounded learning."""

    #: pseudo-counts one feedback adds (one step's evidence, counted as this many labels).
    weight: float = Field(1.0, gt=0, le=100)
    #: feedback counts in one CPT row stop at this share of the row's prior strength, so
    #: one operator (or one noisy alarm acknowledged 500 times) cannot rewrite the model.
    max_share: float = Field(0.2, ge=0, le=10)


#: a declared asset type's name: it keys config sections and changelog entries ("network:<type>").
_TYPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,99}$")
#: a declared fault's name: what fusion and the alarm book carry (stream.alarms.book accepts these).
_FAULT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}$")
#: roles of a learned asset type: the name heuristic (and tag_roles), or one role per tag.
ROLE_MODES = ("names", "tags")


class LearnedAssetType(_Section):
    """An asset type of the plant's own (``fusion.asset_types.<name>``): its faults by
    name, learned from labeled history, and what its roles are."""

    #: fault name -> what an operator reads ("A/C feed ratio step"); the order is the
    #: order of the network's states. A list of names is taken as names without words.
    faults: dict[str, str]
    #: "names" (default): a tag's role comes from its name and fusion.tag_roles, as for the
    #: built-in types; "tags": every tag of the type's assets is its own role.
    roles: str = "names"

    @field_validator("faults", mode="before")
    @classmethod
    def _faults(cls, faults: Any) -> Any:
        if isinstance(faults, (list, tuple)):
            faults = {name: "" for name in faults}
        if isinstance(faults, dict):
            faults = {name: ("" if words is None else words) for name, words in faults.items()}
            if not faults:
                raise ValueError("a learned asset type needs at least one fault: name them, e.g. faults: {idv01: \"A/C feed ratio step\"}")
            for name in faults:
                if not isinstance(name, str) or not _FAULT_NAME.match(name):
                    raise ValueError(f"fault name {name!r} is not a name: use letters, digits and _ . : / -, starting with a letter or digit")
                if name in RESERVED_STATES or name == "alarm_flood":
                    raise ValueError(
                        f"fault name {name!r} is reserved ({', '.join(RESERVED_STATES)} are states of every asset type, "
                        "alarm_flood names flood alarms): give the fault another name"
                    )
        return faults

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, roles: Any) -> Any:
        if roles not in ROLE_MODES:
            raise ValueError(
                f"roles must be tags (every tag of the type's assets is its own role) or names (the name heuristic "
                f"and fusion.tag_roles, as for the built-in types), got {roles!r}"
            )
        return roles

    @property
    def states(self) -> tuple[str, ...]:
        return learned_states(self.faults)


class FusionSettings(_Section):
    """Bayesian fusion: detector scores, rule hits and data quality -> P(fault) per asset."""

    #: False: no fusion and no fault alarms (the fast rules' alerts still go out).
    enabled: bool = True
    #: whose scores count as evidence. The LSTM autoencoder is left out by default:
    #: its scores come from cross-asset micro-batches after their window's step (up
    #: to 0.2 s live, up to a micro-batch in a replay), so live and replay would fuse
    #: different evidence; add it where that matters less than its extra view.
    detectors: list[Literal["isolation_forest", "halfspace_trees", "lstm_autoencoder"]] = ["isolation_forest", "halfspace_trees"]
    transitions: FusionTransitions = FusionTransitions()
    evidence: FusionEvidence = FusionEvidence()
    priors: FusionPriors = FusionPriors()
    feedback: FusionFeedback = FusionFeedback()
    #: asset types of the plant's own: name -> faults (learned from labeled history) and
    #: roles (module doc). Before ``cpt``, whose check needs them.
    asset_types: dict[str, LearnedAssetType] = {}
    #: asset type -> node -> rows that replace the defaults (format in the module doc).
    cpt: dict[str, dict[str, dict[str, Any]]] = {}
    #: asset id or asset type -> tag id -> role; beats the name heuristic (stream/fusion/roles.py).
    tag_roles: dict[str, dict[str, Role]] = {}

    @field_validator("asset_types")
    @classmethod
    def _declared_types(cls, asset_types):
        for name in asset_types:
            if name in ASSET_TYPES:
                raise ValueError(
                    f"fusion.asset_types.{name}: {name} is a built-in asset type; give the declared type another name "
                    f"(e.g. {name}_unit), or leave it out and use the built-in {name}"
                )
            if not _TYPE_NAME.match(name):
                raise ValueError(f"fusion.asset_types.{name}: a type name is a letter, then letters, digits, _ and - (at most 100)")
        return asset_types

    @field_validator("cpt")
    @classmethod
    def _cpt_known(cls, cpt, info: ValidationInfo):
        check_cpt_overrides(cpt, info.data.get("asset_types") or {})
        return cpt

    def states_of(self, asset_type: str) -> tuple[str, ...]:
        """The hidden states of a built-in or declared asset type."""
        learned = self.asset_types.get(asset_type)
        if learned is not None:
            return learned.states
        if asset_type in ASSET_TYPES:
            return states_of(asset_type)
        raise ValueError(f"no fault model for asset type {asset_type!r}; {known_types(self.asset_types)}")


def known_types(asset_types) -> str:
    """"the built-in types are ...; declared under fusion.asset_types: ..." for error messages."""
    declared = ", ".join(asset_types) or "none"
    return f"the built-in types are {', '.join(ASSET_TYPES)}; declared under fusion.asset_types: {declared}"


# ----------------------------------------------------------------- override checks


def _probability(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{where}: a probability must be a number from 0 to 1, got {value!r}")
    return float(value)


def _mapping(value: Any, where: str, what: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping of {what}, got {type(value).__name__} {value!r}")
    return value


def _known(name: Any, allowed, where: str, what: str) -> None:
    if name not in allowed:
        raise ValueError(f"{where}: unknown {what} {name!r}; {what}s here: {', '.join(allowed)}")


def _categorical_row(row: Any, levels, where: str) -> None:
    row = _mapping(row, where, "level: probability")
    total = 0.0
    for level, p in row.items():
        _known(level, levels, f"{where}.{level}", "level")
        total += _probability(p, f"{where}.{level}")
    if total > 1.0 + 1e-6:
        raise ValueError(f"{where}: the probabilities sum to {total:g}; a row must add up to 1 (leave out levels to rescale the rest)")
    if len(row) == len(levels) and abs(total - 1.0) > 1e-3:
        raise ValueError(f"{where}: the probabilities sum to {total:g}; a full row must add up to 1")
    if len(row) < len(levels) and total >= 1.0 - 1e-9:
        raise ValueError(f"{where}: the given levels already sum to 1, leaving nothing for the others; give the whole row")


def _involvement_row(row: Any, where: str, roles) -> None:
    row = _mapping(row, where, "role: probability or {rose: p, fell: p}")
    for role, value in row.items():
        if roles is not None:
            _known(role, (*roles, ALL_ROLES), f"{where}.{role}", "role")
        if isinstance(value, dict):
            for way, p in value.items():
                _known(way, ("rose", "fell"), f"{where}.{role}.{way}", "direction")
                _probability(p, f"{where}.{role}.{way}")
            total = sum(value.values())
            if total > 1.0 + 1e-9:
                raise ValueError(f"{where}.{role}: rose + fell is {total:g}; P(involved) cannot exceed 1")
        else:
            _probability(value, f"{where}.{role}")


def _role_row(row: Any, where: str, roles) -> None:
    row = _mapping(row, where, "role: probability")
    for role, p in row.items():
        if roles is not None:
            _known(role, (*roles, ALL_ROLES), f"{where}.{role}", "role")
        _probability(p, f"{where}.{role}")


def check_cpt_overrides(cpt: Any, asset_types: dict | None = None, tags_of: dict | None = None) -> None:
    """Raise ValueError naming the field (fusion.cpt.<type>.<node>.<state>...) of the first bad entry.

    ``asset_types``: the declared (learned) types, name -> LearnedAssetType. The roles of a
    type with ``roles: tags`` are its assets' tag ids: checked against ``tags_of`` (type ->
    tag ids) when given (the service config's cross-check), not checked without it."""
    base = "fusion.cpt"
    asset_types = asset_types or {}
    cpt = _mapping(cpt, base, "asset type: nodes")
    for asset_type, nodes in cpt.items():
        _known(asset_type, (*ASSET_TYPES, *asset_types), f"{base}.{asset_type}", "asset type")
        where_type = f"{base}.{asset_type}"
        learned = asset_types.get(asset_type)
        states = learned.states if learned is not None else states_of(asset_type)
        roles = ROLES
        if learned is not None and learned.roles == "tags":
            roles = None if tags_of is None else tuple(tags_of.get(asset_type, ()))
        for node, rows in _mapping(nodes, where_type, "node: rows").items():
            _known(node, CPT_NODES, f"{where_type}.{node}", "node")
            where_node = f"{where_type}.{node}"
            if node == "rule_hit":
                for kind, by_state in _mapping(rows, where_node, "rule kind: states").items():
                    _known(kind, RULE_KINDS, f"{where_node}.{kind}", "rule kind")
                    for state, row in _mapping(by_state, f"{where_node}.{kind}", "state: roles").items():
                        _known(state, states, f"{where_node}.{kind}.{state}", f"state of a {asset_type}")
                        _role_row(row, f"{where_node}.{kind}.{state}", roles)
                continue
            for state, row in _mapping(rows, where_node, "state: row").items():
                _known(state, states, f"{where_node}.{state}", f"state of a {asset_type}")
                where = f"{where_node}.{state}"
                if node == "involvement":
                    _involvement_row(row, where, roles)
                else:
                    _categorical_row(row, LEVELS if node == "score_level" else QUALITY_LEVELS, where)
