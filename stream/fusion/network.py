"""The fault network of one asset type: its conditional probability tables, how
they learn, and how its hidden state moves in time.

Structure: one hidden state per step (``normal``, the type's faults,
``sensor_fault``, ``unknown_anomaly``) with the evidence nodes as its children,
conditionally independent given the state (naive Bayes), plus the temporal
link from the previous step's state (stream/fusion/asset.py runs the filter).
The nodes share tables across repetitions (every detector and scale reads the
same P(level | state), every role of the asset its own row of P(involved | state)):

=============  =============================================  ============================
node           table                                          values
=============  =============================================  ============================
score_level    P(p-value level | state)                       normal, elevated, anomalous, extreme
involvement    P(role among the top tags | state), per role   rose / fell / not involved
rule_hit       P(rule hit on a role in a step | state)        per kind: limit, rate_of_change, spike, flatline, bad_quality
data_quality   P(share of Bad samples | state)                good, some_bad, mostly_bad
=============  =============================================  ============================

Every table row is a Dirichlet (Beta for the yes/no nodes): prior pseudo-counts
from the defaults (stream/fusion/faults.py) or the config's overrides, times the
row's prior strength, plus counts learned from labeled history and from operator
feedback. Probabilities are the posterior means; the log tables the filter
reads are recomputed after every change (a few microseconds), so a step is a
handful of dot products.

The role axis is the network's vocabulary (``roles``): the 17 built-in roles
(stream/fusion/roles.py) for the built-in types and for learned types with
``roles: names``; the tag ids of the type's assets (union, config order) for a
learned type with ``roles: tags``. Evidence (StepEvidence) is counted over the same
vocabulary, and the persisted state says which one it was learned over.

A learned asset type (``fusion.asset_types``) has states normal, its declared faults,
sensor_fault, unknown_anomaly. Its faults have no signature: their default rows are
"some abnormal state whose pattern is not known yet" (the level row of a named fault,
the unknown anomaly's flat involvement, rule hits and data quality), at
``priors.learned_fault_share`` of the usual strength, so labeled history
(``learn_from_labeled``) soon owns them. Until a fault has been learned, its rows equal
the unknown anomaly's and the two share the probability of an unexplained anomaly.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from stream.fusion.evidence import N_KINDS, N_LEVELS, StepEvidence
from stream.fusion.faults import (
    ASSET_TYPES,
    INVOLVED_FLAT,
    INVOLVED_OTHER,
    INVOLVED_PRIMARY,
    INVOLVED_SECONDARY,
    INVOLVED_SENSOR,
    WITH_THE_SIGNATURE,
    LEVEL_ROW_FAULT,
    LEVEL_ROW_SENSOR,
    LEVELS,
    NORMAL,
    QUALITY_LEVELS,
    QUALITY_ROW_FAULT,
    QUALITY_ROW_NORMAL,
    QUALITY_ROW_SENSOR,
    QUALITY_ROW_UNKNOWN,
    RULE_HIT_DEFAULTS,
    RULE_KINDS,
    SENSOR_FAULT,
    SIGNATURES,
    UNKNOWN_ANOMALY,
    state_words,
    states_of,
)
from stream.fusion.roles import ROLES
from stream.fusion.settings import ALL_ROLES, FusionSettings, known_types

log = logging.getLogger("stream.fusion")

#: no probability in a log table is taken below this (a config "0" means "very unlikely",
#: not "impossible": an impossible state could never be believed again, whatever happened).
_FLOOR = 1e-6


def normal_level_row(settings: FusionSettings) -> np.ndarray:
    """P(level | normal) as calibration promises it: the widths of the p-value bins
    (p is uniform under normal operation), each abnormal level floored (settings:
    ``normal_elevated_floor``, ``normal_anomalous_floor``, ``calibration_floor``)."""
    e = settings.evidence
    row = np.array([1.0 - e.elevated_p, e.elevated_p - e.anomalous_p, e.anomalous_p - e.extreme_p, e.extreme_p])
    row[1:] = np.maximum(row[1:], [e.normal_elevated_floor, e.normal_anomalous_floor, e.calibration_floor])
    row[0] = 1.0 - row[1:].sum()
    return row


def _expm(a: np.ndarray) -> np.ndarray:
    """exp(a) for a small matrix: scaling and squaring with a Taylor series (numpy only)."""
    norm = float(np.abs(a).sum(axis=1).max())
    squarings = max(0, math.ceil(math.log2(norm / 0.25))) if norm > 0.25 else 0
    a = a / (2.0**squarings)
    out = np.eye(a.shape[0])
    term = np.eye(a.shape[0])
    for k in range(1, 14):
        term = term @ a / k
        out = out + term
    for _ in range(squarings):
        out = out @ out
    return out


@dataclass
class FeedbackChange:
    """What one operator feedback did to the tables (also logged)."""

    label: str
    state: str | None
    #: pseudo-counts added per node
    added: dict[str, float] = field(default_factory=dict)
    #: rows whose feedback counts reached the cap (name of node and row)
    capped: list[str] = field(default_factory=list)
    #: probability -> (before, after), the entries that moved most
    changes: dict[str, tuple[float, float]] = field(default_factory=dict)


class FaultNetwork:
    """The CPTs and transition model of one asset type (shared by all its assets).

    ``tag_ids``: for a learned type with ``roles: tags``, the tag ids of the type's
    assets (union, config order): the network's role vocabulary. Ignored otherwise."""

    def __init__(self, asset_type: str, settings: FusionSettings | None = None, *, tag_ids: Iterable[str] | None = None):
        self.settings = settings or FusionSettings()
        #: the declaration of a learned type (fusion.asset_types), None for a built-in one
        self.learned_type = self.settings.asset_types.get(asset_type)
        if self.learned_type is None and asset_type not in ASSET_TYPES:
            raise ValueError(f"no fault model for asset type {asset_type!r}; {known_types(self.settings.asset_types)}")
        self.asset_type = asset_type
        self.states: tuple[str, ...] = self.learned_type.states if self.learned_type is not None else states_of(asset_type)
        self.state_index = {s: i for i, s in enumerate(self.states)}
        self.faults: tuple[str, ...] = self.states[1:]
        #: the faults whose pattern is learned (a learned type's declared faults), -> their words
        self.descriptions: dict[str, str] = dict(self.learned_type.faults) if self.learned_type is not None else {}
        self._signatures = SIGNATURES.get(asset_type, {}) if self.learned_type is None else {}
        #: True: every tag is its own role (a learned type with roles: tags)
        self.roles_are_tags = self.learned_type is not None and self.learned_type.roles == "tags"
        if self.roles_are_tags:
            tags = tuple(dict.fromkeys(tag_ids or ()))
            if not tags:
                raise ValueError(
                    f"asset type {asset_type} has roles: tags; its network needs the tag ids of its assets "
                    f"(FaultNetwork.for_assets({asset_type!r}, assets, settings))"
                )
            self.roles: tuple[str, ...] = tags
        else:
            self.roles = ROLES
        self.role_index = {role: i for i, role in enumerate(self.roles)}
        S, R = len(self.states), len(self.roles)
        # prior pseudo-counts (defaults and overrides) ...
        self._prior = {
            "score_level": np.zeros((S, N_LEVELS)),
            "involvement": np.zeros((S, R, 3)),  # rose, fell, not involved
            "rule_hit": np.zeros((N_KINDS, S, R, 2)),
            "data_quality": np.zeros((S, len(QUALITY_LEVELS))),
        }
        # ... counts learned (labeled history and feedback) ...
        self._learned = {name: np.zeros_like(a) for name, a in self._prior.items()}
        # ... and, per row, how many of those came from feedback (the cap applies to these)
        self._from_feedback = {name: np.zeros(a.shape[:-1]) for name, a in self._prior.items()}
        self._build_defaults()
        self._apply_overrides(self.settings.cpt.get(asset_type, {}))
        #: pseudo-counts of each row's prior: what the feedback cap is a share of
        self._row_strength = {name: prior.sum(axis=-1) for name, prior in self._prior.items()}
        self._weaken_learned_faults()
        self._transitions: dict[int, np.ndarray] = {}
        self._build_generator()
        #: bumped whenever the tables change
        self.revision = 0
        self._refresh()

    @classmethod
    def for_asset_type(cls, asset_type: str, settings: FusionSettings | None = None, tag_ids: Iterable[str] | None = None) -> "FaultNetwork":
        return cls(asset_type, settings, tag_ids=tag_ids)

    @classmethod
    def for_assets(cls, asset_type: str, assets: Iterable[Any], settings: FusionSettings | None = None) -> "FaultNetwork":
        """The network of ``asset_type`` for these assets (AssetConfig; those of other
        types are skipped): their tags are its roles where the type has ``roles: tags``."""
        tag_ids = [t.id for a in assets if a.type == asset_type for t in a.tags]
        return cls(asset_type, settings, tag_ids=tag_ids)

    def words(self, state: str) -> str:
        """How operators read a state: a learned fault's declared words and its name
        ("A/C feed ratio step (idv01)"), else "bearing wear", "misalignment/imbalance"."""
        described = self.descriptions.get(state)
        return f"{described} ({state})" if described else state_words(state)

    def fault_words(self) -> dict[str, str]:
        """fault -> words, for the faults whose words differ from the name (the alarm book's texts)."""
        return {state: self.words(state) for state in self.descriptions if self.descriptions[state]}

    # -- the default tables ---------------------------------------------------------------

    def signature_roles(self, state: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(primary roles, secondary roles) of a named fault; empty for the other states
        (and for a learned type's faults, which have no signature)."""
        signature = self._signatures.get(state)
        if signature is None:
            return (), ()
        roles = signature.roles()
        return tuple(r for r, (rank, _) in roles.items() if rank == 0), tuple(r for r, (rank, _) in roles.items() if rank == 1)

    def _involvement_defaults(self) -> tuple[np.ndarray, np.ndarray]:
        """P(role involved | state) and the direction the signature expects, both (S, R)."""
        # A score blames a few top tags. Where nothing in particular is wrong (normal, an
        # unknown anomaly, a fault not learned yet, a sensor) they fall on roles at random,
        # so a role's chance of being blamed is about (top tags) / (roles). The flat values
        # are set for the 17 built-in roles; a roles: tags vocabulary of 52 tags left them 3x
        # too high, and then every one of the ~49 roles a score does NOT blame spoke for a
        # learned fault (learned at ~0.06) against normal (0.3): a factor of about 1e6 per
        # elevated score, and an alarm on every normal hour of the Tennessee Eastman test.
        flat = min(1.0, len(ROLES) / max(len(self.roles), 1))
        p = np.full((len(self.states), len(self.roles)), INVOLVED_FLAT * flat)
        direction = np.zeros((len(self.states), len(self.roles)))
        for state, i in self.state_index.items():
            if state == SENSOR_FAULT:
                p[i] = INVOLVED_SENSOR * flat
            elif state in self._signatures:
                p[i] = INVOLVED_OTHER
                for role, (rank, sign) in self._signatures[state].roles().items():
                    p[i, self.role_index[role]] = INVOLVED_PRIMARY if rank == 0 else INVOLVED_SECONDARY
                    direction[i, self.role_index[role]] = sign
        return p, direction

    @staticmethod
    def _set_involvement(counts: np.ndarray, p: np.ndarray, direction: np.ndarray, strength: float) -> None:
        """counts[..., (rose, fell, not)] from P(involved) and the expected direction (+1, -1, 0)."""
        up = np.where(direction > 0, WITH_THE_SIGNATURE, np.where(direction < 0, 1 - WITH_THE_SIGNATURE, 0.5))
        counts[..., 0] = p * up * strength
        counts[..., 1] = p * (1 - up) * strength
        counts[..., 2] = (1 - p) * strength

    def _rule_defaults(self, kind: str) -> np.ndarray:
        """P(hit of this kind on a role | state), (S, R)."""
        normal, primary_p, secondary_p, other_p, sensor, unknown = RULE_HIT_DEFAULTS[kind]
        p = np.empty((len(self.states), len(self.roles)))
        for state, i in self.state_index.items():
            if state == NORMAL:
                p[i] = normal
            elif state == SENSOR_FAULT:
                p[i] = sensor
            elif state == UNKNOWN_ANOMALY or state in self.descriptions:
                p[i] = unknown
            else:
                primary, secondary = self.signature_roles(state)
                p[i] = other_p
                p[i, [self.role_index[r] for r in secondary]] = secondary_p
                p[i, [self.role_index[r] for r in primary]] = primary_p
        return p

    def _build_defaults(self) -> None:
        priors = self.settings.priors
        level = self._prior["score_level"]
        quality = self._prior["data_quality"]
        for state, i in self.state_index.items():
            if state == NORMAL:
                level[i] = normal_level_row(self.settings) * priors.calibrated_normal
                quality[i] = np.array(QUALITY_ROW_NORMAL) * priors.data_quality
            elif state == SENSOR_FAULT:
                level[i] = np.array(LEVEL_ROW_SENSOR) * priors.score_level
                quality[i] = np.array(QUALITY_ROW_SENSOR) * priors.data_quality
            else:
                level[i] = np.array(LEVEL_ROW_FAULT) * priors.score_level
                row = QUALITY_ROW_UNKNOWN if state == UNKNOWN_ANOMALY or state in self.descriptions else QUALITY_ROW_FAULT
                quality[i] = np.array(row) * priors.data_quality
        self._set_involvement(self._prior["involvement"], *self._involvement_defaults(), priors.involvement)
        for k, kind in enumerate(RULE_KINDS):
            self._set_bernoulli(self._prior["rule_hit"][k], self._rule_defaults(kind), priors.rule_hit)

    @staticmethod
    def _set_bernoulli(counts: np.ndarray, p: np.ndarray, strength: float) -> None:
        counts[..., 0] = p * strength
        counts[..., 1] = (1.0 - p) * strength

    def _weaken_learned_faults(self) -> None:
        """A learned fault's prior rows (defaults or overrides) at priors.learned_fault_share
        of their strength: placeholders that labeled history soon outweighs (settings)."""
        share = self.settings.priors.learned_fault_share
        for state in self.descriptions:
            s = self.state_index[state]
            for name, prior in self._prior.items():
                self._row(name, prior, s)[...] *= share

    def _apply_overrides(self, overrides: Mapping[str, Any]) -> None:
        """Config entries replace the defaults (validated by FusionSettings)."""
        priors = self.settings.priors
        for node, rows in overrides.items():
            if node == "rule_hit":
                for kind, by_state in rows.items():
                    k = RULE_KINDS.index(kind)
                    for state, row in by_state.items():
                        self._override_roles(self._prior["rule_hit"][k][self._override_state(state)], row, priors.rule_hit)
                continue
            for state, row in rows.items():
                i = self._override_state(state)
                if node == "involvement":
                    self._override_involvement(self._prior["involvement"][i], row, priors.involvement)
                elif node == "score_level":
                    strength = priors.calibrated_normal if state == NORMAL else priors.score_level
                    self._prior["score_level"][i] = self._override_row(self._prior["score_level"][i], row, LEVELS) * strength
                else:
                    self._prior["data_quality"][i] = self._override_row(self._prior["data_quality"][i], row, QUALITY_LEVELS) * priors.data_quality

    def _override_state(self, state: str) -> int:
        index = self.state_index.get(state)
        if index is None:
            raise ValueError(f"fusion.cpt.{self.asset_type}: unknown state {state!r}; the states of a {self.asset_type}: {', '.join(self.states)}")
        return index

    def _override_role(self, role: str) -> int:
        index = self.role_index.get(role)
        if index is None:
            raise ValueError(
                f"fusion.cpt.{self.asset_type}: unknown role {role!r}; the roles of a {self.asset_type}: {', '.join(self.roles)}"
            )
        return index

    def _override_roles(self, counts: np.ndarray, row: Mapping[str, float], strength: float) -> None:
        everyone = row.get(ALL_ROLES)
        if everyone is not None:
            counts[:, 0], counts[:, 1] = everyone * strength, (1 - everyone) * strength
        for role, p in row.items():
            if role != ALL_ROLES:
                counts[self._override_role(role)] = (p * strength, (1 - p) * strength)

    def _override_involvement(self, counts: np.ndarray, row: Mapping[str, Any], strength: float) -> None:
        """A number: P(involved), split between rose and fell as the default row splits it;
        a mapping {rose: p, fell: p}: both given."""

        def put(r: int, value) -> None:
            if isinstance(value, Mapping):
                rose, fell = value.get("rose", 0.0), value.get("fell", 0.0)
            else:
                involved = counts[r, 0] + counts[r, 1]
                up = counts[r, 0] / involved if involved > 0 else 0.5
                rose, fell = value * up, value * (1 - up)
            counts[r] = (rose * strength, fell * strength, (1 - rose - fell) * strength)

        if ALL_ROLES in row:
            for r in range(len(self.roles)):
                put(r, row[ALL_ROLES])
        for role, value in row.items():
            if role != ALL_ROLES:
                put(self._override_role(role), value)

    @staticmethod
    def _override_row(counts: np.ndarray, row: Mapping[str, float], names: tuple[str, ...]) -> np.ndarray:
        """A categorical row with the given entries; the others keep their proportions in what is left."""
        current = counts / counts.sum()
        given = np.array([n in row for n in names])
        out = current.copy()
        out[given] = [row[n] for n in names if n in row]
        rest = 1.0 - out[given].sum()
        if (~given).any():
            others = current[~given]
            out[~given] = others / others.sum() * rest if others.sum() > 0 else rest / (~given).sum()
        return out

    # -- time -----------------------------------------------------------------------------

    def _build_generator(self) -> None:
        """The rate matrix Q of the hidden state (per second); T(dt) = exp(Q dt)."""
        t = self.settings.transitions
        S = len(self.states)
        abnormal = S - 1
        onset = -math.log1p(-t.onset_per_s)
        recovery = -math.log1p(-t.recovery_per_s)
        switch = -math.log1p(-t.switch_per_s) / max(abnormal - 1, 1)
        q = np.full((S, S), switch)
        q[0, :] = onset
        q[:, 0] = recovery
        np.fill_diagonal(q, 0.0)
        np.fill_diagonal(q, -q.sum(axis=1))
        self._generator = q
        # the stationary distribution: pi Q = 0, sum(pi) = 1
        a = np.vstack([q.T, np.ones(S)])
        b = np.zeros(S + 1)
        b[-1] = 1.0
        self._stationary = np.clip(np.linalg.lstsq(a, b, rcond=None)[0], 1e-12, None)
        self._stationary /= self._stationary.sum()

    def stationary(self) -> np.ndarray:
        """Where the state settles with no evidence: the filter's starting point."""
        return self._stationary.copy()

    def transition(self, dt_s: float) -> np.ndarray:
        """T(dt)[i, j] = P(state j at t + dt | state i at t); cached per millisecond of dt."""
        key = int(round(dt_s * 1000))
        matrix = self._transitions.get(key)
        if matrix is None:
            matrix = np.clip(_expm(self._generator * (key / 1000.0)), 0.0, None)
            matrix /= matrix.sum(axis=1, keepdims=True)
            if len(self._transitions) > 256:
                self._transitions.clear()  # step sizes vary without bound only in odd replays
            self._transitions[key] = matrix
        return matrix

    # -- inference -------------------------------------------------------------------------

    def _refresh(self) -> None:
        counts = {name: self._prior[name] + self._learned[name] for name in self._prior}
        level = counts["score_level"]
        self.p_level = level / level.sum(axis=1, keepdims=True)  # (S, L)
        inv = counts["involvement"]
        total = inv.sum(axis=-1)
        self.p_rose = inv[..., 0] / total  # (S, R)
        self.p_fell = inv[..., 1] / total
        self.p_involved = self.p_rose + self.p_fell
        hit = counts["rule_hit"]
        self.p_hit = hit[..., 0] / hit.sum(axis=-1)  # (K, S, R)
        quality = counts["data_quality"]
        self.p_quality = quality / quality.sum(axis=1, keepdims=True)  # (S, Q)
        # log tables, oriented (value, state) so that evidence counts @ table -> (S,)
        self._log_level = np.log(np.maximum(self.p_level, _FLOOR)).T.copy()
        self._log_rose = np.log(np.maximum(self.p_rose, _FLOOR)).T.copy()  # (R, S)
        self._log_fell = np.log(np.maximum(self.p_fell, _FLOOR)).T.copy()
        p_inv = np.clip(self.p_involved, _FLOOR, 1 - _FLOOR)
        self._log_inv = np.log(p_inv).T.copy()
        self._log_not = np.log1p(-p_inv).T.copy()
        p_hit = np.clip(self.p_hit, _FLOOR, 1 - _FLOOR)
        self._log_hit = np.log(p_hit).transpose(0, 2, 1).reshape(N_KINDS * len(self.roles), -1).copy()  # (K*R, S)
        self._log_quality = np.log(np.maximum(self.p_quality, _FLOOR)).T.copy()
        self.revision += 1

    def log_likelihood(self, ev: StepEvidence) -> np.ndarray:
        """log P(evidence | state) for every state, up to a constant (S,)."""
        ll = ev.levels @ self._log_level
        if ev.not_involved.any() or ev.rose.any() or ev.fell.any() or ev.involved.any():
            ll += ev.rose @ self._log_rose + ev.fell @ self._log_fell + ev.involved @ self._log_inv + ev.not_involved @ self._log_not
        if ev.hits.any():
            ll += ev.hits.reshape(-1) @ self._log_hit
        if ev.quality.any():
            ll += ev.quality @ self._log_quality
        return ll

    # -- learning ----------------------------------------------------------------------------

    def _state(self, label: str) -> int:
        index = self.state_index.get(label)
        if index is None:
            raise ValueError(f"unknown state {label!r} for a {self.asset_type}; its states are: {', '.join(self.states)}")
        return index

    @staticmethod
    def _counts(ev: StepEvidence) -> dict[str, np.ndarray]:
        """The evidence as additions to the rows of its true state."""
        not_hit = np.clip(ev.rule_weight * ev.present[None, :] - ev.hits, 0.0, None)
        return {
            "score_level": ev.levels,
            # a direction not seen is counted half each way
            "involvement": np.stack([ev.rose + ev.involved / 2, ev.fell + ev.involved / 2, ev.not_involved], axis=-1),
            "rule_hit": np.stack([ev.hits, not_hit], axis=-1),
            "data_quality": ev.quality,
        }

    def _row(self, name: str, table: np.ndarray, s: int) -> np.ndarray:
        """The view of state ``s``'s rows of one node's table."""
        return table[:, s] if name == "rule_hit" else table[s]

    def as_evidence(self, evidence: Any) -> StepEvidence:
        """A StepEvidence over this network's roles from a StepEvidence, its dict or a
        FusionResult (a dict without ``vocabulary`` names this network's roles)."""
        asset_type = getattr(evidence, "asset_type", None)
        if isinstance(asset_type, str) and asset_type != self.asset_type:
            raise ValueError(f"a fusion result of a {asset_type} cannot teach the network of a {self.asset_type}")
        return StepEvidence.coerce(evidence, self.roles)

    def learn_from_labeled(self, records: Iterable[Any]) -> int:
        """Add the counts of labeled history: each record is ``(evidence, state)`` or
        ``{"evidence": ..., "label": state}`` with the evidence a StepEvidence, its dict
        or a FusionResult, and the state one of ``states`` (a learned type's declared
        faults included). Not capped: history is the plant's, not one person's opinion.
        What is learned lives in ``to_state`` (Diagnosis.learn_from_labeled saves it
        under "network:<type>", where operator feedback goes too).
        Returns the number of records learned."""
        n = 0
        for record in records:
            if isinstance(record, Mapping):
                evidence, label = record["evidence"], record.get("label", record.get("state"))
            else:
                evidence, label = record
            s = self._state(label)
            for name, add in self._counts(self.as_evidence(evidence)).items():
                self._row(name, self._learned[name], s)[...] += add
            n += 1
        if n:
            self._refresh()
            log.info("fusion %s: learned %d labeled record(s)", self.asset_type, n)
        return n

    def feedback_state(self, label: str, fault: str | None = None) -> str | None:
        """The state an operator's label means: "false_alarm" -> normal, "confirmed:<fault>"
        (or "true_fault" with ``fault``) -> that fault; "unsure" and "planned_maintenance"
        -> None (nothing to learn: the machine was stopped on purpose, or nobody knows)."""
        if label == "false_alarm":
            return NORMAL
        if label in ("unsure", "planned_maintenance"):
            return None
        if label.startswith("confirmed:"):
            fault = label.split(":", 1)[1]
        elif label != "true_fault":
            raise ValueError(f'feedback label must be "false_alarm", "confirmed:<fault>", "true_fault" (with fault), "unsure" or "planned_maintenance"; got {label!r}')
        if not fault or fault == NORMAL or fault not in self.state_index:
            raise ValueError(f"feedback {label!r}: the confirmed fault must be one of {', '.join(self.faults)} for a {self.asset_type}; got {fault!r}")
        return fault

    def feedback(self, evidence: Any, label: str, *, fault: str | None = None, asset_id: str | None = None, user: str | None = None) -> FeedbackChange:
        """Learn from one operator verdict on the evidence of a step, bounded: each feedback adds
        ``feedback.weight`` times the evidence's counts to the rows of the state the label
        names, and a row takes feedback counts only up to ``feedback.max_share`` of its prior
        strength. Every call is logged with what it changed."""
        who = f" by {user}" if user else ""
        where = f" on {asset_id}" if asset_id else ""
        state = self.feedback_state(label, fault)
        change = FeedbackChange(label=label, state=state)
        if state is None:
            log.info("fusion %s feedback %r%s%s: nothing learned (the label names no state)", self.asset_type, label, where, who)
            return change
        s = self.state_index[state]
        ev = self.as_evidence(evidence)
        before = self._watched(s, ev)
        settings = self.settings.feedback
        for name, add in self._counts(ev).items():
            add = add * settings.weight
            total = add.sum(axis=-1)
            used = self._row(name, self._from_feedback[name], s)
            cap = settings.max_share * self._row(name, self._row_strength[name], s)
            room = np.clip(cap - used, 0.0, None)
            scale = np.where(total > 0, np.minimum(1.0, room / np.where(total > 0, total, 1.0)), 0.0)
            taken = add * scale[..., None]
            self._row(name, self._learned[name], s)[...] += taken
            if name == "rule_hit":
                self._from_feedback[name][:, s] += taken.sum(axis=-1)
            else:
                self._from_feedback[name][s] += taken.sum(axis=-1)
            change.added[name] = float(taken.sum())
            hit_cap = (total > 0) & (scale < 1.0)
            if hit_cap.any():
                change.capped.append(f"{name}[{state}] ({int(hit_cap.sum())} row(s))")
        self._refresh()
        after = self._watched(s, ev)
        change.changes = {k: (before[k], after[k]) for k in before if abs(after[k] - before[k]) > 1e-6}
        moved = ", ".join(f"{k} {a:.4g} -> {b:.4g}" for k, (a, b) in list(change.changes.items())[:8]) or "nothing (rows at their cap)"
        added = ", ".join(f"{k} +{v:.3g}" for k, v in change.added.items() if v)
        capped = f"; capped: {', '.join(change.capped)}" if change.capped else ""
        log.info("fusion %s feedback %r%s%s -> state %s: counts %s; %s%s", self.asset_type, label, where, who, state, added or "none", moved, capped)
        return change

    def _watched(self, s: int, ev: StepEvidence) -> dict[str, float]:
        """The probabilities a piece of evidence touches, for the feedback log."""
        state = self.states[s]
        out = {f"P({level}|{state})": float(self.p_level[s, i]) for i, level in enumerate(LEVELS) if ev.levels[i]}
        for r in np.flatnonzero(ev.rose + ev.fell + ev.involved + ev.not_involved):
            out[f"P({self.roles[r]} involved|{state})"] = float(self.p_involved[s, r])
        for k, r in zip(*np.nonzero(ev.hits)):
            out[f"P({RULE_KINDS[k]} on {self.roles[r]}|{state})"] = float(self.p_hit[k, s, r])
        return out

    # -- persistence ---------------------------------------------------------------------------

    def to_state(self) -> dict:
        """What was learned (labeled history and feedback), JSON-ready; defaults are not
        stored. ``roles``: the vocabulary the role axis of the tables was learned over."""
        return {
            "asset_type": self.asset_type,
            "states": list(self.states),
            "roles": list(self.roles),
            "learned": {name: a.tolist() for name, a in self._learned.items() if a.any()},
            "from_feedback": {name: a.tolist() for name, a in self._from_feedback.items() if a.any()},
        }

    def load_state(self, state: Mapping) -> bool:
        """Take what ``to_state`` stored. A state learned over another role vocabulary
        (tags added to or removed from a ``roles: tags`` type) is logged as a warning and
        left out: the network keeps its tables (at start: the defaults) and returns False.
        A state of other fault states raises ValueError (Diagnosis logs it and starts
        from the defaults). True when loaded."""
        stored_roles = list(state.get("roles", ROLES))  # states saved before roles were stored: the built-in ones
        if stored_roles != list(self.roles):
            log.warning(
                "fusion %s: the stored network state was learned over other roles (%d: %s) than this network's (%d: %s); "
                "left out, the network starts from its default tables",
                self.asset_type,
                len(stored_roles),
                _some(stored_roles),
                len(self.roles),
                _some(self.roles),
            )
            return False
        if list(state.get("states", ())) != list(self.states):
            raise ValueError(
                f"stored fusion state for {state.get('asset_type')!r} has states {state.get('states')}, "
                f"this {self.asset_type} network has {list(self.states)}: it was learned for another model; discard it"
            )
        learned, from_feedback = {}, {}
        for name in self._learned:
            learned[name] = np.array(state.get("learned", {}).get(name, np.zeros_like(self._learned[name])), dtype=float)
            from_feedback[name] = np.array(state.get("from_feedback", {}).get(name, np.zeros_like(self._from_feedback[name])), dtype=float)
            if learned[name].shape != self._learned[name].shape or from_feedback[name].shape != self._from_feedback[name].shape:
                raise ValueError(f"stored fusion state for {self.asset_type}: table {name} has another shape than this code's; discard it")
        self._learned, self._from_feedback = learned, from_feedback
        self._refresh()
        return True


def _some(names, most: int = 6) -> str:
    names = list(names)
    return ", ".join(names[:most]) + (f", ... ({len(names) - most} more)" if len(names) > most else "")
