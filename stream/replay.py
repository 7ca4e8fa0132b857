"""The offline driver: history through the very pipeline the worker runs, no Kafka.

The worker (stream.worker) hands each Kafka message to ``Pipeline.process``;
this module hands it reading batches from history (stream.history): a
simulator run, a historian's CSV export, a replay of the ``readings`` topic.
Same windows, features, rules and detectors, in event time, so replaying last
week gives what the worker said live. ``edgewatch train`` uses it to build the
feature history detectors learn from; the backtest will use it to score a
labelled recording.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from stream.config import ServiceConfig
from stream.pipeline import Outputs, Pipeline
from stream.wire import ReadingBatch


@dataclass
class ReplayResult:
    """Everything a replay produced, in order."""

    alerts: list[dict] = field(default_factory=list)
    features: list[dict] = field(default_factory=list)
    scores: list[dict] = field(default_factory=list)
    deadletters: list[dict] = field(default_factory=list)
    #: (asset_id, stream.detection.WindowResult) for every closed window, when kept
    windows: list = field(default_factory=list)
    #: fault alarm events (kind "alarm") and the alarm-state records, in order
    alarms: list[dict] = field(default_factory=list)
    alarm_states: list[tuple] = field(default_factory=list)
    #: fusion's verdict per step, when the pipeline keeps them (keep_fusion)
    fusion: list = field(default_factory=list)
    #: fusion's and the alarm book's state at the end, per changelog key (what a
    #: worker would have in its table): hand it to the next pipeline to carry on
    diagnosis_state: dict = field(default_factory=dict)
    batches: int = 0
    samples: int = 0

    def add(self, outputs: Outputs, keep_windows: bool, keep_messages: bool) -> None:
        self.batches += 1
        self.samples += outputs.samples
        self.alerts.extend(outputs.alerts)
        self.alarms.extend(outputs.alarms)
        self.alarm_states.extend(outputs.alarm_states)
        self.fusion.extend(outputs.fusion)
        if outputs.deadletter is not None:
            self.deadletters.append(outputs.deadletter)
        if keep_messages:
            self.features.extend(outputs.features)
            self.scores.extend(outputs.scores)
        if keep_windows:
            self.windows.extend(outputs.windows)


def replay(
    config: ServiceConfig,
    batches: Iterable[ReadingBatch],
    *,
    pipeline: Pipeline | None = None,
    keep_windows: bool = False,
    keep_messages: bool = True,
    on_batch: Callable[[ReadingBatch], None] | None = None,
    flush: bool = True,
) -> ReplayResult:
    """Run ``batches`` (event-time order) through the pipeline; close every open
    window at the end (``flush``; False leaves them open, as a worker that stops
    would). ``on_batch`` is called after each batch (progress bars)."""
    pipeline = pipeline or Pipeline(config, max_future_check=False)
    state: dict[str, dict] = {}
    result = ReplayResult()
    if pipeline.diagnosis_store is None:
        pipeline.diagnosis_store = {}
    result.diagnosis_state = pipeline.diagnosis_store
    for batch in batches:
        outputs = pipeline.process_batch(batch, None, state)
        outputs.apply_state(state)
        outputs.scores.extend(pipeline.flush_sequences())
        outputs.apply_diagnosis_state(result.diagnosis_state)
        result.add(outputs, keep_windows, keep_messages)
        if on_batch is not None:
            on_batch(batch)
    if flush:
        end = pipeline.flush()
        end.apply_diagnosis_state(result.diagnosis_state)
        result.add(end, keep_windows, keep_messages)
        result.batches -= 1  # the final flush is not a batch
    return result
