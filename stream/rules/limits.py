"""Static limits: the warning pair (high, low) and the critical pair (high_high, low_low).

Evidence is produced at once, sample by sample in event time, not at window
close. The rule is edge-triggered: crossing a limit raises an alert once; the
alert clears when the value is back inside the limit by the deadband. Between the
two nothing is emitted, so a tag that sits above its limit for an hour makes two
messages, not millions.

Each pair is its own ``LimitRule`` with its own state: a value passing H and
then HH raises two alerts (two episodes, two ids), and falling back below HH
clears only the critical one, as ISA-18.2 alarm management expects. Both use
the tag's one deadband.

Samples are judged in event-time order per tag. A sample at or before the
tag's last crossing is late (or a replay of one already judged: at-least-once
delivery re-sends messages after a rebalance, while the state already holds
their effect) and is not judged again; without this rule a replay after a
clear would open a second episode with a new alert id.

Work is vectorised per batch: the common case (no sample outside any limit and
no alert active) costs two comparisons over the batch. Only tags that violate or
are already active are walked, and then with one numpy search per crossing.
"""

from __future__ import annotations

import numpy as np

from stream.config import AssetConfig
from stream.rules.events import Batch, RuleEvent, per_tag_us, without_unknown

#: pair -> (state key, condition above, condition below, Limits field above, Limits field below)
PAIRS = {
    "warning": ("limit", "high", "low", "high", "low"),
    "critical": ("limit_critical", "high_high", "low_low", "high_high", "low_low"),
}


class LimitRule:
    """Evaluates one limit pair of one asset.

    State is a plain dict so that the driver can keep it where a restart
    recovers it: ``{"active": {tag_id: {"condition", "since_us"}}, "changed_us":
    {tag_id: event time of the last crossing}}``. It changes only when a limit
    is crossed. The warning pair's state has the layout the pipeline stored as
    ``state["limits"]`` before the other rules existed.
    """

    name = "limit"

    def __init__(self, asset: AssetConfig, pair: str = "warning"):
        if pair not in PAIRS:
            raise ValueError(f"unknown limit pair {pair!r}: use 'warning' (high/low) or 'critical' (high_high/low_low)")
        self.key, self.above, self.below, above_field, below_field = PAIRS[pair]
        self.tag_ids = [tag.id for tag in asset.tags]
        self._position = {tag_id: i for i, tag_id in enumerate(self.tag_ids)}
        inf = np.inf
        self.high = np.array([inf if (x := getattr(t.limits, above_field)) is None else x for t in asset.tags], dtype=float)
        self.low = np.array([-inf if (x := getattr(t.limits, below_field)) is None else x for t in asset.tags], dtype=float)
        self.deadband = np.array([t.limits.deadband for t in asset.tags], dtype=float)

    @property
    def configured(self) -> bool:
        """Whether any tag has a limit of this pair (else the rule is not run at all)."""
        return bool(np.isfinite(self.high).any() or np.isfinite(self.low).any())

    def evaluate(
        self, tag_position: np.ndarray, ts_us: np.ndarray, value: np.ndarray, good: np.ndarray, state: dict
    ) -> tuple[list[RuleEvent], dict]:
        """Return the crossings in this batch and the new state (``state`` itself if unchanged).

        ``tag_position`` gives each sample's tag position in the asset config;
        samples where ``good`` is False (Bad/Uncertain quality) are ignored.
        ``state`` is not modified.
        """
        return self.judge(Batch.from_good_mask(tag_position, ts_us, value, good), state)

    def judge(self, batch: Batch, state: dict) -> tuple[list[RuleEvent], dict]:
        """As ``evaluate``, on a ``Batch`` (what FastRules passes every rule)."""
        active = state.get("active", {})
        changed = state.get("changed_us", {})
        tag_position, ts_us, value = batch.tag_position, batch.ts_us, batch.value
        judged = batch.good
        outside = judged & ((value > self.high[tag_position]) | (value < self.low[tag_position]))
        if not active and not outside.any():
            return [], state  # the common case: two comparisons, nothing more
        if changed:
            last = per_tag_us(len(self.tag_ids), self._position, changed)
            judged = judged & (ts_us > last[tag_position])
            outside &= judged
        candidates = set(np.unique(tag_position[outside]).tolist())
        # A tag removed from the configuration since its alert was raised is
        # forgotten, and so is an alert whose limit was removed: there is no
        # limit left to report the value back inside of.
        new_active = {
            tag: episode for tag, episode in without_unknown(active, self._position).items() if self._has_limit(tag, episode)
        }
        candidates.update(self._position[tag] for tag in new_active)
        events: list[RuleEvent] = []
        for position in sorted(candidates):
            samples = np.flatnonzero((tag_position == position) & judged)
            samples = samples[np.argsort(ts_us[samples], kind="stable")]
            tag_active = new_active.pop(self.tag_ids[position], None)
            tag_active = self._walk(position, ts_us[samples], value[samples], tag_active, events)
            if tag_active is not None:
                new_active[self.tag_ids[position]] = tag_active
        if not events and new_active == active:
            return [], state  # unchanged: the caller need not persist anything
        new_changed = without_unknown(changed, self._position)
        for event in events:
            new_changed[self.tag_ids[event.tag_position]] = event.ts_us
        return events, {"active": new_active, "changed_us": new_changed}

    def _has_limit(self, tag: str, episode: dict) -> bool:
        position = self._position[tag]
        limit = self.high[position] if episode["condition"] == self.above else self.low[position]
        return bool(np.isfinite(limit))

    def _walk(self, position: int, ts: np.ndarray, v: np.ndarray, state: dict | None, out: list) -> dict | None:
        high, low, deadband = self.high[position], self.low[position], self.deadband[position]
        i = 0
        while i < len(v):
            rest = v[i:]
            if state is None:
                hit = (rest > high) | (rest < low)
                if not hit.any():
                    break
                j = i + int(np.argmax(hit))
                condition = self.above if v[j] > high else self.below
                state = {"condition": condition, "since_us": int(ts[j])}
                limit = high if condition == self.above else low
                out.append(self._event(position, condition, "active", ts[j], v[j], limit, int(ts[j])))
                i = j + 1
            else:
                above = state["condition"] == self.above
                back = rest <= high - deadband if above else rest >= low + deadband
                if not back.any():
                    break
                j = i + int(np.argmax(back))
                limit = high if above else low
                out.append(self._event(position, state["condition"], "cleared", ts[j], v[j], limit, state["since_us"]))
                state = None
                i = j  # the same sample may cross the opposite limit
        return state

    def _event(self, position, condition, state, ts, value, limit, start) -> RuleEvent:
        return RuleEvent("limit", position, condition, state, int(ts), float(value), float(limit), int(start))
