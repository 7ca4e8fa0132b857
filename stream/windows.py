"""Event-time windows of one asset, at several scales, closed by a watermark.

The features and detectors look at equipment over windows of time (a second, ten
seconds, a minute). This module decides which samples belong to which window and
when a window is complete; stream.features turns a closed window into numbers.

The rules
---------

* **Aligned to the epoch.** A scale with length L and hop H (stream.config
  ``WindowScale``; microseconds of event time) has the windows
  ``[k*H, k*H + L)`` for every integer k. Tumbling when H == L: each sample is in
  exactly one window. Hopping when H < L: each sample is in L/H windows. A 10s
  window therefore always starts at :00, :10, ... whatever the first sample was,
  so two workers, a restart or a replay all cut the same windows.
* **Event time only.** Nothing here reads a clock. The watermark is the largest
  event time seen so far for the asset (all tags, all batches, Bad samples too:
  a Bad sample still shows that time has moved on) minus ``grace``. A window
  closes when ``watermark >= its end``. Feeding last week's recording therefore
  gives the same windows as feeding it live did.
* **Grace and late samples.** Samples may arrive out of order (connectors send
  tag by tag, backfill after an outage comes later); ``grace`` is how long past a
  window's end they are still waited for. A batch is one arrival: its samples
  are judged together against the watermark before it, then the watermark moves
  on to its latest sample. A sample whose window at a scale has already closed is
  *late* at that scale: counted in ``late_samples[scale]`` and not added; a
  closed window is never re-opened nor sent again, so every window goes out
  exactly once. The same sample may still be on time at a longer scale, and at a
  hopping scale it still joins those of its windows that are open (it is counted
  late once if it missed any).
* **Quality.** Samples with Bad or Uncertain quality (``good == False``) are left
  out and counted in ``bad_samples``. Gaps are not filled: a tag without a Good
  sample in a window has count 0 (and NaN features downstream); a window
  without a Good sample of any tag is not emitted at all, there is nothing to
  say about it.
* **Deterministic.** Within a window samples are ordered by (tag position,
  event time, arrival), whatever the order inside a batch. Feeding the same
  samples in the same order gives the same windows however they are cut into
  batches, as long as what counts as late does not change with the cut, i.e.
  no sample arrives more than ``grace`` behind one fed before it (true for any
  time-ordered feed, and for connector batches, whose jitter is far below the
  default 2s grace). Lateness itself depends on arrival, by design.
* **Bounded memory.** Good samples wait in one buffer per asset, kept as numpy
  arrays sorted by event time. A sample is dropped once every window that could
  contain it has closed, so the buffer holds about (longest window + grace) of
  data.

Cost: a numpy call costs about a microsecond however small its array, and a
connector batch holds only about a hundred samples, so the work per batch is
kept to a few calls. A batch that closes no window is only checked, counted
and queued; the queued batches enter the buffer together when one closes a
window (or the queue reaches 65,536 samples). A closing window is a slice of the
time-sorted buffer (two binary searches) put in tag order by one stable radix
sort on 16-bit tag positions.

Windows close in order: every ``add`` returns the windows it closed ordered by
(end, position of the scale in ``scales``), and since every window it returns
ends after every window returned before, the whole stream of closed windows
has that order (``flush``, the end of a replay, closes windows early and so
may be followed by windows that end before its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from stream.config import WindowScale

#: smallest buffer allocation (samples); the buffer grows and shrinks by doubling from here
_MIN_CAPACITY = 1024
#: a tag position is kept as uint16 in the buffer (the wire format allows 65,535 tags per batch)
_MAX_TAGS = 65_536
#: queued samples that make the buffer take them in even when no window closes
_MAX_PENDING = 65_536
#: "before any event time" for the thresholds below
_NEVER = -(2**63)
# The ufuncs' reduce is the cheapest min/max for the small arrays of a batch
# (ndarray.max goes through two more Python layers).
_max = np.maximum.reduce
_min = np.minimum.reduce


@dataclass(frozen=True, eq=False)
class ClosedWindow:
    """The Good samples of one asset in one closed window at one scale.

    The arrays are sorted by (tag_position, ts_us) and belong to the window (they
    share no memory with the windowing buffer).
    """

    #: WindowScale.name, e.g. "10s" or "1m/10s"
    scale: str
    #: inclusive start, event time (us since the epoch)
    start_us: int
    #: exclusive end
    end_us: int
    #: intp: the position of each sample's tag in the asset's configured tags
    tag_position: np.ndarray
    #: int64
    ts_us: np.ndarray
    #: float64
    value: np.ndarray
    #: True if any of its samples came from connector backfill (ReadingBatch.replayed)
    replayed: bool

    def __len__(self) -> int:
        return int(self.value.shape[0])


class AssetWindows:
    """Open windows of one asset at every scale, closed by a watermark.

    ``n_tags`` is the number of configured tags of the asset (tag positions run
    0..n_tags-1), ``scales`` the window scales (their order is the tie-break of
    the output order), ``grace_us`` how long past a window's end late samples are
    still accepted. See the module docstring for the rules.
    """

    def __init__(self, n_tags: int, scales: Sequence[WindowScale], grace_us: int):
        if not 1 <= n_tags <= _MAX_TAGS:
            raise ValueError(f"an asset has 1 to {_MAX_TAGS} tags, got n_tags={n_tags}")
        scales = list(scales)
        if not scales:
            raise ValueError("give at least one window scale (windows.scales in the configuration)")
        names = [scale.name for scale in scales]
        if len(set(names)) != len(names):
            raise ValueError(f"window scales must not repeat, got {names}")
        if grace_us < 0:
            raise ValueError(f"grace must be 0 or more microseconds, got {grace_us}")
        self.n_tags = int(n_tags)
        self.scales = scales
        self.grace_us = int(grace_us)
        self._names = names
        self._length = [scale.length_us for scale in scales]
        self._hop = [scale.hop_us for scale in scales]
        self._late_samples: dict[str, int] = {name: 0 for name in names}
        #: samples left out for Bad or Uncertain quality
        self.bad_samples = 0
        self._latest_us: int | None = None
        # Per scale: the start of the earliest window still open; every window
        # starting before it is closed. None until the first batch.
        self._open_from: list[int] | None = None
        self._keep_from = _NEVER  # samples before this are in no open window, at any scale
        self._late_free_from = _NEVER  # samples from this on are late at no scale
        self._next_close_us = _NEVER  # the watermark that closes the next window
        # Batches that closed nothing wait here, checked and counted, until one does.
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = []
        self._pending_samples = 0
        # The buffer: Good samples sorted by (ts, arrival), live in [_lo, _hi).
        self._ts = np.empty(0, dtype=np.int64)
        self._tag = np.empty(0, dtype=np.uint16)
        self._value = np.empty(0, dtype=np.float64)
        self._replayed = np.zeros(0, dtype=bool)
        self._lo = self._hi = 0
        self._replayed_until = _NEVER  # the latest event time of a replayed sample buffered

    # ------------------------------------------------------------------ public

    @property
    def watermark_us(self) -> int | None:
        """The latest event time seen minus grace; None before the first sample."""
        return None if self._latest_us is None else self._latest_us - self.grace_us

    @property
    def late_samples(self) -> dict[str, int]:
        """Per scale name: Good samples that arrived after their window had closed (counted, left out)."""
        self._admit_pending()  # (queued batches are counted when they enter the buffer)
        return self._late_samples

    @property
    def buffered_samples(self) -> int:
        """Good samples held for windows that are still open."""
        return self._hi - self._lo + self._pending_samples

    def add(self, ts_us, tag_position, value, good=None, replayed: bool = False) -> list[ClosedWindow]:
        """Add one batch and return the windows its watermark closed.

        A batch that closes no window is only checked and queued (the cheap
        common case); the queue enters the buffer with the next one that does.

        Arguments are numpy arrays of one length, in any order: event time (us),
        the tag's position in the asset's configuration (integers), the value,
        and whether the quality is Good (None: all Good). ``replayed`` is the
        batch's backfill flag. The arrays are copied. The windows come ordered by
        (end_us, position of the scale in ``scales``).
        """
        ts = np.array(ts_us, dtype=np.int64)  # copies: the caller may reuse its arrays
        tag = np.asarray(tag_position)
        value = np.array(value, dtype=np.float64)
        n = ts.shape[0] if ts.ndim == 1 else -1
        if n < 0 or tag.shape != (n,) or value.shape != (n,):
            raise ValueError(
                f"ts_us, tag_position and value must be 1-D arrays of one length, got shapes {ts.shape}, {tag.shape}, {value.shape}"
            )
        if n == 0:
            return []
        latest = int(_max(ts))
        if good is not None:
            good = np.asarray(good, dtype=bool)
            if good.shape != (n,):
                raise ValueError(f"good must have one entry per sample ({n}), got shape {good.shape}")
            n_good = int(np.count_nonzero(good))
            if n_good < n:
                self.bad_samples += n - n_good
                ts, tag, value = ts[good], tag[good], value[good]
        if ts.shape[0]:
            self._arrive(ts, tag, value, bool(replayed))
        if self._latest_us is None or latest > self._latest_us:
            self._latest_us = latest
        watermark = self._latest_us - self.grace_us
        if watermark < self._next_close_us and self._pending_samples < _MAX_PENDING:
            return []  # nothing closes: the batch waits, already checked and counted
        self._admit_pending()
        return self._close_until(watermark)

    def flush(self) -> list[ClosedWindow]:
        """Close every open window (the end of an offline replay), in the same order as ``add``.

        Later samples in the flushed windows count as late."""
        if self._latest_us is None:
            return []
        self._admit_pending()
        last = self._latest_us
        # Close every window that starts at or before the latest sample.
        return self._close_to([(last // hop + 1) * hop for hop in self._hop])

    # ------------------------------------------------------------------ admitting samples

    def _arrive(self, ts: np.ndarray, tag: np.ndarray, value: np.ndarray, replayed: bool) -> None:
        """Check the tags and queue the batch."""
        if tag.dtype.kind == "i":
            unsigned = tag.view(f"u{tag.dtype.itemsize}")  # a negative position reads as a huge one
        elif tag.dtype.kind == "u":
            unsigned = tag
        else:
            raise ValueError(f"tag_position must hold integers (positions in the asset's tags), got dtype {tag.dtype}")
        if int(_max(unsigned)) >= self.n_tags:
            raise ValueError(
                f"tag_position must lie in 0..{self.n_tags - 1} (the asset's configured tags), "
                f"got {int(_min(tag))}..{int(_max(tag))}"
            )
        self._pending.append((ts, tag.astype(np.uint16), value, replayed))
        self._pending_samples += ts.shape[0]

    def _admit_pending(self) -> None:
        """Put the queued batches into the buffer, in event-time order."""
        chunks = self._pending
        if not chunks:
            return
        self._pending, self._pending_samples = [], 0
        if len(chunks) == 1:
            ts, tag, value, replayed = chunks[0]
        else:
            ts = np.concatenate([chunk[0] for chunk in chunks])
            tag = np.concatenate([chunk[1] for chunk in chunks])
            value = np.concatenate([chunk[2] for chunk in chunks])
            flags = {chunk[3] for chunk in chunks}
            replayed = flags.pop() if len(flags) == 1 else np.concatenate([np.full(c[0].shape[0], c[3]) for c in chunks])
        order = ts.argsort(kind="stable")  # stable: equal times keep their arrival order
        ts, tag, value = ts.take(order), tag.take(order), value.take(order)
        if replayed is not True and replayed is not False:
            replayed = replayed.take(order)
        # Late samples are counted here rather than on arrival: no window has
        # closed since these batches arrived, so the verdict is the same.
        if self._open_from is not None and int(ts[0]) < self._late_free_from:
            for name, length, hop, open_from in zip(self._names, self._length, self._hop, self._open_from):
                if hop == length:
                    late = ts < open_from
                else:  # late if its earliest window has closed
                    late = ((ts - length) // hop + 1) * hop < open_from
                self._late_samples[name] += int(np.count_nonzero(late))
            # What lies before every open window is dropped; it is a prefix (ts is sorted).
            needed_from = int(ts.searchsorted(self._keep_from, side="left"))
            if needed_from:
                ts, tag, value = ts[needed_from:], tag[needed_from:], value[needed_from:]
                if replayed is not True and replayed is not False:
                    replayed = replayed[needed_from:]
                if ts.shape[0] == 0:
                    return
        if replayed is True:
            self._replayed_until = max(self._replayed_until, int(ts[-1]))
        elif replayed is not False:
            if replayed.any():
                self._replayed_until = max(self._replayed_until, int(_max(ts[replayed])))
        m = ts.shape[0]
        if self._hi + m > self._ts.shape[0]:
            self._reserve(m)
        lo, hi = self._lo, self._hi
        if hi == lo or ts[0] >= self._ts[hi - 1]:
            # The usual case: the batches follow everything buffered.
            self._ts[hi : hi + m] = ts
            self._tag[hi : hi + m] = tag
            self._value[hi : hi + m] = value
            if replayed is not False:  # (the free part of _replayed is all False)
                self._replayed[hi : hi + m] = replayed
        else:
            # Out of order: merge with the buffered samples they overlap. The
            # buffered ones go first so that equal times keep arrival order.
            at = lo + int(self._ts[lo:hi].searchsorted(ts[0], side="right"))
            merged_ts = np.concatenate((self._ts[at:hi], ts))
            order = merged_ts.argsort(kind="stable")
            self._ts[at : hi + m] = merged_ts.take(order)
            self._tag[at : hi + m] = np.concatenate((self._tag[at:hi], tag)).take(order)
            self._value[at : hi + m] = np.concatenate((self._value[at:hi], value)).take(order)
            new_flags = np.broadcast_to(np.asarray(replayed, dtype=bool), (m,))
            self._replayed[at : hi + m] = np.concatenate((self._replayed[at:hi], new_flags)).take(order)
        self._hi = hi + m

    def _reserve(self, m: int) -> None:
        """Room for ``m`` more samples at the end of the buffer."""
        lo, hi = self._lo, self._hi
        live = hi - lo
        # A fresh allocation of twice what is needed: amortised O(1) per sample,
        # and the buffer shrinks again after a burst (an offline replay).
        capacity = max(_MIN_CAPACITY, 2 * (live + m))
        for name, fresh in (("_ts", np.empty), ("_tag", np.empty), ("_value", np.empty), ("_replayed", np.zeros)):
            old = getattr(self, name)
            new = fresh(capacity, dtype=old.dtype)
            new[:live] = old[lo:hi]
            setattr(self, name, new)
        self._lo, self._hi = 0, live

    # ------------------------------------------------------------------ closing windows

    def _close_until(self, watermark: int) -> list[ClosedWindow]:
        # Window k closes when watermark >= k*H + L: the first open one is
        # k = floor((watermark - L) / H) + 1.
        return self._close_to([((watermark - length) // hop + 1) * hop for length, hop in zip(self._length, self._hop)])

    def _close_to(self, targets: list[int]) -> list[ClosedWindow]:
        """Close, at each scale, every window starting before ``targets[scale]``."""
        previous = self._open_from
        if previous is not None:
            targets = [max(t, p) for t, p in zip(targets, previous)]
            if targets == previous:
                return []
        closed: list[tuple[int, int, ClosedWindow]] = []
        for i, target in enumerate(targets):
            before = None if previous is None else previous[i]
            if before is not None and target == before:
                continue
            for window in self._extract(i, before, target):
                closed.append((window.end_us, i, window))
        self._open_from = targets
        self._next_close_us = min(t + length for t, length in zip(targets, self._length))
        self._late_free_from = max(t + length - hop for t, length, hop in zip(targets, self._length, self._hop))
        keep_from = min(targets)
        if keep_from != self._keep_from:
            # Drop what no open window can contain any more.
            self._keep_from = keep_from
            lo, hi = self._lo, self._hi
            self._lo = lo + int(self._ts[lo:hi].searchsorted(keep_from, side="left"))
        if len(closed) > 1:
            closed.sort(key=lambda item: (item[0], item[1]))
        return [window for _, _, window in closed]

    def _extract(self, i: int, start_from: int | None, start_before: int) -> list[ClosedWindow]:
        """The non-empty windows at scale ``i`` whose start lies in [start_from, start_before)."""
        length, hop, name = self._length[i], self._hop[i], self._names[i]
        lo, hi = self._lo, self._hi
        buffered = self._ts[lo:hi]
        # Their samples lie in [start_from, last start + length).
        a = lo if start_from is None else lo + int(buffered.searchsorted(start_from, side="left"))
        b = lo + int(buffered.searchsorted(start_before - hop + length, side="left"))
        if a >= b:
            return []
        ts, tag, value = self._ts[a:b], self._tag[a:b], self._value[a:b]
        # Cheap test first: most feeds never replay.
        maybe_replayed = self._replayed_until >= int(ts[0])
        if start_from is not None and start_before - start_from == hop:
            # One window (the live case): every sample in the slice is in it.
            order = tag.argsort(kind="stable")  # a radix sort on uint16
            replayed = bool(self._replayed[a:b].any()) if maybe_replayed else False
            return [
                ClosedWindow(
                    scale=name,
                    start_us=start_from,
                    end_us=start_from + length,
                    tag_position=tag.take(order).astype(np.intp),
                    ts_us=ts.take(order),
                    value=value.take(order),
                    replayed=replayed,
                )
            ]
        per_sample = length // hop
        n_tags = self.n_tags
        if per_sample == 1:
            k = ts // hop
            member = None
        else:
            # Each sample is in per_sample windows: k = floor(ts/H) - j, j = 0..per_sample-1.
            n = ts.shape[0]
            k = np.repeat(ts // hop, per_sample) - np.tile(np.arange(per_sample), n)
            keep = k < start_before // hop
            if start_from is not None:
                keep &= k >= start_from // hop
            member = np.repeat(np.arange(n), per_sample)[keep]
            k = k[keep]
        k0 = int(k[0]) if member is None else int(_min(k))
        span = int(_max(k)) - k0 + 1
        key = (k - k0) * n_tags + (tag if member is None else tag.take(member))
        if span * n_tags <= _MAX_TAGS:
            key = key.astype(np.uint16)  # numpy's stable sort is a radix sort up to 16 bits
        order = key.argsort(kind="stable")
        k_sorted = k.take(order)
        if member is not None:
            order = member.take(order)
        first = np.concatenate(([0], np.flatnonzero(k_sorted[1:] != k_sorted[:-1]) + 1))
        starts_us = (k_sorted.take(first) * hop).tolist()
        tag_sorted = tag.take(order).astype(np.intp)
        ts_sorted = ts.take(order)
        value_sorted = value.take(order)
        if maybe_replayed:
            replayed = np.logical_or.reduceat(self._replayed[a:b].take(order), first).tolist()
        else:
            replayed = [False] * first.shape[0]
        bounds = first.tolist() + [order.shape[0]]
        return [
            ClosedWindow(
                scale=name,
                start_us=start,
                end_us=start + length,
                tag_position=tag_sorted[bounds[j] : bounds[j + 1]],
                ts_us=ts_sorted[bounds[j] : bounds[j + 1]],
                value=value_sorted[bounds[j] : bounds[j + 1]],
                replayed=replayed[j],
            )
            for j, start in enumerate(starts_us)
        ]
