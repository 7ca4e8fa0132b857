"""Fault alarms: ISA-18.2 / OPC UA Alarms & Conditions lifecycle over fusion's fault
probabilities, in event time, as plain objects (no Kafka).

What lives where, one job per module:

* ``settings``: ``AlarmSettings``, the ``alarms:`` section (thresholds, delays,
  priority matrix, floods, shelving, machine states), with the reasons for each default;
* ``lifecycle``: one alarm's states (normal, active_unacknowledged,
  active_acknowledged, returned_unacknowledged), delays, deadband, re-alarm;
* ``machine_state``: running / stopped / maintenance as of an event time;
* ``flood``: alarm floods per area;
* ``commands``: reading and checking operator commands;
* ``ids``: alert, flood and event ids (uuid5, the alerts' namespace);
* ``messages``: the alarm event, the alarm-state record and the operator's line;
* ``book``: ``AlarmBook``, which ties them together and is what the worker drives.

Wire formats: stream/schemas/alarm.schema.json, alarm-state.schema.json,
alert-command.schema.json; docs/wire-schema.md.
"""

from stream.alarms.book import AlarmBook
from stream.alarms.ids import FLOOD_FAULT, alarm_id, event_id, flood_id
from stream.alarms.settings import AlarmSettings, AssetAlarmSettings, MachineStateMapping

__all__ = [
    "AlarmBook",
    "AlarmSettings",
    "AssetAlarmSettings",
    "MachineStateMapping",
    "FLOOD_FAULT",
    "alarm_id",
    "event_id",
    "flood_id",
]
