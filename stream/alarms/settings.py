"""The alarm section of the configuration: thresholds, delays, priorities, floods.

In the plant file (the worker wires it under ``alarms:``)::

    alarms:
      on_threshold: 0.7          # P(fault) at or above this, for on_delay_s, raises
      off_threshold: 0.3         # at or below this, for off_delay_s, returns to normal
      on_delay_s: 20
      off_delay_s: 60
      realarm_after_s: 300
      priority_bands: [0.85, 0.95]
      priority_matrix:           # one priority per band, per asset criticality
        low:    [low, low, medium]
        medium: [low, medium, high]
        high:   [medium, high, urgent]
      flood_rate: 10             # more than 10 alarms in 600 s in one area is a flood
      flood_window_s: 600
      flood_end_rate: 5          # ... which ends when fewer than 5 were raised in 600 s
      max_shelve_s: 28800
      suppress_in: [stopped, maintenance]
      assets:
        pump-3:
          machine_state:
            tag: run_state       # a tag of pump-3 whose value says whether it runs
            states: {running: [1], stopped: [0], maintenance: [2, 3]}

Every default is the recommendation of ISA-18.2 / EEMUA 191 where one exists;
the reasons are next to each field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from stream.config import Identifier, _Section

Priority = Literal["low", "medium", "high", "urgent"]
Criticality = Literal["low", "medium", "high"]
MachineState = Literal["running", "stopped", "maintenance"]

#: priorities in rising order: an escalation moves right in this list.
PRIORITY_ORDER: tuple[str, ...] = ("low", "medium", "high", "urgent")


class MachineStateMapping(_Section):
    """Which values of one tag mean running, stopped or in maintenance.

    A value listed under no state reads as "unknown", which suppresses nothing:
    an unexpected PLC code must not silence fault alarms.
    """

    #: a tag of the asset (its id in the asset's tags), e.g. a PLC run-state word.
    tag: Identifier
    #: state -> the tag values that mean it, e.g. {running: [1], stopped: [0], maintenance: [2]}.
    states: dict[MachineState, list[float | str]] = Field(min_length=1)
    #: machine states that suppress this asset's alarms; unset: alarms.suppress_in.
    suppress_in: list[MachineState] | None = None

    @model_validator(mode="after")
    def _values_unambiguous(self) -> "MachineStateMapping":
        seen: dict[str, str] = {}
        for state, values in self.states.items():
            for value in values:
                key = _value_key(value)
                if key in seen and seen[key] != state:
                    raise ValueError(f"value {value!r} of tag {self.tag} is listed under both {seen[key]} and {state}: give each value one state")
                seen[key] = state
        return self

    def state_of(self, value) -> str | None:
        """The machine state a tag value means: running/stopped/maintenance, "unknown"
        for a value listed nowhere, None for no value at all (NaN, Bad quality)."""
        if value is None or (isinstance(value, float) and value != value):
            return None
        key = _value_key(value)
        for state, values in self.states.items():
            if any(_value_key(v) == key for v in values):
                return state
        return "unknown"


def _value_key(value) -> str:
    # Readings arrive as float64 while YAML lists 1 or true or "RUN": 1, 1.0 and
    # true must be the same value, "RUN" stays a string.
    if isinstance(value, (bool, int, float)):
        return repr(float(value))
    try:
        return repr(float(str(value)))
    except ValueError:
        return str(value)


class AssetAlarmSettings(_Section):
    """Alarm settings of one asset (keyed by asset id under alarms.assets)."""

    machine_state: MachineStateMapping | None = None


def _default_matrix() -> dict[str, list[str]]:
    # Rows: consequence (the asset's criticality); columns: how sure fusion is.
    # "urgent" is kept for a critical asset that is almost certainly failing, so
    # that it stays rare, as ISA-18.2 wants of its top priority.
    return {
        "low": ["low", "low", "medium"],
        "medium": ["low", "medium", "high"],
        "high": ["medium", "high", "urgent"],
    }


class AlarmSettings(_Section):
    """Fault alarms from fusion's probabilities: when they raise, return, and how loud.

    All durations are event time (the data's own clock), so replaying last
    week's data raises the same alarms at the same instants as live did; only
    shelving runs on the operator's clock.
    """

    #: P(fault) at or above this raises (after on_delay_s). 0.7: fusion is more
    #: sure than not by a clear margin, so a coin flip does not page anyone.
    on_threshold: float = Field(0.7, gt=0, le=1)
    #: P(fault) at or below this returns the alarm (after off_delay_s). Between the
    #: two thresholds is the deadband: nothing changes there, so a probability
    #: wobbling around 0.7 raises once, not every window.
    off_threshold: float = Field(0.3, ge=0, lt=1)
    #: P must stay at or above on_threshold this long before the alarm raises. 20 s
    #: spans three 10 s windows: one odd window (a load step, a pump start) raises nothing.
    on_delay_s: float = Field(20.0, ge=0, le=86_400)
    #: P must stay at or below off_threshold this long before the alarm returns to
    #: normal. Longer than the on-delay: a fault that fades for a moment is not over.
    off_delay_s: float = Field(60.0, ge=0, le=86_400)
    #: a returned alarm whose fault comes back sooner than this (measured from the
    #: return to normal until P crosses on_threshold again) re-opens the same alarm,
    #: same alert_id, and needs acknowledging again; only after this long in normal
    #: does it start a new episode with a new id. This keeps a chattering fault one
    #: alarm on the operator's list, not a new one every few minutes.
    realarm_after_s: float = Field(300.0, ge=0, le=7 * 86_400)
    #: probability band edges, ascending: [0.85, 0.95] makes three bands,
    #: below 0.85 / 0.85 up to 0.95 / 0.95 and above.
    priority_bands: list[float] = Field(default_factory=lambda: [0.85, 0.95], max_length=8)
    #: asset criticality -> one priority per band (len(priority_bands) + 1 entries).
    priority_matrix: dict[Criticality, list[Priority]] = Field(default_factory=_default_matrix)
    #: more alarms than this raised in one area within flood_window_s is an alarm
    #: flood: further alarms there are grouped into one flood alarm. ISA-18.2 and
    #: EEMUA 191 call more than 10 alarms in 10 minutes per operator a flood; an
    #: area stands for one operator's console.
    flood_rate: int = Field(10, ge=1, le=100_000)
    flood_window_s: float = Field(600.0, gt=0, le=86_400)
    #: the flood ends when fewer than this many alarms were raised in the area in the
    #: last flood_window_s (ISA-18.2: below 5 in 10 minutes). Lower than flood_rate, so
    #: a flood does not end and start again with every alarm.
    flood_end_rate: int = Field(5, ge=1, le=100_000)
    #: the longest an operator may shelve an alarm; a longer request is cut to this
    #: (the event says so). One shift: the next shift sees what was shelved.
    max_shelve_s: int = Field(28_800, ge=1, le=604_800)
    #: machine states in which an asset's alarms are suppressed (a stopped pump has no
    #: cavitation to report, and maintenance work sets off every detector).
    suppress_in: list[MachineState] = Field(default_factory=lambda: ["stopped", "maintenance"])
    #: command ids remembered per asset, so a re-sent command is applied once.
    remembered_commands: int = Field(500, ge=1, le=100_000)
    #: closed alarms kept per asset, for late comments and feedback; an older one is
    #: forgotten (and a tombstone for it goes to the alarm-state topic).
    closed_kept: int = Field(50, ge=1, le=10_000)
    #: per asset: machine-state mapping. Keyed by asset id.
    assets: dict[Identifier, AssetAlarmSettings] = {}

    @model_validator(mode="after")
    def _consistent(self) -> "AlarmSettings":
        if not self.off_threshold < self.on_threshold:
            raise ValueError(
                f"off_threshold ({self.off_threshold}) must be below on_threshold ({self.on_threshold}): "
                "the gap between them is the deadband that stops an alarm from chattering, e.g. on 0.7, off 0.3"
            )
        bands = self.priority_bands
        if any(not 0 < b <= 1 for b in bands) or any(a >= b for a, b in zip(bands, bands[1:])):
            raise ValueError(f"priority_bands must rise strictly within (0, 1], e.g. [0.85, 0.95]; got {bands}")
        missing = [c for c in ("low", "medium", "high") if c not in self.priority_matrix]
        if missing:
            raise ValueError(f"priority_matrix needs a row for every criticality; missing: {', '.join(missing)}")
        for criticality, row in self.priority_matrix.items():
            if len(row) != len(bands) + 1:
                raise ValueError(
                    f"priority_matrix.{criticality} has {len(row)} entries; with {len(bands)} priority_bands it needs "
                    f"{len(bands) + 1} (one per band, lowest probability first)"
                )
        if self.flood_end_rate > self.flood_rate:
            raise ValueError(f"flood_end_rate ({self.flood_end_rate}) must not exceed flood_rate ({self.flood_rate}): a flood must be able to end")
        return self

    @field_validator("suppress_in")
    @classmethod
    def _unique_states(cls, states):
        return list(dict.fromkeys(states))

    def priority(self, probability: float, criticality: str) -> str:
        """The priority of an alarm at this probability on an asset of this criticality."""
        band = sum(1 for edge in self.priority_bands if probability >= edge)
        return self.priority_matrix[criticality][band]

    def machine_state_of(self, asset_id: str) -> MachineStateMapping | None:
        entry = self.assets.get(asset_id)
        return entry.machine_state if entry else None

    def suppressing_states(self, asset_id: str) -> list[str]:
        mapping = self.machine_state_of(asset_id)
        return self.suppress_in if mapping is None or mapping.suppress_in is None else mapping.suppress_in
