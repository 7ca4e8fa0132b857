"""Rate of change: a value that moves faster than the process physically can.

A flow that jumps 300 m3/h between two samples 100 ms apart is a broken
transmitter, a burst pipe or a trip, and the operator should hear of it at
once, not at the end of a window. Per tag with ``max_rate_per_s`` configured,
the rate between consecutive Good samples, |delta value / delta t|, is compared
with it: above it the alert goes active (condition "rate"); it clears at the
first following sample whose rate is back within the limit. Non-Good samples
take no part: a pair is two Good samples in a row, whatever lies between.

The previous Good sample of each tag is kept in memory, not in the state: it
changes with every batch, and putting it in the state would mean a changelog
write per batch. After a restart or a rebalance the first sample of each tag
therefore has no predecessor and one pair goes unjudged. That cannot raise a
false alert, it can only miss one step that spanned the restart.

The late-sample rule of every fast rule holds: a sample at or before the tag's
last state change is not judged again (it may still be the predecessor of a
newer sample), so an at-least-once replay never opens a second episode.

The common case costs one sort of the batch by (tag, time), shared with the
flatline rule, and a handful of array operations; only tags that violate or
are already active are walked, with one numpy search per state change.
"""

from __future__ import annotations

import numpy as np

from stream.config import AssetConfig
from stream.rules.events import NEVER_US, Batch, RuleEvent, per_tag_us, tag_bounds, without_unknown


class RateOfChangeRule:
    """Rate-of-change alerts of one asset.

    State: ``{"active": {tag_id: {"since_us"}}, "changed_us": {tag_id: event
    time of the last state change}}``; it changes only when an alert is raised
    or cleared.
    """

    name = "rate_of_change"
    key = "rate_of_change"

    def __init__(self, asset: AssetConfig):
        self.tag_ids = [tag.id for tag in asset.tags]
        self._position = {tag_id: i for i, tag_id in enumerate(self.tag_ids)}
        self.max_rate = np.array([np.inf if t.max_rate_per_s is None else t.max_rate_per_s for t in asset.tags], dtype=float)
        self.watched = np.isfinite(self.max_rate)
        self.all_watched = bool(self.watched.all())
        self.forget()

    @property
    def configured(self) -> bool:
        return bool(self.watched.any())

    def forget(self) -> None:
        """Drop the remembered previous samples (another worker may have moved the tags on)."""
        n = len(self.tag_ids)
        self._prev_ts = np.full(n, NEVER_US, dtype=np.int64)
        self._prev_value = np.zeros(n, dtype=float)

    def judge(self, batch: Batch, state: dict) -> tuple[list[RuleEvent], dict]:
        p, t, v, good = batch.sorted_columns
        # Good samples of watched tags, newer than the tag's remembered previous
        # sample (older ones are a replay whose pairs were judged already).
        keep = good & (t > self._prev_ts[p])
        if not self.all_watched:
            keep &= self.watched[p]
        if keep.all():  # the common case: every sample counts, the shared sorted columns serve as they are
            new_group, last = batch.sorted_bounds
        elif not keep.any():
            return [], state
        else:
            p, t, v = p[keep], t[keep], v[keep]
            new_group, last = tag_bounds(p)
        # Two samples of one tag at the same time: keep the first, a zero time step has no rate.
        same_time = ~new_group[1:] & (t[1:] == t[:-1])
        if same_time.any():
            unique = np.concatenate(([True], ~same_time))
            p, t, v = p[unique], t[unique], v[unique]
            new_group, last = tag_bounds(p)
        prev_t = np.empty_like(t)
        prev_v = np.empty_like(v)
        prev_t[1:], prev_v[1:] = t[:-1], v[:-1]
        prev_t[new_group], prev_v[new_group] = self._prev_ts[p[new_group]], self._prev_value[p[new_group]]
        has_prev = prev_t != NEVER_US
        step_us = t - np.where(has_prev, prev_t, t - 1)  # > 0: timestamps are unique per tag by now
        rate = np.where(has_prev, (v - prev_v) * 1e6 / step_us, 0.0)
        over = has_prev & (np.abs(rate) > self.max_rate[p])
        # Remember each tag's newest sample for the next batch.
        self._prev_ts[p[last]], self._prev_value[p[last]] = t[last], v[last]

        active = state.get("active", {})
        if not active and not over.any():
            return [], state  # the common case: nothing faster than allowed
        changed = state.get("changed_us", {})
        judged = t > per_tag_us(len(self.tag_ids), self._position, changed)[p] if changed else np.ones(p.shape[0], dtype=bool)
        new_active = without_unknown(active, self._position)
        candidates = set(np.unique(p[over & judged]).tolist())
        candidates.update(self._position[tag] for tag in new_active if self.watched[self._position[tag]])
        events: list[RuleEvent] = []
        for position in sorted(candidates):
            mine = p == position
            tag = self.tag_ids[position]
            episode = self._walk(
                position, t[mine], v[mine], rate[mine], has_prev[mine], over[mine], judged[mine], new_active.pop(tag, None), events
            )
            if episode is not None:
                new_active[tag] = episode
        # An active tag whose max_rate_per_s was removed is forgotten (nothing to clear against).
        new_active = {tag: e for tag, e in new_active.items() if self.watched[self._position[tag]]}
        if not events and new_active == active:
            return [], state
        new_changed = without_unknown(changed, self._position)
        for event in events:
            new_changed[self.tag_ids[event.tag_position]] = event.ts_us
        return events, {"active": new_active, "changed_us": new_changed}

    def _walk(self, position, t, v, rate, has_prev, over, judged, episode, out) -> dict | None:
        limit = float(self.max_rate[position])
        raising = judged & over
        clearing = judged & has_prev & ~over
        i = 0
        while i < t.shape[0]:
            look = clearing[i:] if episode else raising[i:]
            if not look.any():
                break
            j = i + int(np.argmax(look))
            if episode is None:
                episode = {"since_us": int(t[j])}
                out.append(RuleEvent(self.name, position, "rate", "active", int(t[j]), float(v[j]), limit, int(t[j]), float(rate[j])))
            else:
                out.append(
                    RuleEvent(self.name, position, "rate", "cleared", int(t[j]), float(v[j]), limit, episode["since_us"], float(rate[j]))
                )
                episode = None
            i = j + 1
        return episode
