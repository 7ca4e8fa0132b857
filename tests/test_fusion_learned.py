"""Learned asset types (fusion.asset_types): a plant's own type whose faults are named
in the config and learned from labeled history, with its tags as roles. Judged by
what matters: the config says what is wrong with a declaration, the faults cannot be
told apart before learning and are named after it (calm operation staying normal),
what was learned survives a restart (and a state over other tags is left out with a
warning), and a learned-type asset runs through the pipeline with alarms that name
the learned fault."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from stream.config import AssetConfig, ConfigError, parse_config
from stream.fusion import AssetFusion, FaultNetwork, FusionSettings
from stream.fusion.evidence import StepEvidence
from stream.pipeline import Pipeline
from stream.replay import replay
from tests.alarm_plant import T0_US, plant_batches, plant_doc

S = 1_000_000
T0 = 1_773_475_200 * S
DETECTORS = ("isolation_forest", "halfspace_trees")
TAGS = ("x", "y", "z", "w")
#: the three faults' patterns: "+tag" above its normal range, "-tag" below
PATTERNS = {"a": ("+x", "+y"), "b": ("-y",), "c": ("+z",)}
DECLARED = {"reactor_unit": {"faults": {"a": "x and y up", "b": "y down", "c": "z up"}, "roles": "tags"}}


def settings() -> FusionSettings:
    return FusionSettings.model_validate({"asset_types": DECLARED})


def unit(asset_id: str = "unit-1", tags=TAGS) -> AssetConfig:
    return AssetConfig(id=asset_id, type="reactor_unit", tags=[{"id": t, "normal_range": [0.0, 1.0]} for t in tags])


def network(assets=None) -> FaultNetwork:
    return FaultNetwork.for_assets("reactor_unit", assets or [unit()], settings())


def score(detector: str, end_us: int, p: float, tops, asset_id: str = "unit-1") -> dict:
    """The fields of a score message fusion reads; "-tag" below its range [0, 1], "+tag" above."""
    shares = (0.5, 0.3, 0.15, 0.05)
    return {
        "asset_id": asset_id,
        "detector": detector,
        "scale": "1s",
        "window_end_us": end_us,
        "p_value": p,
        "model_version": 1,
        "top_tags": [
            {"id": t.lstrip("+-"), "contribution": shares[i], "feature": "mean", "value": -1.0 if t[0] == "-" else 2.0, "normal_range": [0.0, 1.0]}
            for i, t in enumerate(tops)
        ],
    }


def window(fusion: AssetFusion, k: int, p: float = 0.5, tops=()):
    end = T0 + k * S
    fusion.observe_scores([score(d, end, p, tops, fusion.asset.id) for d in DETECTORS])
    return fusion.step(end)


def labeled_history(n: int = 300, seed: int = 1) -> list[tuple[StepEvidence, str]]:
    """n steps of normal operation and n of each fault, as a historian's labels would give
    them: fault windows mostly extreme, their tags in varying order, now and then an
    uninvolved tag among the top tags; normal windows with the odd false alarm."""
    rng = np.random.default_rng(seed)
    teacher = AssetFusion(unit(), network(), settings())
    records, k = [], 0
    for label in ("normal", *PATTERNS):
        for _ in range(n):
            if label == "normal":
                p = float(rng.uniform())
                tops = tuple(rng.permutation(["+x", "y", "-z", "w"])[:2]) if p < 0.01 else ()
            else:
                p = float(10 ** rng.uniform(-7, -3))
                tops = list(PATTERNS[label]) + (["w"] if rng.uniform() < 0.3 else [])
                tops = tuple(rng.permutation(tops))
            records.append((window(teacher, k, p, tops).evidence, label))
            k += 1
    return records


def verdict(net: FaultNetwork, tops, n: int = 5):
    """20 calm windows, then n windows of the pattern: the last result."""
    fusion = AssetFusion(unit(), net, net.settings)
    for k in range(20):
        window(fusion, k)
    for k in range(20, 20 + n):
        result = window(fusion, k, 1e-6, tops)
    return result


# --------------------------------------------------------------------------- configuration


def _doc(asset_type: str = "reactor_unit", asset_types=None, **fusion) -> dict:
    return {
        "assets": [{"id": "unit-1", "type": asset_type, "tags": [{"id": "xmeas_1"}, {"id": "xmv_1"}]}],
        "fusion": {"asset_types": DECLARED if asset_types is None else asset_types, **fusion},
    }


@pytest.mark.parametrize(
    "doc, says",
    [
        (
            _doc("reactor"),
            'for device "unit-1": field type: Input should be a built-in asset type (pump, motor, fan, compressor, generic) or one declared '
            "under fusion.asset_types, got 'reactor': declare it under fusion.asset_types (with its faults) or use one of the built-in types; "
            "declared there: reactor_unit (in plant.yaml, at assets[0].type)",
        ),
        (_doc("pump", {"pump": {"faults": ["a"]}}), "fusion.asset_types.pump: pump is a built-in asset type; give the declared type another name"),
        (_doc(asset_types={"reactor_unit": {"faults": {"normal": "x"}}}), "fault name 'normal' is reserved"),
        (_doc(asset_types={"reactor_unit": {"faults": ["a", "unknown_anomaly"]}}), "fault name 'unknown_anomaly' is reserved"),
        (_doc(asset_types={"reactor_unit": {"faults": {"sensor_fault": ""}}}), "fault name 'sensor_fault' is reserved"),
        (_doc(asset_types={"reactor_unit": {"faults": {}}}), "field fusion.asset_types.reactor_unit.faults: a learned asset type needs at least one fault"),
        (_doc(asset_types={"reactor_unit": {"faults": ["a"], "roles": "tag"}}), "field fusion.asset_types.reactor_unit.roles: roles must be tags"),
        (_doc(asset_types={"reactor_unit": {"faults": ["bad name!"]}}), "fault name 'bad name!' is not a name"),
        (_doc(cpt={"reactor_unit": {"involvement": {"d": {"xmeas_1": 0.5}}}}), "fusion.cpt.reactor_unit.involvement.d: unknown state of a reactor_unit"),
        (_doc(cpt={"reactor_unit": {"involvement": {"a": {"xmeas_2": 0.5}}}}), "fusion.cpt.reactor_unit.involvement.a.xmeas_2: unknown role 'xmeas_2'"),
        (_doc(tag_roles={"unit-1": {"xmeas_1": "flow"}}), "field fusion.tag_roles.unit-1: reactor_unit is declared with roles: tags"),
    ],
)
def test_a_bad_declaration_or_an_undeclared_type_says_what_and_how_to_fix_it(doc, says):
    with pytest.raises(ConfigError) as error:
        parse_config(doc, "plant.yaml", environ={})
    text = str(error.value)
    assert says in text and "plant.yaml" in text


def test_a_declared_type_validates_and_its_overrides_name_its_tags():
    config = parse_config(_doc(cpt={"reactor_unit": {"involvement": {"a": {"xmeas_1": {"rose": 0.8}}}}}), "plant.yaml", environ={})
    declared = config.fusion.asset_types["reactor_unit"]
    assert (list(declared.faults), declared.roles, declared.states[0], declared.states[-2:]) == (["a", "b", "c"], "tags", "normal", ("sensor_fault", "unknown_anomaly"))
    net = FaultNetwork.for_assets("reactor_unit", config.assets, config.fusion)
    assert net.roles == ("xmeas_1", "xmv_1") and net.states == ("normal", "a", "b", "c", "sensor_fault", "unknown_anomaly")
    assert net.p_rose[1, 0] == pytest.approx(0.8)
    # a list of names is faults without words; roles default to the name heuristic (the built-in roles)
    names = FusionSettings.model_validate({"asset_types": {"kiln": {"faults": ["ring_formation"]}}})
    kiln = FaultNetwork.for_asset_type("kiln", names)
    assert kiln.roles[0] == "vibration" and len(kiln.roles) == 17 and kiln.words("ring_formation") == "ring formation"


def test_the_default_tables_of_a_learned_fault_are_those_of_an_unknown_anomaly_at_a_weak_prior():
    net = network()
    a, unknown = net.state_index["a"], net.state_index["unknown_anomaly"]
    for table in (net.p_level, net.p_rose, net.p_fell, net.p_quality):
        assert np.allclose(table[a], table[unknown])
    assert np.allclose(net.p_hit[:, a], net.p_hit[:, unknown])
    assert net.p_level[a] == pytest.approx([0.30, 0.20, 0.30, 0.20]) and net.p_involved[a] == pytest.approx(0.30)
    share = net.settings.priors.learned_fault_share
    assert net._prior["involvement"][a].sum(axis=-1) == pytest.approx(50 * share)
    assert net._prior["involvement"][unknown].sum(axis=-1) == pytest.approx(50)


# --------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def history():
    return labeled_history()


def test_before_learning_the_evidence_cannot_tell_the_faults_apart():
    net = network()
    for tops in PATTERNS.values():
        result = verdict(net, tops)
        learned = [result.posterior[f] for f in ("a", "b", "c", "unknown_anomaly")]
        assert max(learned) - min(learned) < 1e-9, result.posterior  # a four-way tie: no fault is named
        assert max(learned) < 0.3


def test_learned_faults_are_named_from_their_pattern_and_calm_stays_normal(history):
    net = network()
    assert net.learn_from_labeled(history) == len(history)
    for fault, tops in PATTERNS.items():
        result = verdict(net, tops)
        assert result.top_state == fault and result.top_fault_probability > 0.9, result.posterior
    assert verdict(net, ("+x", "+y")).message.startswith("unit-1: x and y up (a) >99 % (x, y rose)")
    # normal-looking evidence: no fault
    fusion = AssetFusion(unit(), net, net.settings)
    rng = np.random.default_rng(7)
    tops = [window(fusion, k, float(rng.uniform())).top_state for k in range(300)]
    assert set(tops) == {"normal"}
    # a pattern that fits no learned fault is not forced onto one
    assert verdict(net, ("+w", "-x")).top_state == "unknown_anomaly"


def test_what_was_learned_survives_the_state_round_trip_and_other_tags_are_left_out(history, caplog):
    net = network()
    net.learn_from_labeled(history[:600])
    net.feedback(history[-1][0], "confirmed:c")
    stored = json.loads(json.dumps(net.to_state()))
    assert stored["roles"] == list(TAGS)
    restored = network()
    assert restored.load_state(stored) is True
    for table in ("p_level", "p_rose", "p_fell", "p_hit", "p_quality"):
        assert np.array_equal(getattr(restored, table), getattr(net, table)), table
    assert verdict(restored, ("+x", "+y")).posterior == verdict(net, ("+x", "+y")).posterior

    # the asset lost tag w: the stored counts are over other roles, so they are left out
    fewer = network([unit(tags=("x", "y", "z"))])
    defaults = fewer.p_rose.copy()
    with caplog.at_level(logging.WARNING, logger="stream.fusion"):
        assert fewer.load_state(stored) is False
    assert "learned over other roles" in caplog.text and "x, y, z, w" in caplog.text
    assert np.array_equal(fewer.p_rose, defaults)


def test_evidence_records_read_back_over_the_network_roles(history):
    evidence, _ = history[400]
    doc = json.loads(json.dumps(evidence.to_dict()))
    assert doc["vocabulary"] == list(TAGS) and doc["rose"]
    back = StepEvidence.coerce(doc, ("w", "z", "y", "x"))  # another order: mapped by name
    assert back.vocabulary == ("w", "z", "y", "x") and back.rose[3] == evidence.rose[0]
    # a record written by hand over the type's tags needs no vocabulary
    net = network()
    assert net.learn_from_labeled([({"levels": {"extreme": 1.0}, "fell": {"y": 1.0}, "roles": list(TAGS), "rule_weight": 1.0}, "b")]) == 1
    with pytest.raises(ValueError, match="roles q that this network does not have"):
        net.learn_from_labeled([({"rose": {"q": 1.0}, "vocabulary": ["q"]}, "b")])
    # the built-in types' records stay as they were: named by the 17 roles, no vocabulary
    assert "vocabulary" not in StepEvidence(rose=np.eye(17)[0]).to_dict()


# --------------------------------------------------------------------------- through the pipeline

STUCK = (60.0, 150.0)
MACHINE = {"machine_unit": {"faults": {"temperature_stuck": "temperature transmitter stuck", "load_lost": "load lost"}, "roles": "tags"}}


def machine_plant():
    doc = plant_doc("t", "127.0.0.1:9092", n_assets=1, fusion={"asset_types": MACHINE})
    for asset in doc["assets"]:
        asset["type"] = "machine_unit"
    return parse_config(doc, "test plant")


def alarm_validator() -> Draft202012Validator:
    schema = json.loads((Path(__file__).parent.parent / "stream" / "schemas" / "alarm.schema.json").read_text())
    return Draft202012Validator(schema)


def test_a_learned_type_runs_through_the_pipeline_and_learning_changes_its_alarms():
    """This plant's stuck temperature transmitter is a known issue of its own: labeled
    so in its history, the alarm names it instead of a generic sensor fault, also
    after a restart."""
    config = machine_plant()
    first = Pipeline(config, max_future_check=False, keep_fusion=True)
    before = replay(config, plant_batches(config, 200, stuck=STUCK), pipeline=first)
    assert before.deadletters == [] and len(before.fusion) == 200
    assert {r.asset_type for r in before.fusion} == {"machine_unit"}
    assert set(before.fusion[0].posterior) == {"normal", "temperature_stuck", "load_lost", "sensor_fault", "unknown_anomaly"}
    assert [(a["event"], a["fault"]) for a in before.alarms if a["event"] == "raised"] == [("raised", "sensor_fault")]

    # the history's labels: stuck from the flatline rule's first hit (5 s) to the end
    def label(result):
        return "temperature_stuck" if STUCK[0] + 6 <= (result.event_time_us - T0_US) / S < STUCK[1] else "normal"

    learner = Pipeline(config, max_future_check=False, keep_fusion=True)
    out = learner.learn_from_labeled("machine_unit", [(r, label(r)) for r in before.fusion])
    state = out.diagnosis_state["network:machine_unit"]
    assert state["roles"] == ["load", "temperature", "vibration_rms", "vibration_kurtosis"] and state["learned"]

    after = replay(config, plant_batches(config, 200, stuck=STUCK, seed=1), pipeline=learner)
    (alarm,) = [a for a in after.alarms if a["event"] == "raised"]
    assert alarm["fault"] == "temperature_stuck" and alarm["asset_type"] == "machine_unit"
    assert alarm["message"].startswith("machine-00: temperature transmitter stuck (temperature_stuck) ")
    validator = alarm_validator()
    for event in after.alarms:
        assert not list(validator.iter_errors(event)), event

    # a restarted worker takes what the type learned from the changelog
    restarted = Pipeline(config, max_future_check=False, diagnosis_store=dict(out.diagnosis_state))
    again = replay(config, plant_batches(config, 200, stuck=STUCK, seed=2), pipeline=restarted)
    assert [a["fault"] for a in again.alarms if a["event"] == "raised"] == ["temperature_stuck"]
    with pytest.raises(ValueError, match="no asset of type 'pump'"):
        restarted.learn_from_labeled("pump", [])
