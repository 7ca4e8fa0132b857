"""What one fusion step says about one asset, and the line an operator reads.

``pump-3: bearing wear 87 % (vibration_kurtosis, bearing_temp_de rose)``

A learned asset type's fault reads as its declared words and its name
(``unit-1: A/C feed ratio step (idv01) 91 % (xmeas_1 rose)``); its explanation lists
the top tags by their share, since a learned fault has no signature to rank them by.
"""

from __future__ import annotations

from dataclasses import dataclass

from stream.fusion.evidence import LEVEL_FEATURES, StepEvidence
from stream.fusion.faults import NORMAL, SENSOR_FAULT, state_words

#: a runner-up this close to the top state is named with it ("... or ..."):
#: the evidence does not separate them, and the operator should know.
RUNNER_UP_RATIO = 0.5


@dataclass(frozen=True)
class FusionResult:
    asset_id: str
    asset_type: str
    event_time_us: int
    #: state -> probability, most probable first
    posterior: dict[str, float]
    #: the most probable state (normal included)
    top_state: str
    #: the most probable state other than normal, and its probability
    top_fault: str
    top_fault_probability: float
    #: 1 - P(normal)
    p_any_fault: float
    #: what drove it: top_tags [{id, role, contribution, feature, value, normal_range,
    #: detector, scale}], detectors [{detector, scale, p_value, level, model_version,
    #: window_end_us}] (fresh scores), rules [{rule, tag, condition, kind, role}] (hits
    #: this step), bad_fraction, stale_scores (left out this step)
    drivers: dict
    #: the step's evidence as counts: hand it back with a label to learn (FaultNetwork.feedback)
    evidence: StepEvidence
    #: why, in words: "vibration_kurtosis, bearing_temp_de rose"
    explanation: str
    #: the line for people: "pump-3: bearing wear 87 % (vibration_kurtosis, bearing_temp_de rose)"
    message: str

    @property
    def fault_probabilities(self) -> dict[str, float]:
        """Every state but normal -> its probability (what fault alarms follow)."""
        return {state: p for state, p in self.posterior.items() if state != NORMAL}

    def context(self) -> dict:
        """The context an alarm keeps (stream.alarms.messages.context_for reads it)."""
        return {
            "top_tags": [{k: t[k] for k in ("id", "value", "normal_range", "feature")} for t in self.drivers["top_tags"]],
            "evidence": [{k: d[k] for k in ("detector", "scale", "p_value")} for d in self.drivers["detectors"]],
            "model_versions": {f"{d['detector']}/{d['scale']}": d["model_version"] for d in self.drivers["detectors"]},
            "explanation": self.explanation or None,
        }

    def as_dict(self) -> dict:
        """JSON-ready."""
        return {
            "asset_id": self.asset_id,
            "asset_type": self.asset_type,
            "event_time_us": self.event_time_us,
            "posterior": dict(self.posterior),
            "top_state": self.top_state,
            "top_fault": self.top_fault,
            "top_fault_probability": self.top_fault_probability,
            "p_any_fault": self.p_any_fault,
            "drivers": self.drivers,
            "evidence": self.evidence.to_dict(),
            "explanation": self.explanation,
            "message": self.message,
        }


def percent(p: float) -> str:
    if p >= 0.995:
        return ">99 %"
    if p < 0.005:
        return "<1 %"
    return f"{p * 100:.0f} %"


def _phrase(tag: dict) -> tuple[str, str]:
    """(what, how): ("bearing_temp_de", "rose"); a feature that is not the tag's level is
    named, since "flow std rose" is not "flow rose"."""
    what = tag["id"] if tag.get("feature") in LEVEL_FEATURES or not tag.get("feature") else f"{tag['id']} {tag['feature']}"
    value, normal_range = tag.get("value"), tag.get("normal_range")
    if value is not None and normal_range and None not in normal_range:
        if value > normal_range[1]:
            return what, "rose"
        if value < normal_range[0]:
            return what, "fell"
    return what, "changed"


_RULE_WORDS = {"flatline": "flat", "bad_quality": "Bad quality", "spike": "spiking", "rate_of_change": "jumped"}
_LIMIT_WORDS = {"high": "above high limit", "high_high": "above high-high limit", "low": "below low limit", "low_low": "below low-low limit"}


def _rule_phrase(hit: dict) -> str:
    if hit["kind"] == "limit":
        return f"{hit['tag']} {_LIMIT_WORDS.get(hit['condition'], hit['condition'])}"
    return f"{hit['tag']} {_RULE_WORDS.get(hit['kind'], hit['kind'])}"


def explain(state: str, drivers: dict, signature: tuple[tuple[str, ...], tuple[str, ...]], max_tags: int = 3) -> str:
    """Why ``state``, in words: the top tags that fit it (its signature's roles first) and
    which way they moved, and for a sensor fault the rule that caught the sensor."""
    primary, secondary = signature
    rank = {role: 0 for role in primary} | {role: 1 for role in secondary if role not in primary}
    if state == SENSOR_FAULT:
        max_tags = 1  # one transmitter is wrong; the others in the top tags are noise
    tags = sorted(drivers["top_tags"], key=lambda t: (rank.get(t["role"], 2), -t["contribution"]))[:max_tags]
    groups: dict[str, list[str]] = {}
    for tag in tags:
        what, how = _phrase(tag)
        groups.setdefault(how, []).append(what)
    tag_part = "; ".join(f"{', '.join(ids)} {direction}" for direction, ids in groups.items())
    rules = drivers["rules"]
    sensor_rules = [h for h in rules if h["kind"] in ("flatline", "bad_quality", "spike")]
    if state == SENSOR_FAULT and sensor_rules:
        return "; ".join([*dict.fromkeys(_rule_phrase(h) for h in sensor_rules[:max_tags]), *([tag_part] if tag_part else [])])
    if tag_part:
        return tag_part
    return "; ".join(dict.fromkeys(_rule_phrase(h) for h in rules[:max_tags]))


def message(asset_id: str, posterior: dict[str, float], top_fault: str, p_any_fault: float, explanation: str, words=state_words) -> str:
    """The operator's line: the most probable fault once a fault is more likely than not,
    else "normal" with the most probable fault in brackets. ``words``: how a state reads
    (FaultNetwork.words: a learned fault's declared words)."""
    if p_any_fault < 0.5:
        return f"{asset_id}: normal ({words(top_fault)} {percent(posterior[top_fault])})"
    text = f"{asset_id}: {words(top_fault)} {percent(posterior[top_fault])}"
    faults = [(s, p) for s, p in posterior.items() if s != NORMAL]
    if len(faults) > 1 and faults[1][1] >= RUNNER_UP_RATIO * faults[0][1]:
        text += f" or {words(faults[1][0])} {percent(faults[1][1])}"
    return f"{text} ({explanation})" if explanation else text
