"""Repair stage: per task, retrain the head on the backdoored and the patched encoder; measure
every known trigger on every task (mudjack.exposure)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from mudjack.bugs import check_bugs, load_bugs
from mudjack.data import Task, load_tasks
from mudjack.device import select_device
from mudjack.encoders import load_encoder, load_patch_of
from mudjack.evaluation import predictor, retrain_heads
from mudjack.exposure import MODELS, TaskModels, named_triggers, task_exposure
from mudjack.features import on_device
from mudjack.heads import save_head
from mudjack.io import atomic_dir, ready_outputs, write_json
from mudjack.truth import read_truth, unknown_tasks
from stages.artifacts import BUGS, HEADS, PATCHED_ENCODER, RETRAIN_SUMMARY
from stages.common import say_rejected
from stages.config import PipelineParams, setup_stage
from stages.progress import progress


def describe(result: dict) -> str:
    """One task's headline numbers and exposure, on one line."""
    models = "; ".join(f"{variant} " + ", ".join(f"{k} {v:.3f}" for k, v in result[variant].items()
                                                  if v is not None) for variant in MODELS)
    exposure = result["exposure"]
    return f"{models}; exposed {exposure['exposed']} (worst trigger {exposure['trigger']})"


def retrain_task(task: Task, encoders: dict[str, tuple], params: PipelineParams, heads: Path,
                 step: Callable[[str], None]) -> TaskModels:
    """`retrain.heads` fresh heads on each encoder (the first saved under `heads`), as the
    task's two classifiers."""
    predictors, seeds = {}, params.retrain.seeds(params.seed)
    for variant in MODELS:
        step(f"{task.name} {variant}")
        encoder, adapter = encoders[variant]
        trained = retrain_heads(encoder, adapter, task, params.retrain, seeds=seeds)
        save_head(trained[0], heads / task.name / f"{variant}.safetensors")
        predictors[variant] = predictor(encoder, adapter, trained)
    deployed = encoders["backdoored"][1]
    return TaskModels(task.test, len(task.classes), predictors, deployed.stamp, deployed.stamp_side)


def main() -> None:
    params = setup_stage()
    ready_outputs(HEADS, RETRAIN_SUMMARY)
    loaded = {"backdoored": load_encoder(params.paths.encoder),
              "patched": load_patch_of(PATCHED_ENCODER, params.paths.encoder)}
    device = select_device(params.retrain.device)
    encoders = {variant: (on_device(encoder, device), adapter)
                for variant, (encoder, adapter) in loaded.items()}
    truths, rejected = read_truth(params.paths.truth)
    say_rejected(params.paths.truth, rejected)
    results, tasks, bugs = {}, load_tasks(params.paths.tasks), load_bugs(BUGS)
    check_bugs(bugs, tasks, registry=BUGS, adapter=encoders["backdoored"][1])
    triggers = named_triggers(truths, bugs)
    if unknown := unknown_tasks(truths, tasks):
        print(f"truth: {params.paths.truth} names tasks that are not tasks here, {unknown}: their "
              "targets are not used", file=sys.stderr)
    with atomic_dir(HEADS) as heads, progress("retrain", len(tasks) * (len(MODELS) + 1)) as step:
        for name, task in tasks.items():
            models = retrain_task(task, encoders, params, heads, step)
            step(f"{name} exposure to {len(triggers)} triggers")
            results[name] = task_exposure(name, models, triggers)
            print(f"retrain: {name}: {describe(results[name])}")
    write_json(RETRAIN_SUMMARY, {"tasks": results, **({"truth_rejected": rejected} if rejected else {})})


if __name__ == "__main__":
    main()
