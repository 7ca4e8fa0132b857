"""Alarm floods: too many alarms in one area at once become one flood alarm.

An operator who gets thirty alarms in two minutes reads none of them. ISA-18.2
calls more than 10 alarms in 10 minutes (per operator) a flood; here an area
stands for one operator's console. The rate counts alarms that would have been
shown: shelved, suppressed and late (backfilled) ones are not in front of anyone,
so they do not make a flood.

Once the area's rate is above ``flood_rate``, every further new alarm there is
raised as usual (own id, own lifecycle) but not shown on its own: it joins the
area's flood alarm, which keeps the count and the list of grouped asset/fault
pairs. The flood ends when fewer than ``flood_end_rate`` alarms were raised in the
last ``flood_window_s``; its members that are still open are shown on their own
again from then on.

The flood alarm can be acknowledged and commented on. When the flood ends it
closes, acknowledged or not: it was a grouping, not a process condition, and
asking for one more acknowledgement after the flood would add work at the worst
moment.

All of it runs on the area's event-time clock (the latest event time evaluated
for any of its assets). Area state, kept by the worker under the area name::

    {"clock_us", "raises": [[t_us, alert_id], ...], "flood": flood | None,
     "closed": [flood, ...], "commands": [command_id, ...]}
"""

from __future__ import annotations

from stream.alarms.ids import FLOOD_FAULT, flood_id
from stream.alarms.lifecycle import ACTIVE_ACK, ACTIVE_UNACK, NORMAL, rises

#: closed floods kept per area for late comments (and tombstoned after).
CLOSED_FLOODS_KEPT = 10


def new_area() -> dict:
    return {"clock_us": None, "raises": [], "flood": None, "closed": [], "commands": []}


def advance(area: dict, t_us: int, window_us: int) -> bool:
    """Move the area's clock to ``t_us`` (it never goes back) and forget raises that
    left the window. True if raises were forgotten: the clock alone needs no write to
    the changelog, since the next evaluation moves it again the same way."""
    if area["clock_us"] is None or t_us > area["clock_us"]:
        area["clock_us"] = t_us
    kept = [r for r in area["raises"] if r[0] > area["clock_us"] - window_us]
    if len(kept) == len(area["raises"]):
        return False
    area["raises"] = kept
    return True


def count_raise(area: dict, t_us: int, alert_id: str) -> int:
    """Count one shown alarm raised at ``t_us``; the area's rate including it."""
    area["raises"].append([t_us, alert_id])
    return len(area["raises"])


def start(area: dict, area_name: str, t_us: int, member: dict, priority: str, rate: int) -> dict:
    flood = {
        "alert_id": flood_id(area_name, t_us),
        "area": area_name,
        "fault": FLOOD_FAULT,
        "state": ACTIVE_UNACK,
        "episode_start_us": t_us,
        "first_raised_us": t_us,
        "last_change_us": t_us,
        "source_data_time_us": t_us,
        "closed_us": None,
        "members": [member],
        "priority": priority,
        "rate": rate,
        "acknowledged": None,
        "comments": [],
        "last_event": "flood_started",
    }
    area["flood"] = flood
    return flood


def join(flood: dict, t_us: int, member: dict, priority: str, rate: int) -> None:
    flood["members"].append(member)
    if rises(flood["priority"], priority):
        flood["priority"] = priority  # the flood is as urgent as its most urgent member
    flood.update(last_change_us=t_us, source_data_time_us=t_us, rate=rate, last_event="flood_updated")


def end_due(area: dict, end_rate: int) -> bool:
    flood = area["flood"]
    return flood is not None and len(area["raises"]) < end_rate


def end(area: dict, t_us: int) -> tuple[dict, list[str]]:
    """Close the area's flood alarm. Returns it and the ids of closed floods forgotten
    to make room (their alarm-state records get a tombstone)."""
    flood = area["flood"]
    flood.update(state=NORMAL, last_change_us=t_us, source_data_time_us=t_us, closed_us=t_us, rate=len(area["raises"]), last_event="flood_ended")
    area["flood"] = None
    closed = area["closed"] + [flood]
    forgotten = [f["alert_id"] for f in closed[:-CLOSED_FLOODS_KEPT]]
    area["closed"] = closed[-CLOSED_FLOODS_KEPT:]
    return flood, forgotten


def acknowledge(flood: dict, now_us: int, who: dict) -> None:
    flood.update(state=ACTIVE_ACK, last_change_us=now_us, acknowledged=who, last_event="acknowledged")


def member_pairs(flood: dict) -> list[dict]:
    return [dict(m) for m in flood["members"]]
