"""The static limit rule: one high and one low limit per tag, with a deadband.

Evidence is produced at once, sample by sample in event time, not at window
close. The rule is edge-triggered: crossing a limit raises an alert once; the
alert clears when the value is back inside the limit by the deadband. Between the
two nothing is emitted, so a tag that sits above its limit for an hour makes two
messages, not millions.

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

from dataclasses import dataclass

import numpy as np

from stream.config import AssetConfig


@dataclass(frozen=True)
class LimitCrossing:
    """A tag went outside a limit (state ``active``) or came back (``cleared``)."""

    tag_position: int
    condition: str  # "high" or "low"
    state: str  # "active" or "cleared"
    ts_us: int
    value: float
    limit: float
    episode_start_us: int


class LimitRule:
    """Evaluates the configured limits of one asset.

    State is passed in and returned as a plain dict so that the driver can keep
    it where a restart recovers it: ``{"active": {tag_id: {"condition",
    "since_us"}}, "changed_us": {tag_id: event time of the last crossing}}``.
    It changes only when a limit is crossed.
    """

    def __init__(self, asset: AssetConfig):
        self.tag_ids = [tag.id for tag in asset.tags]
        self._position = {tag_id: i for i, tag_id in enumerate(self.tag_ids)}
        inf = np.inf
        self.high = np.array([inf if t.limits.high is None else t.limits.high for t in asset.tags])
        self.low = np.array([-inf if t.limits.low is None else t.limits.low for t in asset.tags])
        self.deadband = np.array([t.limits.deadband for t in asset.tags])

    def evaluate(
        self, tag_position: np.ndarray, ts_us: np.ndarray, value: np.ndarray, good: np.ndarray, state: dict
    ) -> tuple[list[LimitCrossing], dict]:
        """Return the crossings in this batch and the new state (``state`` itself if unchanged).

        ``tag_position`` gives each sample's tag position in the asset config;
        samples where ``good`` is False (Bad/Uncertain quality) are ignored.
        ``state`` is not modified.
        """
        active = state.get("active", {})
        changed = state.get("changed_us", {})
        judged = good
        if changed:
            last = np.full(len(self.tag_ids), -1, dtype=np.int64)
            for tag, ts in changed.items():
                if tag in self._position:
                    last[self._position[tag]] = ts
            judged = good & (ts_us > last[tag_position])
        outside = judged & ((value > self.high[tag_position]) | (value < self.low[tag_position]))
        if not active and not outside.any():
            return [], state
        candidates = set(np.unique(tag_position[outside]).tolist())
        # A tag removed from the configuration since its alert was raised is forgotten.
        new_active = {tag: episode for tag, episode in active.items() if tag in self._position}
        candidates.update(self._position[tag] for tag in new_active)
        crossings: list[LimitCrossing] = []
        for position in sorted(candidates):
            samples = np.flatnonzero((tag_position == position) & judged)
            samples = samples[np.argsort(ts_us[samples], kind="stable")]
            tag_active = new_active.pop(self.tag_ids[position], None)
            tag_active = self._walk(position, ts_us[samples], value[samples], tag_active, crossings)
            if tag_active is not None:
                new_active[self.tag_ids[position]] = tag_active
        if not crossings and new_active == active:
            return [], state  # unchanged: the caller need not persist anything
        new_changed = {tag: ts for tag, ts in changed.items() if tag in self._position}
        for crossing in crossings:
            new_changed[self.tag_ids[crossing.tag_position]] = crossing.ts_us
        return crossings, {"active": new_active, "changed_us": new_changed}

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
                condition = "high" if v[j] > high else "low"
                state = {"condition": condition, "since_us": int(ts[j])}
                limit = high if condition == "high" else low
                out.append(LimitCrossing(position, condition, "active", int(ts[j]), float(v[j]), float(limit), int(ts[j])))
                i = j + 1
            else:
                back = rest <= high - deadband if state["condition"] == "high" else rest >= low + deadband
                if not back.any():
                    break
                j = i + int(np.argmax(back))
                limit = high if state["condition"] == "high" else low
                out.append(
                    LimitCrossing(
                        position, state["condition"], "cleared", int(ts[j]), float(v[j]), float(limit), state["since_us"]
                    )
                )
                state = None
                i = j  # the same sample may cross the opposite limit
        return state
