"""What a tag measures, in words the fault signatures use: its ROLE.

Plants name tags as they like (``P101_BRG_TMP_DE``, ``Pump1.BearingTempDE``,
``bearing_temp_de``), so the fault model is written over roles, not tag ids:
"bearing wear raises vibration, vibration kurtosis and a bearing temperature".
Each tag gets a role from its name by the heuristic below, unless the fusion
settings name it (``fusion.tag_roles: {pump-3: {TT_104: bearing_temp}}``, by
asset id or asset type; the asset id wins).

The heuristic, first match wins (the name is lower-cased, camelCase split and
every non-alphanumeric character read as ``_``):

============================  ===============================================
role                          name contains
============================  ===============================================
vibration_kurtosis            kurt, crest
vibration                     vib, velocity, accel, displacement, VT101
seal_flow                     seal, leak
bearing_temp                  bearing / brg / de / nde with temp / tmp / tt
winding_temp                  winding, stator, motor_temp
oil_temp                      oil / lube with temp / tmp
oil_pressure                  oil / lube with press / pres
suction_pressure              suction / inlet / intake with press / pres
discharge_pressure            discharge / outlet / delivery with press, head
differential_pressure         differential, dp, delta_p
flow                          flow, airflow, FT101 / FI101
current                       current, amp, amps
power                         power, kw, pf, cos_phi
speed                         speed, rpm, freq, ST101
process_temp                  temp, tmp, tt (any other temperature)
load                          load
other                         anything else
============================  ===============================================

``other`` is a role too: a tag of unknown meaning that the detectors blame
speaks against every named fault and so for ``unknown_anomaly``.

These roles are the vocabulary of the built-in asset types and of learned ones with
``roles: names``. A learned type with ``roles: tags`` (fusion.asset_types) uses
neither the heuristic nor ``tag_roles``: its vocabulary is its assets' tag ids, every
tag its own role (FaultNetwork.roles).
"""

from __future__ import annotations

import re
from functools import lru_cache

#: every role, in the order of the rows of the fault model's tables.
ROLES: tuple[str, ...] = (
    "vibration",
    "vibration_kurtosis",
    "bearing_temp",
    "winding_temp",
    "process_temp",
    "oil_temp",
    "oil_pressure",
    "suction_pressure",
    "discharge_pressure",
    "differential_pressure",
    "flow",
    "seal_flow",
    "current",
    "power",
    "speed",
    "load",
    "other",
)
ROLE_INDEX = {role: i for i, role in enumerate(ROLES)}


def _t(*words: str) -> str:
    """A whole token of the normalised name (tokens are separated by ``_``)."""
    return r"(?:^|_)(?:" + "|".join(words) + r")(?:_|$)"


def _has(*words: str) -> str:
    """A token that starts with one of the words (``temp`` matches ``temperature``)."""
    return r"(?:^|_)(?:" + "|".join(words) + r")"


def _isa(letter: str) -> str:
    """An ISA-5.1 instrument tag such as FT101 / FI-101 (first letter = the measured variable)."""
    return rf"(?:^|_){letter}(?:t|i|it|ic)_?\d"


def _both(a: str, b: str) -> str:
    return rf"(?=.*{a})(?=.*{b})"


_TEMP = _has("temp", "tmp", "tt")
_PRESS = _has("press", "pres", "pt")
# Ordered: specific before general (seal_leak_flow is a seal flow, not a flow;
# discharge_temp is a temperature, not a discharge pressure).
_PATTERNS: tuple[tuple[str, re.Pattern], ...] = tuple(
    (role, re.compile(pattern))
    for role, pattern in (
        ("vibration_kurtosis", r"kurt|crest"),
        ("vibration", _has("vib", "velocity", "accel", "displacement") + "|" + _isa("v")),
        ("seal_flow", _has("seal", "leak")),
        ("bearing_temp", _both(_has("bearing", "brg") + "|" + _t("de", "nde"), _TEMP)),
        ("winding_temp", _has("winding", "stator") + "|" + _both(_t("motor"), _TEMP)),
        ("oil_temp", _both(_has("oil", "lube"), _TEMP)),
        ("oil_pressure", _both(_has("oil", "lube"), _PRESS)),
        ("suction_pressure", _both(_has("suction", "suct", "inlet", "intake"), _PRESS)),
        ("discharge_pressure", _both(_has("discharge", "disch", "outlet", "delivery"), _PRESS) + "|" + _t("head")),
        ("differential_pressure", _has("differential", "diff") + "|" + _t("dp", "delta_p", "dpt")),
        ("flow", r"flow|" + _isa("f")),
        ("current", _has("current", "amp") + "|" + _t("i")),
        ("power", _has("power", "kw") + "|" + _t("pf", "cos_phi", "cosphi")),
        ("speed", _has("speed", "rpm", "freq") + "|" + _isa("s")),
        ("process_temp", _TEMP),
        ("load", _has("load")),
    )
)


def normalise(name: str) -> str:
    """``Pump1.BearingTempDE`` -> ``pump1_bearing_temp_de``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    return re.sub(r"[^a-z0-9]+", "_", spaced.lower()).strip("_")


@lru_cache(maxsize=4096)
def role_from_name(tag_id: str) -> str:
    """The role the name heuristic gives a tag (see the module doc); ``other`` if none fits."""
    name = normalise(tag_id)
    for role, pattern in _PATTERNS:
        if pattern.search(name):
            return role
    return "other"


def tag_roles(asset_id: str, asset_type: str, tag_ids, overrides: dict[str, dict[str, str]]) -> dict[str, str]:
    """Role of each tag of one asset: the asset's override, else its type's, else the name heuristic."""
    by_asset = overrides.get(asset_id, {})
    by_type = overrides.get(asset_type, {})
    return {tag: by_asset.get(tag) or by_type.get(tag) or role_from_name(tag) for tag in tag_ids}
