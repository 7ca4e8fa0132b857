"""Windows, features and detectors inside the live worker, on a real Apache
Kafka broker: readings in, features and calibrated scores out, a trained model
loaded from the registry at start; and the worker's windows equal the offline
replay's for the same readings (event time, not arrival time)."""

from __future__ import annotations

import pytest
import yaml

from connectors.simulator.history import simulated_history
from stream.config import load_config
from stream.history import kafka_history
from stream.kafka_admin import ensure_topics
from stream.pipeline import Pipeline
from stream.replay import replay
from stream.training import train
from stream.wire import encode_reading_batch
from tests.conftest import REPO_CONFIG, now_us
from tests.kafka_helpers import TopicReader, producer, start_worker

pytestmark = pytest.mark.kafka


def plant_config(path, bootstrap, prefix, registry):
    """The sample plant, on the test broker, with a small registry and a fast LSTM."""
    doc = yaml.safe_load(REPO_CONFIG.read_text())
    doc["kafka"] = {"bootstrap_servers": bootstrap, "topic_prefix": prefix, "partitions": 2}
    doc["worker"] = {"app_id": f"{prefix}-worker", "data_dir": str(path.parent / "worker-data"), "session_timeout_s": 6}
    doc["detectors"] = {"registry_dir": str(registry), "lstm_autoencoder": {"enabled": False}, "isolation_forest": {"n_estimators": 50}}
    # readings from the simulator are sent as batches below, not served
    for asset in doc["assets"]:
        for tag in asset["tags"]:
            tag.pop("source", None)
    doc.pop("connections", None)
    path.write_text(yaml.safe_dump(doc))
    return path


def test_worker_publishes_features_and_scores_equal_to_the_offline_replay(kafka, topic_prefix, tmp_path):
    config_path = plant_config(tmp_path / "plant.yaml", kafka.bootstrap, topic_prefix, tmp_path / "models")
    config = load_config(config_path, environ={})
    topics = config.kafka.topics
    ensure_topics(config.kafka)
    # A model for pump-1, trained on an hour of history that ends two hours ago.
    start = (now_us() // 1_000_000 - 3 * 3600) * 1_000_000
    train(config, "pump-1", simulated_history(config, ["pump-1"], start, 3600, seed=1), detectors=["isolation_forest"])
    # Live: two minutes of pump-1 and fan-1, the last minute with a seal leak on the pump.
    live_start = start + 3600 * 1_000_000
    batches = list(simulated_history(config, ["pump-1", "fan-1"], live_start, 120, seed=2, faults=["pump-1:seal_leak@60+60"]))
    send = producer(kafka.bootstrap)
    for batch in batches:
        send.produce(topics.readings, key=batch.asset_id.encode(), value=encode_reading_batch(batch))
    assert send.flush(30) == 0

    # `edgewatch train --from-kafka` reads back exactly the samples of its time range.
    lo, hi = live_start + 30_000_000, live_start + 60_000_000
    replayed = list(kafka_history(config, ["pump-1"], lo, hi))
    got = sorted((int(t), b.tags[i], float(v)) for b in replayed for t, i, v in zip(b.ts_us, b.tag_index, b.value))
    sent = sorted(
        (int(t), b.tags[i], float(v)) for b in batches if b.asset_id == "pump-1" for t, i, v in zip(b.ts_us, b.tag_index, b.value) if lo <= t < hi
    )
    assert got == sent and len(sent) > 3000

    worker = start_worker(config_path, tmp_path / "worker.log")
    reader = TopicReader(kafka.bootstrap, topics.features, topics.scores)
    offline = replay(config, batches, pipeline=Pipeline(config, max_future_check=False, models=_catalog(config)))
    # The worker cannot close the windows at the very end (no later sample moves
    # its watermark past them): compare the windows both have closed.
    last_live_end = max(b.ts_us.max() for b in batches)
    grace_us = 2_000_000
    expected_features = [f for f in offline.features if f["window_end_us"] + grace_us <= last_live_end]
    try:
        assert reader.wait_for(
            lambda m: len(m[topics.features]) >= len(expected_features), timeout_s=120, worker=worker
        ), f"{len(reader.messages[topics.features])} of {len(expected_features)} feature messages\n{worker.log_tail()}"
        live = reader.messages[topics.features]
        key = lambda m: (m["asset_id"], m["scale"], m["window_end_us"])  # noqa: E731
        assert sorted(live, key=key) == sorted(expected_features, key=key)
        assert {m["asset_id"] for m in live} == {"pump-1", "fan-1"}
        assert {m["scale"] for m in live} == {"1s", "10s", "1m"}

        expected_scores = [s for s in offline.scores if s["window_end_us"] + grace_us <= last_live_end]
        assert reader.wait_for(lambda m: len(m[topics.scores]) >= len(expected_scores), timeout_s=60, worker=worker)
        scores = reader.messages[topics.scores]
        forest = [s for s in scores if s["detector"] == "isolation_forest"]
        # only pump-1 has a trained model; fan-1 is covered by the online detector from its first minute
        assert {s["asset_id"] for s in forest} == {"pump-1"} and all(s["model_version"] == 1 for s in forest)
        assert sorted(forest, key=key) == sorted([s for s in expected_scores if s["detector"] == "isolation_forest"], key=key)
        leak = [s for s in forest if s["scale"] == "1s" and s["window_end_us"] > live_start + 90_000_000]
        assert leak and sum(s["anomalous"] for s in leak) >= 0.9 * len(leak)
        assert all(s["top_tags"][0]["id"] == "seal_leak_flow" for s in leak if s["anomalous"])
        assert worker.alive()
    finally:
        reader.close()
        worker.stop()


def _catalog(config):
    from stream.models import load_catalog

    return load_catalog(config)
