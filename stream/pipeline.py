"""The per-asset processing pipeline: bytes in, messages out, no Kafka inside.

``Pipeline.process`` is called by every driver: the faust worker (stream.worker)
for live data, and the offline replay (stream.replay: training, backtests). It
decodes and validates, runs the fast rules at once (stream.rules: limits, rate
of change, flatline, bad quality; evidence per sample, not per window), then
stream 2 (stream.detection: event-time windows, features, detectors) and
stream 3 (stream.diagnosis: Bayesian fusion into fault probabilities, and the
ISA-18.2 alarm book).

State that must survive a restart (which alerts are active) is read from a
mapping the driver passes in (a faust Table backed by a Kafka changelog in the
worker, a plain dict offline). The new state comes back in ``Outputs.state``
only when it changed, and the driver stores it only after the alerts are in
Kafka: stored first, a crash in between would restore "active" and the replay
would never send the alert.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass, field
from typing import Mapping, MutableMapping

from stream import alerts
from stream.config import AssetConfig, ServiceConfig
from stream.rules import FastRules
from stream.validation import InvalidBatch, validate_batch
from stream.detection import AssetDetection, SequenceQueue
from stream.diagnosis import Diagnosis, DiagnosisOutput
from stream.features import FeatureSpec
from stream.wire import SCHEMA_VERSION, ReadingBatch, WireError, decode_reading_batch, encode_reading_batch, is_good, utc_iso

log = logging.getLogger(__name__)

#: larger rejected inputs are referenced by source offset instead of copied (base64 grows them by 4/3)
MAX_DEADLETTER_PAYLOAD = 512 * 1024


def _error_kind(error: Exception) -> str:
    if isinstance(error, WireError):
        return "decode_error"
    if isinstance(error, InvalidBatch):
        return "invalid_batch"
    return "processing_error"


@dataclass(frozen=True)
class Source:
    """Where a message came from, so a dead letter or an alert can point back to it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None

    def as_dict(self) -> dict:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass
class Outputs:
    """What processing one message produced. Keys are asset ids."""

    alerts: list[dict] = field(default_factory=list)
    deadletter: dict | None = None
    asset_id: str | None = None
    samples: int = 0
    #: the asset's new state, when it changed; store it under ``asset_id`` once the alerts are sent
    state: dict | None = None
    #: messages for the features and scores topics (windows closed by this batch)
    features: list[dict] = field(default_factory=list)
    scores: list[dict] = field(default_factory=list)
    #: (asset_id, stream.detection.WindowResult) per closed window, when the pipeline keeps them (training)
    windows: list = field(default_factory=list)
    #: fault alarm events (kind "alarm", for the alerts topic), alarm-state records
    #: ((alert_id, record or None)), and diagnosis state to store per changelog key
    alarms: list[dict] = field(default_factory=list)
    alarm_states: list[tuple[str, dict | None]] = field(default_factory=list)
    diagnosis_state: dict[str, dict] = field(default_factory=dict)
    #: fusion's verdict per step (stream.fusion.FusionResult), when the pipeline keeps them (replays)
    fusion: list = field(default_factory=list)
    #: an operator command's refusal (Pipeline.command)
    command_error: str | None = None
    #: stream 2 still to run for this batch (Pipeline.detect), when the pipeline defers it
    _stream2: tuple | None = field(default=None, repr=False)

    def apply_state(self, store: MutableMapping[str, dict]) -> None:
        if self.state is not None:
            store[self.asset_id] = self.state

    def apply_diagnosis_state(self, store: MutableMapping[str, dict]) -> None:
        """Store fusion's and the alarm book's new state, once the alarms are sent."""
        for key, value in self.diagnosis_state.items():
            store[key] = value

    def add_diagnosis(self, out: DiagnosisOutput) -> None:
        self.alarms.extend(out.alarms)
        self.alarm_states.extend(out.alarm_states)
        self.diagnosis_state.update(out.state)
        self.fusion.extend(out.results)
        if out.error is not None:
            self.command_error = out.error


class AssetPipeline:
    """Processing for one configured asset (the configuration is fixed for its life)."""

    def __init__(self, asset: AssetConfig, config: ServiceConfig, detection: AssetDetection | None = None):
        self.asset = asset
        self.tag_position = {tag.id: i for i, tag in enumerate(asset.tags)}
        self.rules = FastRules(asset, config.rules)
        self.detection = detection

    def process(self, batch: ReadingBatch, tag_position, state: dict, source: Source | None) -> tuple[list[dict], dict]:
        """Run the rules over a validated batch. Returns (alert messages, new state)."""
        out: list[dict] = []
        # Fast rules: evidence at once, sample by sample. Their state lives under
        # "rules"; a worker upgraded in place finds the limit state it kept before
        # under "limits" and carries it over, so active alerts stay active and
        # clear with their ids (the old key goes at the first change).
        rule_state = state.get("rules")
        if rule_state is None:
            rule_state = {"limit": state["limits"]} if state.get("limits") else {}
        events, new_rule_state = self.rules.evaluate(tag_position, batch.ts_us, batch.value, batch.quality, rule_state)
        if events:
            where = source.as_dict() if source else None
            out.extend(alerts.rule_alert(self.asset, e, replayed=batch.replayed, source=where) for e in events)
        if new_rule_state is not rule_state:
            state = {**{k: v for k, v in state.items() if k != "limits"}, "rules": new_rule_state}
        return out, state


class Pipeline:
    """Decode, validate and route reading batches to their asset's pipeline.

    ``clock`` returns seconds since the epoch; tests and replays may fix it.
    ``max_future_check`` off: history is replayed whatever today's date is.
    ``detection``: "full" (windows, features, detectors), "features" (windows
    and features only, kept as matrices: training), or "off" (fast rules only).
    ``models``: the trained models (stream.models.ModelCatalog); None: the
    online detector alone. ``assets``: limit the pipeline to these asset ids.
    ``defer_detection``: ``process`` runs the fast rules only; the driver calls
    ``detect(outputs)`` once the alerts are sent.
    ``diagnosis_store``: where fusion's and the alarm book's state was kept (the
    analytics role's changelog table); each asset is restored from it at first
    sight. ``keep_fusion``: keep fusion's verdict per step in ``Outputs.fusion``.
    """

    def __init__(
        self,
        config: ServiceConfig,
        clock=time.time,
        *,
        max_future_check: bool = True,
        detection: str = "full",
        models=None,
        assets: list[str] | None = None,
        defer_detection: bool = False,
        diagnosis_store: Mapping[str, dict] | None = None,
        keep_fusion: bool = False,
    ):
        if detection not in ("full", "features", "off"):
            raise ValueError(f"detection must be full, features or off, got {detection!r}")
        self.config = config
        self.clock = clock
        self.max_future_check = max_future_check
        self.max_future_us = int(config.worker.max_future_s * 1e6)
        self.keep_windows = detection == "features"
        self.defer_detection = defer_detection
        spec = FeatureSpec(config.features)
        micro_batch = config.detectors.lstm_autoencoder.micro_batch
        self.sequences = SequenceQueue(micro_batch) if detection == "full" else None
        self._assets = {}
        for asset in config.assets:
            if assets is not None and asset.id not in assets:
                continue
            stage = None
            if detection != "off":
                stage = AssetDetection(
                    asset,
                    config,
                    spec,
                    models=models.for_asset(asset.id) if (models is not None and detection == "full") else (),
                    sequences=self.sequences,
                    online=detection == "full",
                    score=detection == "full",
                )
            self._assets[asset.id] = AssetPipeline(asset, config, stage)
        self.diagnosis_store = diagnosis_store
        self.diagnosis = None
        if detection == "full" and config.fusion.enabled:
            self.diagnosis = Diagnosis(config, [a.asset for a in self._assets.values()], keep_results=keep_fusion)

    def process(self, raw: bytes, source: Source | None, state_store: Mapping[str, dict]) -> Outputs:
        """Process one Kafka message value. Never raises on bad input: it becomes a dead letter.

        ``source`` is None offline (no Kafka, so no key to check)."""
        try:
            batch = decode_reading_batch(raw)
        except WireError as exc:
            return Outputs(deadletter=self.deadletter(raw, exc, source))
        return self.process_batch(batch, source, state_store, raw)

    def process_batch(self, batch: ReadingBatch, source: Source | None, state_store: Mapping[str, dict], raw: bytes | None = None) -> Outputs:
        """Process one decoded reading batch (offline drivers start here; ``raw``
        is the original message, copied into a dead letter if the batch is refused)."""
        try:
            if source is not None and source.key is None:
                raise InvalidBatch(
                    f'message has no key: send it with the asset id "{batch.asset_id}" as key, '
                    "so that one asset's readings stay in order on one partition"
                )
            if source is not None and source.key != batch.asset_id.encode():
                raise InvalidBatch(
                    f'message key "{source.key.decode(errors="replace")}" differs from asset_id "{batch.asset_id}": '
                    "the key must be the asset id so that one asset's readings stay in order on one partition"
                )
            asset = self._assets.get(batch.asset_id)
            if asset is None:
                raise InvalidBatch(f'unknown asset "{batch.asset_id}": add it to the configuration or fix the sender')
            now_us = int(self.clock() * 1e6) if self.max_future_check else None
            tag_position = validate_batch(batch, asset.asset, asset.tag_position, now_us, self.max_future_us)
        except (WireError, InvalidBatch) as exc:
            if raw is None:
                raw = encode_reading_batch(batch)
            return Outputs(deadletter=self.deadletter(raw, exc, source))
        state = state_store.get(batch.asset_id) or {}
        try:
            messages, new_state = asset.process(batch, tag_position, state, source)
        except Exception as exc:  # a bug must not stop the plant's stream: park the input, keep going
            log.exception("processing failed for asset %s at %s", batch.asset_id, source)
            return Outputs(deadletter=self.deadletter(raw if raw is not None else encode_reading_batch(batch), exc, source))
        outputs = Outputs(
            alerts=messages, asset_id=batch.asset_id, samples=len(batch), state=None if new_state is state else new_state
        )
        if asset.detection is not None:
            outputs._stream2 = (asset, batch, tag_position, source)
            if not self.defer_detection:
                self.detect(outputs)
        return outputs

    def detect(self, outputs: Outputs) -> Outputs:
        """Stream 2 for a processed batch: windows, features, detectors.

        Runs inside ``process`` unless the pipeline defers it; the worker defers it
        so that the fast rules' evidence is in Kafka before stream 2 spends its
        time (reading-to-evidence latency must not include a window closing). A
        failure here is a bug in a detector, not bad input: the alerts still go
        out and the batch is not parked (its readings were fine); it is logged.
        """
        pending, outputs._stream2 = outputs._stream2, None
        if pending is None:
            return outputs
        asset, batch, tag_position, source = pending
        good = is_good(batch.quality)
        try:
            detected = asset.detection.process(batch.ts_us, tag_position, batch.value, good, batch.replayed)
        except Exception:
            log.exception("windows/detectors failed for asset %s at %s", batch.asset_id, source)
            return outputs
        self._collect(outputs, asset, detected)
        if self.diagnosis is not None:
            try:
                self._diagnose(outputs, asset, detected, batch, tag_position, good)
            except Exception:
                log.exception("fusion/alarms failed for asset %s at %s", batch.asset_id, source)
        return outputs

    def _diagnose(self, outputs: Outputs, asset: "AssetPipeline", detected, batch: ReadingBatch, tag_position, good) -> None:
        asset_id = asset.asset.id
        self.diagnosis.restore(asset_id, self.diagnosis_store)
        machine = None
        tag = self.diagnosis.book.machine_state_tag(asset_id)
        if tag is not None and tag in asset.tag_position:
            mine = tag_position == asset.tag_position[tag]
            machine = (batch.ts_us[mine], batch.value[mine])
        bad_fraction = 1.0 - float(good.mean()) if good.size else 0.0
        # the batch's own scores (LSTM ones, from a shared micro-batch, were handed in apart)
        scores = [s for s in detected.scores if s["asset_id"] == asset_id]
        out = self.diagnosis.process(asset.asset, detected.windows, scores, outputs.alerts, machine, bad_fraction, batch.replayed)
        outputs.add_diagnosis(out)

    def _collect(self, outputs: Outputs, asset: "AssetPipeline", detected) -> None:
        outputs.features.extend(detected.features)
        outputs.scores.extend(detected.scores)
        if self.keep_windows:
            outputs.windows.extend((asset.asset.id, w) for w in detected.windows)
        if self.sequences is not None and len(self.sequences) >= self.sequences.micro_batch:
            outputs.scores.extend(self.flush_sequences())

    def flush_sequences(self) -> list[dict]:
        """Score the LSTM sequences queued so far (all assets, one micro-batch); the
        driver calls this when its input goes quiet, so scores never wait long."""
        if self.sequences is None:
            return []
        scores = self.sequences.flush()
        if self.diagnosis is not None and scores:
            self.diagnosis.observe_late_scores(scores)
        return scores

    def command(self, command: dict, now_us: int) -> Outputs:
        """An operator command for the alarm book (stream/schemas/alert-command.schema.json).
        A refused command comes back in ``Outputs.command_error``; it never raises."""
        outputs = Outputs(asset_id=command.get("asset_id") if isinstance(command, dict) else None)
        if self.diagnosis is None:
            outputs.command_error = "fault alarms are off in this worker (fusion.enabled is false, or it runs the rules role)"
            return outputs
        asset_id = outputs.asset_id
        if isinstance(asset_id, str) and asset_id in self._assets:
            self.diagnosis.restore(asset_id, self.diagnosis_store)
        outputs.add_diagnosis(self.diagnosis.command(command, now_us))
        return outputs

    def learn_from_labeled(self, asset_type: str, records) -> Outputs:
        """Teach fusion's network of an asset type from labeled history (a learned type's
        faults get their pattern this way): records are ``(evidence, state)`` with the
        evidence a StepEvidence, its dict or a FusionResult (``keep_fusion`` keeps them
        in a replay). What the type learned before comes from ``diagnosis_store`` first;
        the network's new state comes back in ``Outputs.diagnosis_state``
        ("network:<type>"): store it (``apply_diagnosis_state``) and a restart keeps it.
        Raises ValueError when fusion is off or no asset here has that type."""
        if self.diagnosis is None:
            raise ValueError("fusion is off in this pipeline (fusion.enabled is false, or detection is not full): nothing to teach")
        outputs = Outputs()
        outputs.add_diagnosis(self.diagnosis.learn_from_labeled(asset_type, records, self.diagnosis_store))
        return outputs

    def tick(self, now_us: int) -> Outputs:
        """Wall-clock housekeeping of the alarm book (shelving that ran out)."""
        outputs = Outputs()
        if self.diagnosis is not None:
            outputs.add_diagnosis(self.diagnosis.tick(now_us))
        return outputs

    @property
    def pending_sequences(self) -> int:
        return len(self.sequences) if self.sequences is not None else 0

    def flush(self) -> Outputs:
        """Close every open window of every asset (the end of an offline replay)."""
        outputs = Outputs()
        for asset in self._assets.values():
            if asset.detection is not None:
                detected = asset.detection.flush()
                self._collect(outputs, asset, detected)
                if self.diagnosis is not None and detected.windows:
                    self.diagnosis.restore(asset.asset.id, self.diagnosis_store)
                    scores = [s for s in detected.scores if s["asset_id"] == asset.asset.id]
                    outputs.add_diagnosis(self.diagnosis.process(asset.asset, detected.windows, scores, [], None, 0.0, False))
        outputs.scores.extend(self.flush_sequences())
        return outputs

    def deadletter(self, raw: bytes, error: Exception, source: Source | None) -> dict:
        """The dead-letter message for a rejected input: the reason and the original bytes.

        Inputs above MAX_DEADLETTER_PAYLOAD are not copied (base64 would push the
        dead letter past Kafka's message size limit and crash the send): the
        source offset then points at the original on the readings topic."""
        size = len(raw) if raw is not None else 0
        copy = raw is not None and size <= MAX_DEADLETTER_PAYLOAD
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "deadletter",
            "error": _error_kind(error),
            "reason": str(error),
            "source": source.as_dict() if source else None,
            "key_b64": base64.b64encode(source.key).decode() if source and source.key is not None else None,
            "payload_b64": base64.b64encode(bytes(raw)).decode() if copy else None,
            "payload_size": size,
            "rejected_at": utc_iso(int(self.clock() * 1e6)),
        }
