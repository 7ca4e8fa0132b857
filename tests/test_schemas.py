"""The published JSON Schemas (stream/schemas) and docs/wire-schema.md against the real code.

What an integrator relies on: every topic has a schema, the schemas are valid, the
documented examples validate, and what the worker actually sends (alerts, dead
letters) and accepts (JSON reading batches) matches the schemas.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from connectors.base import ConnectorEvent
from stream import pipeline as pipeline_module
from stream.config import parse_config
from stream.pipeline import Pipeline, Source
from stream.topics import TOPIC_SUFFIXES
from stream.wire import (
    QUALITY_UNCERTAIN,
    SCHEMA_VERSION,
    ReadingBatch,
    WireError,
    decode_reading_batch,
    encode_message,
    encode_reading_batch_json,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_DIR = ROOT / "stream" / "schemas"
WIRE_DOC = ROOT / "docs" / "wire-schema.md"

#: topic kind (stream.topics) -> schema file stem(s) (stream/schemas/STEM.schema.json)
SCHEMA_FOR_TOPIC = {
    "readings": "reading-batch",
    "features": "features",
    "scores": "scores",
    "alerts": ("alert", "alarm"),  # fast-rule alerts and fault alarm events, told apart by kind
    "alarm_state": "alarm-state",
    "deadletter": "deadletter",
    "models": "models",
    "alert_commands": "alert-command",
    "events": "connector-event",
}
STEMS = sorted(stem for stems in SCHEMA_FOR_TOPIC.values() for stem in ((stems,) if isinstance(stems, str) else stems))

_EXAMPLE = re.compile(r"<!--\s*example:\s*([A-Za-z0-9_-]+)\s*-->\s*```json[ \t]*\n(.*?)\n```", re.DOTALL)


def load_schema(stem: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{stem}.schema.json").read_text(encoding="utf-8"))


def validator(stem: str) -> Draft202012Validator:
    # Formats asserted where jsonschema can (uuid); the schemas carry patterns for the rest.
    return Draft202012Validator(load_schema(stem), format_checker=Draft202012Validator.FORMAT_CHECKER)


def assert_valid(stem: str, doc: dict) -> None:
    errors = sorted(validator(stem).iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, f"{stem} does not validate:\n" + "\n".join(
        f"  at /{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


def doc_examples() -> list[tuple[str, str]]:
    """(kind, JSON text) of every ``<!-- example: KIND -->`` block in docs/wire-schema.md."""
    return _EXAMPLE.findall(WIRE_DOC.read_text(encoding="utf-8"))


def doc_example(kind: str) -> dict:
    found = [text for k, text in doc_examples() if k == kind]
    assert len(found) == 1, f"docs/wire-schema.md should hold one '{kind}' example, holds {len(found)}"
    return json.loads(found[0])


def as_sent(message: dict) -> dict:
    """The message as a consumer reads it off Kafka: through the worker's serialiser and back."""
    return orjson.loads(encode_message(message))


# --------------------------------------------------------------------------- the real pipeline

# 2026-03-14T08:15:00Z in microseconds: the scenario behind the examples in docs/wire-schema.md.
T0 = 1_773_476_100_000_000

PLANT = {
    "kafka": {"topic_prefix": "edgewatch"},
    "assets": [
        {
            "id": "pump-1",
            "type": "pump",
            "criticality": "high",
            "area": "water-treatment",
            "tags": [
                {"id": "bearing_temp", "unit": "degC", "normal_range": [45, 60], "limits": {"high": 80, "deadband": 2}},
                {"id": "vibration_rms", "unit": "mm/s", "normal_range": [1.0, 2.5], "limits": {"high": 7.1, "deadband": 0.2}},
            ],
        },
        {
            # A tag with neither unit nor normal_range configured.
            "id": "mixer-7",
            "criticality": "low",
            "tags": [{"id": "torque_pct", "limits": {"low": 5, "high": 95}}],
        },
    ],
}


def make_pipeline(clock_us: int) -> Pipeline:
    config = parse_config(copy.deepcopy(PLANT), "tests/test_schemas.py PLANT", environ={})
    return Pipeline(config, clock=lambda: clock_us / 1e6)


def pump_batch(seq: int, start_us: int, bearing_temp: list[float], vibration: list[float], **kw) -> ReadingBatch:
    """Samples of both pump-1 tags every 500 ms from ``start_us``."""
    n = len(bearing_temp)
    ts = [start_us + 500_000 * i for i in range(n)]
    quality = [0] * n + [QUALITY_UNCERTAIN if i == 1 else 0 for i in range(n)]
    return ReadingBatch.from_columns(
        "pump-1",
        ["bearing_temp", "vibration_rms"],
        [0] * n + [1] * n,
        ts + ts,
        bearing_temp + vibration,
        quality,
        seq=seq,
        **kw,
    )


READINGS_SOURCE = Source("edgewatch.readings", 2, 1_184_467, b"pump-1")


def documented_scenario() -> dict[str, dict]:
    """The reading batch, alert and dead letter that docs/wire-schema.md shows, made by the real code."""
    batch = pump_batch(48213, T0, [79.4, 79.9, 80.6], [2.31, 2.35, 2.4])
    raw = encode_reading_batch_json(batch)
    out = make_pipeline(T0 + 1_750_000).process(raw, READINGS_SOURCE, {})
    assert out.deadletter is None, out.deadletter
    assert len(out.alerts) == 1
    garbage_source = Source("edgewatch.readings", 2, 1_184_468, b"pump-1")
    dead = make_pipeline(T0 + 2_125_000).process(b"garbage", garbage_source, {})
    assert dead.deadletter is not None
    lost = ConnectorEvent(
        "comm_lost", "modbus", "gw-1/3", T0 + 3_000_000, assets=("pump-1",), detail="no response from unit 3 within 1.0 s (2 retries)"
    )
    return {
        "reading-batch": orjson.loads(raw),
        "alert": as_sent(out.alerts[0]),
        "deadletter": as_sent(dead.deadletter),
        "connector-event": as_sent(lost.to_message()),
    }


# --------------------------------------------------------------------------- schema files


def test_every_topic_kind_has_a_schema_file():
    assert set(SCHEMA_FOR_TOPIC) == set(TOPIC_SUFFIXES), "a topic kind was added or removed: map it to its schema here"
    missing = [stem for stem in STEMS if not (SCHEMA_DIR / f"{stem}.schema.json").is_file()]
    assert not missing, f"topics without a schema file in stream/schemas: {missing}"
    stray = sorted({p.name.removesuffix(".schema.json") for p in SCHEMA_DIR.glob("*.json")} - set(STEMS))
    assert not stray, f"schema files that no topic uses: {stray}"


@pytest.mark.parametrize("stem", STEMS)
def test_schema_is_a_valid_draft_2020_12_schema(stem):
    schema = load_schema(stem)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://edgewatch.dev/schemas/v1/{stem}.schema.json"
    assert schema["title"] and schema["description"]
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    assert isinstance(schema["properties"]["kind"]["const"], str)
    assert {"schema_version", "kind"} <= set(schema["required"])


# --------------------------------------------------------------------------- docs/wire-schema.md


def test_docs_hold_one_example_of_every_kind():
    counts = Counter(kind for kind, _ in doc_examples())
    assert {stem: counts.get(stem, 0) for stem in STEMS} == {stem: 1 for stem in STEMS}
    assert set(counts) <= set(STEMS), f"examples of unknown kinds: {set(counts) - set(STEMS)}"


@pytest.mark.parametrize("stem", STEMS)
def test_docs_example_validates_against_its_schema(stem):
    example = doc_example(stem)
    assert_valid(stem, example)
    assert example["kind"] == load_schema(stem)["properties"]["kind"]["const"]


def test_docs_name_every_topic():
    text = WIRE_DOC.read_text(encoding="utf-8")
    for suffix in TOPIC_SUFFIXES.values():
        assert f"edgewatch.{suffix}" in text, f"docs/wire-schema.md does not mention topic edgewatch.{suffix}"


@pytest.mark.parametrize("stem", ["reading-batch", "alert", "deadletter", "connector-event"])
def test_docs_examples_are_what_the_code_produces(stem):
    assert doc_example(stem) == documented_scenario()[stem], (
        f"the {stem} example in docs/wire-schema.md differs from what the code produces for the documented "
        "scenario (tests/test_schemas.py documented_scenario): update the docs"
    )


def test_docs_reading_batch_example_is_accepted_by_the_worker():
    raw = json.dumps(doc_example("reading-batch")).encode()
    batch = decode_reading_batch(raw)
    assert batch.asset_id == "pump-1" and len(batch) == 6
    out = make_pipeline(T0 + 1_750_000).process(raw, READINGS_SOURCE, {})
    assert out.deadletter is None and [a["state"] for a in out.alerts] == ["active"]


# --------------------------------------------------------------------------- real messages


def test_real_alerts_validate_active_and_cleared():
    pipe = make_pipeline(T0 + 3_000_000)
    state: dict = {}
    first = pipe.process(encode_reading_batch_json(pump_batch(1, T0, [79.4, 80.6], [2.3, 2.4])), READINGS_SOURCE, state)
    first.apply_state(state)
    second = pipe.process(
        encode_reading_batch_json(pump_batch(2, T0 + 1_000_000, [78.5, 77.9], [2.3, 2.4], replayed=True)), None, state
    )
    assert first.deadletter is None and second.deadletter is None
    (active,) = [as_sent(a) for a in first.alerts]
    (cleared,) = [as_sent(a) for a in second.alerts]
    assert_valid("alert", active)
    assert_valid("alert", cleared)
    assert (active["state"], cleared["state"]) == ("active", "cleared")
    assert cleared["alert_id"] == active["alert_id"], "consumers pair active and cleared by alert_id"
    assert cleared["episode_start"] == active["event_time"]
    assert active["source"] == {"topic": "edgewatch.readings", "partition": 2, "offset": 1_184_467}
    assert cleared["source"] is None and cleared["replayed"] is True
    assert active["tag"] == {"id": "bearing_temp", "unit": "degC", "value": 80.6, "limit": 80.0, "normal_range": [45.0, 60.0]}


def test_real_alert_for_a_tag_without_unit_or_normal_range_validates():
    batch = ReadingBatch.from_columns("mixer-7", ["torque_pct"], [0, 0], [T0, T0 + 100_000], [12.0, 3.5])
    out = make_pipeline(T0 + 1_000_000).process(encode_reading_batch_json(batch), Source("edgewatch.readings", 0, 7, b"mixer-7"), {})
    (alert,) = [as_sent(a) for a in out.alerts]
    assert_valid("alert", alert)
    assert alert["tag"]["unit"] == "" and alert["tag"]["normal_range"] is None
    assert (alert["condition"], alert["asset_type"], alert["priority"], alert["area"]) == ("low", "generic", "low", "default")


def _deadletter(raw, source) -> dict:
    out = make_pipeline(T0 + 2_000_000).process(raw, source, {})
    assert out.deadletter is not None and not out.alerts
    return as_sent(out.deadletter)


def test_real_deadletters_validate():
    src = Source("edgewatch.readings", 1, 99, b"pump-1")
    good_batch = encode_reading_batch_json(pump_batch(5, T0, [70.0], [2.0]))
    unknown_asset = encode_reading_batch_json(ReadingBatch.from_columns("pump-9", ["flow"], [0], [T0], [1.0]))
    cases = {
        "decode_error": _deadletter(b"garbage", src),
        "invalid_batch": _deadletter(unknown_asset, Source("edgewatch.readings", 0, 5, b"pump-9")),
        "key mismatch": _deadletter(good_batch, Source("edgewatch.readings", 0, 6, b"fan-1")),
        "no source": _deadletter(b"{not json", None),
        "tombstone": _deadletter(None, Source("edgewatch.readings", 3, 12, None)),
    }
    for name, message in cases.items():
        try:
            assert_valid("deadletter", message)
        except AssertionError as exc:
            raise AssertionError(f"dead letter for {name}: {exc}") from None
    assert cases["decode_error"]["error"] == "decode_error"
    assert cases["invalid_batch"]["error"] == "invalid_batch"
    assert cases["key mismatch"]["error"] == "invalid_batch"
    assert cases["no source"]["source"] is None and cases["no source"]["key_b64"] is None
    assert cases["tombstone"]["payload_b64"] is None and cases["tombstone"]["key_b64"] is None
    assert cases["decode_error"]["payload_b64"] == "Z2FyYmFnZQ==" and cases["decode_error"]["key_b64"] == "cHVtcC0x"


def test_real_processing_error_deadletter_validates(monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("detector exploded")

    monkeypatch.setattr(pipeline_module.AssetPipeline, "process", broken)
    message = _deadletter(encode_reading_batch_json(pump_batch(5, T0, [70.0], [2.0])), READINGS_SOURCE)
    assert_valid("deadletter", message)
    assert (message["error"], message["reason"]) == ("processing_error", "detector exploded")


# --------------------------------------------------------------------------- reading batches


def test_encoded_json_reading_batch_validates_and_round_trips():
    batch = pump_batch(48213, T0, [79.4, 79.9, 80.6], [2.31, 2.35, 2.4], replayed=True)
    raw = encode_reading_batch_json(batch)
    assert_valid("reading-batch", orjson.loads(raw))
    back = decode_reading_batch(raw)
    assert (back.asset_id, back.tags, back.seq, back.replayed) == ("pump-1", ("bearing_temp", "vibration_rms"), 48213, True)
    assert back.value.tolist() == batch.value.tolist() and back.quality.tolist() == batch.quality.tolist()


def _good_json_batch() -> dict:
    return orjson.loads(encode_reading_batch_json(pump_batch(1, T0, [70.0, 71.0], [2.0, 2.1])))


def _string_in_value(doc):
    doc["value"][1] = "71.0"


def _missing_asset_id(doc):
    del doc["asset_id"]


def _schema_version_2(doc):
    doc["schema_version"] = 2


def _quality_too_large(doc):
    doc["quality"][0] = 2**32


@pytest.mark.parametrize(
    "break_it", [_string_in_value, _missing_asset_id, _schema_version_2, _quality_too_large], ids=lambda f: f.__name__[1:]
)
def test_reading_batch_schema_rejects_what_the_worker_rejects(break_it):
    doc = _good_json_batch()
    break_it(doc)
    assert not validator("reading-batch").is_valid(doc), "the schema accepts a batch the worker dead-letters"
    with pytest.raises(WireError):
        decode_reading_batch(orjson.dumps(doc))


def test_alert_schema_rejects_a_broken_alert():
    alert = documented_scenario()["alert"]
    for key, bad in [("state", "acknowledged"), ("alert_id", "42"), ("event_time", "14.03.2026 08:15")]:
        assert not validator("alert").is_valid({**alert, key: bad}), f"alert with {key}={bad!r} passes"
    assert not validator("alert").is_valid({k: v for k, v in alert.items() if k != "alert_id"})


# --------------------------------------------------------------------------- future topics


def test_alert_command_schema_enforces_per_command_fields():
    command = doc_example("alert-command")
    base = {k: v for k, v in command.items() if k not in ("duration_s", "label", "comment")}
    v = validator("alert-command")
    assert v.is_valid({**base, "command": "acknowledge"})
    assert not v.is_valid({**base, "command": "shelve"}), "shelve without duration_s passes"
    assert v.is_valid({**base, "command": "shelve", "duration_s": 3600})
    assert not v.is_valid({**base, "command": "acknowledge", "duration_s": 3600})
    assert not v.is_valid({**base, "command": "feedback"}), "feedback without label passes"
    assert not v.is_valid({**base, "command": "comment"}), "comment without comment text passes"


def test_models_schema_wants_exactly_one_target():
    model = doc_example("models")
    v = validator("models")
    with_type = {k: val for k, val in model.items() if k != "asset_id"} | {"asset_type": "pump"}
    assert v.is_valid(with_type)
    assert not v.is_valid(model | {"asset_type": "pump"}), "asset_id and asset_type together pass"
    assert not v.is_valid({k: val for k, val in model.items() if k != "asset_id"}), "no target passes"
