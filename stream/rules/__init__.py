"""The fast rule path: evidence at once, sample by sample in event time, not at window close.

``FastRules`` runs every enabled rule of one asset over a reading batch:

* ``limits``: static limits, the warning pair (high/low) and the critical pair
  (high_high/low_low), each its own alert episode, with the tag's deadband;
* ``rate``: a change between consecutive Good samples faster than ``max_rate_per_s``;
* ``flatline``: a value stuck within ``flatline_tolerance`` for ``flatline_after_s``;
* ``quality``: a tag reading Bad for ``rules.bad_quality.after_s``.

Every rule is edge-triggered (one ``active`` and one ``cleared`` event per
episode), judges samples in event-time order per tag (batches may arrive
unsorted), and keeps the late-sample rule: a sample at or before the tag's
last state change in that rule is not judged again, so an at-least-once replay
after a rebalance never opens a second episode with a new alert id.

State is one plain dict per asset (JSON-serialisable, as a faust changelog
holds it): ``{rule key: that rule's state}``, keys ``limit``,
``limit_critical``, ``rate_of_change``, ``flatline``, ``bad_quality``, each
present once the rule had something to remember. ``evaluate`` returns the very
object it was given when nothing changed, so the driver writes the changelog
only on a real change, not once per batch.
"""

from __future__ import annotations

import numpy as np

from stream.config import AssetConfig, RuleSettings
from stream.rules.events import NEVER_US, Batch, LimitCrossing, RuleEvent
from stream.rules.flatline import FlatlineRule
from stream.rules.limits import LimitRule
from stream.rules.quality import BadQualityRule
from stream.rules.rate import RateOfChangeRule

__all__ = [
    "Batch",
    "BadQualityRule",
    "FastRules",
    "FlatlineRule",
    "LimitCrossing",
    "LimitRule",
    "RateOfChangeRule",
    "RuleEvent",
]

#: Rate and flatline remember each tag's last sample in memory (see their
#: modules). If the asset's event time jumps by more than this between two
#: batches, another worker probably had the asset meanwhile (a rebalance there
#: and back), and what is remembered may be stale: it is dropped. Dropping only
#: delays evidence by a sample or a run; keeping stale memory could invent it.
MEMORY_GAP_US = 30_000_000
#: ...or by more than this many of the asset's usual steps between batches,
#: whichever is longer. An asset read every minute (a historian export, a slow
#: Modbus poll) steps 60 s from batch to batch: against 30 s alone every batch
#: looked like a jump, the memory was dropped each time, and a frozen value
#: never raised a flatline, nor a jump a rate-of-change alert.
MEMORY_GAP_STEPS = 10

_EMPTY: dict = {}


class FastRules:
    """Every enabled fast rule of one asset, behind one call per batch."""

    def __init__(self, asset: AssetConfig, settings: RuleSettings):
        self.asset = asset
        candidates = []
        if settings.limits.enabled:
            candidates += [LimitRule(asset, "warning"), LimitRule(asset, "critical")]
        if settings.rate_of_change.enabled:
            candidates.append(RateOfChangeRule(asset))
        if settings.flatline.enabled:
            candidates.append(FlatlineRule(asset))
        if settings.bad_quality.enabled:
            candidates.append(BadQualityRule(asset, settings.bad_quality))
        # A rule no tag is configured for costs nothing, not even a comparison.
        self.rules = [rule for rule in candidates if rule.configured]
        self._with_memory = [rule for rule in self.rules if hasattr(rule, "forget")]
        self._clock_us = NEVER_US
        #: the usual event-time step from one batch to the next (None: not seen yet)
        self._step_us: float | None = None
        self._last_state: dict | None = None

    def evaluate(
        self, tag_position: np.ndarray, ts_us: np.ndarray, value: np.ndarray, quality: np.ndarray, state: dict
    ) -> tuple[list[RuleEvent], dict]:
        """Judge one batch. Returns the events in event-time order and the new state.

        ``tag_position`` gives each sample's tag position in the asset
        configuration, ``quality`` its OPC UA StatusCode. ``state`` is not
        modified; when nothing changed, the same object comes back.
        """
        batch = Batch(tag_position, ts_us, value, quality)
        if len(batch) == 0 or not self.rules:
            return [], state
        if self._with_memory:
            self._check_memory(batch, state)
        events: list[RuleEvent] = []
        new_state = state
        for rule in self.rules:
            old = state.get(rule.key, _EMPTY)
            found, new = rule.judge(batch, old)
            events.extend(found)
            if new is not old:
                if new_state is state:
                    new_state = dict(state)
                new_state[rule.key] = new
        if len(events) > 1:
            events.sort(key=lambda e: e.ts_us)  # stable: one sample's events keep the rules' order
        self._last_state = new_state
        return events, new_state

    def _check_memory(self, batch: Batch, state: dict) -> None:
        """Drop what rate and flatline remember when it may no longer be ours.

        The state a worker is given differs from what it returned last time
        only if someone else processed the asset meanwhile (a rebalance there
        and back); a long jump in event time says the same when the other
        worker changed nothing."""
        start = batch.clock_start_us
        foreign = self._last_state is not None and state is not self._last_state and state != self._last_state
        jumped = False
        if self._clock_us != NEVER_US:
            step = max(start - self._clock_us, 0)
            usual = self._step_us
            jumped = step > max(MEMORY_GAP_US, MEMORY_GAP_STEPS * (usual if usual is not None else 0.0))
            # Learn the usual step; a jump moves it by at most a doubling, so one
            # rebalance does not teach the rule to take the next one for a step.
            if usual is None:
                self._step_us = float(step)
            else:
                self._step_us = usual + 0.1 * (min(step, 2.0 * usual + 1.0) - usual)
        if foreign or jumped:
            for rule in self._with_memory:
                rule.forget()
        self._clock_us = max(self._clock_us, batch.clock_end_us)
