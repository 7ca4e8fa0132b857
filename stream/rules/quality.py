"""Bad quality: a tag the plant cannot read (wire break, sensor fault, device offline).

A tag whose samples carry Bad status (OPC UA StatusCode severity Bad; the
connectors map Modbus errors onto it) for ``rules.bad_quality.after_s`` of event
time raises an alert (condition "bad_quality"; event time = when the duration
was reached, episode start = the first Bad sample). It clears at the tag's next
Good sample. ``after_s: 0`` alerts at the first Bad sample.

Uncertain samples neither start, prolong nor end a Bad stretch: the server
still vouches for their value in part (last usable value, sensor not
accurate), it is not a lost signal, and servers flag Uncertain often enough
that alerting on it would flood operators.

Event time is the asset's clock, every sample of the batch: a server that
reports on change sends one Bad notification and then nothing while the tag
stays Bad, so only the asset's other tags show that time passed.

The state carries since when each tag is Bad (written once when it turns
Bad, once when it alerts, once when it clears): a restarted worker goes on
counting from the same start and raises the same alert id.

Cheap when nothing is wrong: one mask over the batch; tags with a Bad sample
or a Bad stretch in progress are walked, with one numpy search per change.
"""

from __future__ import annotations

import numpy as np

from stream.config import AssetConfig, BadQualityRuleSettings
from stream.rules.events import Batch, RuleEvent, finite_or_none, per_tag_us, without_unknown


class BadQualityRule:
    """Bad-quality alerts of one asset (every tag).

    State: ``{"runs": {tag_id: {"since_us", "quality", "value", "active"}},
    "changed_us": {tag_id: event time of the last state change}}``; ``quality``
    and ``value`` are those of the stretch's first Bad sample (``value`` None
    when it carried none).
    """

    name = "bad_quality"
    key = "bad_quality"
    configured = True

    def __init__(self, asset: AssetConfig, settings: BadQualityRuleSettings):
        self.tag_ids = [tag.id for tag in asset.tags]
        self._position = {tag_id: i for i, tag_id in enumerate(self.tag_ids)}
        self.after_s = float(settings.after_s)
        self.after_us = int(round(settings.after_s * 1e6))

    def judge(self, batch: Batch, state: dict) -> tuple[list[RuleEvent], dict]:
        runs = state.get("runs", {})
        bad = batch.bad
        if not runs and not bad.any():
            return [], state  # the common case: one mask, nothing Bad
        n = len(self.tag_ids)
        changed = state.get("changed_us", {})
        known_runs = without_unknown(runs, self._position)
        floor = per_tag_us(n, self._position, changed, {tag: run["since_us"] for tag, run in known_runs.items()})
        tag_position, ts_us = batch.tag_position, batch.ts_us
        judged = ts_us > floor[tag_position]
        candidates = set(np.unique(tag_position[bad & judged]).tolist())
        candidates.update(self._position[tag] for tag in known_runs)
        if not candidates:
            return [], state
        # Good and Bad samples decide; Uncertain ones are left out (see the module doc).
        relevant = judged & (batch.good | bad)
        events: list[RuleEvent] = []
        new_runs = dict(known_runs)
        for position in sorted(candidates):
            tag = self.tag_ids[position]
            samples = np.flatnonzero((tag_position == position) & relevant)
            samples = samples[np.argsort(ts_us[samples], kind="stable")]
            run = self._walk(position, samples, batch, new_runs.pop(tag, None), events)
            if run is not None:
                new_runs[tag] = run
        if not events and new_runs == runs:
            return [], state
        new_changed = without_unknown(changed, self._position)
        for event in events:
            new_changed[self.tag_ids[event.tag_position]] = event.ts_us
        return events, {"runs": new_runs, "changed_us": new_changed}

    def _walk(self, position: int, samples: np.ndarray, batch: Batch, run: dict | None, out: list) -> dict | None:
        t, bad = batch.ts_us[samples], batch.bad[samples]
        i, n = 0, samples.shape[0]
        while True:
            if run is None:
                starts = bad[i:]
                if not starts.any():
                    return None
                j = i + int(np.argmax(starts))
                s = samples[j]
                run = {
                    "since_us": int(t[j]),
                    "quality": int(batch.quality[s]),
                    "value": finite_or_none(batch.value[s]),
                    "active": False,
                }
                i = j + 1
            good = ~bad[i:]
            b = i + int(np.argmax(good)) if good.any() else None
            if not run["active"]:
                tick = batch.first_clock_tick(run["since_us"] + self.after_us, None if b is None else int(t[b]))
                if tick is not None:
                    run = {**run, "active": True}
                    out.append(
                        RuleEvent(
                            self.name, position, "bad_quality", "active", tick, run["value"], self.after_s,
                            run["since_us"], (tick - run["since_us"]) / 1e6, run["quality"],
                        )
                    )
            if b is None:
                return run
            if run["active"]:
                s = samples[b]
                out.append(
                    RuleEvent(
                        self.name, position, "bad_quality", "cleared", int(t[b]), float(batch.value[s]), self.after_s,
                        run["since_us"], (int(t[b]) - run["since_us"]) / 1e6, int(batch.quality[s]),
                    )
                )
            run, i = None, b + 1
            if i >= n:
                return None
