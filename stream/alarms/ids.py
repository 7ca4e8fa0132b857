"""Alarm, flood and event ids: derived from what happened, never from a clock or a counter.

The namespace is the one fast-rule alerts use (stream.alerts), so every id edgewatch
ever issues comes from one namespace and a fault alarm can never collide with a
rule alert (the rule part, "fault", is not a rule name).
"""

from __future__ import annotations

import uuid

from stream.alerts import _ALERT_NAMESPACE

#: the "fault" of a flood alarm: it groups other alarms, it is no fault itself.
FLOOD_FAULT = "alarm_flood"


def alarm_id(asset_id: str, fault: str, episode_start_us: int) -> str:
    """The alert_id of a fault alarm episode: asset | "fault" | fault | the event time P
    first crossed on_threshold in the run that raised it. A replay, or a worker that
    restarts from its changelog in the middle of the run, finds the same start and so
    the same id."""
    return str(uuid.uuid5(_ALERT_NAMESPACE, f"{asset_id}|fault|{fault}|{episode_start_us}"))


def flood_id(area: str, start_us: int) -> str:
    """The alert_id of an area's flood alarm: area | "flood" | alarm_flood | event time
    of the alarm that started the flood. "area:" keeps it apart from an asset that is
    named like an area."""
    return str(uuid.uuid5(_ALERT_NAMESPACE, f"area:{area}|flood|{FLOOD_FAULT}|{start_us}"))


def event_id(alert_id: str, event: str, cause: str | int) -> str:
    """The id of one alarm event, for consumers to de-duplicate on: the alarm, what
    happened, and its cause (the data's event time, or the command id)."""
    return str(uuid.uuid5(_ALERT_NAMESPACE, f"{alert_id}|{event}|{cause}"))
