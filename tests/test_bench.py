"""The benchmarks' machinery on tiny inputs: they must keep running and report what they claim.
No timing is asserted here (speed is measured by running bench/, never in tests)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))


def test_onnx_latency_reports_matching_outputs_per_batch(tmp_path):
    import onnx_latency

    out = tmp_path / "latency.json"
    report = onnx_latency.main(["--demo", "--repeats", "2", "--warmup", "1", "--batch-sizes", "1,4",
                                "--out", str(out)])
    assert json.loads(out.read_text())["results"] == report["results"]
    assert [row["batch_size"] for row in report["results"]] == [1, 4]
    assert all(row["max_abs_diff"] < 1e-4 and row["onnx_ms"] > 0 for row in report["results"])


def test_onnx_latency_workspace_needs_an_export(tmp_path):
    import onnx_latency

    with pytest.raises(SystemExit, match="export stage"):
        onnx_latency.workspace_model(tmp_path, "digits")


def test_forgery_bench_accepts_real_and_rejects_forged_reports(scenario, deployed):
    from intake_forgery import FORGERY_KINDS, run_forgery_bench

    from mudjack.intake import IntakeParams

    result = run_forgery_bench(deployed, scenario.task, scenario.trigger, scenario.target,
                               params=IntakeParams(), n_real=4, n_forged=2, seed=0,
                               never_attacked=lambda: _never_attacked(scenario))
    assert result["real"]["n"] == 4 and result["real"]["rate"] >= 0.75
    assert set(result["forged"]) == set(FORGERY_KINDS)
    assert result["forged_total"]["n"] >= 6 and result["forged_total"]["rejection_rate"] >= 0.75
    misjudged = [row for kind in result["forged"].values() for row in kind["misjudged"]]
    assert all(set(row["audit"]) == {"deployed", "never_attacked"} for row in misjudged if row["accepted"])


def test_forgery_rows_keep_the_warp_check_s_z_where_it_ran():
    from intake_forgery import _warp_z

    assert _warp_z({"model": "warp", "z_flip_rate": 32.0, "warp": None}) == 32.0  # verified as a warp
    assert _warp_z({"z_flip_rate": 1.2, "warp": {"z_flip_rate": -0.5}}) == -0.5  # refused as one too
    assert _warp_z({"z_flip_rate": 1.2}) is None  # no warp was fitted


def _never_attacked(scenario):
    from mudjack.evaluation import predictor, retrain_head
    from mudjack.heads import HeadParams

    head = retrain_head(scenario.clean, scenario.adapter, scenario.task, HeadParams(epochs=30))
    return predictor(scenario.clean, scenario.adapter, head)


def test_forgery_audit_tells_the_planted_backdoor_from_the_tasks_content(scenario, deployed):
    """The audit of an accepted report's trigger: the planted trigger moves inputs to the target
    on the deployed model, not on the never-attacked one; the target's own content (a clean
    target-class input pasted whole) moves them on both."""
    from intake_forgery import ground_truth_audit

    from mudjack.triggers import Trigger

    never_attacked = _never_attacked(scenario)
    audit = ground_truth_audit(deployed, scenario.task, lambda: never_attacked)
    planted = audit(scenario.trigger, scenario.target)
    assert planted["deployed"] >= 0.5 and planted["never_attacked"] <= 0.2, planted
    task = scenario.task
    content = task.test.x[np.flatnonzero(task.test.y == scenario.target)[0]]
    whole = Trigger(np.ones(content.shape[:2], dtype=np.float32), content)
    pasted = audit(whole, scenario.target)
    assert pasted["deployed"] >= 0.5 and pasted["never_attacked"] >= 0.5, pasted


def test_genuine_error_forgeries_carry_their_own_true_label(scenario, deployed):
    """Each genuine_error report is an input the deployed model gets wrong, claiming that
    input's true label (not another error's)."""
    from intake_forgery import forged_genuine_error

    task = scenario.task
    reports, _ = forged_genuine_error(deployed, task, scenario.trigger, 12, np.random.default_rng(0),
                                      scenario.target)
    flat = task.test.x.reshape(len(task.test.x), -1)
    for report in reports[:12]:
        rows = np.flatnonzero((flat == report.image.reshape(1, -1)).all(axis=1))
        assert len(rows) and report.label in task.test.y[rows].tolist(), report.id
        assert deployed.classify(task.name, report.image[None])[0] != report.label


def test_forgery_bench_names_a_missing_workspace():
    import intake_forgery

    with pytest.raises(SystemExit, match="mudjack run --scenario"):
        intake_forgery.workspace_outputs("no-such-scenario")


def test_patch_speed_results_name_no_machine_path(tmp_path):
    import patch_speed

    inside = patch_speed.ROOT / "bench" / "results" / "x.json"
    assert patch_speed.shown_path(inside) == "bench/results/x.json"
    assert patch_speed.shown_path(tmp_path / "run.json") == "run.json"
    assert "--cpu-bf16" in patch_speed.parser().format_help()


def test_hostile_bench_counts_a_blocked_case_as_hung(tmp_path):
    import os

    from hostile import run_case

    fifo = tmp_path / "x.json"
    os.mkfifo(fifo)

    def blocked() -> tuple[str, list[str]]:
        fifo.read_text()  # no writer: blocks in open()
        return "done", []

    row, details = run_case(blocked, 1)
    assert row == "hung" and details == ["over 1 s"]
    done = ("rejected with a documented code", [])
    assert run_case(lambda: done, 1) == done


def _tiny_zoo(scenario, **updates):
    from attack_zoo import Zoo

    from pipeline.scenarios import deep_merge
    from stages.config import PipelineParams, read_params_yaml

    raw = read_params_yaml(Path(__file__).resolve().parent.parent / "params.yaml")
    params = PipelineParams(**deep_merge(raw, updates))
    return Zoo("tiny", params, scenario.task, scenario.shadow, scenario.shadow, scenario.clean,
               scenario.adapter)


def test_attack_zoo_repair_runs_intake_and_patching_per_trigger(scenario, deployed):
    from attack_zoo import intake_rows, repair, with_truth

    from stages.attack import Planted, measure

    zoo = _tiny_zoo(scenario, patch={"epochs": 1}, attack={"n_reports": 2})
    pairs = [(scenario.trigger, scenario.target)]
    measured = measure(scenario.backdoored, scenario.adapter, scenario.head, scenario.task.test, pairs)
    planted = Planted(scenario.backdoored, scenario.head, pairs, *measured)
    bugs, rows = intake_rows(zoo, planted)
    assert len(rows) == 2 and all(row["accepted"] and row["coverage"] == 1.0 for row in rows), rows
    assert len(bugs) == 2 and rows[0]["why"] is None and rows[0]["chosen"] == "grow"  # a patch: the square
    effect, score = rows[0]["candidates"]["grow"]  # why it won: the fitted candidates' numbers
    assert score <= effect <= 1 and isinstance(rows[0]["alternates"], list)
    assert len(rows[0]["alternates_coverage"]) == len(rows[0]["alternates"])  # each against the truth
    assert rows[0]["key"] is None  # a square that beats the plain null needs no key check
    assert rows[0]["departure"] is None  # nor, cut from the bug, the departure check
    phases = rows[0]["phase_seconds"]  # where intake's time went
    assert phases["reversal"] + phases["verification"] <= rows[0]["seconds"] + 0.1
    truthful = with_truth(bugs, pairs)  # --oracle: the true trigger in place of the reversed one
    assert all(b.trigger is scenario.trigger and b.alternates == () and b.bug is a.bug
               for a, b in zip(bugs, truthful, strict=True))
    result = repair(zoo, planted, bugs)
    (numbers,) = result["per_trigger"]
    assert result["patched"] and numbers["asr_backdoored"] >= 0.5  # a fresh head on the tiny scenario: 0.87
    assert 0 <= numbers["asr_patched"] <= 1 and abs(numbers["clean_drop"]) <= 1
    assert numbers["target_tba_backdoored"] >= 0.5 and numbers["anti_flip_backdoored"] <= 0.5
    assert 0 <= numbers["anti_flip_patched"] <= 1  # what an anti-trigger would show
    assert repair(zoo, planted, []) == {"patched": False}


def test_attack_zoo_describes_text_triggers_by_their_words():
    """A text family's row crashed: a TextTrigger has no alpha."""
    from attack_zoo import trigger_fields

    from mudjack.triggers import TextTrigger, Trigger

    assert trigger_fields(TextTrigger(("qv", "mn"), "end")) == {"pixels": 2, "words": ["qv", "mn"],
                                                                 "position": "end"}
    square = Trigger(mask=np.pad(np.ones((2, 2), bool), 2), pattern=np.zeros((6, 6, 1), np.uint8))
    assert trigger_fields(square) == {"pixels": 4, "max_alpha": 1.0}


def test_attack_zoo_caches_each_planted_encoder_under_its_settings(scenario, tmp_path, monkeypatch):
    import attack_zoo

    monkeypatch.setattr(attack_zoo, "CACHE", tmp_path)
    zoo = _tiny_zoo(scenario, attack={"epochs": 1, "deployed_head": {"epochs": 5}})
    params = attack_zoo.with_attack(zoo.params, "line", 0, 1)
    first, cached = attack_zoo.planted(zoo, params)
    assert not cached and len(list(tmp_path.glob("tiny/*/encoder.safetensors"))) == 1
    again, cached = attack_zoo.planted(zoo, params)
    assert cached and again.metrics == first.metrics  # the same encoder and head, measured again
    other = attack_zoo.with_attack(zoo.params, "line", 1, 1)
    assert attack_zoo.cache_key(zoo, other) != attack_zoo.cache_key(zoo, params)
    on_cpu = params.model_copy(update={"attack": params.attack.model_copy(update={"device": "cpu"})})
    assert attack_zoo.cache_key(zoo, on_cpu) == attack_zoo.cache_key(zoo, params)  # where, not what
    entry = attack_zoo.run_entry(zoo, "line", 0, 1, intake_too=True, repair_too=False)
    assert entry["attack_seconds"] is None and "repair" not in entry  # cached; --intake: no patch
    assert [row["trigger"] for row in entry["intake"]] == [0] * zoo.params.attack.n_reports


def test_attack_zoo_measures_the_never_attacked_encoders_asr_with_each_trigger(scenario):
    from attack_zoo import never_attacked

    from mudjack.evaluation import AttackSpec, retrain_and_evaluate

    zoo = _tiny_zoo(scenario)
    floor = never_attacked(zoo, scenario.trigger, scenario.target)
    attack = AttackSpec(scenario.trigger, scenario.target, "truth")
    _, clean = retrain_and_evaluate(scenario.clean, scenario.adapter, scenario.task, attack,
                                    zoo.params.retrain, seed=zoo.params.seed)
    assert floor["asr_never_attacked"] == round(clean["asr"], 4)  # the repair's protocol, clean encoder
    assert floor["flip_asr_never_attacked"] == round(clean["flip_asr"], 4)
    assert floor["anti_flip_never_attacked"] == round(clean["anti_flip"], 4)
    _, backdoored = retrain_and_evaluate(scenario.backdoored, scenario.adapter, scenario.task, attack,
                                         zoo.params.retrain, seed=zoo.params.seed)
    assert floor["asr_never_attacked"] < backdoored["asr"] - 0.3  # the trigger alone does little
    heads = zoo.clean_heads
    again = never_attacked(zoo, scenario.trigger, scenario.target)
    assert again == floor and zoo.clean_heads is heads  # the same heads for every trigger


def test_the_benches_average_retrain_heads_as_the_retrain_stage_does(scenario):
    """`retrain.heads` > 1: each metric is the mean of the heads seeded seed, seed + 1, ...
    (each as one head alone would measure it), the first head is returned; the zoo's
    never-attacked floor uses as many."""
    from attack_zoo import never_attacked

    from mudjack.evaluation import AttackSpec, retrain_and_evaluate

    zoo = _tiny_zoo(scenario, retrain={"heads": 2, "epochs": 5})
    attack, args = AttackSpec(scenario.trigger, scenario.target, "truth"), (scenario.adapter, scenario.task)
    alone = [retrain_and_evaluate(scenario.clean, *args, attack, zoo.params.retrain, seed=s) for s in (3, 4)]
    first, both = retrain_and_evaluate(scenario.clean, *args, attack, zoo.params.retrain, seed=3, heads=2)
    for key in ("clean_acc", "asr", "flip_asr"):
        assert both["per_head"][key] == [one[1][key] for one in alone]
        assert both[key] == pytest.approx(np.mean(both["per_head"][key]))
    weights = zip(first.state_dict().values(), alone[0][0].state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in weights)  # the first head is seed 3's
    floor = never_attacked(zoo, scenario.trigger, scenario.target)
    assert len(zoo.clean_heads) == 2
    mean = np.mean([one[1]["asr"] for one in
                    (retrain_and_evaluate(scenario.clean, *args, attack, zoo.params.retrain, seed=s)
                     for s in zoo.params.retrain.seeds(zoo.params.seed))])
    assert floor["asr_never_attacked"] == round(float(mean), 4)


def test_attack_zoo_epochs_option_sets_only_stage_epochs():
    from attack_zoo import epoch_overrides, set_overrides

    assert set_overrides(["intake.reverse.method=auto", "patch.augment=false"]) == {
        "intake": {"reverse": {"method": "auto"}}, "patch": {"augment": False}}
    with pytest.raises(SystemExit, match="KEY.PATH=VALUE"):
        set_overrides(["nothing"])

    assert epoch_overrides(["attack=4", "patch=2", "deployed_head=9"]) == {
        "attack": {"epochs": 4, "deployed_head": {"epochs": 9}}, "patch": {"epochs": 2}}
    with pytest.raises(SystemExit, match="STAGE=N"):
        epoch_overrides(["intake=3"])


def test_attack_zoo_table_has_a_row_per_attack_with_its_repair():
    from attack_zoo import table

    kept = {"accepted": True, "chosen": "blend", "coverage": 1.0, "correlation": 0.4, "seconds": 8.0}
    refused = {"accepted": False, "chosen": "grow", "coverage": 0.1, "correlation": 0.0, "seconds": 2.0}
    entry = {"family": "blend", "seed": 1, "epochs": 20, "metrics": [{"asr": 1.0}], "intake": [kept, refused],
             "triggers": [{"asr_never_attacked": 0.0123}],  # the floor, beside the deployed ASR
             "repair": {"patched": True, "per_trigger": [{"asr_patched": 0.03, "clean_drop": 0.007}]}}
    lines = table({"rows": [entry, {"family": "line", "seed": 0, "epochs": 3, "metrics": [{"asr": 0.5}]}]})
    head, rule, row, bare = lines.splitlines()
    assert head.count("|") == rule.count("|") == row.count("|") == bare.count("|") == 13
    assert row == "| blend | 1 | 20 | 1.000 | 0.012 | 1/2 | blend | 1.000 | 0.400 | 0.030 | 0.007 | 5.0 |"
    assert bare == "| line | 0 | 3 | 0.500 | - | - | - |  |  |  |  | - |"  # measured before the floor


def _digits_npz(path: Path, *, shuffle_train: bool = False) -> Path:
    from mudjack.data import load_digits_images, stratified_split

    data = load_digits_images()
    test, train = stratified_split(data.y, 0.3, 0)
    y_train = data.y[train]
    if shuffle_train:  # labels that carry nothing: the probe must fall to chance
        y_train = np.random.default_rng(0).permutation(y_train)
    np.savez(path, x_train=data.x[train], y_train=y_train, x_test=data.x[test], y_test=data.y[test])
    return path


def test_probe_accuracy_scores_a_linear_probe_on_frozen_features(tmp_path):
    import probe_accuracy

    from mudjack.encoders import get_adapter, save_encoder

    adapter = get_adapter("small_cnn", {"input_shape": [8, 8, 3], "mean": [0.3] * 3, "std": [0.4] * 3,
                                        "width": 8, "feature_dim": 16})
    save_encoder(adapter.build(), adapter, tmp_path / "encoder.safetensors")
    runs = {}
    for shuffle in (False, True):
        npz = _digits_npz(tmp_path / f"digits_{shuffle}.npz", shuffle_train=shuffle)
        out = tmp_path / f"probe_{shuffle}.json"
        runs[shuffle] = probe_accuracy.main(["--encoder", str(tmp_path / "encoder.safetensors"),
                                             "--train", f"npz:{npz}:train", "--test", f"npz:{npz}:test",
                                             "--epochs", "60", "--out", str(out)])
        assert json.loads(out.read_text()) == runs[shuffle]
    # random conv features still separate digits linearly; shuffled labels teach nothing
    assert runs[False]["test_acc"] >= 0.5 and runs[True]["test_acc"] <= 0.3
    assert runs[False]["classes"] == 10 and runs[False]["adapter"] == "small_cnn"
    with pytest.raises(SystemExit):
        probe_accuracy.main(["--encoder", "e", "--train", "npz", "--test", "npz:x"])


def test_patch_sweep_pads_a_reversed_trigger_with_the_bug_pixels():
    from patch_sweep import padded

    from mudjack.bugs import Bug
    from mudjack.triggers import Trigger

    alpha = np.zeros((6, 6), np.float32)
    alpha[2:4, 2:4] = 0.5
    pattern = np.full((6, 6, 3), 9, np.uint8)
    bug_pixels = np.arange(108, dtype=np.uint8).reshape(6, 6, 3)
    bug = Bug("b", "digits", 1, 0, bug_pixels, bug_pixels, Trigger(alpha, pattern))
    grown = padded(bug, 1).trigger
    assert grown.pixels == 16 and grown.region[1:5, 1:5].all()
    assert (grown.alpha[2:4, 2:4] == 0.5).all() and grown.alpha[1, 1] == 1.0  # its own alpha kept
    assert (grown.pattern[2, 2] == 9).all() and (grown.pattern[1, 1] == bug_pixels[1, 1]).all()


def test_patch_sweep_measures_the_truth_every_few_epochs(scenario):
    from patch_sweep import sweep

    from mudjack.bugs import Bug
    from mudjack.evaluation import AttackSpec
    from mudjack.heads import HeadParams
    from mudjack.patching.mudjacking import MudjackingParams
    from mudjack.triggers import stamp

    test = scenario.task.test
    source = int(np.flatnonzero(test.y != scenario.target)[0])
    bug = Bug("b", "digits", int(test.y[source]), scenario.target, stamp(test.x[source:source + 1],
              scenario.trigger)[0], test.x[int(np.flatnonzero(test.y == scenario.target)[0])],
              scenario.trigger)
    rows = sweep(scenario.backdoored, scenario.adapter, scenario.shadow, [bug], scenario.task,
                 AttackSpec(scenario.trigger, scenario.target, "truth"), MudjackingParams(epochs=3),
                 every=2, head=HeadParams(epochs=30))
    assert [r["epoch"] for r in rows] == [0, 2, 3]  # the backdoored encoder, every 2nd, the last
    assert rows[0]["asr"] >= 0.5 and rows[-1]["asr"] < rows[0]["asr"]  # the true trigger patched
    assert rows[-1]["steps"] == 3 * -(-len(scenario.shadow) // 64)


def test_patch_sweep_names_a_workspace_without_truth_or_bugs(tmp_path):
    from patch_sweep import main

    with pytest.raises(SystemExit, match="needs a planted truth"):
        main(["--workspace", str(tmp_path), "--task", "gtsrb"])


def test_patch_sweep_asks_for_the_target_of_a_task_the_attack_did_not_aim_at(tmp_path):
    from patch_sweep import main

    from mudjack.io import write_npz
    from mudjack.triggers import patch_trigger
    from mudjack.truth import truth_arrays

    write_npz(tmp_path / "models" / "backdoored" / "truth.npz",
              **truth_arrays([(patch_trigger((8, 8, 3), 2, 6, 6), {"gtsrb": 12})]))
    (tmp_path / "bugs").mkdir()
    with pytest.raises(SystemExit, match="mnist: the attack planted no target there; pass --target"):
        main(["--workspace", str(tmp_path), "--task", "mnist"])


def test_asr_floor_takes_the_inferred_target_of_a_task_the_attack_did_not_aim_at(tmp_path, monkeypatch):
    from asr_floor import task_target

    from mudjack.io import write_json

    monkeypatch.chdir(tmp_path)
    assert task_target("gtsrb", {"gtsrb": 12}) == 12
    assert task_target("cifar10", {"gtsrb": 12}) is None  # no metrics yet
    write_json(tmp_path / "reports" / "metrics.json",
               {"tasks": {"cifar10": {"exposure": {"target": 3}}, "mnist": {}}})
    assert task_target("cifar10", {"gtsrb": 12}) == 3
    assert task_target("mnist", {"gtsrb": 12}) is None


def test_asr_floor_moves_the_true_trigger_for_the_position_control():
    from asr_floor import shifted

    from mudjack.triggers import patch_trigger

    trigger = patch_trigger((8, 8, 3), 2, 5, 6)  # a 2x2 patch at rows 5-6, columns 6-7
    moved = shifted(trigger, -5, -6)
    assert moved.mask.dtype == bool and moved.mask.sum() == 4 and moved.mask[:2, :2].all()
    assert np.array_equal(moved.pattern[:2, :2], trigger.pattern[5:7, 6:8])
    assert np.array_equal(shifted(moved, 5, 6).mask, trigger.mask)


def test_feature_batch_bench_times_every_batch_size_against_the_default(tmp_path, monkeypatch):
    import feature_batch

    out = tmp_path / "feature_batch.json"
    monkeypatch.setattr("sys.argv", ["feature_batch.py", "--images", "24", "--batches", "8", "128",
                                     "--repeats", "1", "--threads", "1", "--out", str(out)])
    feature_batch.main()
    result = json.loads(out.read_text())
    assert [row["batch_size"] for row in result["rows"]] == [8, 128] and result["images"] == 24
    assert result["rows"][1]["ratio_to_default"] == 1.0 and result["rows"][0]["median_s"] > 0


def test_fold_speed_bench_times_both_workloads_on_both_encoders(tmp_path, monkeypatch):
    import fold_speed

    out = tmp_path / "fold_speed.json"
    monkeypatch.setattr("sys.argv", ["fold_speed.py", "--images", "80", "--steps", "2", "--repeats", "1",
                                     "--threads", "1", "--out", str(out)])
    fold_speed.main()
    result = json.loads(out.read_text())
    assert [row["workload"] for row in result["rows"]] == ["soft_fit", "features"]
    assert all(row["deployed_s"] > 0 and row["folded_s"] > 0 and row["ratio"] > 0 for row in result["rows"])
    assert result["max_feature_difference"] < 1e-4  # the same features


def _zoo_entry(family: str, seed: int, *, accepted: list[bool], patched: list[tuple[float, float]] | None,
               floors: list[float]) -> dict:
    intake = [{"accepted": a, "seconds": 2.0 * (i + 1)} for i, a in enumerate(accepted)]
    entry = {"family": family, "seed": seed, "epochs": 4, "intake": intake,
             "triggers": [{"asr_never_attacked": f} for f in floors]}
    if patched is not None:
        entry["repair"] = {"patched": bool(patched),
                           "per_trigger": [{"asr_patched": a, "clean_drop": d} for a, d in patched]}
    return entry


def test_zoo_tally_counts_repairs_literally_and_against_the_never_attacked_floor(tmp_path):
    from zoo_tally import main, tally

    rows = [_zoo_entry("patch", 0, accepted=[True], patched=[(0.03, 0.01)], floors=[0.0]),
            # under its floor (0.4) but not under 0.05: repaired against the floor only
            _zoo_entry("scatter", 0, accepted=[True], patched=[(0.2, 0.0)], floors=[0.4]),
            # the clean drop over 0.02 fails both, whatever the floor
            _zoo_entry("dual", 0, accepted=[True, True], patched=[(0.01, 0.03), (0.3, 0.03)],
                       floors=[0.0, 0.5]),
            # every report refused in an intake-only run: not repaired
            _zoo_entry("blend", 1, accepted=[False], patched=None, floors=[0.05]),
            # accepted but never patched: left out of the repair counts
            _zoo_entry("line", 1, accepted=[True], patched=None, floors=[0.0])]
    found = tally([{"rows": rows}])
    marks = {(a["family"], a["seed"]): (a["literal"], a["floor"]) for a in found["attacks"]}
    assert marks == {("patch", 0): (True, True), ("scatter", 0): (False, True), ("dual", 0): (False, False),
                     ("blend", 1): (False, False), ("line", 1): (None, None)}
    assert found["reports"] == {"accepted": 5, "total": 6, "rate": 0.8333}
    assert found["repaired"]["measured"] == 4
    assert found["repaired"]["literal"]["count"] == 1 and found["repaired"]["floor"]["count"] == 2
    # a later file's repair of the same attack replaces the earlier one's, field by field
    later = _zoo_entry("scatter", 0, accepted=[True], patched=[(0.04, 0.0)], floors=[0.4])
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"rows": rows}))
    second.write_text(json.dumps({"rows": [{k: later[k] for k in ("family", "seed", "epochs", "repair")}]}))
    merged = main([str(first), str(second), "--out", str(tmp_path / "tally.json")])
    assert merged["repaired"]["literal"]["count"] == 2
    assert json.loads((tmp_path / "tally.json").read_text())["files"] == ["a.json", "b.json"]
    assert found["phase_seconds_median"] == {}  # rows from before phase_seconds was logged


def test_zoo_tally_gives_the_median_time_of_each_intake_phase():
    from zoo_tally import markdown, tally

    rows = [_zoo_entry("patch", seed, accepted=[True], patched=None, floors=[0.0]) for seed in range(3)]
    for seed, row in enumerate(rows):
        row["intake"][0]["phase_seconds"] = {"reversal": 10.0 * (seed + 1), "verification": 1.0 + seed}
    rows[0]["intake"].append({"accepted": True, "seconds": 1.0})  # an older row, without phases
    found = tally([{"rows": rows}])
    assert found["phase_seconds_median"] == {"reversal": 20.0, "verification": 2.0}
    assert markdown(found).endswith("reversal 20.0 s, verification 2.0 s")
