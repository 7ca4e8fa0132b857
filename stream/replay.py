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
    batches: int = 0
    samples: int = 0

    def add(self, outputs: Outputs, keep_windows: bool, keep_messages: bool) -> None:
        self.batches += 1
        self.samples += outputs.samples
        self.alerts.extend(outputs.alerts)
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
) -> ReplayResult:
    """Run ``batches`` (event-time order) through the pipeline; close every open
    window at the end. ``on_batch`` is called after each batch (progress bars)."""
    pipeline = pipeline or Pipeline(config, max_future_check=False)
    state: dict[str, dict] = {}
    result = ReplayResult()
    for batch in batches:
        outputs = pipeline.process_batch(batch, None, state)
        outputs.apply_state(state)
        outputs.scores.extend(pipeline.flush_sequences())
        result.add(outputs, keep_windows, keep_messages)
        if on_batch is not None:
            on_batch(batch)
    end = pipeline.flush()
    result.add(end, keep_windows, keep_messages)
    result.batches -= 1  # the final flush is not a batch
    return result
