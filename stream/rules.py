"""The static limit rule: one high and one low limit per tag, with a deadband.

Evidence is produced at once, sample by sample in event time, not at window
close. The rule is edge-triggered: crossing a limit raises an alert once; the
alert clears when the value is back inside the limit by the deadband. Between the
two nothing is emitted, so a tag that sits above its limit for an hour makes two
messages, not millions.

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
    """A tag went outside a limit (``raised``) or came back (``cleared``)."""

    tag_position: int
    condition: str  # "high" or "low"
    state: str  # "active" or "cleared"
    ts_us: int
    value: float
    limit: float
    episode_start_us: int


class LimitRule:
    """Evaluates the configured limits of one asset.

    State (what is active) is passed in and returned as a plain dict so that the
    driver can keep it where a restart recovers it: ``{tag_id: {"condition",
    "since_us"}}`` for each tag currently outside a limit.
    """

    def __init__(self, asset: AssetConfig):
        self.tag_ids = [tag.id for tag in asset.tags]
        self._position = {tag_id: i for i, tag_id in enumerate(self.tag_ids)}
        inf = np.inf
        self.high = np.array([inf if t.limits.high is None else t.limits.high for t in asset.tags])
        self.low = np.array([-inf if t.limits.low is None else t.limits.low for t in asset.tags])
        self.deadband = np.array([t.limits.deadband for t in asset.tags])

    def evaluate(
        self, tag_position: np.ndarray, ts_us: np.ndarray, value: np.ndarray, good: np.ndarray, active: dict
    ) -> tuple[list[LimitCrossing], dict]:
        """Return the crossings in this batch and the new active-state dict.

        ``tag_position`` gives each sample's tag position in the asset config;
        samples where ``good`` is False (Bad/Uncertain quality) are ignored.
        ``active`` is not modified.
        """
        outside = good & ((value > self.high[tag_position]) | (value < self.low[tag_position]))
        if not active and not outside.any():
            return [], active
        candidates = set(np.unique(tag_position[outside]).tolist())
        # A tag removed from the configuration since its alert was raised is forgotten.
        new_active = {tag: state for tag, state in active.items() if tag in self._position}
        candidates.update(self._position[tag] for tag in new_active)
        crossings: list[LimitCrossing] = []
        for position in sorted(candidates):
            samples = np.flatnonzero((tag_position == position) & good)
            samples = samples[np.argsort(ts_us[samples], kind="stable")]
            state = new_active.pop(self.tag_ids[position], None)
            state = self._walk(position, ts_us[samples], value[samples], state, crossings)
            if state is not None:
                new_active[self.tag_ids[position]] = state
        return crossings, new_active

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
