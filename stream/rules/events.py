"""What every fast rule shares: the event it emits and the batch it reads.

A ``RuleEvent`` is one edge of an alert episode: ``active`` when the rule's
condition starts to hold, ``cleared`` when it stops. Nothing is emitted in
between, so a tag that stays wrong for an hour makes two messages.

``Batch`` wraps the columns of one validated reading batch and computes what
several rules need (quality masks, the per-tag time order, the asset's clock)
at most once, and only when a rule asks for it: the common case, nothing
wrong, must not pay for a sort it does not need.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Mapping

import numpy as np

from stream.wire import QUALITY_BAD, is_bad, is_good

#: "no timestamp yet" in per-tag timestamp arrays: below every real sample.
NEVER_US = np.iinfo(np.int64).min


@dataclass(frozen=True)
class RuleEvent:
    """A tag's rule condition started (``state="active"``) or ended (``"cleared"``).

    ``value`` is the tag's value the message is about, in the tag's unit (the
    sample that crossed or came back; for flatline the value it is stuck at;
    for bad quality the value the Bad sample carried, None when it carried
    none). ``limit`` is the threshold the rule compares against, in the rule's
    own measure: the limit in the tag's unit (limit), the largest plausible
    change in unit per second (rate_of_change), or a duration in seconds
    (flatline: flatline_after_s; bad_quality: after_s). ``observed`` is what
    the rule measured on that scale (the signed rate, or how long the value was
    flat / the quality Bad, in s); None for limits, where it is ``value``.
    ``quality`` is the sample's OPC UA StatusCode (bad_quality only).
    Both events of one episode carry the same ``episode_start_us``: with rule,
    tag and condition it makes the alert id.
    """

    rule: str  # "limit", "rate_of_change", "flatline" or "bad_quality"
    tag_position: int
    condition: str  # "high", "low", "high_high", "low_low", "rate", "flatline" or "bad_quality"
    state: str  # "active" or "cleared"
    ts_us: int
    value: float | None
    limit: float
    episode_start_us: int
    observed: float | None = None
    quality: int | None = None


#: the name limit events had before other rules existed; code that imports it keeps working.
LimitCrossing = RuleEvent


class Batch:
    """The columns of one reading batch of one asset, as the rules read them.

    ``tag_position`` is each sample's tag position in the asset configuration
    (``stream.validation.validate_batch``). Arrays are used as given, not copied.
    """

    def __init__(self, tag_position: np.ndarray, ts_us: np.ndarray, value: np.ndarray, quality: np.ndarray):
        self.tag_position = np.asarray(tag_position, dtype=np.intp)
        self.ts_us = np.asarray(ts_us, dtype=np.int64)
        self.value = np.asarray(value, dtype=np.float64)
        self.quality = np.asarray(quality, dtype=np.uint32)

    @classmethod
    def from_good_mask(cls, tag_position, ts_us, value, good) -> "Batch":
        """For callers that only know which samples are Good (the old LimitRule interface)."""
        quality = np.where(np.asarray(good, dtype=bool), np.uint32(0), np.uint32(QUALITY_BAD))
        return cls(tag_position, ts_us, value, quality)

    def __len__(self) -> int:
        return int(self.ts_us.shape[0])

    @cached_property
    def good(self) -> np.ndarray:
        return is_good(self.quality)

    @cached_property
    def bad(self) -> np.ndarray:
        return is_bad(self.quality)

    @cached_property
    def by_tag_time(self) -> np.ndarray:
        """Sample indices ordered by tag position, then event time (stable: equal
        timestamps keep their order in the batch). Samples may arrive unsorted."""
        return np.lexsort((self.ts_us, self.tag_position))

    @cached_property
    def sorted_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(tag position, ts_us, value, good) in ``by_tag_time`` order, gathered once for every rule."""
        order = self.by_tag_time
        return self.tag_position[order], self.ts_us[order], self.value[order], self.good[order]

    @cached_property
    def sorted_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(first, last): masks of each tag's first and last sample in the sorted columns."""
        return tag_bounds(self.sorted_columns[0])

    @cached_property
    def clock(self) -> np.ndarray:
        """Every timestamp in the batch, sorted: the asset's event-time clock.

        A rule that waits for a duration (flatline, bad quality) asks when event
        time reached a deadline. A tag's own samples cannot always tell: an OPC
        UA server reports a value only when it changes, so a frozen transmitter
        sends nothing at all. The asset's other tags keep the clock going."""
        return np.sort(self.ts_us)

    @cached_property
    def clock_end_us(self) -> int:
        return int(self.ts_us.max()) if len(self) else NEVER_US

    @cached_property
    def clock_start_us(self) -> int:
        return int(self.ts_us.min()) if len(self) else NEVER_US

    def first_clock_tick(self, deadline_us: int, before_us: int | None) -> int | None:
        """The first sample time at or after ``deadline_us`` (and before ``before_us``), or None."""
        clock = self.clock
        k = int(np.searchsorted(clock, deadline_us, side="left"))
        if k == clock.shape[0]:
            return None
        tick = int(clock[k])
        return tick if before_us is None or tick < before_us else None


def tag_bounds(tag_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the first and the last sample of each tag in samples sorted by tag."""
    n = tag_sorted.shape[0]
    first = np.empty(n, dtype=bool)
    last = np.empty(n, dtype=bool)
    if n:
        first[0] = last[-1] = True
        np.not_equal(tag_sorted[1:], tag_sorted[:-1], out=first[1:])
        last[:-1] = first[1:]
    return first, last


def per_tag_us(n_tags: int, position: Mapping[str, int], *by_tag: Mapping[str, int]) -> np.ndarray:
    """An array of per-tag timestamps: the latest of the given ``{tag_id: ts_us}``
    maps, NEVER_US where none has the tag (tags no longer configured are skipped)."""
    out = np.full(n_tags, NEVER_US, dtype=np.int64)
    for mapping in by_tag:
        for tag, ts in mapping.items():
            i = position.get(tag)
            if i is not None and ts > out[i]:
                out[i] = ts
    return out


def without_unknown(mapping: Mapping[str, object], position: Mapping[str, int]) -> dict:
    """``mapping`` without tags that are no longer configured (their state is forgotten)."""
    return {tag: item for tag, item in mapping.items() if tag in position}


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN: a sample without a value is reported as null."""
    return float(x) if np.isfinite(x) else None
