"""Stream 3 inside the pipeline (stream.diagnosis): what fusion and the alarm book do
with real readings, offline, on the small test plant of tests/alarm_plant.py (a
temperature transmitter that sticks from 60 s to 150 s of event time)."""

from __future__ import annotations

import uuid

from stream.config import parse_config
from stream.pipeline import Pipeline
from stream.replay import replay
from tests.alarm_plant import plant_batches, plant_doc

STUCK = (60.0, 150.0)


def plant(**options):
    return parse_config(plant_doc("t", "127.0.0.1:9092", n_assets=1, **options), "test plant")


def raised(result):
    return [a for a in result.alarms if a["event"] == "raised"]


def test_a_stuck_transmitter_raises_one_sensor_fault_alarm_that_returns():
    config = plant()
    result = replay(config, plant_batches(config, 300, stuck=STUCK), pipeline=Pipeline(config, max_future_check=False, keep_fusion=True))
    (alarm,) = raised(result)
    assert alarm["fault"] == "sensor_fault" and alarm["annunciated"] and not alarm["late"]
    assert alarm["message"] == "machine-00: sensor fault 100 % — temperature flat"
    (back,) = [a for a in result.alarms if a["event"] == "returned"]
    assert back["alert_id"] == alarm["alert_id"]
    # the compacted topic's record follows every event
    assert [alert_id for alert_id, _ in result.alarm_states] == [a["alert_id"] for a in result.alarms]


def test_backfilled_readings_raise_the_alarm_marked_late():
    config = plant()
    result = replay(config, plant_batches(config, 200, stuck=STUCK, replayed=True), pipeline=Pipeline(config, max_future_check=False))
    (alarm,) = raised(result)
    assert alarm["late"] and not alarm["annunciated"]


def test_a_stopped_machine_mutes_its_alarms_through_its_run_state_tag():
    config = plant(run_state=True)
    running = replay(config, plant_batches(config, 200, stuck=STUCK), pipeline=Pipeline(config, max_future_check=False))
    assert raised(running)[0]["annunciated"]
    stopped = replay(config, plant_batches(config, 200, stuck=STUCK, stopped=(0, 200)), pipeline=Pipeline(config, max_future_check=False))
    (alarm,) = raised(stopped)
    assert alarm["suppressed"] and not alarm["annunciated"] and alarm["alert_id"] == raised(running)[0]["alert_id"]


def test_operator_feedback_teaches_the_asset_type_and_survives_a_restart():
    config = plant()
    pipeline = Pipeline(config, max_future_check=False)
    result = replay(config, plant_batches(config, 120, stuck=STUCK), pipeline=pipeline, flush=False)
    (alarm,) = raised(result)
    before = pipeline.diagnosis.networks["generic"].to_state()
    command = {
        "schema_version": 1,
        "kind": "alert_command",
        "command_id": str(uuid.uuid4()),
        "command": "feedback",
        "alert_id": alarm["alert_id"],
        "asset_id": "machine-00",
        "user": "j.smith",
        "issued_at": "2026-11-23T08:00:00Z",
        "label": "false_alarm",
    }
    out = pipeline.command(command, 1_795_000_000_000_000)
    assert out.command_error is None
    assert [a["event"] for a in out.alarms] == ["feedback"]
    learned = out.diagnosis_state["network:generic"]
    assert learned != before and learned["from_feedback"], "feedback left the network as it was"
    # the same command again (at-least-once) changes nothing
    assert pipeline.command(command, 1_795_000_000_000_000).diagnosis_state == {}

    # a new worker restores what the type learned from the changelog, with the alarm
    store = {**result.diagnosis_state, **out.diagnosis_state}
    restarted = Pipeline(config, max_future_check=False, diagnosis_store=store)
    replay(config, plant_batches(config, 2, start_s=120, stuck=STUCK), pipeline=restarted, flush=False)
    assert restarted.diagnosis.networks["generic"].to_state() == learned
    assert restarted.diagnosis.book.open_alarms("machine-00") == [alarm["alert_id"]]


def test_a_command_for_an_unknown_alarm_is_refused_in_words():
    config = plant()
    pipeline = Pipeline(config, max_future_check=False)
    alert_id = str(uuid.uuid4())
    out = pipeline.command(
        {"schema_version": 1, "kind": "alert_command", "command_id": str(uuid.uuid4()), "command": "acknowledge",
         "alert_id": alert_id, "asset_id": "machine-00", "user": "j.smith", "issued_at": "2026-11-23T08:00:00Z"},
        1_795_000_000_000_000,
    )
    assert out.alarms == [] and alert_id in out.command_error
