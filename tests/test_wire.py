"""The reading-batch codecs: what a connector writes is what the worker reads,
and anything else is refused with a reason."""

import struct

import numpy as np
import orjson
import pytest

from stream.wire import (
    MAGIC,
    QUALITY_BAD,
    ReadingBatch,
    WireError,
    decode_reading_batch,
    encode_reading_batch,
    encode_reading_batch_json,
    is_bad,
    is_good,
    utc_iso,
)


def sample_batch(n=5, replayed=False):
    return ReadingBatch.from_columns(
        "pump-1",
        ["bearing_temp", "flow"],
        np.arange(n) % 2,
        1_795_000_000_000_000 + np.arange(n) * 100_000,
        np.linspace(50.0, 51.0, n),
        [0] * (n - 1) + [QUALITY_BAD],
        replayed=replayed,
        seq=42,
    )


@pytest.mark.parametrize("encode", [encode_reading_batch, encode_reading_batch_json])
def test_round_trip_keeps_every_sample(encode):
    batch = sample_batch(7, replayed=True)
    decoded = decode_reading_batch(encode(batch))
    assert decoded.asset_id == "pump-1" and decoded.tags == ("bearing_temp", "flow")
    assert decoded.replayed is True and decoded.seq == 42
    for column in ("tag_index", "ts_us", "value", "quality"):
        np.testing.assert_array_equal(getattr(decoded, column), getattr(batch, column))


def test_binary_is_compact_and_aligned():
    batch = sample_batch(1000)
    raw = encode_reading_batch(batch)
    # 22 bytes per sample plus a small header: a 1000-sample batch stays near 22 kB.
    assert 22_000 < len(raw) < 22_200
    assert raw[:4] == MAGIC


def test_quality_severity():
    q = np.array([0, 0x4000_0000, 0x8000_0000, 0x80AB_0000], dtype=np.uint32)
    assert is_good(q).tolist() == [True, False, False, False]
    assert is_bad(q).tolist() == [False, False, True, True]


def _binary(header: dict, n: int, tail: bytes | None = None, version=1):
    head = orjson.dumps(header)
    pad = (-(16 + len(head))) % 8
    body = tail if tail is not None else b"\0" * (22 * n)
    return struct.pack("<4sHHII", MAGIC, version, 0, len(head), n) + head + b"\0" * pad + body


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "empty message"),
        (b"\x00\x01garbage bytes", "not a reading batch: starts with bytes 00 01 67"),
        (b'{"schema_version": 1, "kind": "alert", "asset_id": "p", "tags": ["a"]}', "kind must be"),
        (b'{"schema_version": true, "asset_id": "p"}', "schema_version must be 1"),
        (MAGIC + b"\x01", "truncated"),
        (_binary({"asset_id": "p", "tags": ["a"]}, 2, version=9), "unsupported schema_version 9"),
        (_binary({"asset_id": "p", "tags": ["a"]}, 3, tail=b"\0" * 10), "length mismatch"),
        (_binary({"asset_id": 5, "tags": ["a"]}, 1), "asset_id must be a non-empty string"),
        (_binary({"asset_id": "p", "tags": "a"}, 1), "tags must be a list"),
        (_binary({"asset_id": "p", "tags": ["a", "a"]}, 1), "must not repeat"),
        (b'{"schema_version": 1, "asset_id": "p", "tags": ["a"], "tag_index": [0], "ts_us": [1], "value": ["hot"], "quality": [0]}', "must hold only numbers"),
        (b'{"schema_version": 1, "asset_id": "p", "tags": ["a"], "tag_index": [0], "ts_us": [1.5], "value": [1], "quality": [0]}', "must hold only ints"),
        (b'{"schema_version": 1, "asset_id": "p", "tags": ["a"], "tag_index": [0, 0], "ts_us": [1], "value": [1], "quality": [0]}', "has 2 entries"),
        (b'{"schema_version": 1, "asset_id": "p", "tags": ["a"], "tag_index": [3], "ts_us": [1], "value": [1], "quality": [0]}', "tag_index must lie in"),
        (b'{"schema_version": 2, "asset_id": "p"}', "schema_version must be 1"),
        (b'{"schema_version": 1, "asset_id": "p", "tags": ["a"], "value": NaN}', "not valid JSON"),
        (b"[1, 2, 3]", "not a reading batch"),
    ],
)
def test_malformed_input_is_refused_with_reason(raw, reason):
    with pytest.raises(WireError, match=reason):
        decode_reading_batch(raw)


def test_tag_index_out_of_range_in_binary():
    batch = sample_batch(3)
    raw = bytearray(encode_reading_batch(batch))
    raw[-2:] = (9).to_bytes(2, "little")  # last sample points at a tag the header does not name
    with pytest.raises(WireError, match="tag_index 9 is out of range"):
        decode_reading_batch(bytes(raw))


def test_utc_iso_is_exact_to_the_microsecond():
    assert utc_iso(1_795_382_939_894_487) == "2026-11-22T21:28:59.894487Z"
    assert utc_iso(0) == "1970-01-01T00:00:00.000000Z"
