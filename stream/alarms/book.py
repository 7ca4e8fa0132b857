"""The alarm book: every fault alarm of the assets one worker owns, driven by fusion's
probabilities in event time and by operators' commands.

A plain object, no Kafka: the worker (and a backtest) feeds it and publishes what
it returns. Feed it in this order per asset, as the data arrives:

* ``machine_state(asset_id, t_us, value)`` for each reading of the asset's
  machine-state tag (``machine_state_tag(asset_id)`` names it);
* ``evaluate(asset_id, t_us, probabilities, context)`` for each fused window;
* ``command(cmd, now_us)`` for each message of the alert-commands topic;
* ``tick(now_us)`` now and then (every few seconds), to end expired shelving.

Each returns alarm events (stream/schemas/alarm.schema.json) for the alerts topic (kind "alarm").
For each alert id they touch (``touched(events)``), publish ``snapshot(alert_id)`` on
the compacted alarm-state topic; for each id of ``take_tombstones()`` a tombstone.
After a batch, ``take_changes()`` says which assets' and areas' state to write to the
changelog (``state_of(asset_id)``, ``area_state(area)``); a restarted worker hands
them back with ``restore`` / ``restore_area`` and carries on with the same ids.

Replays are harmless: an evaluation at or before the last one judged for the asset
is ignored (at-least-once delivery re-sends what the changelog already holds), and
a command whose command_id was applied already is answered with nothing.
"""

from __future__ import annotations

import copy
import math
import re

from stream.alarms import flood as floods
from stream.alarms import lifecycle as life
from stream.alarms import machine_state as machine
from stream.alarms import messages as text
from stream.alarms.ids import FLOOD_FAULT, alarm_id, event_id
from stream.alarms.operator import OperatorCommands
from stream.alarms.settings import AlarmSettings
from stream.config import AssetConfig

STATE_VERSION = 1
_FAULT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}$")
#: the order suppression causes are listed in (stable, so state compares equal).
_CAUSES = ("machine_state", "out_of_service")


def _us(seconds: float) -> int:
    return int(round(seconds * 1_000_000))


def _new_asset_state() -> dict:
    return {
        "version": STATE_VERSION,
        "points": {},
        "closed": [],
        "out_of_service": None,
        "machine_states": [],
        "last_evaluated_us": None,
        "commands": [],
    }


def _probability(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    if math.isnan(value):
        return None  # fusion had nothing to say about this fault in this window
    return min(1.0, max(0.0, value))


class AlarmBook(OperatorCommands):
    """Fault alarms per (asset, fault) with ISA-18.2 states, shelving, suppression and floods.

    ``command`` and ``tick`` (operator commands, shelving expiry) are in stream.alarms.operator."""

    def __init__(self, settings: AlarmSettings, assets: list[AssetConfig], fault_words: dict[str, dict[str, str]] | None = None):
        self.settings = settings
        self._assets = {a.id: a for a in assets}
        #: asset id -> fault -> how its messages say it, where that is not the fault's name
        #: (a learned asset type's declared words: FaultNetwork.fault_words, by asset type)
        self._words = {a.id: dict((fault_words or {}).get(a.type) or {}) for a in assets}
        for asset_id, entry in settings.assets.items():
            asset = self._assets.get(asset_id)
            if asset is None:
                raise ValueError(f"alarms.assets names asset {asset_id!r}, which is not configured (configured: {text.listing(self._assets)})")
            mapping = entry.machine_state
            if mapping is not None and mapping.tag not in {t.id for t in asset.tags}:
                raise ValueError(
                    f"alarms.assets.{asset_id}.machine_state.tag is {mapping.tag!r}, which is not a tag of {asset_id} "
                    f"(its tags: {text.listing({t.id: t for t in asset.tags})})"
                )
        self._on_delay_us = _us(settings.on_delay_s)
        self._off_delay_us = _us(settings.off_delay_s)
        self._realarm_us = _us(settings.realarm_after_s)
        self._window_us = _us(settings.flood_window_s)
        self._states: dict[str, dict] = {}
        self._areas: dict[str, dict] = {}
        #: alert_id -> ("asset", asset_id) or ("area", area), for commands and snapshots
        self._index: dict[str, tuple[str, str]] = {}
        self._changed_assets: set[str] = set()
        self._changed_areas: set[str] = set()
        self._tombstones: list[str] = []
        #: evaluations ignored because the asset had been judged at or after their event time
        self.stale_evaluations = 0

    def _fault_words(self, asset_id: str, fault: str | None) -> str:
        """How messages say a fault of this asset: its declared words, else its name in words."""
        return self._words.get(asset_id, {}).get(fault) or text.fault_words(fault)

    # ----------------------------------------------------------------------- inputs

    def machine_state_tag(self, asset_id: str) -> str | None:
        """The tag whose readings ``machine_state`` wants for this asset, if one is configured."""
        mapping = self.settings.machine_state_of(asset_id)
        return mapping.tag if mapping else None

    def machine_state(self, asset_id: str, event_time_us: int, value) -> str | None:
        """Feed one reading of the asset's machine-state tag (its raw value: 0, 1, "RUN").

        Returns the machine state it means (running, stopped, maintenance, or
        unknown for a value the mapping does not list); None when the asset has no
        mapping or the value is missing (NaN: the last known state stays). The
        state takes effect for evaluations at or after ``event_time_us``.
        """
        mapping = self.settings.machine_state_of(asset_id)
        if mapping is None:
            return None
        self._asset(asset_id)
        state = mapping.state_of(value)
        if state is not None and machine.record(self._state(asset_id)["machine_states"], int(event_time_us), state):
            self._changed_assets.add(asset_id)
        return state

    def evaluate(self, asset_id: str, event_time_us: int, probabilities: dict, context: dict | None = None) -> list[dict]:
        """Judge fusion's fault probabilities of one asset at one event time.

        ``probabilities``: fault name -> P(fault) in 0..1 (None or NaN: no verdict,
        nothing changes for that fault). ``context``: ``replayed`` (bool: backfill,
        so events are marked late and not annunciated), ``top_tags`` [{id, value,
        normal_range, feature}], ``evidence`` [{detector, scale, p_value}],
        ``model_versions`` {detector: version}, ``explanation`` (one line), and
        optionally ``by_fault`` {fault: {same keys}} where fusion explains each
        fault apart. Returns the alarm events, in order.
        """
        asset = self._asset(asset_id)
        t = int(event_time_us)
        state = self._state(asset_id)
        if state["last_evaluated_us"] is not None and t <= state["last_evaluated_us"]:
            self.stale_evaluations += 1
            return []
        # Kept in memory at once, but written to the changelog only with a real change:
        # an evaluation that changed nothing changes nothing when replayed either.
        state["last_evaluated_us"] = t
        context = context or {}
        late = bool(context.get("replayed", False))
        machine_now = machine.state_at(state["machine_states"], t)
        causes = self._causes(asset_id, state, machine_now)
        events: list[dict] = []
        for fault in sorted(probabilities):
            p = _probability(probabilities[fault])
            if p is None:
                continue
            _check_fault(fault)
            point = state["points"].get(fault)
            if point is None:
                point = state["points"][fault] = life.new_point()
            changed = life.follow(point, t, p, self.settings.on_threshold, self.settings.off_threshold)
            episode = point["episode"]
            if life.is_open(episode) and episode["suppressed_by"] != causes:
                events.append(self._suppression_changed(asset, point, causes, t, late, None))
                changed = True
            due = life.due(point, t, self._on_delay_us, self._off_delay_us)
            if due == "raise":
                events += self._raise(asset, point, fault, t, p, causes, late, context)
                changed = True
            elif due == "return":
                events.append(self._return(asset, point, t, p, late))
                changed = True
            elif life.is_open(episode) and point["active"]:
                priority = self.settings.priority(p, asset.criticality)
                if life.rises(episode["priority"], priority):
                    events.append(self._escalate(asset, point, t, p, priority, late, context))
                    changed = True
            if changed:
                self._changed_assets.add(asset_id)
        events += self._flood_clock(asset.area, t)
        return events

    # ----------------------------------------------------------------------- state for the worker

    def state_of(self, asset_id: str) -> dict:
        """The asset's alarm state, JSON-serialisable, for the worker's changelog."""
        self._asset(asset_id)
        return copy.deepcopy(self._states.get(asset_id) or _new_asset_state())

    def restore(self, asset_id: str, state: dict | None) -> None:
        """Take back what ``state_of`` gave (after a restart or a rebalance); None forgets the asset."""
        self._asset(asset_id)
        for alert_id in [k for k, where in self._index.items() if where == ("asset", asset_id)]:
            del self._index[alert_id]
        state = copy.deepcopy(state) if state else _new_asset_state()
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"alarm state of {asset_id} has version {state.get('version')!r}; this edgewatch reads version {STATE_VERSION}")
        self._states[asset_id] = state
        for episode in self._episodes(state):
            self._index[episode["alert_id"]] = ("asset", asset_id)

    def area_state(self, area: str) -> dict:
        """An area's flood state, JSON-serialisable, for the worker's changelog (key: the area)."""
        return copy.deepcopy(self._areas.get(area) or floods.new_area())

    def restore_area(self, area: str, state: dict | None) -> None:
        for alert_id in [k for k, where in self._index.items() if where == ("area", area)]:
            del self._index[alert_id]
        state = copy.deepcopy(state) if state else floods.new_area()
        self._areas[area] = state
        for flood in ([state["flood"]] if state["flood"] else []) + state["closed"]:
            self._index[flood["alert_id"]] = ("area", area)

    def take_changes(self) -> tuple[set[str], set[str]]:
        """(asset ids, areas) whose state changed since the last call: write those to the changelog."""
        changed = (self._changed_assets, self._changed_areas)
        self._changed_assets, self._changed_areas = set(), set()
        return changed

    def take_tombstones(self) -> list[str]:
        """Alert ids the book has forgotten since the last call (closed, and older than
        ``closed_kept`` newer closed alarms of their asset): publish a tombstone for each
        on the alarm-state topic."""
        out, self._tombstones = self._tombstones, []
        return out

    def snapshot(self, alert_id: str) -> dict | None:
        """The alarm's current-state record (alarm-state.schema.json); None if unknown."""
        where = self._index.get(alert_id)
        if where is None:
            return None
        kind, key = where
        if kind == "area":
            area = self._areas[key]
            flood = next(f for f in ([area["flood"]] if area["flood"] else []) + area["closed"] if f["alert_id"] == alert_id)
            return text.snapshot(self._flood_fields(flood), flood, annunciated=flood["state"] in life.OPEN_STATES)
        asset = self._assets[key]
        point, episode = self._find(key, alert_id)
        fields = text.alarm_fields(asset, episode, self._shelving(point, episode), self._machine_now(self._states[key]))
        return text.snapshot(fields, episode, annunciated=self._shown(asset, point, episode))

    @staticmethod
    def touched(events: list[dict]) -> list[str]:
        """The alert ids whose alarm-state record these events changed, in order: the
        alarms themselves and, for a flood that ended, its members (shown again)."""
        ids: dict[str, None] = {}
        for event in events:
            ids[event["alert_id"]] = None
            if event["event"] == "flood_ended":
                ids.update((m["alert_id"], None) for m in event["flood"]["members"])
        return list(ids)

    def known_alarms(self) -> list[str]:
        """Every alert id the book still holds (open, and closed ones still kept)."""
        return list(self._index)

    def knows_asset(self, asset_id: str) -> bool:
        return asset_id in self._assets

    def open_alarms(self, asset_id: str) -> list[str]:
        """The alert ids of the asset's open alarms (for status displays and tests)."""
        state = self._states.get(asset_id) or _new_asset_state()
        return [p["episode"]["alert_id"] for _, p in sorted(state["points"].items()) if life.is_open(p["episode"])]

    # ----------------------------------------------------------------------- the lifecycle

    def _raise(self, asset, point, fault, t, p, causes, late, context) -> list[dict]:
        settings = self.settings
        priority = settings.priority(p, asset.criticality)
        ctx = text.context_for(context, fault)
        point["active"] = True
        words = self._fault_words(asset.id, fault)
        if life.reopens(point, self._realarm_us):
            episode = point["episode"]
            life.reopen(episode, t, p, priority, ctx)
            episode["suppressed_by"] = causes
            message = text.with_why(f"{asset.id}: {words} {text.percent(p)} again, same alarm re-opened", episode["context"])
            return [self._event("reopened", asset, point, episode, late=late, t=t, message=message)]
        state = self._states[asset.id]
        if point["episode"] is not None:  # closed, and long enough ago: keep it for late feedback
            self._keep_closed(asset.id, state, point["episode"])
        start = point["above_since_us"]
        episode = life.new_episode(alarm_id(asset.id, fault, start), fault, t, p, priority, late=late, suppressed_by=causes, context=ctx)
        episode["episode_start_us"] = start
        point["episode"] = episode
        self._index[episode["alert_id"]] = ("asset", asset.id)
        flood_events = []
        if point["shelved"] is None and not causes and not late:
            flood_events = self._count_for_flood(asset, episode, t)
        message = text.with_why(f"{asset.id}: {words} {text.percent(p)}", ctx)
        if episode["flood_id"]:
            message += " (grouped in the area's alarm flood)"
        return [self._event("raised", asset, point, episode, late=late, t=t, message=message)] + flood_events

    def _return(self, asset, point, t, p, late) -> dict:
        episode = point["episode"]
        point["active"], point["returned_us"] = False, t
        event = life.return_to_normal(episode, t, p)
        words = self._fault_words(asset.id, episode["fault"])
        if event == "returned":
            message = f"{asset.id}: {words} down to {text.percent(p)}, back to normal; acknowledge to close the alarm"
        else:
            who = episode["acknowledged"]["user"] if episode["acknowledged"] else "an operator"
            message = f"{asset.id}: {words} down to {text.percent(p)}, back to normal; closed (acknowledged by {who})"
        return self._event(event, asset, point, episode, late=late, t=t, message=message)

    def _escalate(self, asset, point, t, p, priority, late, context) -> dict:
        episode = point["episode"]
        before = episode["priority"]
        episode.update(priority=priority, probability=p, last_change_us=t, source_data_time_us=t, context=text.context_for(context, episode["fault"]))
        message = text.with_why(f"{asset.id}: {self._fault_words(asset.id, episode['fault'])} up to {text.percent(p)}, priority {before} -> {priority}", episode["context"])
        return self._event("escalated", asset, point, episode, late=late, t=t, message=message)

    def _suppression_changed(self, asset, point, causes, t, late, command) -> dict:
        """An open alarm's suppression changed (machine state at ``t``, or a command)."""
        episode = point["episode"]
        episode["suppressed_by"] = causes
        episode["last_change_us"] = t if command is None else command["at_us"]
        if command is None:
            episode["source_data_time_us"] = t
        state = self._states[asset.id]
        words = self._fault_words(asset.id, episode["fault"])
        reasons = []
        if "machine_state" in causes:
            at = machine.state_at(state["machine_states"], t) if command is None else self._machine_now(state)
            reasons.append(f"machine {at}" if at != "maintenance" else "machine in maintenance")
        if "out_of_service" in causes:
            reasons.append(f"asset out of service (by {state['out_of_service']['user']})")
        if causes:
            message = f"{asset.id}: {words} suppressed: {', '.join(reasons)}"
        else:
            message = f"{asset.id}: {words} no longer suppressed"
        kind = "suppressed" if causes else "unsuppressed"
        if command is None:
            return self._event(kind, asset, point, episode, late=late, t=t, message=message)
        return self._event(kind, asset, point, episode, late=False, t=None, message=message, command=command["fields"], cause=command["fields"]["command_id"])

    def _causes(self, asset_id: str, state: dict, machine_now: str | None) -> list[str]:
        causes = set()
        if machine_now is not None and machine_now in self.settings.suppressing_states(asset_id):
            causes.add("machine_state")
        if state["out_of_service"] is not None:
            causes.add("out_of_service")
        return [c for c in _CAUSES if c in causes]

    # ----------------------------------------------------------------------- floods

    def _count_for_flood(self, asset, episode, t) -> list[dict]:
        """Count a shown new alarm in its area; start or join the flood. Returns flood events."""
        name = asset.area
        area = self._areas.get(name)
        if area is None:
            area = self._areas[name] = floods.new_area()
        floods.advance(area, t, self._window_us)
        rate = floods.count_raise(area, t, episode["alert_id"])
        self._changed_areas.add(name)
        member = {"asset_id": asset.id, "fault": episode["fault"], "alert_id": episode["alert_id"]}
        flood = area["flood"]
        if flood is None and rate <= self.settings.flood_rate:
            return []
        if flood is None:
            flood = floods.start(area, name, t, member, episode["priority"], rate)
            self._index[flood["alert_id"]] = ("area", name)
            kind = "flood_started"
            message = (
                f"{name}: alarm flood, {rate} alarms in {text.seconds(self.settings.flood_window_s)}; new alarms here are grouped "
                f"(first: {asset.id} {self._fault_words(asset.id, episode['fault'])})"
            )
        else:
            floods.join(flood, t, member, episode["priority"], rate)
            kind = "flood_updated"
            message = f"{name}: alarm flood, {len(flood['members'])} alarms grouped (latest: {asset.id} {self._fault_words(asset.id, episode['fault'])})"
        episode["flood_id"] = flood["alert_id"]
        cause = t if kind == "flood_started" else episode["alert_id"]
        return [self._flood_event(kind, flood, t=t, cause=cause, message=message)]

    def _flood_clock(self, name: str, t: int) -> list[dict]:
        """Advance the area's clock; end its flood once the rate has fallen back."""
        area = self._areas.get(name)
        if area is None:
            return []  # no alarm was ever counted there
        if floods.advance(area, t, self._window_us):
            self._changed_areas.add(name)
        if not floods.end_due(area, self.settings.flood_end_rate):
            return []
        flood, forgotten = floods.end(area, t)
        self._forget(forgotten)
        self._changed_areas.add(name)
        still_open = sum(1 for m in flood["members"] if self._is_open_alarm(m["asset_id"], m["alert_id"]))
        message = (
            f"{name}: alarm flood over, {len(flood['members'])} alarms were grouped; "
            f"{still_open} of them still open and shown on their own again"
        )
        return [self._flood_event("flood_ended", flood, t=t, cause=t, message=message)]

    def _is_open_alarm(self, asset_id: str, alert_id: str) -> bool:
        _, episode = self._find(asset_id, alert_id)
        return episode is not None and life.is_open(episode)

    # ----------------------------------------------------------------------- events and lookups

    def _event(self, kind, asset, point, episode, *, late, t, message, command=None, cause=None) -> dict:
        """Build one alarm event and note it on the alarm (its record's last event and line)."""
        episode["last_event"], episode["message"] = kind, message
        state = self._states[asset.id]
        machine_at = machine.state_at(state["machine_states"], t) if t is not None else self._machine_now(state)
        fields = text.alarm_fields(asset, episode, self._shelving(point, episode), machine_at)
        return text.alarm_event(
            kind,
            event_id(episode["alert_id"], kind, t if cause is None else cause),
            fields,
            annunciated=self._shown(asset, point, episode),
            late=late,
            source_data_time_us=t,
            command=command,
            message=message,
        )

    def _flood_event(self, kind, flood, *, t, cause, message, command=None) -> dict:
        flood["last_event"], flood["message"] = kind, message
        return text.alarm_event(
            kind,
            event_id(flood["alert_id"], kind, cause),
            self._flood_fields(flood),
            annunciated=True,  # the flood alarm is what the operator is meant to see
            late=False,
            source_data_time_us=t,
            command=command,
            message=message,
        )

    def _flood_fields(self, flood) -> dict:
        return text.flood_fields(flood, self.settings.flood_window_s, self.settings.flood_rate)

    def _shown(self, asset, point, episode) -> bool:
        """Whether the alarm is on the operator's list: open, current, not shelved, not
        suppressed, not grouped in a flood that is still on."""
        if not life.is_open(episode) or point is None or point["episode"] is not episode:
            return False
        if point["shelved"] is not None or episode["suppressed_by"]:
            return False
        if episode["flood_id"]:
            area = self._areas.get(asset.area)
            if area is not None and area["flood"] is not None and area["flood"]["alert_id"] == episode["flood_id"]:
                return False
        return True

    @staticmethod
    def _shelving(point, episode) -> dict | None:
        return point["shelved"] if point is not None and point["episode"] is episode else None

    def _machine_now(self, state) -> str | None:
        """The machine state as the evaluations see it (at the last one judged), so a
        command does not see a state that the next evaluation would undo."""
        last = state["last_evaluated_us"]
        return machine.latest(state["machine_states"]) if last is None else machine.state_at(state["machine_states"], last)

    def _find(self, asset_id, alert_id) -> tuple[dict | None, dict | None]:
        """(point, episode) of an alarm of the asset; for an older closed one the point's
        current episode is a newer alarm. (None, None) if the asset has no such alarm here."""
        state = self._states.get(asset_id)
        if state is None:
            return None, None  # e.g. a flood member whose asset moved to another worker
        for point in state["points"].values():
            if point["episode"] is not None and point["episode"]["alert_id"] == alert_id:
                return point, point["episode"]
        for episode in state["closed"]:
            if episode["alert_id"] == alert_id:
                return state["points"].get(episode["fault"]), episode
        return None, None

    @staticmethod
    def _episodes(state) -> list[dict]:
        return [p["episode"] for p in state["points"].values() if p["episode"] is not None] + state["closed"]

    def _keep_closed(self, asset_id, state, episode) -> None:
        closed = state["closed"] + [episode]
        keep = self.settings.closed_kept
        self._forget([e["alert_id"] for e in closed[:-keep]])
        state["closed"] = closed[-keep:]

    def _forget(self, alert_ids) -> None:
        for alert_id in alert_ids:
            self._index.pop(alert_id, None)
            self._tombstones.append(alert_id)

    def _asset(self, asset_id: str) -> AssetConfig:
        asset = self._assets.get(asset_id)
        if asset is None:
            raise ValueError(f"unknown asset {asset_id!r}: the alarm book knows {text.listing(self._assets)}")
        return asset

    def _state(self, asset_id: str) -> dict:
        state = self._states.get(asset_id)
        if state is None:
            state = self._states[asset_id] = _new_asset_state()
        return state


def _check_fault(fault) -> None:
    if not isinstance(fault, str) or not _FAULT.match(fault):
        raise ValueError(f"fault name {fault!r} from fusion is not an identifier: use names such as bearing_wear (letters, digits, _ . : / -)")
    if fault == FLOOD_FAULT:
        raise ValueError(f"fault name {FLOOD_FAULT!r} is reserved for flood alarms: give the fault another name")
