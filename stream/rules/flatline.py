"""Flatline: a value that stops moving, the mark of a frozen transmitter or a dead PLC input.

Per tag with ``flatline_after_s`` configured: a *run* starts at a Good sample
(its value is the run's anchor) and goes on while every following Good sample
stays within ``flatline_tolerance`` of the anchor, so a stuck sensor's last-bit
noise still counts as flat but a slow drift does not. Once event time has gone
``flatline_after_s`` past the run's start with the run unbroken, the alert goes
active (condition "flatline"; event time = when the duration was reached,
episode start = start of the run). It clears at the first Good sample that
leaves the tolerance, and that sample starts the next run.

Event time is the asset's clock, every sample of the batch: an OPC UA server
reports only changes, so a frozen value sends nothing at all and only the
asset's other tags show that time passed. A non-Good sample ends a run that
has not alerted yet (whether the value stayed put while unreadable is
unknown; the bad-quality rule speaks for that time); an active flatline stays
active until a Good sample moves.

Where a run lives: once it has lasted half of ``flatline_after_s`` (or alerts)
it is carried across batches in the state, so a restarted worker goes on with
the same run start and raises the same alert id. A younger run is carried in
memory only: every normal tag starts a new run at nearly every sample, and
writing that to the state would cost a changelog write per batch. A restart
forgets young runs, which can only delay a flatline by less than half the
duration, never invent one.

Vectorised: per tag, consecutive Good samples further apart than twice the
tolerance cannot be in one run (each is within the tolerance of its anchor),
so for a moving signal every sample starts its own run, a run that ends
inside a batch is shorter than the batch, and the run carried out of the
batch starts at the last sample (or the one before, when the two are close),
all found with a few array operations over the whole batch. Only tags that
shortcut does not decide (a run old enough to persist or alert, an active
alert, three close values in a row at the end, a batch as long as the
duration) are walked, with one numpy search per run.
"""

from __future__ import annotations

import numpy as np

from stream.config import AssetConfig
from stream.rules.events import NEVER_US, Batch, RuleEvent, per_tag_us, tag_bounds, without_unknown


class FlatlineRule:
    """Flatline alerts of one asset.

    State: ``{"runs": {tag_id: {"since_us", "anchor", "active"}}, "changed_us":
    {tag_id: event time of the last alert or clear}}``. ``runs`` holds only
    runs old enough to matter (see the module doc); the state changes when such
    a run starts mattering, breaks, alerts or clears.
    """

    name = "flatline"
    key = "flatline"

    def __init__(self, asset: AssetConfig):
        self.tag_ids = [tag.id for tag in asset.tags]
        self._position = {tag_id: i for i, tag_id in enumerate(self.tag_ids)}
        self.after_s = np.array([0.0 if t.flatline_after_s is None else t.flatline_after_s for t in asset.tags])
        self.watched = np.array([t.flatline_after_s is not None for t in asset.tags], dtype=bool)
        self.after_us = np.round(self.after_s * 1e6).astype(np.int64)
        self.persist_us = self.after_us // 2
        self.tolerance = np.array([t.flatline_tolerance for t in asset.tags], dtype=float)
        self.all_watched = bool(self.watched.all())
        self.min_persist_us = int(self.persist_us[self.watched].min()) if self.watched.any() else 0
        self._no_tags = np.zeros(len(asset.tags), dtype=bool)  # read-only "no tag" mask
        self.forget()

    @property
    def configured(self) -> bool:
        return bool(self.watched.any())

    def forget(self) -> None:
        """Drop the young runs kept in memory (another worker may have moved the tags on)."""
        n = len(self.tag_ids)
        self._young_since = np.full(n, NEVER_US, dtype=np.int64)
        self._young_anchor = np.zeros(n, dtype=float)
        self._seen_us = np.full(n, NEVER_US, dtype=np.int64)  # newest sample of the tag already judged here

    def judge(self, batch: Batch, state: dict) -> tuple[list[RuleEvent], dict]:
        runs = without_unknown(state.get("runs", {}), self._position)
        runs = {tag: run for tag, run in runs.items() if self.watched[self._position[tag]]}
        changed = state.get("changed_us", {})
        n = len(self.tag_ids)
        # The run each tag carries into this batch: the persisted one, else the young one in memory.
        since, anchor, floor = self._young_since, self._young_anchor, self._seen_us
        active = persisted = self._no_tags
        if changed or runs:
            since, anchor = since.copy(), anchor.copy()
        if changed:
            changed_us = per_tag_us(n, self._position, changed)
            since[since < changed_us] = NEVER_US  # a run older than the last alert or clear is stale
            floor = np.maximum(floor, changed_us)
        if runs:
            active, persisted = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
            for tag, run in runs.items():
                i = self._position[tag]
                since[i], anchor[i], active[i], persisted[i] = run["since_us"], run["anchor"], run["active"], True
            floor = np.maximum(floor, np.where(persisted, since, NEVER_US))
        has_run = since != NEVER_US

        p, t, v, g = batch.sorted_columns
        keep = t > floor[p]
        if not self.all_watched:
            keep &= self.watched[p]
        clock_end = batch.clock_end_us
        # Tags without samples here may still reach their duration on the asset's clock.
        due = has_run & ~active & (since + self.persist_us <= clock_end)
        if keep.all():  # the common case: the shared sorted columns serve as they are
            first, last = batch.sorted_bounds
        elif not keep.any() and not due.any():
            return [], state
        else:
            p, t, v, g = p[keep], t[keep], v[keep], g[keep]
            first, last = tag_bounds(p)
        f, l = np.flatnonzero(first), np.flatnonzero(last)
        pf, pl = p[f], p[l]
        has_samples = np.zeros(n, dtype=bool)
        has_samples[pf] = True

        # Which tags the shortcut cannot decide (see the module doc).
        walk = due & ~has_samples
        carried = has_run[pf]
        if runs:
            walk[pf[carried & (active[pf] | persisted[pf])]] = True
        idx = np.arange(p.shape[0])
        # Where the young run carried in ends: usually at the tag's first sample;
        # if that one is within the tolerance by chance, at the first one that is not.
        ends_at = f
        in_carried = None
        within0 = np.abs(v[f] - anchor[pf]) <= self.tolerance[pf]
        goes_on = carried & ~active[pf] & ~persisted[pf] & g[f] & within0
        if goes_on.any():
            going = np.zeros(n, dtype=bool)
            going[pf[goes_on]] = True
            leaves = ~g | (np.abs(v - anchor[p]) > self.tolerance[p])
            group_start = np.maximum.accumulate(np.where(first, idx, 0))
            last_leave = np.maximum.accumulate(np.where(leaves, idx, -1))
            in_carried = going[p] & (last_leave < group_start)
            walk[pl[in_carried[l]]] = True  # the carried run lasts the whole batch: walk it
            ends_at = np.minimum(f + np.add.reduceat(in_carried, f), l)
        walk[pf[carried & (since[pf] + self.after_us[pf] <= t[ends_at])]] = True
        # A batch shorter than half the shortest duration (the usual case: half a
        # second against minutes) can neither hold a whole flatline nor age a run
        # that starts in it enough to be stored; one comparison says so for all tags.
        short_batch = clock_end - batch.clock_start_us < self.min_persist_us
        if not short_batch:
            # A run that ends inside the batch lasted less than the tag's span in it.
            walk[pf[t[l] - t[f] >= self.after_us[pf]]] = True
        # The run the tag carries out of the batch. A Good sample further than
        # twice the tolerance from its Good predecessor certainly starts a run
        # (its predecessor lies within the tolerance of its own anchor), so the
        # last run starts at the last such sample, and with one close follower
        # the tolerance alone says whether that follower is in the run.
        close = np.zeros(p.shape[0], dtype=bool)
        close[1:] = ~first[1:] & g[1:] & g[:-1] & (np.abs(v[1:] - v[:-1]) <= 2 * self.tolerance[p[1:]])
        certain = g & ~close
        if in_carried is not None:
            certain &= ~in_carried
            certain[ends_at] = g[ends_at]  # the sample that ended the carried run starts the next
        starts = np.where(certain, idx, -1)
        np.maximum.accumulate(starts, out=starts)
        run_len = l - starts[l] + 1  # for the last sample, if Good: samples since the last certain start
        good_end = g[l]
        walk[pl[good_end & (run_len > 2)]] = True
        pair = good_end & (run_len == 2)
        joined = pair & (np.abs(v[l] - v[l - pair]) <= self.tolerance[pl])
        last_start = l - joined  # the index the carried-out run starts at
        if not short_batch:
            walk[pl[good_end & (t[last_start] + self.persist_us[pl] <= clock_end)]] = True

        # Decided by the shortcut: no alert, no state change, the last run carries on in memory.
        simple = ~walk[pl]
        ps, ls = pl[simple], last_start[simple]
        self._young_since[ps] = np.where(good_end[simple], t[ls], NEVER_US)
        self._young_anchor[ps] = v[ls]
        self._seen_us[ps] = t[l[simple]]
        walked = np.flatnonzero(walk)
        if walked.shape[0] == 0:
            return [], state

        events: list[RuleEvent] = []
        new_runs = dict(runs)
        for position in walked.tolist():
            tag = self.tag_ids[position]
            lo, hi = np.searchsorted(p, position, side="left"), np.searchsorted(p, position, side="right")
            run = None
            if has_run[position]:
                run = {"since_us": int(since[position]), "anchor": float(anchor[position]), "active": bool(active[position])}
            run = self._walk(position, t[lo:hi], v[lo:hi], g[lo:hi], run, batch, events)
            if hi > lo:
                self._seen_us[position] = t[hi - 1]
            new_runs.pop(tag, None)
            self._young_since[position] = NEVER_US
            if run is None:
                continue
            if run["active"] or clock_end - run["since_us"] >= self.persist_us[position]:
                new_runs[tag] = run
            else:
                self._young_since[position], self._young_anchor[position] = run["since_us"], run["anchor"]
        if not events and new_runs == state.get("runs", {}):
            return [], state
        new_changed = without_unknown(changed, self._position)
        for event in events:
            new_changed[self.tag_ids[event.tag_position]] = event.ts_us
        new_state = {"runs": new_runs, "changed_us": new_changed}
        return events, new_state

    def _walk(self, position: int, t, v, g, run: dict | None, batch: Batch, out: list) -> dict | None:
        """Follow one tag's runs through its samples (sorted, newer than anything judged)."""
        after_us, tolerance = int(self.after_us[position]), self.tolerance[position]
        limit = float(self.after_s[position])
        i, n = 0, t.shape[0]
        while True:
            if run is None:
                starts = g[i:]
                if not starts.any():
                    return None
                j = i + int(np.argmax(starts))
                run = {"since_us": int(t[j]), "anchor": float(v[j]), "active": False}
                i = j + 1
            moved = np.abs(v[i:] - run["anchor"]) > tolerance
            # Before the alert any non-Good sample ends the run; after it only a Good one that moved.
            ends = g[i:] & moved if run["active"] else ~g[i:] | moved
            b = i + int(np.argmax(ends)) if ends.any() else None
            deadline = run["since_us"] + after_us
            if not run["active"] and deadline <= batch.clock_end_us:
                tick = batch.first_clock_tick(deadline, None if b is None else int(t[b]))
                if tick is not None:
                    run["active"] = True
                    out.append(
                        RuleEvent(
                            self.name, position, "flatline", "active", tick, run["anchor"], limit,
                            run["since_us"], (tick - run["since_us"]) / 1e6,
                        )
                    )
                    continue  # look for the end again: now only a Good sample that moved ends it
            if b is None:
                return run
            if run["active"]:
                out.append(
                    RuleEvent(
                        self.name, position, "flatline", "cleared", int(t[b]), float(v[b]), limit,
                        run["since_us"], (int(t[b]) - run["since_us"]) / 1e6,
                    )
                )
            run, i = None, b  # a Good sample that moved starts the next run
            if i >= n:
                return None
