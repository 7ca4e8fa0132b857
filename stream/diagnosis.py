"""Stream 3: from evidence to named faults and alarms, per asset, in event time.

``Diagnosis`` sits after the detectors in ``stream.pipeline``: for each closed
window of the finest detector scale it hands fusion (stream.fusion) that
window's scores, the fast rules' hits and the share of Bad samples, steps the
asset's filter, and lets the alarm book (stream.alarms) judge the fault
probabilities. Operator commands and shelving expiry come in through
``command`` and ``tick``. A plain object, no Kafka: the worker's analytics role
and offline replays (backtests) drive the same code, so last week's data raises
the same alarms, with the same ids, as it did live.

What must survive a restart is handed out as state per key, for the driver's
changelog table: ``<asset id>`` -> {"fusion": ..., "alarms": ...},
``area:<area>`` -> the area's flood state and ``network:<asset type>`` -> what
labeled history and operator feedback taught that type's network. The driver passes
the table back in (``state_store``); each asset and area is restored from it the
first time it is seen, so a restarted worker carries on with the same posterior and
the same open alarms instead of raising a second id for an episode it already announced.

One network per asset type, built-in (pump, motor, ...) or learned (declared under
``fusion.asset_types``; a ``roles: tags`` type's roles are the tag ids of all the
config's assets of that type, so every worker's network has the same vocabulary).
A learned type's faults take their pattern from labeled history::

    out = diagnosis.learn_from_labeled("reactor_unit", records, state_store)
    store.update(out.state)          # "network:reactor_unit": kept over a restart

(``Pipeline.learn_from_labeled`` does the same with the pipeline's store.) Records
are ``(StepEvidence or FusionResult or its evidence dict, state)``; the fusion of every
asset of the type uses what was learned from the next step on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from stream.alarms import AlarmBook
from stream.config import AssetConfig, ServiceConfig
from stream.fusion import AssetFusion, FaultNetwork, FusionResult

log = logging.getLogger(__name__)

AREA_PREFIX = "area:"
#: fusion's posterior alone goes to the changelog at most this often per asset (event
#: time); any alarm change writes at once. Written every 1 s step, the state (a few kB
#: of JSON per asset and second) cost the analytics role more than fusion itself; a
#: restarted worker resumes from a posterior at most this old, with its alarms exact.
FUSION_SAVE_EVERY_US = 10_000_000
#: changelog key of what an asset type's network learned (operator feedback)
NETWORK_PREFIX = "network:"


@dataclass
class DiagnosisOutput:
    """What one batch, command or tick produced."""

    #: alarm events for the alerts topic (kind "alarm"), in order
    alarms: list[dict] = field(default_factory=list)
    #: (alert_id, record or None for a tombstone) for the compacted alarm-state topic
    alarm_states: list[tuple[str, dict | None]] = field(default_factory=list)
    #: changelog key -> new state (asset ids and "area:<area>")
    state: dict[str, dict] = field(default_factory=dict)
    #: fusion's verdict per step (kept for replays and backtests; the worker drops them)
    results: list[FusionResult] = field(default_factory=list)
    #: the operator command's error, if it was refused
    error: str | None = None
    #: labeled records learned (Diagnosis.learn_from_labeled)
    learned: int = 0

    def extend(self, other: "DiagnosisOutput") -> None:
        self.alarms.extend(other.alarms)
        self.alarm_states.extend(other.alarm_states)
        self.state.update(other.state)
        self.results.extend(other.results)


class Diagnosis:
    """Fusion and alarms for the assets of one pipeline."""

    def __init__(self, config: ServiceConfig, assets: list[AssetConfig], keep_results: bool = False):
        self.config = config
        self.settings = config.fusion
        self.keep_results = keep_results
        self._assets = {a.id: a for a in assets}
        # One network per asset type: labeled learning and operator feedback teach the type.
        # A roles: tags type's vocabulary is the tags of all the config's assets of the type
        # (not only this pipeline's), so every worker learns and stores over the same roles.
        self.networks = {t: FaultNetwork.for_assets(t, config.assets, self.settings) for t in sorted({a.type for a in assets})}
        self.book = AlarmBook(config.alarms, assets, {t: n.fault_words() for t, n in self.networks.items()})
        self.fusion = {a.id: AssetFusion(a, self.networks[a.type], self.settings) for a in assets}
        finest = min(config.detector_scales, key=lambda s: (s.hop_us, s.length_us))
        #: fusion steps once per closed window of this scale
        self.step_scale = finest.name
        self._detectors = set(self.settings.detectors)
        self._restored: set[str] = set()
        self._saved_at: dict[str, int] = {}
        #: the fusion result that last moved each open alarm, for operator feedback
        self._last_result: dict[str, FusionResult] = {}

    # -- restart -------------------------------------------------------------------------------

    def restore(self, asset_id: str, state_store: Mapping[str, dict] | None) -> None:
        """Take the asset's (and its area's) state from the changelog once, at first sight."""
        if asset_id in self._restored:
            return
        self._restored.add(asset_id)
        asset = self._assets[asset_id]
        area_key = AREA_PREFIX + asset.area
        if state_store is None:
            return
        saved = state_store.get(asset_id) or {}
        if saved.get("fusion"):
            self.fusion[asset_id] = AssetFusion.from_state(asset, self.networks[asset.type], self.settings, saved["fusion"])
        if saved.get("alarms"):
            self.book.restore(asset_id, saved["alarms"])
        if area_key not in self._restored:
            self._restored.add(area_key)
            area = state_store.get(area_key)
            if area:
                self.book.restore_area(asset.area, area)
        self._restore_network(asset.type, state_store)

    def _restore_network(self, asset_type: str, state_store: Mapping[str, dict] | None) -> None:
        """What the type's network learned, from the changelog, once (at first sight)."""
        network_key = NETWORK_PREFIX + asset_type
        if network_key in self._restored:
            return
        self._restored.add(network_key)
        learned = (state_store or {}).get(network_key)
        if learned:
            try:
                # learned over other roles: a warning, and the default tables
                self.networks[asset_type].load_state(learned)
            except ValueError as exc:  # learned for another model version: start from the defaults
                log.warning("fusion: %s; starting %s from the default tables", exc, asset_type)

    # -- learning ------------------------------------------------------------------------------

    def learn_from_labeled(self, asset_type: str, records, state_store: Mapping[str, dict] | None = None) -> DiagnosisOutput:
        """Teach the network of ``asset_type`` from labeled history: records are
        ``(evidence, state)`` or ``{"evidence": ..., "label": state}``, the evidence a
        StepEvidence, its dict or a FusionResult (FaultNetwork.learn_from_labeled). Every
        asset of the type fuses with what was learned from its next step on.

        What the type learned before is taken from ``state_store`` first (once, as at an
        asset's first sight), so that it is added to, not replaced later. The result's
        ``state`` holds the network's new state under "network:<type>": store it (as
        after operator feedback) and a restarted worker keeps what was learned."""
        network = self.networks.get(asset_type)
        if network is None:
            raise ValueError(f"no asset of type {asset_type!r} here; the types of these assets: {', '.join(self.networks)}")
        self._restore_network(asset_type, state_store)
        out = DiagnosisOutput()
        out.learned = network.learn_from_labeled(records)
        if out.learned:
            out.state[NETWORK_PREFIX + asset_type] = network.to_state()
        return out

    # -- driving -------------------------------------------------------------------------------

    def process(
        self,
        asset: AssetConfig,
        windows: list,
        scores: list[dict],
        rule_alerts: list[dict],
        machine_readings: tuple[np.ndarray, np.ndarray] | None,
        bad_fraction: float,
        replayed: bool,
    ) -> DiagnosisOutput:
        """One batch of one asset: ``windows`` (stream.detection.WindowResult) closed
        by it, their ``scores``, the batch's fast-rule alert messages, the readings of
        the asset's machine-state tag (event times, values) and the batch's share of
        Bad samples."""
        out = DiagnosisOutput()
        fusion = self.fusion[asset.id]
        if machine_readings is not None:
            times, values = machine_readings
            self._machine_state(asset.id, times, values)
        fusion.observe_rules(rule_alerts)
        fusion.observe_quality(bad_fraction)
        steps = sorted({w.window.end_us for w in windows if w.scale == self.step_scale})
        usable = sorted((s for s in scores if s["detector"] in self._detectors), key=lambda s: s["window_end_us"])
        i = 0
        for end_us in steps:
            j = i
            while j < len(usable) and usable[j]["window_end_us"] <= end_us:
                j += 1
            fusion.observe_scores(usable[i:j])
            i = j
            out.extend(self._step(asset, fusion, end_us, replayed))
        if i < len(usable):  # scores of coarser windows ending after the last step: the next step counts them
            fusion.observe_scores(usable[i:])
        if steps and steps[-1] - self._saved_at.get(asset.id, -FUSION_SAVE_EVERY_US) >= FUSION_SAVE_EVERY_US:
            out.state[asset.id] = self._asset_state(asset.id)
        self._collect_changes(out)
        return out

    def observe_late_scores(self, scores: list[dict]) -> None:
        """Scores that arrive after their batch (the LSTM autoencoder's cross-asset
        micro-batches): counted at their asset's next step, if still fresh."""
        by_asset: dict[str, list[dict]] = {}
        for s in scores:
            if s["detector"] in self._detectors and s["asset_id"] in self.fusion:
                by_asset.setdefault(s["asset_id"], []).append(s)
        for asset_id, found in by_asset.items():
            self.fusion[asset_id].observe_scores(found)

    def command(self, command: dict, now_us: int) -> DiagnosisOutput:
        """An operator command (alert-command.schema.json): acknowledge, shelve, ...;
        feedback also teaches the asset type's network, within its bounds."""
        out = DiagnosisOutput()
        events, error = self.book.command(command, now_us)
        out.alarms.extend(events)
        out.error = error
        # only a feedback the book took (a re-sent command_id is answered with nothing)
        applied = any(e["event"] == "feedback" for e in events)
        if error is None and applied and self._feedback(command):
            asset_type = self._assets[command["asset_id"]].type
            out.state[NETWORK_PREFIX + asset_type] = self.networks[asset_type].to_state()
        self._collect_changes(out)
        return out

    def tick(self, now_us: int) -> DiagnosisOutput:
        """Wall-clock housekeeping: ends expired shelving."""
        out = DiagnosisOutput()
        out.alarms.extend(self.book.tick(now_us))
        self._collect_changes(out)
        return out

    # -- inside --------------------------------------------------------------------------------

    def _step(self, asset: AssetConfig, fusion: AssetFusion, end_us: int, replayed: bool) -> DiagnosisOutput:
        out = DiagnosisOutput()
        result = fusion.step(end_us)
        if self.keep_results:
            out.results.append(result)
        context = {**result.context(), "replayed": replayed}
        events = self.book.evaluate(asset.id, end_us, result.fault_probabilities, context)
        for event in events:
            self._last_result[event["alert_id"]] = result
        out.alarms.extend(events)
        return out

    def _machine_state(self, asset_id: str, times: np.ndarray, values: np.ndarray) -> None:
        # Only changes matter to the book: feed the first reading and every change.
        if times.size == 0:
            return
        keep = np.ones(times.size, dtype=bool)
        keep[1:] = values[1:] != values[:-1]
        for t, v in zip(times[keep].tolist(), values[keep].tolist()):
            self.book.machine_state(asset_id, t, v)

    def _feedback(self, command: dict) -> bool:
        """Teach the network from an operator's verdict; True if it learned."""
        alert_id = command.get("alert_id")
        asset_id = command.get("asset_id")
        fusion = self.fusion.get(asset_id)
        result = self._last_result.get(alert_id)
        if fusion is None or result is None:
            # After a restart the evidence that raised the alarm is gone; the alarm
            # keeps the label (for retraining), the network learns nothing from it.
            log.info("feedback on %s kept on the alarm; its evidence is not in memory, so fusion learns nothing from it", alert_id)
            return False
        label = command["label"]
        fault = command.get("fault")
        try:
            change = fusion.feedback(result, label, fault=fault, user=command.get("user"))
        except ValueError as exc:  # e.g. a fault this asset type does not know
            log.warning("feedback on %s not learned: %s", alert_id, exc)
            return False
        return change.state is not None

    def _asset_state(self, asset_id: str) -> dict:
        fusion = self.fusion[asset_id]
        if fusion.time_us is not None:
            self._saved_at[asset_id] = fusion.time_us
        return {"fusion": fusion.to_state(), "alarms": self.book.state_of(asset_id)}

    def _collect_changes(self, out: DiagnosisOutput) -> None:
        for alert_id in AlarmBook.touched(out.alarms):
            record = self.book.snapshot(alert_id)
            if record is not None:
                out.alarm_states.append((alert_id, record))
        out.alarm_states.extend((alert_id, None) for alert_id in self.book.take_tombstones())
        assets, areas = self.book.take_changes()
        for asset_id in assets:
            out.state[asset_id] = self._asset_state(asset_id)
        for area in areas:
            out.state[AREA_PREFIX + area] = self.book.area_state(area)
