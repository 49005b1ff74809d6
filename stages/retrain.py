"""Repair stage: per task, retrain the head on the backdoored and the patched encoder; measure."""

from __future__ import annotations

from mudjack.bugs import load_bugs
from mudjack.data import load_tasks
from mudjack.encoders import load_encoder
from mudjack.evaluation import attack_spec, retrain_and_evaluate
from mudjack.heads import save_head
from mudjack.io import atomic_dir, write_json
from stages.artifacts import BUGS, HEADS, PATCHED_ENCODER, RETRAIN_SUMMARY
from stages.common import load_truth
from stages.config import setup_stage
from stages.progress import progress


def main() -> None:
    params = setup_stage()
    encoders = {"backdoored": load_encoder(params.paths.encoder),
                "patched": load_encoder(PATCHED_ENCODER)}
    bugs = load_bugs(BUGS)
    truth, targets = load_truth(params.paths)
    results, tasks = {}, load_tasks(params.paths.tasks)
    with atomic_dir(HEADS) as heads, progress("retrain", len(tasks) * len(encoders)) as step:
        for name, task in tasks.items():
            attack = attack_spec(name, bugs, truth=truth, targets=targets)
            results[name] = {"attack": None if attack is None else
                             {"target": attack.target, "trigger": attack.source}}
            for variant, (encoder, adapter) in encoders.items():
                step(f"{name} {variant}")
                head, metrics = retrain_and_evaluate(encoder, adapter, task, attack,
                                                     params.retrain, seed=params.seed)
                save_head(head, heads / name / f"{variant}.safetensors")
                results[name][variant] = metrics
                print(f"retrain: {name} {variant}: " + ", ".join(
                    f"{k} {v:.3f}" for k, v in metrics.items() if v is not None))
    write_json(RETRAIN_SUMMARY, {"tasks": results})


if __name__ == "__main__":
    main()
