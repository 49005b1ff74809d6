"""Benchmark (not a test): plant every attack-zoo family on the embedded digits default and
measure the deployed model's ASR with the true trigger(s); with `--repair`, also intake and
patching.

    OMP_NUM_THREADS=1 .venv/bin/python bench/attack_zoo.py              # all image families, seeds 0-2
    .venv/bin/python bench/attack_zoo.py --families patch blend --seeds 0 --moderate 0
    .venv/bin/python bench/attack_zoo.py --seeds 0 --moderate 0 --repair

The scenario stages run in process with params.yaml's defaults (prepare -> foundation ->
attack), the attack's trigger replaced by `{family, seed}`; each family is also planted once
(seed 0) with `--moderate` BadEncoder epochs, a weaker backdoor. ASR, clean accuracy and
the rest come from the attack stage's own measurement (mudjack.metrics.evaluate). Writes
bench/results/attack_zoo_digits.json.

`--repair` runs params.yaml's intake on `attack.n_reports` genuine reports per trigger
(triggered test inputs of other classes the deployed model sends to its target): accepted or
why not, the recovered trigger against the true one (IoU, coverage, correlation of α·t),
the reversal candidate chosen, seconds. The accepted bugs are patched with params.yaml's
patch method; a fresh head (the retrain settings) on the backdoored and on the patched
encoder gives the ASR with the true trigger and the clean-accuracy drop.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from mudjack.attacks.zoo import family_names  # noqa: E402
from mudjack.data import LabelledSet, Task  # noqa: E402
from mudjack.deployed import Deployed  # noqa: E402
from mudjack.encoders import get_adapter  # noqa: E402
from mudjack.evaluation import AttackSpec, retrain_and_evaluate  # noqa: E402
from mudjack.intake import intake_report  # noqa: E402
from mudjack.io import write_json  # noqa: E402
from mudjack.patching import PatchInputs, run_patch  # noqa: E402
from mudjack.reports import BugReport  # noqa: E402
from mudjack.training import PretrainParams, pretrain_encoder  # noqa: E402
from stages.attack import Planted, pick_genuine, plant  # noqa: E402
from stages.config import PipelineParams, TriggerParams, load_params  # noqa: E402
from stages.foundation import adapter_config  # noqa: E402
from stages.prepare import split_sources  # noqa: E402


def digits_default(params: PipelineParams) -> tuple[LabelledSet, Task]:
    """The prepare stage's provider data and task for params.yaml."""
    provider, train, test = split_sources(params.prepare, params.seed)
    classes = list(range(int(max(train.y.max(), test.y.max())) + 1))
    return provider, Task(params.prepare.task, classes, train, test)


def foundation(params: PipelineParams, provider: LabelledSet) -> tuple[torch.nn.Module, object]:
    """The foundation stage's clean encoder, trained on the provider's data."""
    cfg = params.foundation
    adapter = get_adapter(cfg.adapter, adapter_config(cfg, provider))
    train = PretrainParams(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size)
    return pretrain_encoder(adapter, provider, int(provider.y.max()) + 1, train, seed=params.seed), adapter


def with_attack(params: PipelineParams, family: str, seed: int, epochs: int) -> PipelineParams:
    attack = params.attack.model_copy(update={"trigger": TriggerParams(family=family, seed=seed),
                                              "epochs": epochs})
    return params.model_copy(update={"attack": attack})


def zoo_entries(families: list[str], seeds: list[int], epochs: int, moderate: int) -> list[tuple]:
    """(family, seed, epochs): every family and seed at the scenario's epochs, then each family
    once (first seed) at `moderate` epochs (0: none)."""
    entries = [(f, s, epochs) for f in families for s in seeds]
    return entries + [(f, seeds[0], moderate) for f in families if moderate]


def row(family: str, seed: int, epochs: int, planted: Planted, seconds: float) -> dict:
    """One result: the trigger(s) as drawn and the deployed model's numbers for each."""
    triggers = [{"target": target, "pixels": t.pixels, "max_alpha": round(float(t.alpha.max()), 3)}
                for t, target in planted.pairs]
    metrics = [{k: round(v, 4) for k, v in m.items()} for m in planted.metrics]
    return {"family": family, "seed": seed, "epochs": epochs, "triggers": triggers,
            "metrics": metrics, "attack_seconds": round(seconds, 1)}


TRUTH_KEYS = ("iou", "coverage", "correlation", "mask_pixels")


def intake_rows(params: PipelineParams, planted: Planted, adapter: object, task: Task) -> tuple[list, list]:
    """Intake of `attack.n_reports` genuine reports per trigger: (accepted bugs, one row each)."""
    deployed = Deployed(planted.backdoored, adapter, {task.name: planted.head})
    rng, bugs, rows = np.random.default_rng(params.seed), [], []
    triggered = zip(planted.pairs, planted.triggered, strict=True)
    for index, ((trigger, target), predicted) in enumerate(triggered):
        for i in pick_genuine(rng, task.test.y, predicted, target, params.attack.n_reports):
            report = BugReport(f"t{index}_{i}", task.name, int(task.test.y[i]),
                               adapter.stamp(task.test.x[i], trigger), None)
            start = time.perf_counter()
            decision, bug = intake_report(report, deployed, {task.name: task}, params=params.intake,
                                          truth=trigger, seed=params.seed)
            numbers = decision.numbers
            rows.append({"trigger": index, "accepted": decision.accepted,
                         "why": None if decision.accepted else decision.reasons[0],
                         **{k: _round(numbers.get(k)) for k in TRUTH_KEYS},
                         "chosen": numbers.get("reversal", {}).get("chosen", params.intake.reverse.method),
                         "seconds": round(time.perf_counter() - start, 1)})
            bugs += [bug] if bug is not None else []
    return bugs, rows


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def repair(params: PipelineParams, planted: Planted, adapter: object, task: Task, shadow: np.ndarray,
           bugs: list) -> dict[str, Any]:
    """Patch with the accepted bugs; per trigger, fresh heads' ASR (true trigger) and clean accuracy
    on the backdoored and the patched encoder."""
    if not bugs:
        return {"patched": False}
    start = time.perf_counter()
    inputs = PatchInputs(copy.deepcopy(planted.backdoored), adapter, shadow, bugs, {task.name: task.train})
    patched = run_patch(params.patch.method, inputs, params.patch.settings, seed=params.seed).encoder
    seconds = round(time.perf_counter() - start, 1)
    per_trigger, encoders, seed = [], (planted.backdoored, patched), params.seed
    for trigger, target in planted.pairs:
        attack = AttackSpec(trigger, target, "truth")
        before, after = (retrain_and_evaluate(encoder, adapter, task, attack, params.retrain, seed=seed)[1]
                         for encoder in encoders)
        per_trigger.append({"asr_backdoored": _round(before["asr"]), "asr_patched": _round(after["asr"]),
                            "clean_drop": _round(before["clean_acc"] - after["clean_acc"])})
    return {"patched": True, "patch_seconds": seconds, "per_trigger": per_trigger}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=family_names("image"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--moderate", type=int, default=3, help="epochs of the weaker attacks (0: none)")
    parser.add_argument("--repair", action="store_true", help="also run intake and patching")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    torch.set_num_threads(max(params.threads, 1))
    provider, task = digits_default(params)
    clean, adapter = foundation(params, provider)
    rows = []
    for family, seed, epochs in zoo_entries(args.families, args.seeds, params.attack.epochs, args.moderate):
        start = time.perf_counter()
        planted = plant(with_attack(params, family, seed, epochs), clean, adapter, provider.x, task)
        rows.append(row(family, seed, epochs, planted, time.perf_counter() - start))
        asr = " ".join(f"{m['asr']:.3f}" for m in planted.metrics)
        print(f"{family} seed {seed} epochs {epochs}: asr {asr} clean_acc "
              f"{planted.metrics[0]['clean_acc']:.3f} ({rows[-1]['attack_seconds']}s)", flush=True)
        if args.repair:
            bugs, rows[-1]["intake"] = intake_rows(params, planted, adapter, task)
            rows[-1]["repair"] = repair(params, planted, adapter, task, provider.x, bugs)
            print(f"  intake {rows[-1]['intake']}\n  repair {rows[-1]['repair']}", flush=True)
    write_json(ROOT / "bench" / "results" / "attack_zoo_digits.json",
               {"scenario": "digits (params.yaml defaults)", "threads": torch.get_num_threads(),
                "command": " ".join(["bench/attack_zoo.py", *sys.argv[1:]]), "rows": rows})


if __name__ == "__main__":
    main()
