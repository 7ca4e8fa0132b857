"""Fault kinds, the fault schedule and its ground truth.

Process faults change the physics of an asset (see the models for the
signature of each kind on each asset type); sensor faults corrupt the
measurement of ONE tag and leave the process alone.

Process kinds:
    bearing_wear   gradual: damage grows linearly from 0 to the severity over
                   ``ramp_s`` (default: the whole duration, else 1800 s); vibration
                   RMS and kurtosis and the bearing temperature rise with it.
    cavitation     pumps only: suction pressure drops, head breaks down, flow and
                   discharge pressure fall and fluctuate, kurtosis jumps.
    seal_leak      pumps and compressors.
    misalignment   2x vibration, DE bearing heats most.
    imbalance      1x vibration growing with speed.
    overheating    cooling lost: winding / bearing / oil and discharge temperature.
Sensor kinds (need a tag):
    stuck          the value freezes at the measured value at the fault start.
    drift          the value drifts linearly: severity x the tag's normal span per 100 s.
    spike          isolated spikes: each sample is a spike with probability 5 %,
                   of +-(1.5..3) x severity x the normal span.
    dropout        the sensor stops answering: value NaN with quality
                   BAD_COMMUNICATION_ERROR (the OPC UA code for a lost
                   connection to an established source; BAD_NO_COMMUNICATION
                   means "never connected"). A sample is still produced for every
                   requested time, so a dropout shows as a gap of Bad samples, the
                   way the connectors report an unreachable device, never as a
                   process value.

A fault is active on ``start_s <= t < start_s + duration_s`` (seconds after the
simulation start; no duration: until the end). Process faults reach their
severity over ``ramp_s`` (defaults per kind below) and vanish at the end (the
machine was repaired); temperatures then cool down with their thermal lag.

Text syntax (CLI)::

    ASSET:KIND@START[+DURATION][*SEVERITY]          process fault
    ASSET:KIND/TAG@START[+DURATION][*SEVERITY]      sensor fault on one tag

e.g. ``pump-1:cavitation@60+120``, ``pump-1:bearing_wear@30+600*0.8``,
``pump-1:stuck/flow@40+30``. Times in seconds (a trailing ``s`` is allowed).

Ground truth: one JSON object per fault episode, all written when the
simulation starts (the whole schedule is known then); ``end`` is null for a
fault without duration. See :func:`ground_truth_record`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from connectors.simulator.models import MODEL_TYPES
from stream.wire import utc_iso

PROCESS_KINDS = ("bearing_wear", "cavitation", "seal_leak", "misalignment", "imbalance", "overheating")
SENSOR_KINDS = ("stuck", "drift", "spike", "dropout")
KINDS = PROCESS_KINDS + SENSOR_KINDS

#: default ramp (s) from onset to full severity; bearing wear: the duration.
DEFAULT_RAMP_S = {
    "bearing_wear": None,
    "cavitation": 5.0,
    "seal_leak": 10.0,
    "misalignment": 1.0,
    "imbalance": 1.0,
    "overheating": 2.0,
    "stuck": 0.0,
    "drift": 0.0,
    "spike": 0.0,
    "dropout": 0.0,
}
BEARING_WEAR_RAMP_WITHOUT_DURATION_S = 1800.0

#: per sample, during a spike fault.
SPIKE_PROBABILITY = 0.05
#: drift rate at severity 1: one normal span per this many seconds.
DRIFT_SPAN_S = 100.0

SYNTAX = (
    "write ASSET:KIND@START_S[+DURATION_S][*SEVERITY] or, for a sensor fault on one tag, "
    "ASSET:KIND/TAG@START_S[+DURATION_S][*SEVERITY], "
    "e.g. pump-1:cavitation@60+120, pump-1:bearing_wear@30+600*0.8, pump-1:stuck/flow@40+30. "
    f"Process kinds: {', '.join(PROCESS_KINDS)}; sensor kinds (need /TAG): {', '.join(SENSOR_KINDS)}"
)

_TARGET = re.compile(rf"^(?P<asset>.+):(?P<kind>{'|'.join(KINDS)})(?:/(?P<tag>.+))?$")


class FaultSpecError(ValueError):
    """A fault cannot be read or does not fit the plant; the message says why."""


@dataclass(frozen=True)
class FaultSpec:
    """One fault episode on one asset (times in seconds after the simulation start)."""

    asset_id: str
    kind: str
    start_s: float
    duration_s: float | None = None
    severity: float = 1.0
    tag: str | None = None
    ramp_s: float | None = None

    def __post_init__(self):
        where = f"fault {self.label_text()}"
        if self.kind not in KINDS:
            raise FaultSpecError(f"{where}: unknown kind {self.kind!r}; {SYNTAX}")
        if not math.isfinite(self.start_s) or self.start_s < 0:
            raise FaultSpecError(f"{where}: start_s must be a number of seconds >= 0, got {self.start_s}")
        if self.duration_s is not None and not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise FaultSpecError(f"{where}: duration_s must be > 0 seconds (or left out: until the end), got {self.duration_s}")
        if not (math.isfinite(self.severity) and self.severity > 0):
            raise FaultSpecError(f"{where}: severity must be > 0 (1.0 = the nominal fault), got {self.severity}")
        if self.ramp_s is not None and not (math.isfinite(self.ramp_s) and self.ramp_s >= 0):
            raise FaultSpecError(f"{where}: ramp_s must be >= 0 seconds, got {self.ramp_s}")
        if self.is_sensor and not self.tag:
            raise FaultSpecError(f"{where}: a {self.kind} fault is a sensor fault and needs the tag it corrupts, e.g. {self.asset_id}:{self.kind}/flow@{self.start_s:g}")
        if not self.is_sensor and self.tag:
            raise FaultSpecError(f"{where}: {self.kind} is a process fault and takes no tag (it changes the signals its physics touches)")

    # -- reading -------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> "FaultSpec":
        """Read ``ASSET:KIND[/TAG]@START[+DURATION][*SEVERITY]`` (see the module doc)."""

        def bad(why: str) -> FaultSpecError:
            return FaultSpecError(f"cannot read fault {text!r}: {why}; {SYNTAX}")

        target, at, when = text.strip().partition("@")
        if not at:
            raise bad("no '@START' found")
        m = _TARGET.match(target)
        if m is None:
            asset, colon, kind = target.rpartition(":")
            if not colon or not asset:
                raise bad("no 'ASSET:KIND' before '@'")
            raise bad(f"unknown kind {kind.split('/')[0]!r}")

        def number(part: str, name: str) -> float:
            try:
                return float(part.strip().removesuffix("s"))
            except ValueError:
                raise bad(f"{name} {part!r} is not a number") from None

        head, star, sev = when.partition("*")
        start, plus, dur = head.partition("+")
        return cls(
            asset_id=m["asset"],
            kind=m["kind"],
            start_s=number(start, "start"),
            duration_s=number(dur, "duration") if plus else None,
            severity=number(sev, "severity") if star else 1.0,
            tag=m["tag"],
        )

    @classmethod
    def from_dict(cls, doc: Mapping) -> "FaultSpec":
        """From a config mapping: ``{asset: pump-1, kind: cavitation, start_s: 60,
        duration_s: 120, severity: 1.0, tag: flow, ramp_s: 5}`` (``asset_id`` also accepted)."""
        allowed = {"asset", "asset_id", "kind", "start_s", "duration_s", "severity", "tag", "ramp_s"}
        unknown = sorted(set(doc) - allowed)
        asset = doc.get("asset", doc.get("asset_id"))
        where = f"fault {asset or '?'}:{doc.get('kind', '?')}"
        if unknown:
            raise FaultSpecError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(allowed))}")
        if not asset or "kind" not in doc or "start_s" not in doc:
            raise FaultSpecError(f"{where}: 'asset', 'kind' and 'start_s' are required")

        def num(key):
            value = doc.get(key)
            if value is None:
                return None
            try:
                return float(value)
            except (TypeError, ValueError):
                raise FaultSpecError(f"{where}: {key} must be a number, got {value!r}") from None

        return cls(
            asset_id=str(asset),
            kind=str(doc["kind"]),
            start_s=num("start_s"),
            duration_s=num("duration_s"),
            severity=1.0 if doc.get("severity") is None else num("severity"),
            tag=None if doc.get("tag") is None else str(doc["tag"]),
            ramp_s=num("ramp_s"),
        )

    @classmethod
    def coerce(cls, fault: "FaultSpec | str | Mapping") -> "FaultSpec":
        if isinstance(fault, FaultSpec):
            return fault
        if isinstance(fault, str):
            return cls.parse(fault)
        if isinstance(fault, Mapping):
            return cls.from_dict(fault)
        raise FaultSpecError(f"a fault is a FaultSpec, a string or a mapping, got {type(fault).__name__}")

    def label_text(self) -> str:
        """The fault in the text syntax."""
        target = f"{self.asset_id}:{self.kind}" + (f"/{self.tag}" if self.tag else "")
        text = f"{target}@{self.start_s:g}"
        if self.duration_s is not None:
            text += f"+{self.duration_s:g}"
        if self.severity != 1.0:
            text += f"*{self.severity:g}"
        return text

    __str__ = label_text

    # -- timing --------------------------------------------------------------

    @property
    def is_sensor(self) -> bool:
        return self.kind in SENSOR_KINDS

    @property
    def end_s(self) -> float:
        return math.inf if self.duration_s is None else self.start_s + self.duration_s

    @property
    def effective_ramp_s(self) -> float:
        if self.ramp_s is not None:
            return self.ramp_s
        default = DEFAULT_RAMP_S[self.kind]
        if default is None:  # bearing wear grows over the whole episode
            return self.duration_s if self.duration_s is not None else BEARING_WEAR_RAMP_WITHOUT_DURATION_S
        return default

    def active(self, t_s: np.ndarray) -> np.ndarray:
        t = np.asarray(t_s, dtype=float)
        return (t >= self.start_s) & (t < self.end_s)

    def envelope(self, t_s: np.ndarray) -> np.ndarray:
        """Severity over time: 0 outside the episode, ramping linearly to ``severity``."""
        t = np.asarray(t_s, dtype=float)
        ramp = self.effective_ramp_s
        since = t - self.start_s
        level = np.clip(since / ramp, 0.0, 1.0) if ramp > 0 else np.ones_like(since)
        return np.where(self.active(t), self.severity * level, 0.0)


def parse_faults(items: Iterable["FaultSpec | str | Mapping"]) -> list[FaultSpec]:
    return [FaultSpec.coerce(item) for item in items]


def check_fault(fault: FaultSpec, asset_types: Mapping[str, str]) -> None:
    """Raise FaultSpecError when ``fault`` does not fit the plant (``asset id -> type``)."""
    asset_type = asset_types.get(fault.asset_id)
    if asset_type is None:
        known = ", ".join(sorted(asset_types)) or "none"
        raise FaultSpecError(f"fault {fault}: unknown asset {fault.asset_id!r}; the simulated assets are: {known}")
    model = MODEL_TYPES[asset_type]
    if fault.is_sensor:
        if fault.tag not in model.SIGNALS:
            raise FaultSpecError(
                f"fault {fault}: asset {fault.asset_id!r} ({asset_type}) has no tag {fault.tag!r}; its tags are: {', '.join(model.SIGNALS)}"
            )
    elif fault.kind not in model.FAULTS:
        raise FaultSpecError(
            f"fault {fault}: {fault.kind} does not apply to asset {fault.asset_id!r}, a {asset_type}; "
            f"faults for a {asset_type}: {', '.join(list(model.FAULTS) + list(SENSOR_KINDS))}"
        )


def affected_tags(fault: FaultSpec, asset_type: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(all tags the fault changes, those of them that leave their normal range at severity 1)."""
    if fault.is_sensor:
        return (fault.tag,), (fault.tag,)
    signature = MODEL_TYPES[asset_type].FAULTS[fault.kind]
    return signature.tags, signature.primary


def ground_truth_record(fault: FaultSpec, asset_type: str, start_us: int) -> dict:
    """The ground truth of one fault episode, a JSON-ready dict:

    ``episode`` (the fault in text syntax), ``asset``, ``asset_type``, ``kind``,
    ``label`` (= kind), ``category`` (process | sensor), ``start`` / ``end``
    (ISO 8601 UTC event time with microseconds; ``end`` null without duration),
    ``start_us`` / ``end_us``, ``severity``, ``ramp_s``, ``tags`` (every signal the
    fault changes: the attribution ground truth), ``primary_tags`` (those that
    leave their normal range at severity 1) and ``tag`` (the corrupted tag of a
    sensor fault, else null).
    """
    tags, primary = affected_tags(fault, asset_type)
    begin = int(start_us) + int(round(fault.start_s * 1e6))
    end = None if fault.duration_s is None else int(start_us) + int(round(fault.end_s * 1e6))
    return {
        "kind": fault.kind,
        "label": fault.kind,
        "category": "sensor" if fault.is_sensor else "process",
        "episode": fault.label_text(),
        "asset": fault.asset_id,
        "asset_type": asset_type,
        "start": utc_iso(begin),
        "end": None if end is None else utc_iso(end),
        "start_us": begin,
        "end_us": end,
        "severity": fault.severity,
        "ramp_s": fault.effective_ramp_s,
        "tags": list(tags),
        "primary_tags": list(primary),
        "tag": fault.tag,
    }


def ground_truth_records(faults: Iterable[FaultSpec], asset_types: Mapping[str, str], start_us: int) -> list[dict]:
    """Ground truth of a schedule, ordered by start time (e.g. to publish to Kafka)."""
    ordered = sorted(faults, key=lambda f: (f.start_s, f.asset_id, f.kind))
    return [ground_truth_record(f, asset_types[f.asset_id], start_us) for f in ordered]


class GroundTruthWriter:
    """Writes ground-truth records as JSON Lines, one episode per line.

    The file is truncated on open unless ``append``; each record is flushed at
    once, so a reader (the evaluation) sees it while the simulation runs.
    """

    def __init__(self, path: str | Path, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a" if append else "w", encoding="utf-8")

    def write(self, record: Mapping) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()

    def write_all(self, records: Iterable[Mapping]) -> int:
        n = 0
        for record in records:
            self.write(record)
            n += 1
        return n

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "GroundTruthWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_ground_truth(path: str | Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]

