"""Event-time windows (stream.windows): what a user of the features would notice.

Which samples land in which window (tumbling and hopping, aligned to the epoch),
when a window closes (watermark and grace, event time only), what happens to
late and Bad samples, that nothing is emitted twice or for an empty window, that
the result does not depend on how the feed is cut into batches, and that the
buffer stays bounded over a long run.
"""

from __future__ import annotations

import numpy as np
import pytest

from stream.config import WindowScale
from stream.windows import AssetWindows, ClosedWindow

S = 1_000_000  # one second in us
# 2026-03-14T08:15:00Z: a multiple of every window length used here
T0 = 1_773_476_100_000_000


def scales(*names: str) -> list[WindowScale]:
    """"10s" -> tumbling 10s; "1m/10s" -> length 1m, hop 10s."""
    out = []
    for name in names:
        length, _, hop = name.partition("/")
        out.append(WindowScale(length=length, hop=hop or None))
    return out


def add(w: AssetWindows, samples, good=None, replayed=False) -> list[ClosedWindow]:
    """samples: [(seconds after T0, tag, value), ...]"""
    ts = np.array([T0 + round(s * S) for s, _, _ in samples], dtype=np.int64)
    tag = np.array([t for _, t, _ in samples], dtype=np.intp)
    value = np.array([v for _, _, v in samples], dtype=np.float64)
    return w.add(ts, tag, value, None if good is None else np.array(good, dtype=bool), replayed)


def spans(windows) -> list[tuple[str, float, float]]:
    return [(w.scale, (w.start_us - T0) / S, (w.end_us - T0) / S) for w in windows]


def values(window: ClosedWindow) -> list[float]:
    return window.value.tolist()


# --------------------------------------------------------------------------- boundaries and membership


def test_tumbling_windows_are_aligned_to_the_epoch_not_to_the_first_sample():
    w = AssetWindows(1, scales("10s"), grace_us=0)
    closed = add(w, [(3.2, 0, 1.0), (9.999999, 0, 2.0), (10.0, 0, 3.0), (19.5, 0, 4.0), (20.0, 0, 5.0)])
    assert spans(closed) == [("10s", 0, 10), ("10s", 10, 20)], "grace 0: a window closes as soon as time reaches its end"
    closed += w.flush()
    assert spans(closed) == [("10s", 0, 10), ("10s", 10, 20), ("10s", 20, 30)]
    # the start is inclusive, the end exclusive
    assert [values(c) for c in closed] == [[1.0, 2.0], [3.0, 4.0], [5.0]]
    assert all(c.ts_us.dtype == np.int64 and c.value.dtype == np.float64 and c.tag_position.dtype == np.intp for c in closed)


def test_window_samples_are_sorted_by_tag_then_time_whatever_the_batch_order():
    w = AssetWindows(3, scales("10s"), grace_us=0)
    add(w, [(5, 2, 25.0), (1, 1, 11.0), (4, 0, 4.0), (2, 2, 22.0), (1, 0, 1.0), (3, 1, 13.0)])
    (window,) = w.flush()
    assert window.tag_position.tolist() == [0, 0, 1, 1, 2, 2]
    assert values(window) == [1.0, 4.0, 11.0, 13.0, 22.0, 25.0]


def test_hopping_windows_hold_each_sample_length_over_hop_times():
    w = AssetWindows(1, scales("30s/10s"), grace_us=0)
    closed = add(w, [(5, 0, 1.0), (15, 0, 2.0), (25, 0, 3.0), (35, 0, 4.0)]) + w.flush()
    assert [c.scale for c in closed] == ["30s/10s"] * 6
    by_span = {(s, e): values(c) for c, (_, s, e) in zip(closed, spans(closed))}
    assert by_span == {
        (-20, 10): [1.0],
        (-10, 20): [1.0, 2.0],
        (0, 30): [1.0, 2.0, 3.0],
        (10, 40): [2.0, 3.0, 4.0],
        (20, 50): [3.0, 4.0],
        (30, 60): [4.0],
    }
    assert sum(len(c) for c in closed) == 4 * 3


def test_random_feed_matches_a_brute_force_assignment():
    """Every Good sample is in exactly the windows whose span holds it, at every scale."""
    rng = np.random.default_rng(3)
    n = 3000
    ts = T0 + np.sort(rng.integers(0, 95 * S, n))
    tag = rng.integers(0, 4, n)
    value = rng.normal(size=n)
    good = rng.random(n) > 0.1
    chosen = scales("1s", "10s", "30s/10s", "5s/1s")
    w = AssetWindows(4, chosen, grace_us=2 * S)
    closed = []
    for a in range(0, n, 37):
        closed += w.add(ts[a : a + 37], tag[a : a + 37], value[a : a + 37], good[a : a + 37])
    closed += w.flush()

    got = {(c.scale, c.start_us): c for c in closed}
    assert len(got) == len(closed), "a window was emitted twice"
    expected = {}
    g_ts, g_tag, g_value = ts[good], tag[good], value[good]
    for scale in chosen:
        length, hop = scale.length_us, scale.hop_us
        for k in range((int(g_ts.min()) - length) // hop, int(g_ts.max()) // hop + 1):
            inside = (g_ts >= k * hop) & (g_ts < k * hop + length)
            if inside.any():
                order = np.lexsort((g_ts[inside], g_tag[inside]))
                expected[(scale.name, k * hop)] = (g_tag[inside][order], g_ts[inside][order], g_value[inside][order])
    assert set(got) == set(expected)
    for key, (e_tag, e_ts, e_value) in expected.items():
        window = got[key]
        assert window.end_us - window.start_us == next(s.length_us for s in chosen if s.name == key[0])
        np.testing.assert_array_equal(window.tag_position, e_tag)
        np.testing.assert_array_equal(window.ts_us, e_ts)
        np.testing.assert_array_equal(window.value, e_value)
    assert w.bad_samples == int((~good).sum())
    assert w.late_samples == {s.name: 0 for s in chosen}


# --------------------------------------------------------------------------- watermark and grace


def test_a_window_closes_only_once_grace_has_passed_in_event_time():
    w = AssetWindows(2, scales("1s"), grace_us=2 * S)
    assert w.watermark_us is None
    assert add(w, [(0.2, 0, 1.0), (0.9, 1, 2.0)]) == []
    assert add(w, [(2.999999, 0, 3.0)]) == [], "closed before grace had passed"
    assert w.watermark_us == T0 + 999_999
    closed = add(w, [(3.0, 1, 4.0)])
    assert spans(closed) == [("1s", 0, 1)]
    assert values(closed[0]) == [1.0, 2.0]
    assert w.watermark_us == T0 + 1 * S
    # Two seconds more close the windows in between that have samples; [1, 2) has none.
    assert spans(add(w, [(5.0, 0, 5.0)])) == [("1s", 2, 3)]


def test_the_watermark_follows_the_latest_event_time_of_any_tag_even_bad_ones():
    w = AssetWindows(2, scales("1s"), grace_us=S)
    add(w, [(0.5, 0, 1.0)])
    # tag 1 reads Bad, but its timestamp still shows that time has moved on
    closed = add(w, [(2.5, 1, float("nan"))], good=[False])
    assert spans(closed) == [("1s", 0, 1)]
    assert w.bad_samples == 1


def test_no_clock_a_week_old_recording_gives_the_same_windows():
    rng = np.random.default_rng(5)
    ts = T0 + np.sort(rng.integers(0, 40 * S, 500))
    tag, value = rng.integers(0, 3, 500), rng.normal(size=500)
    week = 7 * 24 * 3600 * S

    def feed(shift):
        w = AssetWindows(3, scales("1s", "10s", "20s/5s"), grace_us=S)
        out = []
        for a in range(0, 500, 50):
            out += w.add(ts[a : a + 50] - shift, tag[a : a + 50], value[a : a + 50])
        return out + w.flush()

    live, old = feed(0), feed(week)
    assert [(c.scale, c.start_us - T0) for c in live] == [(c.scale, c.start_us + week - T0) for c in old]
    for a, b in zip(live, old):
        np.testing.assert_array_equal(a.value, b.value)


def test_windows_come_ordered_by_end_then_by_the_order_of_the_scales():
    w = AssetWindows(1, scales("10s", "1s", "5s"), grace_us=30 * S)
    assert add(w, [(x / 2, 0, float(x)) for x in range(20)]) == []
    closed = w.flush()
    assert spans(closed) == [
        ("1s", 0, 1), ("1s", 1, 2), ("1s", 2, 3), ("1s", 3, 4), ("1s", 4, 5), ("5s", 0, 5),
        ("1s", 5, 6), ("1s", 6, 7), ("1s", 7, 8), ("1s", 8, 9), ("10s", 0, 10), ("1s", 9, 10), ("5s", 5, 10),
    ]  # fmt: skip


# --------------------------------------------------------------------------- late samples


def test_a_late_sample_is_counted_left_out_and_its_window_never_sent_again():
    w = AssetWindows(1, scales("1s", "10s"), grace_us=S)
    add(w, [(0.5, 0, 1.0)])
    assert spans(add(w, [(2.0, 0, 2.0)])) == [("1s", 0, 1)]
    # 0.7 s arrives after [0, 1) has closed: late there, on time for [0, 10)
    assert add(w, [(0.7, 0, 99.0)]) == []
    assert w.late_samples == {"1s": 1, "10s": 0}
    rest = w.flush()
    assert spans(rest) == [("1s", 2, 3), ("10s", 0, 10)], "the closed window was re-opened or sent again"
    assert values(rest[1]) == [1.0, 99.0, 2.0]


def test_a_sample_late_at_a_hopping_scale_still_joins_its_windows_that_are_open():
    w = AssetWindows(1, scales("20s/10s"), grace_us=0)
    add(w, [(5.0, 0, 1.0)])
    assert spans(add(w, [(10.0, 0, 2.0)])) == [("20s/10s", -10, 10)]
    # 9 s belonged to [-10, 10) (closed) and to [0, 20) (open)
    add(w, [(9.0, 0, 3.0)])
    assert w.late_samples == {"20s/10s": 1}
    closed = w.flush()
    assert spans(closed) == [("20s/10s", 0, 20), ("20s/10s", 10, 30)]
    assert values(closed[0]) == [1.0, 3.0, 2.0]


def test_samples_after_a_flush_in_flushed_windows_are_late():
    w = AssetWindows(1, scales("10s"), grace_us=5 * S)
    add(w, [(1.0, 0, 1.0)])
    assert spans(w.flush()) == [("10s", 0, 10)]
    add(w, [(2.0, 0, 2.0), (12.0, 0, 3.0)])
    assert w.late_samples == {"10s": 1}
    assert [values(c) for c in w.flush()] == [[3.0]]


def test_out_of_order_samples_within_grace_are_merged_in_time_order():
    w = AssetWindows(2, scales("1s"), grace_us=2 * S)
    add(w, [(0.6, 0, 6.0), (1.2, 1, 12.0)])
    add(w, [(0.3, 0, 3.0), (0.9, 1, 9.0), (0.6, 0, 66.0)])  # an earlier stretch, and a repeat of 0.6 s
    closed = add(w, [(4.0, 0, 0.0)])
    assert spans(closed) == [("1s", 0, 1), ("1s", 1, 2)]
    assert values(closed[0]) == [3.0, 6.0, 66.0, 9.0]  # equal times keep their arrival order
    assert w.late_samples == {"1s": 0}


def test_a_disordered_feed_follows_the_rules_sample_by_sample():
    """Out of order beyond grace: an oracle applies the rules one sample at a time."""
    rng = np.random.default_rng(8)
    n, grace = 2000, 2 * S
    # mostly in order, a tenth of the samples up to 8 s behind (backfill, a slow connector)
    ts = T0 + np.sort(rng.integers(0, 80 * S, n)) - np.where(rng.random(n) < 0.1, rng.integers(0, 8 * S, n), 0)
    tag, value = rng.integers(0, 3, n), rng.normal(size=n)
    chosen = scales("1s", "10s", "20s/5s")
    cuts = np.unique(np.concatenate(([0, n], rng.integers(0, n, 150))))
    w = AssetWindows(3, chosen, grace)
    emitted = []  # (batch number, window)
    for number, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        emitted += [(number, c) for c in w.add(ts[a:b], tag[a:b], value[a:b])]
    emitted += [(len(cuts) - 1, c) for c in w.flush()]

    latest = None
    members: dict[tuple[str, int], list[int]] = {}
    late = {s.name: 0 for s in chosen}
    watermarks = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        for i in range(a, b):
            for scale in chosen:
                length, hop = scale.length_us, scale.hop_us
                open_from = None if latest is None else ((latest - grace - length) // hop + 1) * hop
                starts = range((int(ts[i]) - length) // hop * hop + hop, int(ts[i]) + 1, hop)
                if open_from is not None and starts[0] < open_from:
                    late[scale.name] += 1
                for start in starts:
                    if open_from is None or start >= open_from:
                        members.setdefault((scale.name, start), []).append(i)
        # a batch is one arrival: the watermark moves once it is in
        latest = int(ts[a:b].max()) if latest is None else max(latest, int(ts[a:b].max()))
        watermarks.append(latest - grace)

    assert w.late_samples == late and sum(late.values()) > 50
    assert {(c.scale, c.start_us) for _, c in emitted} == set(members)
    assert len(emitted) == len(members)
    for number, c in emitted:
        chosen_ids = members[(c.scale, c.start_us)]
        order = sorted(chosen_ids, key=lambda i: (tag[i], ts[i], i))
        np.testing.assert_array_equal(c.value, value[order])
        # sent by the first batch whose watermark reached its end
        first = next((k for k, wm in enumerate(watermarks) if wm >= c.end_us), len(cuts) - 1)
        assert number == first, (c.scale, c.start_us)


# --------------------------------------------------------------------------- quality and gaps


def test_bad_samples_are_left_out_and_counted_not_zero_filled():
    w = AssetWindows(2, scales("1s"), grace_us=0)
    add(w, [(0.1, 0, 5.0), (0.2, 1, 0.0), (0.3, 0, float("nan")), (0.4, 1, 7.0)], good=[True, False, False, True])
    (window,) = w.flush()
    assert window.tag_position.tolist() == [0, 1] and values(window) == [5.0, 7.0]
    assert w.bad_samples == 2


def test_windows_without_a_good_sample_are_not_emitted():
    w = AssetWindows(2, scales("1s"), grace_us=0)
    add(w, [(0.5, 0, 1.0)])
    add(w, [(1.5, 0, float("nan")), (1.6, 1, float("nan"))], good=[False, False])  # [1, 2): only Bad
    add(w, [(4.5, 1, 2.0)])  # [2, 4): nothing at all
    assert spans(w.flush()) == [("1s", 4, 5)]  # [0, 1) went out when 1.6 s arrived


def test_replayed_marks_only_windows_holding_backfill():
    w = AssetWindows(1, scales("1s", "10s"), grace_us=3 * S)
    add(w, [(2.5, 0, 1.0)])
    add(w, [(0.5, 0, 2.0)], replayed=True)  # backfill from a connector spool, still within grace
    add(w, [(1.5, 0, 3.0)])
    closed = w.flush()
    assert [(c.scale, (c.start_us - T0) // S, c.replayed) for c in closed] == [
        ("1s", 0, True), ("1s", 1, False), ("1s", 2, False), ("10s", 0, True)
    ]


# --------------------------------------------------------------------------- determinism and memory


def _feed_in_batches(ts, tag, value, good, cuts, chosen, grace_us):
    w = AssetWindows(5, chosen, grace_us)
    closed = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        closed += w.add(ts[a:b], tag[a:b], value[a:b], good[a:b])
    return closed + w.flush(), w


def test_the_same_feed_cut_into_batches_any_way_gives_identical_windows():
    rng = np.random.default_rng(11)
    n = 6000
    # 5 tags at 10 Hz for two minutes with jitter below grace, sent tag by tag within a batch
    grid = T0 + np.repeat(np.arange(n // 5), 5) * 100_000 + rng.integers(0, 400_000, n)
    ts, tag = grid, np.tile(np.arange(5), n // 5)
    value, good = rng.normal(size=n), rng.random(n) > 0.05
    chosen, grace = scales("1s", "10s", "1m", "30s/10s"), 2 * S

    one_batch, w1 = _feed_in_batches(ts, tag, value, good, [0, n], chosen, grace)
    connector_like, w2 = _feed_in_batches(ts, tag, value, good, list(range(0, n, 25)) + [n], chosen, grace)
    tiny = np.unique(np.concatenate(([0, n], np.cumsum(rng.integers(1, 4, n)))))
    sample_by_sample, w3 = _feed_in_batches(ts, tag, value, good, tiny[tiny <= n].tolist(), chosen, grace)

    assert len(one_batch) == 121 + 13 + 3 + 15  # 0 .. 120.4 s at 1s, 10s, 1m and 30s/10s
    for other in (connector_like, sample_by_sample):
        assert [(c.scale, c.start_us, c.end_us, c.replayed) for c in other] == [
            (c.scale, c.start_us, c.end_us, c.replayed) for c in one_batch
        ]
        for a, b in zip(one_batch, other):
            np.testing.assert_array_equal(a.tag_position, b.tag_position)
            np.testing.assert_array_equal(a.ts_us, b.ts_us)
            np.testing.assert_array_equal(a.value, b.value)
    assert w1.late_samples == w2.late_samples == w3.late_samples == {s.name: 0 for s in chosen}
    assert w1.bad_samples == w2.bad_samples == w3.bad_samples == int((~good).sum())


def test_the_buffer_stays_bounded_over_a_long_run():
    tags, rate_hz, grace = 20, 10, 2 * S
    w = AssetWindows(tags, scales("1s", "10s", "1m"), grace)
    per_batch = np.arange(5) * 100_000  # 0.5 s at 10 Hz
    most = 0
    closed = 0
    for batch in range(3600):  # 30 minutes
        ts = np.repeat(T0 + batch * 500_000 + per_batch, tags)
        tag = np.tile(np.arange(tags), 5)
        closed += len(w.add(ts, tag, np.ones(ts.shape[0])))
        most = max(most, w.buffered_samples)
    # what the longest window plus grace plus one batch hold, no more
    assert most <= (60 + 2 + 1) * tags * rate_hz
    assert w._ts.shape[0] <= 4 * most, "the buffer's allocation keeps growing"
    # every window that the watermark (29:57.9) passed went out, once
    assert closed == 1797 + 179 + 29


def test_inputs_that_cannot_be_windowed_are_refused_with_the_reason():
    w = AssetWindows(3, scales("1s"), grace_us=0)
    with pytest.raises(ValueError, match=r"tag_position must lie in 0\.\.2"):
        w.add(np.array([T0]), np.array([3]), np.array([1.0]))
    with pytest.raises(ValueError, match=r"tag_position must lie in 0\.\.2"):
        w.add(np.array([T0]), np.array([-1]), np.array([1.0]))
    with pytest.raises(ValueError, match="one length"):
        w.add(np.array([T0, T0]), np.array([0]), np.array([1.0]))
    with pytest.raises(ValueError, match="repeat"):
        AssetWindows(3, scales("1s", "1s"), grace_us=0)
    assert w.add(np.array([], dtype=np.int64), np.array([], dtype=np.intp), np.array([])) == []
    assert w.flush() == []
