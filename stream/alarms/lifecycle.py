"""The life of one fault alarm (one asset, one fault), as ISA-18.2 and OPC UA Alarms &
Conditions draw it, on plain dicts the worker keeps in its changelog.

Two things are tracked apart, as the standards do:

* the *condition*: is the fault there? It goes active when P(fault) stayed at or
  above on_threshold for on_delay_s of event time, and normal again when P stayed at
  or below off_threshold for off_delay_s. In between (the deadband) nothing changes,
  and a dip into the deadband restarts the delay that was running, so both delays
  mean "continuously, for this long".
* the *alarm state* the operator sees, from the condition and acknowledgement::

      normal --raise--> active_unacknowledged --ack--> active_acknowledged
                             |                               |
                          return                           return
                             v                               v
                 returned_unacknowledged --ack--> normal (closed)

  A fault that comes back while its alarm is still open, or within
  realarm_after_s of returning to normal, re-opens that alarm (same alert_id,
  active_unacknowledged again); after that long in normal it is a new episode
  with a new id. At most one alarm per asset and fault is ever open.

Shelving (timed, with an expiry) and suppression (out of service by command, or by
the machine state) are flags beside this: they change whether the alarm is shown,
never how it moves.

A *point* is the per (asset, fault) record; its *episode* is the latest alarm
raised for it (open, or closed and still taking comments and feedback)::

    point   = {"active", "above_since_us", "below_since_us", "returned_us",
               "shelved": {"until_us", "user", "command_id", "at_us"} | None,
               "episode": episode | None}
    episode = {"alert_id", "fault", "state", "episode_start_us", "first_raised_us",
               "last_change_us", "source_data_time_us", "closed_us", "probability",
               "priority", "raised_late", "suppressed_by", "flood_id", "reopened",
               "context", "acknowledged", "comments", "feedback", "last_event", "message"}
"""

from __future__ import annotations

NORMAL = "normal"
ACTIVE_UNACK = "active_unacknowledged"
ACTIVE_ACK = "active_acknowledged"
RETURNED_UNACK = "returned_unacknowledged"
OPEN_STATES = frozenset({ACTIVE_UNACK, ACTIVE_ACK, RETURNED_UNACK})

#: comments kept per alarm (all of them are in the event stream anyway).
COMMENTS_KEPT = 20


def new_point() -> dict:
    return {"active": False, "above_since_us": None, "below_since_us": None, "returned_us": None, "shelved": None, "episode": None}


def is_open(episode: dict | None) -> bool:
    return episode is not None and episode["state"] in OPEN_STATES


def follow(point: dict, t_us: int, probability: float, on: float, off: float) -> bool:
    """Follow the runs of P above ``on`` and below ``off``; True if the point changed.

    A run starts at the first evaluation on its side and lasts while every later
    one stays there. The start of the run above ``on`` is the episode start: it
    makes the alert id, so it must not move while the run lasts.
    """
    above, below = point["above_since_us"], point["below_since_us"]
    if probability >= on:
        new_above, new_below = (t_us if above is None else above), None
    elif probability <= off:
        new_above, new_below = None, (t_us if below is None else below)
    else:
        new_above = new_below = None  # deadband: both runs are broken
    changed = (new_above, new_below) != (above, below)
    point["above_since_us"], point["below_since_us"] = new_above, new_below
    return changed


def due(point: dict, t_us: int, on_delay_us: int, off_delay_us: int) -> str | None:
    """"raise" when the condition turns active now, "return" when it turns normal, else None."""
    if not point["active"]:
        start = point["above_since_us"]
        return "raise" if start is not None and t_us - start >= on_delay_us else None
    start = point["below_since_us"]
    return "return" if start is not None and t_us - start >= off_delay_us else None


def reopens(point: dict, realarm_after_us: int) -> bool:
    """Whether a condition turning active re-opens the point's latest alarm (True)
    or starts a new episode (False)."""
    episode = point["episode"]
    if episode is None:
        return False
    if is_open(episode):
        return True  # still waiting for its acknowledgement: the same alarm goes active again
    returned = point["returned_us"]
    return returned is not None and point["above_since_us"] - returned < realarm_after_us


def new_episode(alert_id: str, fault: str, t_us: int, probability: float, priority: str, *, late: bool, suppressed_by: list[str], context: dict) -> dict:
    return {
        "alert_id": alert_id,
        "fault": fault,
        "state": ACTIVE_UNACK,
        "episode_start_us": None,  # set by the caller from the point's run
        "first_raised_us": t_us,
        "last_change_us": t_us,
        "source_data_time_us": t_us,
        "closed_us": None,
        "probability": probability,
        "priority": priority,
        "raised_late": late,
        "suppressed_by": suppressed_by,
        "flood_id": None,
        "reopened": 0,
        "context": context,
        "acknowledged": None,
        "comments": [],
        "feedback": None,
        "last_event": "raised",
    }


def reopen(episode: dict, t_us: int, probability: float, priority: str, context: dict) -> None:
    """The fault is back: the same alarm is active and unacknowledged again."""
    episode.update(
        state=ACTIVE_UNACK,
        last_change_us=t_us,
        source_data_time_us=t_us,
        closed_us=None,
        probability=probability,
        priority=_higher(episode["priority"], priority),
        context=context or episode["context"],
        acknowledged=None,
        reopened=episode["reopened"] + 1,
        last_event="reopened",
    )


def return_to_normal(episode: dict, t_us: int, probability: float) -> str:
    """The condition is gone. Returns the event: "returned" (still to be acknowledged)
    or "closed" (it was acknowledged already)."""
    event = "returned" if episode["state"] == ACTIVE_UNACK else "closed"
    episode.update(
        state=RETURNED_UNACK if event == "returned" else NORMAL,
        last_change_us=t_us,
        source_data_time_us=t_us,
        probability=probability,
        closed_us=t_us if event == "closed" else None,
        last_event=event,
    )
    return event


def acknowledge(episode: dict, now_us: int, who: dict) -> str:
    """The operator acknowledged. Returns the event: "acknowledged" (still active) or
    "closed" (it had returned). The caller has checked that the alarm waits for one."""
    event = "acknowledged" if episode["state"] == ACTIVE_UNACK else "closed"
    episode.update(
        state=ACTIVE_ACK if event == "acknowledged" else NORMAL,
        last_change_us=now_us,
        acknowledged=who,
        closed_us=now_us if event == "closed" else None,
        last_event=event,
    )
    return event


def add_comment(episode: dict, comment: dict) -> None:
    episode["comments"] = (episode["comments"] + [comment])[-COMMENTS_KEPT:]


_RANK = {"low": 0, "medium": 1, "high": 2, "urgent": 3}


def _higher(a: str, b: str) -> str:
    return a if _RANK[a] >= _RANK[b] else b


def rises(current: str, candidate: str) -> bool:
    """Whether ``candidate`` is a higher priority than ``current`` (priorities only
    ever rise within an episode: a falling one would make the list flicker)."""
    return _RANK[candidate] > _RANK[current]
