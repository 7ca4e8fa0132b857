"""The per-asset pipeline without Kafka: limit alerts raised once and cleared,
replays that reproduce the same alert ids, and every kind of bad input parked
in a dead letter with its reason instead of crashing the worker."""

import base64

import numpy as np
import orjson
import pytest

from stream.pipeline import Pipeline, Source
from stream.wire import QUALITY_BAD, ReadingBatch, encode_reading_batch, encode_reading_batch_json
from tests.conftest import now_us


def bearing(values, start_us=None, step_us=100_000, quality=None, asset="pump-1", tag="bearing_temp"):
    start = now_us() - 60_000_000 if start_us is None else start_us
    n = len(values)
    return ReadingBatch.from_columns(asset, [tag], [0] * n, start + step_us * np.arange(n), values, quality)


def run(pipeline, batch_or_raw, store, offset=0, key=None):
    raw = batch_or_raw if isinstance(batch_or_raw, bytes) else encode_reading_batch(batch_or_raw)
    if key is None and not isinstance(batch_or_raw, bytes):
        key = batch_or_raw.asset_id.encode()
    out = pipeline.process(raw, Source("readings", 0, offset, key), store)
    out.apply_state(store)  # as the worker does, once the alerts are sent
    return out


def test_crossing_raises_once_and_clears_after_the_deadband(config):
    pipeline, store = Pipeline(config), {}
    # high limit 80, deadband 2: 79 does not clear (not below 78), 77 does.
    out = run(pipeline, bearing([70, 81, 85, 90, 79, 77, 70]), store)
    assert [(a["state"], a["tag"]["value"]) for a in out.alerts] == [("active", 81.0), ("cleared", 77.0)]
    raised, cleared = out.alerts
    assert raised["alert_id"] == cleared["alert_id"]  # one episode, one id
    assert raised["priority"] == "high" and raised["tag"]["limit"] == 80.0
    assert raised["message"] == "pump-1 bearing_temp 81 degC above high limit 80 degC"
    assert raised["tag"]["normal_range"] == [45.0, 60.0]
    assert out.samples == 7 and out.deadletter is None


def test_active_alert_spans_batches_without_repeating(config):
    pipeline, store = Pipeline(config), {}
    t0 = now_us() - 60_000_000
    first = run(pipeline, bearing([70, 85], start_us=t0), store)
    second = run(pipeline, bearing([88, 90, 86], start_us=t0 + 200_000), store, offset=1)
    third = run(pipeline, bearing([60], start_us=t0 + 500_000), store, offset=2)
    assert [a["state"] for a in first.alerts] == ["active"]
    assert second.alerts == []  # still above the limit: nothing new to say
    assert [a["state"] for a in third.alerts] == ["cleared"]
    assert third.alerts[0]["alert_id"] == first.alerts[0]["alert_id"]
    assert third.alerts[0]["source"] == {"topic": "readings", "partition": 0, "offset": 2}


def test_low_limit_and_unsorted_samples(config):
    pipeline, store = Pipeline(config), {}
    t0 = now_us() - 60_000_000
    # flow: low 40, high 160; samples arrive out of order within the batch.
    batch = ReadingBatch.from_columns("pump-1", ["flow"], [0, 0, 0], [t0 + 2, t0, t0 + 1], [35, 100, 30])
    out = run(pipeline, batch, store)
    assert [(a["condition"], a["state"], a["event_time_us"]) for a in out.alerts] == [("low", "active", t0 + 1)]
    # The value then jumps straight past the high limit: the low alert clears and a high one is raised.
    out = run(pipeline, ReadingBatch.from_columns("pump-1", ["flow"], [0], [t0 + 3], [200]), store, offset=1)
    assert [(a["condition"], a["state"]) for a in out.alerts] == [("low", "cleared"), ("high", "active")]


def test_replay_gives_the_same_alert_ids(config):
    batch = bearing([70, 85, 70, 95])
    first = run(Pipeline(config), batch, {})
    replay = run(Pipeline(config), batch, {})  # a restarted worker that lost its state
    assert [a["alert_id"] for a in first.alerts] == [a["alert_id"] for a in replay.alerts]
    assert len({a["alert_id"] for a in first.alerts}) == 2  # two episodes, two ids
    assert orjson.dumps(first.alerts) == orjson.dumps(replay.alerts)


def test_restored_state_does_not_raise_again(config):
    store = {}
    t0 = now_us() - 60_000_000
    run(Pipeline(config), bearing([85], start_us=t0), store)
    restored = {k: orjson.loads(orjson.dumps(v)) for k, v in store.items()}  # as a changelog would hold it
    out = run(Pipeline(config), bearing([90, 70], start_us=t0 + 100_000), restored)
    assert [a["state"] for a in out.alerts] == ["cleared"]


def test_bad_quality_samples_are_not_judged_against_limits(config):
    out = run(Pipeline(config), bearing([70, 500, 70], quality=[0, QUALITY_BAD, 0]), {})
    assert out.deadletter is None
    assert [a for a in out.alerts if a["rule"] == "limit"] == []  # 500 with Bad quality is no reading
    # One Bad sample is shorter than rules.bad_quality.after_s (5 s by default): no bad-quality alert either.
    assert out.alerts == []


def test_state_is_written_only_when_it_changes(config):
    class CountingStore(dict):
        writes = 0

        def __setitem__(self, key, value):
            CountingStore.writes += 1
            super().__setitem__(key, value)

    store = CountingStore()
    pipeline = Pipeline(config)
    t0 = now_us() - 60_000_000
    for i in range(20):
        run(pipeline, bearing([60, 61], start_us=t0 + i * 1000), store, offset=i)
    assert CountingStore.writes == 0
    run(pipeline, bearing([85], start_us=t0 + 100_000), store)
    assert CountingStore.writes == 1
    # While the alert stays active, nothing changes and nothing is written (one
    # changelog record per batch would be a flood).
    for i in range(5):
        run(pipeline, bearing([86, 87], start_us=t0 + 200_000 + i * 1000), store)
    assert CountingStore.writes == 1
    run(pipeline, bearing([60], start_us=t0 + 300_000), store)
    assert CountingStore.writes == 2


def _json_batch(**fields):
    doc = {"schema_version": 1, "asset_id": "pump-1", "tags": ["bearing_temp"], "tag_index": [0], "ts_us": [now_us()], "value": [50.0], "quality": [0]}
    doc.update(fields)
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    "raw, error, reason",
    [
        (b"\x8a\x01garbage\xff", "decode_error", "not a reading batch"),
        (_json_batch(value=["hot"]), "decode_error", "must hold only numbers"),
        (encode_reading_batch(bearing([50.0, float("nan")])), "invalid_batch", "with Good quality"),
        (encode_reading_batch(bearing([50.0, float("inf")])), "invalid_batch", "with Good quality"),
        (encode_reading_batch(bearing([50.0], tag="oil_level")), "invalid_batch", 'unknown tag(s) "oil_level"'),
        (encode_reading_batch(bearing([50.0], asset="pump-99")), "invalid_batch", 'unknown asset "pump-99"'),
        (encode_reading_batch(bearing([50.0], start_us=now_us() + 3_600_000_000)), "invalid_batch", "in the future"),
        (encode_reading_batch(bearing([])), "invalid_batch", "empty batch"),
    ],
)
def test_bad_input_becomes_a_dead_letter(config, raw, error, reason):
    key = b"pump-99" if b"pump-99" in raw else b"pump-1"
    out = Pipeline(config).process(raw, Source("readings", 3, 1234, key), {})
    letter = out.deadletter
    assert letter["payload_size"] == len(raw)
    assert letter is not None and out.alerts == []
    assert letter["error"] == error
    assert reason in letter["reason"]
    assert base64.b64decode(letter["payload_b64"]) == raw  # the original bytes, to fix and resend
    assert letter["source"] == {"topic": "readings", "partition": 3, "offset": 1234}


def test_nan_with_bad_quality_is_accepted(config):
    out = run(Pipeline(config), bearing([50.0, float("nan")], quality=[0, QUALITY_BAD]), {})
    assert out.deadletter is None and out.samples == 2


def test_key_must_be_the_asset_id(config):
    out = run(Pipeline(config), bearing([50.0]), {}, key=b"fan-1")
    assert "differs from asset_id" in out.deadletter["reason"]
    keyless = Pipeline(config).process(encode_reading_batch(bearing([50.0])), Source("readings", 0, 9, None), {})
    assert "message has no key" in keyless.deadletter["reason"]


def test_a_huge_rejected_message_is_referenced_not_copied(config):
    from stream.pipeline import MAX_DEADLETTER_PAYLOAD

    raw = b"\x01" * (MAX_DEADLETTER_PAYLOAD + 1)
    letter = Pipeline(config).process(raw, Source("readings", 1, 77, b"pump-1"), {}).deadletter
    assert letter["payload_b64"] is None and letter["payload_size"] == len(raw)
    assert letter["source"] == {"topic": "readings", "partition": 1, "offset": 77}


def test_json_readings_are_processed_like_binary(config):
    batch = bearing([70, 85])
    binary = run(Pipeline(config), batch, {})
    json_form = run(Pipeline(config), encode_reading_batch_json(batch), {}, key=b"pump-1")
    assert [a["alert_id"] for a in json_form.alerts] == [a["alert_id"] for a in binary.alerts] != []


def test_a_failing_stage_parks_the_message_and_the_next_one_still_flows(config, monkeypatch):
    pipeline, store = Pipeline(config), {}
    asset = pipeline._assets["pump-1"]
    original = asset.process

    def broken(*args, **kwargs):
        raise RuntimeError("detector exploded")

    monkeypatch.setattr(asset, "process", broken)
    out = run(pipeline, bearing([85]), store)
    assert out.deadletter["error"] == "processing_error" and "detector exploded" in out.deadletter["reason"]
    monkeypatch.setattr(asset, "process", original)
    assert [a["state"] for a in run(pipeline, bearing([85]), store).alerts] == ["active"]


def test_a_sample_without_value_survives_the_json_form(config):
    # JSON has no NaN: the encoder writes null, the decoder reads it back as NaN,
    # and the pipeline accepts it because its quality is Bad.
    batch = bearing([50.0, float("nan")], quality=[0, QUALITY_BAD])
    raw = encode_reading_batch_json(batch)
    assert b"null" in raw
    out = run(Pipeline(config), raw, {}, key=b"pump-1")
    assert out.deadletter is None and out.samples == 2
    # The same null with Good quality is refused.
    good = encode_reading_batch_json(bearing([50.0, float("nan")]))
    assert "with Good quality" in run(Pipeline(config), good, {}, key=b"pump-1").deadletter["reason"]


def test_a_replay_after_the_state_moved_on_opens_no_new_episode(config):
    # At-least-once: after a rebalance the worker may see batches again whose
    # effect its state already holds. Samples at or before a tag's last crossing
    # are not judged again, so no second episode (with a new id) is opened.
    pipeline, store = Pipeline(config), {}
    t0 = now_us() - 60_000_000
    hot, cool = bearing([88.0, 90.0], start_us=t0), bearing([70.0], start_us=t0 + 500_000)
    first = run(pipeline, hot, store).alerts + run(pipeline, cool, store, offset=1).alerts
    assert [a["state"] for a in first] == ["active", "cleared"]
    assert run(pipeline, hot, store).alerts == [] and run(pipeline, cool, store, offset=1).alerts == []
    # A genuinely new excursion later is judged as usual.
    assert [a["state"] for a in run(pipeline, bearing([85.0], start_us=t0 + 900_000), store).alerts] == ["active"]
