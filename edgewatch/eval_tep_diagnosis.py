"""Fault diagnosis on the Tennessee Eastman process: which fault is it, by the Bayesian layer.

``edgewatch evaluate-tep`` asks two questions. Whether something is wrong (detection,
edgewatch/eval_tep.py) is answered by the generic network. Which fault it is needs a
network that knows TEP's faults, and that is what a *learned asset type* is for
(``fusion.asset_types``, docs/configuration.md): the TEP unit is declared as its own
asset type whose faults are the programmed disturbances IDV(1)..IDV(21) (except 3, 9 and
15, which the data do not show: their evidence is that of normal operation, and a state
that looks normal would only soak up normal steps), whose roles are its 52 tags
(``roles: tags``), and whose tables are learned from the labeled training files.

What runs (training files only for learning, test files only for scoring):

1. the detectors are trained on ``d00.dat``, exactly as for detection (same code, seed
   and settings; one model set shared by every replay here);
2. **learning**: each training fault file ``dNN.dat`` (faulty from its first row) is
   replayed after a primer of ``d00.dat``'s last rows, through the pipeline with the
   learned type's network, and fusion's evidence of every step after the primer is a
   record labeled ``idvNN``; the records of all files teach the type's network
   (``Pipeline.learn_from_labeled``), as a plant would teach it from its own labeled
   history; so do the steps of ``d00.dat``'s own replay, labeled ``normal`` (a plant
   labels its normal periods too; without them every tag the detectors did not blame
   spoke a little for some learned fault, and the network alarmed on 13 % of the normal
   test file);
3. **scoring**: each test file (``d00_te.dat``, ``dNN_te.dat``) is replayed with that
   network (restored from the learned state, as a worker restores it from its
   changelog). Per sample of the faulty part (161-960) with a fault alarm open: is
   the most probable fault the true one? ``accuracy`` = right / alarmed samples; the
   fault named most often, and the one named by the first alarm, are reported too.

Chance is one in the number of faults (1/18). The network sees per step: the
detectors' p-value levels, which tags the detectors blame and which way each moved
(rose/fell), fast-rule hits per tag and Bad samples; naive Bayes over those, filtered
in time (stream/fusion/network.py).
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

#: the learned asset type the TEP unit is declared as
LEARNED_TYPE = "tennessee_eastman"

#: Downs and Vogel (1993), "A plant-wide industrial process control problem", Computers &
#: Chemical Engineering 17(3) 245-255, the process disturbances IDV(1)..IDV(21) (16-20
#: "unknown" there); what an operator reads next to the state name.
FAULT_WORDS: dict[int, str] = {
    1: "A/C feed ratio step, B composition constant (stream 4)",
    2: "B composition step, A/C ratio constant (stream 4)",
    3: "D feed temperature step (stream 2)",
    4: "reactor cooling water inlet temperature step",
    5: "condenser cooling water inlet temperature step",
    6: "A feed loss (stream 1)",
    7: "C header pressure loss, reduced availability (stream 4)",
    8: "A, B, C feed composition random variation (stream 4)",
    9: "D feed temperature random variation (stream 2)",
    10: "C feed temperature random variation (stream 4)",
    11: "reactor cooling water inlet temperature random variation",
    12: "condenser cooling water inlet temperature random variation",
    13: "reaction kinetics slow drift",
    14: "reactor cooling water valve sticking",
    15: "condenser cooling water valve sticking",
    16: "unknown disturbance 16",
    17: "unknown disturbance 17",
    18: "unknown disturbance 18",
    19: "unknown disturbance 19",
    20: "unknown disturbance 20",
    21: "valve of stream 4 fixed at its steady-state position",
}

Progress = Callable[[str], None]


def state_of(fault: int) -> str:
    """Fault 7 -> "idv07" (the state name in the network and on the alarms)."""
    return f"idv{fault:02d}"


def diagnosed_faults(faults: Sequence[int]) -> list[int]:
    from edgewatch.eval_tep import EXCLUDED

    return [n for n in faults if n not in EXCLUDED]


def diagnosis_config(settings, faults: Sequence[int]):
    """The detection run's configuration with the unit declared as the learned type."""
    from stream.config import ServiceConfig

    from edgewatch.eval_tep import config_document

    doc = config_document(settings)
    doc["assets"][0]["type"] = LEARNED_TYPE
    doc["fusion"]["asset_types"] = {
        LEARNED_TYPE: {"faults": {state_of(n): FAULT_WORDS[n] for n in diagnosed_faults(faults)}, "roles": "tags"}
    }
    return ServiceConfig.model_validate(doc)


def _times(n: int) -> np.ndarray:
    from edgewatch.eval_tep import PERIOD_US, START_US

    return START_US + np.arange(n, dtype=np.int64) * PERIOD_US


def _replay(config, registry_dir: str, rows: np.ndarray, store: dict | None):
    """Replay rows (primer first) through the pipeline with the trained models; keep fusion."""
    from stream.history import matrix_batches
    from stream.models import load_catalog
    from stream.pipeline import Pipeline
    from stream.replay import replay

    from edgewatch.eval_tep import ASSET_ID, TAGS

    time_us = _times(len(rows))
    catalog = load_catalog(config, registry_dir)
    # A copy: the pipeline keeps its assets' state in the store it is given, and every
    # replay here must start from what was learned alone, not from the previous file's end.
    pipeline = Pipeline(config, max_future_check=False, models=catalog, assets=[ASSET_ID], keep_fusion=True,
                        diagnosis_store=copy.deepcopy(store) if store is not None else None)
    result = replay(config, matrix_batches(ASSET_ID, list(TAGS), time_us, rows), pipeline=pipeline, keep_messages=True)
    return time_us, result


def learning_records(config, registry_dir: str, primer: np.ndarray, fault: int, rows: np.ndarray) -> list:
    """(evidence, "idvNN") for every fusion step after the primer of one training file."""
    time_us, result = _replay(config, registry_dir, np.vstack([primer, rows]), None)
    first_faulty_us = int(time_us[len(primer)])
    return [(r.evidence, state_of(fault)) for r in result.fusion if r.event_time_us >= first_faulty_us]


def normal_records(config, registry_dir: str, normal: np.ndarray, full_after: int) -> list:
    """(evidence, "normal") for every fusion step of the normal training file once its
    windows are full (after ``full_after`` rows)."""
    time_us, result = _replay(config, registry_dir, normal, None)
    first_us = int(time_us[min(full_after, len(normal) - 1)])
    return [(r.evidence, "normal") for r in result.fusion if r.event_time_us >= first_us]


def _learn_one(args) -> tuple[int, list, float]:
    config, registry_dir, primer, fault, rows = args
    started = time.perf_counter()
    if fault == 0:  # the normal training file: primer holds how many rows fill the windows
        return 0, normal_records(config, registry_dir, rows, int(primer)), time.perf_counter() - started
    return fault, learning_records(config, registry_dir, primer, fault, rows), time.perf_counter() - started


def score_test_file(config, registry_dir: str, store: dict, primer: np.ndarray, fault: int, rows: np.ndarray, onset: int) -> dict:
    """Replay one test file with the learned network; per sample: alarm open, top fault."""
    from stream.backtest import _alarm_on

    from edgewatch.eval_tep import ASSET_ID

    started = time.perf_counter()
    time_us, result = _replay(config, registry_dir, np.vstack([primer, rows]), store)
    scored_us = time_us[len(primer):]
    alarm = _alarm_on(scored_us, result.alarms, ASSET_ID).astype(bool)
    steps = sorted(result.fusion, key=lambda r: r.event_time_us)
    at = np.array([r.event_time_us for r in steps], dtype=np.int64)
    idx = np.searchsorted(at, scored_us, side="right") - 1
    top = np.array([steps[i].top_fault if i >= 0 else "" for i in idx.tolist()], dtype=object)
    truth = state_of(fault) if fault else None
    faulty = np.arange(len(rows)) >= onset
    named = top[faulty & alarm]
    raised = [e for e in result.alarms if e.get("event") in ("raised", "reopened")
              and e.get("source_data_time_us", 0) >= int(scored_us[onset] if onset < len(rows) else scored_us[-1])]
    out = {
        "fault": fault,
        "rows": int(len(rows)),
        "alarm_rate": float(alarm[faulty].mean()) if faulty.any() else None,
        "false_alarm_rate": float(alarm[~faulty].mean()) if (~faulty).any() else None,
        "alarmed": int(named.size),
        "right": int(np.count_nonzero(named == truth)) if truth else 0,
        "accuracy": float(np.mean(named == truth)) if truth and named.size else None,
        "most_named": Counter(named.tolist()).most_common(1)[0][0] if named.size else None,
        "first_alarm_fault": raised[0].get("fault") if raised else None,
        "seconds": time.perf_counter() - started,
    }
    return out


def _score_one(args) -> dict:
    return score_test_file(*args)


def _pool_map(function, items: list, jobs: int) -> list:
    if jobs <= 1:
        return [function(item) for item in items]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(function, items))


def diagnose(data, settings, out_dir: str | Path, jobs: int = 1, progress: Progress | None = None, learn_normal: bool = True) -> dict:
    """Train on d00.dat, learn the faults from dNN.dat (and, with ``learn_normal``, normal
    operation from d00.dat's own replay), score the test files (module doc)."""
    from stream.history import matrix_batches
    from stream.pipeline import Pipeline
    from stream.training import train

    from edgewatch.eval_tep import ASSET_ID, TAGS, TEST_ONSET

    started = time.perf_counter()
    faults = diagnosed_faults(sorted(data.test_fault))
    missing = [n for n in faults if n not in data.train_fault]
    if missing:
        raise ValueError(f"fault diagnosis needs the training files of faults {missing} (dNN.dat)")
    config = diagnosis_config(settings, faults)
    registry = str(Path(out_dir) / "diagnosis-registry")
    warm = data.train_normal
    detectors = [d for d in settings.detection.detectors if d != "halfspace_trees"]
    train(config, ASSET_ID, matrix_batches(ASSET_ID, list(TAGS), _times(len(warm)), warm), detectors=detectors, registry_dir=registry, seed=0)
    primer = warm[len(warm) - settings.detection.primer_rows:]

    lessons = [(config, registry, primer, n, data.train_fault[n]) for n in faults]
    if learn_normal:
        lessons.append((config, registry, settings.detection.primer_rows, 0, warm))
    learned = _pool_map(_learn_one, lessons, jobs)
    records = [record for _, recs, _ in learned for record in recs]
    teacher = Pipeline(config, max_future_check=False, assets=[ASSET_ID])
    store = dict(teacher.learn_from_labeled(LEARNED_TYPE, records).diagnosis_state)
    normal_steps = sum(len(recs) for n, recs, _ in learned if n == 0)
    if progress:
        progress(f"diagnosis: learned {len(records)} labeled fusion steps ({normal_steps} normal) from {len(lessons)} training files")

    tests = [(0, data.test_normal, len(data.test_normal))] + [(n, data.test_fault[n], TEST_ONSET) for n in faults]
    scored = _pool_map(_score_one, [(config, registry, store, primer, n, rows, onset) for n, rows, onset in tests], jobs)
    per_fault = [s for s in scored if s["fault"]]
    normal = next(s for s in scored if not s["fault"])
    accuracies = [s["accuracy"] for s in per_fault if s["accuracy"] is not None]
    alarmed = sum(s["alarmed"] for s in per_fault)
    return {
        "faults": faults,
        "learned_type": LEARNED_TYPE,
        "records": len(records),
        "normal_records": normal_steps,
        "table": per_fault,
        "mean_accuracy": float(np.mean(accuracies)) if accuracies else None,
        "pooled_accuracy": (sum(s["right"] for s in per_fault) / alarmed) if alarmed else None,
        "first_alarm_right": sum(1 for s in per_fault if s["first_alarm_fault"] == state_of(s["fault"])),
        "most_named_right": sum(1 for s in per_fault if s["most_named"] == state_of(s["fault"])),
        "chance": 1.0 / len(faults),
        "alarm_rate_mean": float(np.mean([s["alarm_rate"] for s in per_fault])),
        "false_alarm_rate_d00_te": normal["false_alarm_rate"],
        "false_alarm_rate_before_fault": float(np.mean([s["false_alarm_rate"] for s in per_fault])),
        "seconds": {"total": time.perf_counter() - started, "learning_cpu": float(sum(t for _, _, t in learned)),
                    "scoring_cpu": float(sum(s["seconds"] for s in scored))},
    }


def section_lines(diagnosis: dict) -> list[str]:
    """The diagnosis part of the BENCHMARKS section."""
    from edgewatch.eval_tep import _r

    n = len(diagnosis["faults"])
    lines = [
        "### Which fault: diagnosis by the Bayesian layer",
        "",
        f"The TEP unit declared as a learned asset type (`fusion.asset_types.{diagnosis['learned_type']}`: faults idv01 ... idv21 "
        f"except 3, 9, 15, so {n} faults; roles: its 52 tags), its tables learned from the training files: each `dNN.dat` replayed "
        f"after `d00.dat` through the same detectors, fusion's evidence of every step labeled with the file's fault "
        f"({diagnosis['records']} labeled steps"
        + (f", {diagnosis['normal_records']} of them normal: `d00.dat`'s own replay once its windows are full, the detectors' training "
           "data, so those steps are in-sample" if diagnosis.get("normal_records") else "")
        + "). Then each test file replayed with that network. Accuracy: among the faulty test "
        "samples (161-960) with a fault alarm open, the share whose most probable fault is the true one; chance is "
        f"1/{n} = {_r(diagnosis['chance'])}. The alarm here is the learned network's (its own detection rate is shown; the "
        "detection table above is the generic network's).",
        "",
        "| fault | accuracy (alarmed samples) | alarmed samples | fault named most | first alarm named | alarm rate (this network) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for s in diagnosis["table"]:
        lines.append(
            f"| {s['fault']} | {_r(s['accuracy'])} | {s['alarmed']} | {s['most_named'] or '-'} | {s['first_alarm_fault'] or '-'} | {_r(s['alarm_rate'])} |"
        )
    lines += [
        f"| **mean over {n} faults** | **{_r(diagnosis['mean_accuracy'])}** | pooled {_r(diagnosis['pooled_accuracy'])} | "
        f"right in {diagnosis['most_named_right']} of {n} | right in {diagnosis['first_alarm_right']} of {n} | {_r(diagnosis['alarm_rate_mean'])} |",
        "",
        f"False alarms of the learned network: {_r(diagnosis['false_alarm_rate_d00_te'])} on `d00_te.dat`, "
        f"{_r(diagnosis['false_alarm_rate_before_fault'])} before the fault (samples 1-160, mean over the {n} files), against the "
        "detection table's alarm above: the learned network is the one to ask which fault, not whether. "
        f"Runtime {diagnosis['seconds']['total'] / 60:.1f} min (learning replays {diagnosis['seconds']['learning_cpu']:.0f} s, "
        f"scoring replays {diagnosis['seconds']['scoring_cpu']:.0f} s of CPU). Nothing was tuned for the diagnosis: it uses the "
        "detection run's chosen settings and the learned type's defaults (`fusion.priors.learned_fault_share`).",
    ]
    return lines
