"""Wire schema v1: the messages edgewatch puts on Kafka, and their codecs.

Readings travel as *batches*: many samples of one asset in one Kafka message
(key = asset id). faust costs roughly 80-190 us per event, so one sample per
message could never reach a million samples per second; a batch of a thousand
samples spreads that cost over all of them.

A reading batch has two encodings, told apart by the first byte:

* binary (``EWRB`` magic), what the connectors send: a small JSON header and
  four little-endian column arrays that decode with ``numpy.frombuffer``, no
  per-sample Python work;
* JSON (first byte ``{``), the same columns as JSON lists, for integrators who
  publish from tools that cannot write the binary form (Node-RED, a script).
  It follows ``stream/schemas/reading-batch.schema.json``.

Binary layout (all integers little-endian)::

    offset  size  field
    0       4     magic b"EWRB"
    4       2     schema_version (uint16) = 1
    6       2     flags (uint16): bit 0 = replayed (backfill from a connector spool)
    8       4     header_len (uint32), bytes of the UTF-8 JSON header
    12      4     n_samples (uint32)
    16      H     header: {"asset_id": str, "tags": [str, ...], "seq": int}
    ...           zero padding to a multiple of 8
            8n    ts_us      int64    source timestamp, microseconds since 1970-01-01 UTC
            8n    value      float64
            4n    quality    uint32   OPC UA StatusCode (0 = Good; top two bits: 10 Bad, 01 Uncertain)
            2n    tag_index  uint16   index into header "tags"

The decoders check structure only (lengths, types, indices). Whether the asset
and its tags are configured, values finite and timestamps plausible is the
pipeline's job (``stream.validation``), since it needs the configuration.

All other messages are JSON objects with ``schema_version`` and ``kind``.

This module must not import faust: the connectors use it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import orjson

SCHEMA_VERSION = 1

MAGIC = b"EWRB"
_PREFIX = struct.Struct("<4sHHII")  # magic, version, flags, header_len, n_samples
FLAG_REPLAYED = 0x0001
MAX_SAMPLES_PER_BATCH = 1_000_000
MAX_TAGS_PER_BATCH = 65_535  # tag_index is uint16
MAX_ID_LENGTH = 200

# OPC UA StatusCode severity lives in the two top bits.
QUALITY_GOOD = 0x0000_0000
QUALITY_UNCERTAIN = 0x4000_0000
QUALITY_BAD = 0x8000_0000
_SEVERITY_MASK = 0xC000_0000


class WireError(ValueError):
    """A message that cannot be decoded. The text says what is wrong with it."""


@dataclass(frozen=True, eq=False)
class ReadingBatch:
    """Samples of one asset, column-wise. Sample ``i`` is tag ``tags[tag_index[i]]``
    with ``value[i]`` at ``ts_us[i]`` and quality ``quality[i]``.

    Arrays are numpy, length n: ``ts_us`` int64 (us since epoch, UTC), ``value``
    float64, ``quality`` uint32 (OPC UA StatusCode), ``tag_index`` uint16.
    ``replayed`` marks backfill sent after a connector outage. ``seq`` is the
    sender's running batch number per asset (gaps show lost batches).
    """

    asset_id: str
    tags: tuple[str, ...]
    tag_index: np.ndarray
    ts_us: np.ndarray
    value: np.ndarray
    quality: np.ndarray
    replayed: bool = False
    seq: int = 0

    def __len__(self) -> int:
        return int(self.ts_us.shape[0])

    @classmethod
    def from_columns(
        cls,
        asset_id: str,
        tags: tuple[str, ...] | list[str],
        tag_index,
        ts_us,
        value,
        quality=None,
        *,
        replayed: bool = False,
        seq: int = 0,
    ) -> "ReadingBatch":
        """Build a batch from array-likes, casting to the wire dtypes."""
        value = np.ascontiguousarray(value, dtype="<f8")
        if quality is None:
            quality = np.zeros(value.shape[0], dtype="<u4")
        return cls(
            asset_id=asset_id,
            tags=tuple(tags),
            tag_index=np.ascontiguousarray(tag_index, dtype="<u2"),
            ts_us=np.ascontiguousarray(ts_us, dtype="<i8"),
            value=value,
            quality=np.ascontiguousarray(quality, dtype="<u4"),
            replayed=replayed,
            seq=seq,
        )


def is_good(quality: np.ndarray) -> np.ndarray:
    """Boolean mask of samples whose OPC UA StatusCode severity is Good."""
    return (quality & _SEVERITY_MASK) == 0


def is_bad(quality: np.ndarray) -> np.ndarray:
    """Boolean mask of samples whose OPC UA StatusCode severity is Bad."""
    return (quality & _SEVERITY_MASK) == QUALITY_BAD


# --------------------------------------------------------------------------- binary


def encode_reading_batch(batch: ReadingBatch) -> bytes:
    """Encode a batch in the binary form. Raises WireError if it cannot be encoded."""
    n = len(batch)
    for name in ("tag_index", "value", "quality"):
        if getattr(batch, name).shape != (n,):
            raise WireError(f"column {name!r} has {getattr(batch, name).shape[0]} entries, ts_us has {n}")
    if len(batch.tags) > MAX_TAGS_PER_BATCH:
        raise WireError(f"a batch can name at most {MAX_TAGS_PER_BATCH} tags, this one names {len(batch.tags)}")
    header = orjson.dumps({"asset_id": batch.asset_id, "tags": list(batch.tags), "seq": int(batch.seq)})
    pad = (-(_PREFIX.size + len(header))) % 8
    flags = FLAG_REPLAYED if batch.replayed else 0
    return b"".join(
        (
            _PREFIX.pack(MAGIC, SCHEMA_VERSION, flags, len(header), n),
            header,
            b"\0" * pad,
            batch.ts_us.astype("<i8", copy=False).tobytes(),
            batch.value.astype("<f8", copy=False).tobytes(),
            batch.quality.astype("<u4", copy=False).tobytes(),
            batch.tag_index.astype("<u2", copy=False).tobytes(),
        )
    )


def decode_reading_batch(data: bytes) -> ReadingBatch:
    """Decode either encoding of a reading batch. Raises WireError with the reason."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if data[:4] == MAGIC:
        return _decode_binary(data)
    if data.lstrip()[:1] == b"{":
        return _decode_json(data)
    if len(data) == 0:
        raise WireError("empty message (no bytes)")
    raise WireError(
        f"not a reading batch: starts with bytes {data[:8].hex(' ')}; expected the binary magic 'EWRB' or a JSON object"
    )


def _decode_binary(data: bytes) -> ReadingBatch:
    if len(data) < _PREFIX.size:
        raise WireError(f"truncated: {len(data)} bytes is shorter than the {_PREFIX.size}-byte prefix")
    _, version, flags, header_len, n = _PREFIX.unpack_from(data)
    if version != SCHEMA_VERSION:
        raise WireError(f"unsupported schema_version {version}; this worker reads version {SCHEMA_VERSION}")
    if n > MAX_SAMPLES_PER_BATCH:
        raise WireError(f"n_samples {n} exceeds the limit of {MAX_SAMPLES_PER_BATCH} per batch")
    columns_at = _PREFIX.size + header_len + ((-(_PREFIX.size + header_len)) % 8)
    expected = columns_at + 22 * n
    if len(data) != expected:
        raise WireError(
            f"length mismatch: header_len {header_len} and n_samples {n} need {expected} bytes, message has {len(data)}"
        )
    try:
        header = orjson.loads(data[_PREFIX.size : _PREFIX.size + header_len])
    except orjson.JSONDecodeError as exc:
        raise WireError(f"header is not valid JSON: {exc}") from None
    asset_id, tags, seq = _check_header(header)
    at = columns_at
    ts_us = np.frombuffer(data, dtype="<i8", count=n, offset=at)
    at += 8 * n
    value = np.frombuffer(data, dtype="<f8", count=n, offset=at)
    at += 8 * n
    quality = np.frombuffer(data, dtype="<u4", count=n, offset=at)
    at += 4 * n
    tag_index = np.frombuffer(data, dtype="<u2", count=n, offset=at)
    if n and int(tag_index.max()) >= len(tags):
        raise WireError(f"tag_index {int(tag_index.max())} is out of range: the header names {len(tags)} tags")
    return ReadingBatch(asset_id, tags, tag_index, ts_us, value, quality, bool(flags & FLAG_REPLAYED), seq)


def _check_header(header) -> tuple[str, tuple[str, ...], int]:
    if not isinstance(header, dict):
        raise WireError(f"header must be a JSON object, got {type(header).__name__}")
    asset_id = header.get("asset_id")
    if not isinstance(asset_id, str) or not asset_id or len(asset_id) > MAX_ID_LENGTH:
        raise WireError(f"asset_id must be a non-empty string of at most {MAX_ID_LENGTH} characters, got {asset_id!r}")
    tags = header.get("tags")
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise WireError("tags must be a list of non-empty strings")
    if len(tags) > MAX_TAGS_PER_BATCH:
        raise WireError(f"a batch can name at most {MAX_TAGS_PER_BATCH} tags, this one names {len(tags)}")
    if len(set(tags)) != len(tags):
        raise WireError("tags must not repeat a tag id")
    seq = header.get("seq", 0)
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise WireError(f"seq must be an integer, got {seq!r}")
    return asset_id, tuple(tags), seq


# --------------------------------------------------------------------------- JSON form


def encode_reading_batch_json(batch: ReadingBatch) -> bytes:
    """Encode a batch in the JSON form (reading-batch.schema.json)."""
    return orjson.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "kind": "reading_batch",
            "asset_id": batch.asset_id,
            "tags": list(batch.tags),
            "seq": int(batch.seq),
            "replayed": bool(batch.replayed),
            "tag_index": batch.tag_index.tolist(),
            "ts_us": batch.ts_us.tolist(),
            "value": batch.value.tolist(),
            "quality": batch.quality.tolist(),
        }
    )


def _json_column(doc: dict, name: str, dtype: str, kind: type, null_as=None) -> np.ndarray:
    column = doc.get(name)
    if not isinstance(column, list):
        raise WireError(f"field {name!r} must be a list, got {type(column).__name__}")
    if null_as is not None and None in column:
        column = [null_as if x is None else x for x in column]
    # bool is an int in Python; a true/false in a numeric column is a producer bug.
    if not all(isinstance(x, kind) and not isinstance(x, bool) for x in column):
        bad = next(x for x in column if not isinstance(x, kind) or isinstance(x, bool))
        raise WireError(f"field {name!r} must hold only {kind.__name__ if kind is int else 'number'}s, found {bad!r}")
    try:
        return np.asarray(column, dtype=dtype)
    except OverflowError:
        raise WireError(f"field {name!r} holds a value outside the range of {np.dtype(dtype).name}") from None


def _decode_json(data: bytes) -> ReadingBatch:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise WireError("a JSON reading batch must be an object")
    version = doc.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise WireError(f"schema_version must be {SCHEMA_VERSION}, got {version!r}")
    if doc.get("kind", "reading_batch") != "reading_batch":
        raise WireError(f"kind must be \"reading_batch\" on the readings topic, got {doc.get('kind')!r}")
    asset_id, tags, seq = _check_header(doc)
    replayed = doc.get("replayed", False)
    if not isinstance(replayed, bool):
        raise WireError(f"replayed must be true or false, got {replayed!r}")
    tag_index = _json_column(doc, "tag_index", "<i8", int)
    ts_us = _json_column(doc, "ts_us", "<i8", int)
    # JSON has no NaN: a sample without a value (Bad quality) is written as null.
    value = _json_column(doc, "value", "<f8", (int, float), null_as=float("nan"))  # type: ignore[arg-type]
    quality = _json_column(doc, "quality", "<i8", int)
    n = ts_us.shape[0]
    if n > MAX_SAMPLES_PER_BATCH:
        raise WireError(f"{n} samples exceed the limit of {MAX_SAMPLES_PER_BATCH} per batch")
    for name, column in (("tag_index", tag_index), ("value", value), ("quality", quality)):
        if column.shape[0] != n:
            raise WireError(f"column {name!r} has {column.shape[0]} entries, ts_us has {n}")
    if n and (tag_index.min() < 0 or tag_index.max() >= len(tags)):
        raise WireError(f"tag_index must lie in 0..{len(tags) - 1} (the tags named in the batch)")
    if n and (quality.min() < 0 or quality.max() > 0xFFFF_FFFF):
        raise WireError("quality must be a 32-bit unsigned OPC UA StatusCode")
    return ReadingBatch.from_columns(asset_id, tags, tag_index, ts_us, value, quality, replayed=replayed, seq=seq)


# --------------------------------------------------------------------------- JSON messages


def encode_message(message: dict) -> bytes:
    """Serialise an outgoing JSON message (alert, deadletter, ...)."""
    return orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY)


def utc_iso(ts_us: int) -> str:
    """Microseconds since the epoch -> ISO 8601 UTC with a Z, e.g. 2026-11-22T21:24:07.632000Z."""
    # Integer arithmetic: a float of seconds cannot hold today's epoch to the microsecond.
    seconds, micros = divmod(int(ts_us), 1_000_000)
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc) + timedelta(microseconds=micros)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
