"""What one asset observed between two fusion steps, as counts the network reads.

The drivers hand in three kinds of evidence as they come: detector scores
(the ``score`` messages of stream.detection), fast-rule events and the share of
Bad samples. :class:`EvidenceCollector` keeps them until the next step and then
turns them into a :class:`StepEvidence`: per evidence node, how many
observations of each value this step holds. The network dots those counts with
its log tables to get the likelihood of each state, and learning adds the same
counts to the Dirichlet counts of the true state, so inference and learning can
never disagree about what a piece of evidence was.

How each kind counts:

* a **score** counts once, at the first step after it arrives, weighted by the
  part of its window that no earlier score of the same detector and scale
  covered (1 for tumbling windows, hop/length for hopping ones, 0 for a
  redelivered duplicate). Holding a score's evidence over later steps would count
  one window many times. The detectors of one scale judge the same window, so
  their votes are averaged (weight 1/n each): one window is one observation, not
  three. A score whose window ended more than ``freshness_windows`` of its
  lengths before the step is stale and left out: missing evidence is
  marginalised, never read as normal. A fresh score stays on the result's driver
  list for that long.
* the **attribution** of an elevated or anomalous score: for every role of the
  asset, whether a tag of it is among the score's top tags, by its share
  (``full_involvement_share`` or more: fully), and which way: above its normal
  range (rose), below (fell) or either (a feature such as std that is not the
  tag's level, or no range known). Roles the asset has but the score does not
  blame count as "not involved".
* windows shorter than ``independent_after_s`` are not independent of their
  neighbours (slow process dynamics, detectors with memory): a score of such a
  window counts length / independent_after_s of an observation.
* a **rule** condition counts in every step it is active (or was, during the
  step), one observation per ``rule_interval_s`` of event time at most, per rule
  kind and role. Only hits are evidence. A jump on one tag with nothing else
  involved counts as a ``spike`` (see ``_rule_hits``).
* **data quality**: the latest share of Bad samples handed in since the last step.

The role axis of every array is the vocabulary of the asset type's network
(``StepEvidence.vocabulary``): the 17 built-in roles (stream/fusion/roles.py), or the
tag ids of a learned type's assets where it has ``roles: tags`` (every tag its own
role). The collector maps tags to it; ``StepEvidence.to_dict`` names the entries by
it (and carries the vocabulary where it is not the built-in one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from stream.config import AssetConfig, duration_us
from stream.fusion.faults import LEVELS, QUALITY_LEVELS, RULE_KINDS
from stream.fusion.roles import ROLE_INDEX, ROLES, role_from_name
from stream.fusion.settings import FusionEvidence

#: the built-in vocabulary's size (a network's own: len(network.roles))
N_ROLES = len(ROLES)
N_LEVELS = len(LEVELS)
N_KINDS = len(RULE_KINDS)
KIND_INDEX = {kind: i for i, kind in enumerate(RULE_KINDS)}
#: the fast rules whose events fusion reads (stream/rules).
RULES = ("limit", "rate_of_change", "flatline", "bad_quality")
#: features whose value is the tag's level: above the normal range means the quantity rose.
#: (A high std or ptp means it fluctuates, not that it rose.)
LEVEL_FEATURES = frozenset(("mean", "min", "max", "rms"))


def direction(tag: Mapping) -> int:
    """+1 when a top tag's (level) feature is above its normal range, -1 below, 0 otherwise."""
    value, normal_range = tag.get("value"), tag.get("normal_range")
    if tag.get("feature") not in LEVEL_FEATURES or value is None or not normal_range or None in normal_range:
        return 0
    return 1 if value > normal_range[1] else -1 if value < normal_range[0] else 0


@dataclass
class StepEvidence:
    """One step's evidence as counts per node value (arrays over LEVELS, the role
    vocabulary, RULE_KINDS). Arrays left out are zeros of the vocabulary's size."""

    #: weighted number of scores per p-value level
    levels: np.ndarray = None  # type: ignore[assignment]
    #: weighted "a tag of this role is among the top tags", per role: above its normal range ...
    rose: np.ndarray = None  # type: ignore[assignment]
    #: ... below it ...
    fell: np.ndarray = None  # type: ignore[assignment]
    #: ... or either (inside the range, unknown, or a feature without a level such as std)
    involved: np.ndarray = None  # type: ignore[assignment]
    #: weighted "the asset has this role, and the score did not blame it"
    not_involved: np.ndarray = None  # type: ignore[assignment]
    #: rule hits per (kind, role)
    hits: np.ndarray = None  # type: ignore[assignment]
    #: how many rule observations the step stands for (the "no hit" count when learning)
    rule_weight: float = 0.0
    #: the roles the asset has
    present: np.ndarray = None  # type: ignore[assignment]
    #: bad-sample level, one-hot when observed
    quality: np.ndarray = None  # type: ignore[assignment]
    #: the roles the role axis stands for: the network's vocabulary (built-in ROLES, or
    #: a learned type's tag ids)
    vocabulary: tuple[str, ...] = ROLES

    def __post_init__(self) -> None:
        r = len(self.vocabulary)
        if self.levels is None:
            self.levels = np.zeros(N_LEVELS)
        for name in ("rose", "fell", "involved", "not_involved", "present"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(r))
        if self.hits is None:
            self.hits = np.zeros((N_KINDS, r))
        if self.quality is None:
            self.quality = np.zeros(len(QUALITY_LEVELS))

    @property
    def empty(self) -> bool:
        return not (self.levels.any() or self.hits.any() or self.quality.any())

    def to_dict(self) -> dict:
        """JSON-ready, non-zero entries by name (for labeled history and feedback records).
        Evidence over another vocabulary than the built-in roles also carries it
        (``vocabulary``), so that ``from_dict`` reads it back."""

        def named(values, names):
            return {n: float(v) for n, v in zip(names, values) if v}

        roles = self.vocabulary
        doc = {
            "levels": named(self.levels, LEVELS),
            "rose": named(self.rose, roles),
            "fell": named(self.fell, roles),
            "involved": named(self.involved, roles),
            "not_involved": named(self.not_involved, roles),
            "hits": {kind: named(row, roles) for kind, row in zip(RULE_KINDS, self.hits) if row.any()},
            "rule_weight": float(self.rule_weight),
            "roles": [r for r, p in zip(roles, self.present) if p],
            "quality": named(self.quality, QUALITY_LEVELS),
        }
        if tuple(roles) != ROLES:
            doc["vocabulary"] = list(roles)
        return doc

    def over(self, vocabulary) -> "StepEvidence":
        """The same evidence over another role vocabulary (by name). A role with evidence
        that ``vocabulary`` lacks is an error: it would be silently lost."""
        vocabulary = tuple(vocabulary)
        if vocabulary == tuple(self.vocabulary):
            return self
        index = {role: i for i, role in enumerate(vocabulary)}
        used = self.rose + self.fell + self.involved + self.not_involved + self.present + self.hits.sum(axis=0)
        missing = [role for role, u in zip(self.vocabulary, used) if u and role not in index]
        if missing:
            raise ValueError(
                f"evidence over roles {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''} that this network does not have "
                f"(its roles: {', '.join(vocabulary[:8])}{' ...' if len(vocabulary) > 8 else ''})"
            )
        source = [i for i, role in enumerate(self.vocabulary) if role in index]
        target = [index[self.vocabulary[i]] for i in source]

        def moved(a: np.ndarray) -> np.ndarray:
            out = np.zeros(a.shape[:-1] + (len(vocabulary),))
            out[..., target] = a[..., source]
            return out

        return StepEvidence(
            levels=self.levels.copy(),
            rose=moved(self.rose),
            fell=moved(self.fell),
            involved=moved(self.involved),
            not_involved=moved(self.not_involved),
            hits=moved(self.hits),
            rule_weight=self.rule_weight,
            present=moved(self.present),
            quality=self.quality.copy(),
            vocabulary=vocabulary,
        )

    @classmethod
    def from_dict(cls, doc: Mapping, vocabulary=None) -> "StepEvidence":
        """Read ``to_dict``'s form back. The role names are those of the doc's
        ``vocabulary``, else of ``vocabulary`` (a network's roles), else the built-in ROLES;
        the result is over ``vocabulary`` when one is given."""
        roles = tuple(doc.get("vocabulary") or vocabulary or ROLES)

        def vector(values: Mapping, names, what: str) -> np.ndarray:
            index = {n: i for i, n in enumerate(names)}
            out = np.zeros(len(names))
            for name, value in (values or {}).items():
                if name not in index:
                    raise ValueError(f"evidence record: unknown {what} {name!r}; {what}s: {', '.join(names)}")
                out[index[name]] = float(value)
            return out

        hits = np.zeros((N_KINDS, len(roles)))
        for kind, row in (doc.get("hits") or {}).items():
            if kind not in KIND_INDEX:
                raise ValueError(f"evidence record: unknown rule kind {kind!r}; kinds: {', '.join(RULE_KINDS)}")
            hits[KIND_INDEX[kind]] = vector(row, roles, "role")
        ev = cls(
            levels=vector(doc.get("levels"), LEVELS, "level"),
            rose=vector(doc.get("rose"), roles, "role"),
            fell=vector(doc.get("fell"), roles, "role"),
            involved=vector(doc.get("involved"), roles, "role"),
            not_involved=vector(doc.get("not_involved"), roles, "role"),
            hits=hits,
            rule_weight=float(doc.get("rule_weight", 0.0)),
            present=vector({r: 1.0 for r in doc.get("roles") or ()}, roles, "role"),
            quality=vector(doc.get("quality"), QUALITY_LEVELS, "quality level"),
            vocabulary=roles,
        )
        return ev if vocabulary is None else ev.over(vocabulary)

    @classmethod
    def coerce(cls, evidence: Any, vocabulary=None) -> "StepEvidence":
        """A StepEvidence, its dict, or anything carrying one as ``.evidence`` (a FusionResult);
        over ``vocabulary`` (a network's roles) when given."""
        if isinstance(evidence, StepEvidence):
            found = evidence
        elif isinstance(getattr(evidence, "evidence", None), StepEvidence):
            found = evidence.evidence
        elif isinstance(evidence, Mapping):
            return cls.from_dict(evidence, vocabulary)
        else:
            raise TypeError(f"evidence must be a StepEvidence, its dict or a FusionResult, got {type(evidence).__name__}")
        return found if vocabulary is None else found.over(vocabulary)


class _Score:
    """The part of a score message fusion keeps."""

    __slots__ = ("detector", "scale", "length_us", "end_us", "p_value", "level", "version", "tops")

    def __init__(self, detector, scale, length_us, end_us, p_value, level, version, tops):
        # tops: [(tag id, contribution, feature, value, normal_range, direction)]
        self.detector = detector
        self.scale = scale
        self.length_us = length_us
        self.end_us = end_us
        self.p_value = p_value
        self.level = level
        self.version = version
        self.tops = tops

    def to_list(self) -> list:
        return [self.detector, self.scale, self.length_us, self.end_us, self.p_value, self.level, self.version, [list(t) for t in self.tops]]

    @classmethod
    def from_list(cls, item: list) -> "_Score":
        *head, tops = item
        return cls(*head, [tuple(t) for t in tops])


_SCALE_LENGTH_US: dict[str, int] = {}


def scale_length_us(scale: str) -> int:
    """'1s' -> 1_000_000; '1m/10s' (a hopping window) -> the length, 60_000_000."""
    length = _SCALE_LENGTH_US.get(scale)
    if length is None:
        length = _SCALE_LENGTH_US[scale] = duration_us(scale.split("/", 1)[0])
    return length


def _rule_event(event: Any, asset: AssetConfig) -> tuple[str, str, str, str, int]:
    """(rule, tag id, condition, state, ts_us) from a RuleEvent, an alert dict or a tuple."""
    if isinstance(event, tuple):
        rule, tag, condition, state, ts_us = event
        return str(rule), str(tag), str(condition), str(state), int(ts_us)
    if isinstance(event, Mapping):  # an alert message (stream.alerts.rule_alert)
        return event["rule"], event["tag"]["id"], event["condition"], event["state"], int(event["event_time_us"])
    tag = asset.tags[event.tag_position].id
    return event.rule, tag, event.condition, event.state, int(event.ts_us)


class EvidenceCollector:
    """Evidence of one asset between steps (see the module doc for how each kind counts).

    ``roles``: tag id -> role, each a name of ``vocabulary`` (the network's roles;
    the built-in ROLES by default). With ``roles_are_tags`` every tag is its own role,
    and a tag outside the vocabulary (not in the asset type's config) is left out."""

    def __init__(
        self,
        asset: AssetConfig,
        roles: Mapping[str, str],
        settings: FusionEvidence,
        vocabulary: tuple[str, ...] = ROLES,
        roles_are_tags: bool = False,
    ):
        self.asset = asset
        self.settings = settings
        self.edges = (settings.elevated_p, settings.anomalous_p, settings.extreme_p)
        self.vocabulary = tuple(vocabulary)
        self.roles_are_tags = roles_are_tags
        self.index = ROLE_INDEX if self.vocabulary == ROLES else {role: i for i, role in enumerate(self.vocabulary)}
        self.n_roles = len(self.vocabulary)
        self.role_of: dict[str, int | None] = {tag: self.index[role] for tag, role in roles.items()}
        self.role_name: dict[str, str] = dict(roles)
        self.present = np.zeros(self.n_roles)
        self.present[list(set(self.role_of.values()))] = 1.0
        self.pending: list[_Score] = []
        #: (detector, scale) -> the latest window end already counted
        self.covered: dict[tuple[str, str], int] = {}
        #: (detector, scale) -> the latest counted score, shown while fresh
        self.latest: dict[tuple[str, str], _Score] = {}
        #: (rule, tag, condition) -> since when active
        self.active: dict[tuple[str, str, str], int] = {}
        #: conditions active at some time since the last step (raised and cleared in between included)
        self.step_hits: set[tuple[str, str, str]] = set()
        #: conditions raised since the last step, and those of them already cleared again
        self.step_raised: set[tuple[str, str, str]] = set()
        self.step_blips: set[tuple[str, str, str]] = set()
        self.bad_fraction: float | None = None
        self.foreign_scores = 0

    # -- handing evidence in ---------------------------------------------------------

    def add_scores(self, messages: Iterable[Mapping]) -> None:
        elevated, anomalous, extreme = self.edges
        for m in messages:
            asset_id = m.get("asset_id")
            if asset_id is not None and asset_id != self.asset.id:
                self.foreign_scores += 1  # a driver bug; the evidence belongs to another asset
                continue
            p = float(m["p_value"])
            if not p == p:  # NaN: the detector had no evidence
                continue
            scale = m["scale"]
            tops = [
                (t["id"], float(t["contribution"]), t.get("feature"), t.get("value"), t.get("normal_range"), direction(t))
                for t in m.get("top_tags") or ()
            ]
            level = (p <= elevated) + (p <= anomalous) + (p <= extreme)  # 0 normal .. 3 extreme
            self.pending.append(
                _Score(m["detector"], scale, scale_length_us(scale), int(m["window_end_us"]), p, level, int(m.get("model_version", 0)), tops)
            )

    def add_rules(self, events: Iterable[Any]) -> None:
        for event in events:
            rule, tag, condition, state, ts_us = _rule_event(event, self.asset)
            if rule not in RULES:
                continue
            key = (rule, tag, condition)
            if state == "active":
                self.active.setdefault(key, ts_us)
                self.step_hits.add(key)
                self.step_raised.add(key)
            elif state == "cleared":
                if self.active.pop(key, None) is not None:
                    self.step_hits.add(key)  # it was active during this step
                    if key in self.step_raised:
                        self.step_blips.add(key)
            else:
                raise ValueError(f"rule event for {self.asset.id} {tag}: state must be 'active' or 'cleared', got {state!r}")

    def add_quality(self, bad_fraction: float) -> None:
        bad_fraction = float(bad_fraction)
        if not 0.0 <= bad_fraction <= 1.0:
            raise ValueError(f"{self.asset.id}: bad_fraction is the share of Bad samples in a window, 0..1; got {bad_fraction}")
        self.bad_fraction = bad_fraction

    # -- one step ----------------------------------------------------------------------

    def _role(self, tag: str) -> int | None:
        """The role index of a tag; None for a tag outside a tag vocabulary."""
        if tag in self.role_of:
            return self.role_of[tag]
        # a tag the asset config does not list (a type model's naming)
        name = tag if self.roles_are_tags else role_from_name(tag)
        role = self.role_of[tag] = self.index.get(name)
        if role is not None:
            self.role_name[tag] = name
        return role

    def _role_weights(self, tops) -> tuple[np.ndarray, np.ndarray]:
        """(involvement 0..1 per role, its direction per role) of one score's top tags;
        a role with several tags takes its most blamed one."""
        weights = np.zeros(self.n_roles)
        directions = np.zeros(self.n_roles)
        full = self.settings.full_involvement_share
        for tag, contribution, _, _, _, sign in tops:
            r = self._role(tag)
            if r is None:
                continue
            w = contribution / full
            if w > weights[r]:
                weights[r] = w if w < 1.0 else 1.0
                directions[r] = sign
        return weights, directions

    def collect(self, t_us: int, dt_s: float | None) -> tuple[StepEvidence, dict]:
        """The evidence for the step to ``t_us`` (``dt_s`` since the previous one, None at the
        first), and the drivers to show with the result. Consumes what it counts."""
        s = self.settings
        ev = StepEvidence(present=self.present.copy(), vocabulary=self.vocabulary)
        fresh = s.freshness_windows
        stale = 0
        counted: list[tuple[_Score, float]] = []
        if self.pending:
            keep = []
            for score in self.pending:
                if score.end_us > t_us:
                    keep.append(score)  # a window beyond the step: the next step takes it
                    continue
                if score.end_us < t_us - fresh * score.length_us:
                    stale += 1
                    continue
                key = (score.detector, score.scale)
                start = score.end_us - score.length_us
                covered = self.covered.get(key)
                if covered is not None and covered > start:
                    start = covered
                coverage = (score.end_us - start) / score.length_us
                if coverage <= 0.0:
                    continue  # redelivered or older than what was counted
                self.covered[key] = score.end_us
                self.latest[key] = score
                counted.append((score, coverage))
            self.pending = keep
        if counted:
            voters: dict[tuple[str, int], int] = {}
            for score, _ in counted:
                window = (score.scale, score.end_us)
                voters[window] = voters.get(window, 0) + 1
            attribution = s.elevated_attribution
            independent_us = s.independent_after_s * 1e6
            for score, coverage in counted:
                w = coverage / voters[(score.scale, score.end_us)] * min(1.0, score.length_us / independent_us)
                ev.levels[score.level] += w
                if score.level and score.tops:
                    strength = w * (attribution if score.level == 1 else 1.0)
                    roles, directions = self._role_weights(score.tops)
                    blamed = strength * roles
                    ev.rose += blamed * (directions > 0)
                    ev.fell += blamed * (directions < 0)
                    ev.involved += blamed * (directions == 0)
                    ev.not_involved += strength * (np.maximum(ev.present, roles > 0) - roles)

        rules = []
        # every step observes the rules (a quiet step is a "no hit" when learning)
        ev.rule_weight = 1.0 if dt_s is None else min(1.0, max(dt_s, 0.0) / s.rule_interval_s)
        if (self.active or self.step_hits) and ev.rule_weight > 0:  # (no event time passed: hits wait for the next step)
            rules = self._rule_hits(sorted(self.step_hits.union(self.active)), ev)
            self.step_hits, self.step_raised, self.step_blips = set(), set(), set()

        if self.bad_fraction is not None:
            level = 0 if self.bad_fraction <= s.some_bad_above else 1 if self.bad_fraction <= s.mostly_bad_above else 2
            ev.quality[level] = 1.0
        drivers = self._drivers(t_us, rules, stale)
        self.bad_fraction = None
        return ev, drivers

    def _rule_hits(self, keys: list[tuple[str, str, str]], ev: StepEvidence) -> list[dict]:
        """Rule hits into ev.hits. A jump on one tag with nothing else involved is a
        ``spike``: a rate-of-change hit, or a limit crossed and back within one step
        (a process quantity does not leave its limits and return within a second; a
        glitching transmitter does). "Nothing else": no other tag has a hit and the
        scores blame no other role."""
        tags = {tag for _, tag, _ in keys}
        lone = False
        if len(tags) == 1:
            (tag,) = tags
            involved = ev.rose + ev.fell + ev.involved
            blamed = involved / np.maximum(involved + ev.not_involved, 1e-12)
            r = self._role(tag)
            if r is not None:
                blamed[r] = 0.0
            lone = not (blamed > 0.5).any()
        out = []
        for key in keys:
            rule, tag, condition = key
            jump = rule == "rate_of_change" or (rule == "limit" and key in self.step_blips)
            kind = "spike" if (lone and jump) else rule
            role = self._role(tag)
            if role is not None:
                ev.hits[KIND_INDEX[kind], role] = ev.rule_weight
            out.append({"rule": rule, "tag": tag, "condition": condition, "kind": kind, "role": self._role_name(tag, role)})
        return out

    def _drivers(self, t_us: int, rules: list[dict], stale: int) -> dict:
        fresh = self.settings.freshness_windows
        for key in [k for k, sc in self.latest.items() if sc.end_us < t_us - fresh * sc.length_us]:
            del self.latest[key]
        detectors, tags = [], {}
        for score in sorted(self.latest.values(), key=lambda sc: sc.p_value):
            detectors.append(
                {
                    "detector": score.detector,
                    "scale": score.scale,
                    "p_value": score.p_value,
                    "level": LEVELS[score.level],
                    "model_version": score.version,
                    "window_end_us": score.end_us,
                }
            )
            if not score.level:
                continue
            for tag, contribution, feature, value, normal_range, _ in score.tops:
                best = tags.get(tag)
                if best is None or (score.level, contribution) > (best["_level"], best["contribution"]):
                    tags[tag] = {
                        "id": tag,
                        "role": self._role_name(tag, self._role(tag)),
                        "contribution": contribution,
                        "feature": feature,
                        "value": value,
                        "normal_range": normal_range,
                        "detector": score.detector,
                        "scale": score.scale,
                        "_level": score.level,
                    }
        top = sorted(tags.values(), key=lambda t: (-t["_level"], -t["contribution"]))[:5]
        for t in top:
            del t["_level"]
        return {"top_tags": top, "detectors": detectors, "rules": rules, "bad_fraction": self.bad_fraction, "stale_scores": stale}

    def _role_name(self, tag: str, role: int | None) -> str | None:
        return self.role_name.get(tag) or (self.vocabulary[role] if role is not None else None)

    # -- persistence ---------------------------------------------------------------------

    def to_state(self) -> dict:
        return {
            "pending": [sc.to_list() for sc in self.pending],
            "covered": [[d, sc, us] for (d, sc), us in self.covered.items()],
            "latest": [sc.to_list() for sc in self.latest.values()],
            "active": [[r, t, c, since] for (r, t, c), since in self.active.items()],
            "step_hits": [list(k) for k in sorted(self.step_hits)],
            "step_raised": [list(k) for k in sorted(self.step_raised)],
            "step_blips": [list(k) for k in sorted(self.step_blips)],
            "bad_fraction": self.bad_fraction,
        }

    def load_state(self, state: Mapping) -> None:
        self.pending = [_Score.from_list(item) for item in state.get("pending", ())]
        self.covered = {(d, sc): int(us) for d, sc, us in state.get("covered", ())}
        self.latest = {}
        for item in state.get("latest", ()):
            score = _Score.from_list(item)
            self.latest[(score.detector, score.scale)] = score
        self.active = {(r, t, c): int(since) for r, t, c, since in state.get("active", ())}
        self.step_hits = {tuple(k) for k in state.get("step_hits", ())}
        self.step_raised = {tuple(k) for k in state.get("step_raised", ())}
        self.step_blips = {tuple(k) for k in state.get("step_blips", ())}
        self.bad_fraction = state.get("bad_fraction")
