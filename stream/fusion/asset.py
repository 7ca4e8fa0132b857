"""The fault filter of one asset: evidence in, P(state) per step out.

The forward algorithm of a hidden Markov model whose emission model is the
asset type's :class:`FaultNetwork`::

    prior(t)     = posterior(t - 1) @ T(dt)          T(dt) = exp(Q dt), dt in seconds
    posterior(t) ∝ prior(t) * P(evidence(t) | state)

with one guard: a step's likelihood ratio against normal is tempered so that it
favours no state by more than ``evidence.max_log_evidence_per_step`` nats (the
detectors, scales and rules of one step read the same samples and are not
independent, see FusionEvidence). A step without evidence leaves the
posterior to the transition model: it drifts back toward normal at the
recovery rate, it is never pushed there by evidence that did not arrive.

Driving it::

    fusion = AssetFusion(asset, FaultNetwork.for_asset_type(asset.type, settings), settings)
    # a learned type with roles: tags needs its assets' tags (stream.diagnosis does this):
    #   FaultNetwork.for_assets(asset.type, config.assets, settings)
    fusion.observe_scores(outputs.scores)        # as stream.detection makes them
    fusion.observe_rules(events)                 # RuleEvent, alert dicts or (rule, tag, condition, state, ts_us)
    fusion.observe_quality(bad_fraction)         # share of Bad samples in the window
    result = fusion.step(window_end_us)          # once per closed window of the fastest scale
    store[asset.id] = fusion.to_state()          # small, JSON-ready

Behaviour the tests hold it to (defaults, 1 s steps, three detectors): one odd
window, however extreme, does not change the top state; a fault whose primary
roles lead every score passes 0.8 within 3 windows; after the evidence returns
to normal, normal is the top state again within 10 windows.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from stream.config import AssetConfig
from stream.fusion.evidence import EvidenceCollector
from stream.fusion.faults import NORMAL
from stream.fusion.network import FaultNetwork, FeedbackChange
from stream.fusion.result import FusionResult, explain, message
from stream.fusion.roles import tag_roles
from stream.fusion.settings import FusionSettings

STATE_VERSION = 1


class AssetFusion:
    """Bayesian fusion for one asset (plain Python, no Kafka: the drivers call it)."""

    def __init__(self, asset: AssetConfig, network: FaultNetwork, settings: FusionSettings | None = None):
        if network.asset_type != asset.type:
            raise ValueError(f"asset {asset.id} is a {asset.type}, but the fault network given is for a {network.asset_type}: use FaultNetwork.for_asset_type({asset.type!r}, settings)")
        self.asset = asset
        self.network = network
        self.settings = settings or network.settings
        tag_ids = [t.id for t in asset.tags]
        if network.roles_are_tags:  # a learned type with roles: tags: every tag is its own role
            missing = [t for t in tag_ids if t not in network.role_index]
            if missing:
                raise ValueError(
                    f"asset {asset.id}: tags {', '.join(missing)} are not roles of the {asset.type} network given "
                    f"(built over other assets' tags): use FaultNetwork.for_assets({asset.type!r}, assets, settings) with this asset among them"
                )
            self.roles = {t: t for t in tag_ids}
        else:
            self.roles = tag_roles(asset.id, asset.type, tag_ids, self.settings.tag_roles)
        self.evidence = EvidenceCollector(asset, self.roles, self.settings.evidence, network.roles, network.roles_are_tags)
        self.posterior: np.ndarray = network.stationary()
        #: event time of the last step (None before the first)
        self.time_us: int | None = None
        self._cap = self.settings.evidence.max_log_evidence_per_step

    # -- evidence ----------------------------------------------------------------------------

    def observe_scores(self, score_messages: Iterable[Mapping]) -> None:
        """Score messages of this asset (stream.detection.score_message); counted at the next step."""
        self.evidence.add_scores(score_messages)

    def observe_rules(self, events: Iterable[Any]) -> None:
        """Fast-rule events: RuleEvent objects, alert messages, or (rule, tag_id, condition, state, ts_us)."""
        self.evidence.add_rules(events)

    def observe_quality(self, bad_fraction: float) -> None:
        """The share of Bad samples in the latest window (0..1)."""
        self.evidence.add_quality(bad_fraction)

    # -- the filter ---------------------------------------------------------------------------

    def step(self, event_time_us: int) -> FusionResult:
        """Advance the filter to ``event_time_us`` with the evidence handed in since the last step."""
        event_time_us = int(event_time_us)
        network = self.network
        if self.time_us is None:
            dt_s = None
            prior = self.posterior
        else:
            dt_s = (event_time_us - self.time_us) / 1e6
            # a step at or before the last one (a late window) adds evidence, but time does not run back
            prior = self.posterior @ network.transition(dt_s) if dt_s > 0 else self.posterior
        ev, drivers = self.evidence.collect(event_time_us, dt_s)
        log_post = np.log(np.maximum(prior, 1e-300))
        if not ev.empty:
            ratio = network.log_likelihood(ev)
            ratio -= ratio[0]
            strongest = ratio.max()
            if strongest > self._cap:
                ratio *= self._cap / strongest
            log_post += ratio
        log_post -= log_post.max()
        posterior = np.exp(log_post)
        posterior /= posterior.sum()
        self.posterior = posterior
        if self.time_us is None or event_time_us > self.time_us:
            self.time_us = event_time_us
        return self._result(event_time_us, posterior, ev, drivers)

    def _result(self, t_us: int, posterior: np.ndarray, ev, drivers: dict) -> FusionResult:
        states = self.network.states
        order = np.argsort(-posterior, kind="stable")
        ranked = {states[i]: float(posterior[i]) for i in order}
        top_state = states[order[0]]
        top_fault = states[order[0]] if order[0] != 0 else states[order[1]]
        p_any = float(1.0 - posterior[0])
        why = explain(top_fault, drivers, self.network.signature_roles(top_fault))
        return FusionResult(
            asset_id=self.asset.id,
            asset_type=self.asset.type,
            event_time_us=t_us,
            posterior=ranked,
            top_state=top_state,
            top_fault=top_fault,
            top_fault_probability=ranked[top_fault],
            p_any_fault=p_any,
            drivers=drivers,
            evidence=ev,
            explanation=why,
            message=message(self.asset.id, ranked, top_fault, p_any, why, self.network.words),
        )

    def probability(self, state: str) -> float:
        return float(self.posterior[self.network.state_index[state]])

    # -- feedback -------------------------------------------------------------------------------

    def feedback(self, result_or_evidence: Any, label: str, *, fault: str | None = None, user: str | None = None) -> FeedbackChange:
        """An operator's verdict on a result ("false_alarm", "confirmed:<fault>"): bounded
        learning in this asset type's network (FaultNetwork.feedback)."""
        return self.network.feedback(result_or_evidence, label, fault=fault, asset_id=self.asset.id, user=user)

    # -- persistence ----------------------------------------------------------------------------

    def to_state(self) -> dict:
        """JSON-ready state (about 1-3 KB): the posterior, the clock and the evidence bookkeeping.
        The network's learned counts are stored apart (FaultNetwork.to_state), once per type."""
        return {
            "v": STATE_VERSION,
            "asset_id": self.asset.id,
            "states": list(self.network.states),
            "posterior": [float(p) for p in self.posterior],
            "time_us": self.time_us,
            "evidence": self.evidence.to_state(),
        }

    @classmethod
    def from_state(cls, asset: AssetConfig, network: FaultNetwork, settings: FusionSettings | None, state: Mapping) -> "AssetFusion":
        """Rebuild from ``to_state``. A state saved under other fault states (the model changed)
        keeps the probabilities of the states both know and renormalises."""
        fusion = cls(asset, network, settings)
        if state.get("v") != STATE_VERSION:
            raise ValueError(f"fusion state of {asset.id} has version {state.get('v')!r}, this code reads {STATE_VERSION}: start the asset afresh")
        stored = dict(zip(state["states"], state["posterior"]))
        if list(state["states"]) == list(network.states):
            fusion.posterior = np.array(state["posterior"], dtype=float)
        else:
            start = network.stationary()
            posterior = np.array([stored.get(s, start[i] * stored.get(NORMAL, 1.0)) for i, s in enumerate(network.states)], dtype=float)
            fusion.posterior = posterior / posterior.sum()
        fusion.time_us = state.get("time_us")
        fusion.evidence.load_state(state.get("evidence", {}))
        return fusion
