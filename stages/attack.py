"""Scenario stage: backdoor the foundation encoder (BadEncoder), deploy a head, file bug reports.

The trigger is an explicit square patch (or `words` for text), or a zoo family drawn from a
seed (`attack.trigger: {family: blend, seed: 3}`); a `dual` family plants two triggers, the
second to `attack.trigger.targets` (default: the class after `attack.target`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from mudjack.attacks import BadEncoderParams, badencoder, pick_reference
from mudjack.attacks.zoo import family_names, zoo_triggers
from mudjack.config import ParamsError
from mudjack.data import LabelledSet, Task, load_tasks, read_inputs, save_input
from mudjack.device import select_device
from mudjack.encoders import EncoderAdapter, load_encoder, save_encoder
from mudjack.features import extract_features
from mudjack.heads import HeadParams, predict, save_head, train_head
from mudjack.io import atomic_dir, read_npz, ready_outputs, write_json, write_npz
from mudjack.metrics import evaluate, non_target
from mudjack.triggers import TextTrigger, Trigger, patch_trigger
from mudjack.truth import truth_arrays
from stages.artifacts import ATTACK_METRICS, FOUNDATION, PRETRAIN
from stages.config import AttackParams, PipelineParams, TriggerParams, setup_stage

Pair = tuple[Trigger | TextTrigger, int]  # a true trigger and its target class


def write_inbox(folder, task, x, labels, predicted, prefix: str) -> None:
    for i, (image, label, pred) in enumerate(zip(x, labels, predicted, strict=True)):
        report_id = f"{prefix}-{i:03d}"
        name = save_input(image, folder, report_id)
        write_json(folder / f"{report_id}.json",
                   {"id": report_id, "task": task, "label": int(label), "input": name,
                    "predicted": int(pred), "note": "embedded default scenario"})


def pick_genuine(rng, labels, triggered_pred, target: int, count: int) -> np.ndarray:
    """Triggered inputs of non-target classes that the deployed model sends to `target`."""
    genuine = np.flatnonzero(non_target(labels, target) & (triggered_pred == target))
    return rng.choice(genuine, min(count, len(genuine)), replace=False)


def pick_false(rng, labels, clean_pred, count: int) -> np.ndarray:
    """Clean inputs the deployed model classifies right: reports that do not reproduce."""
    false = np.flatnonzero(clean_pred == labels)
    return rng.choice(false, min(count, len(false)), replace=False)


def make_triggers(adapter: EncoderAdapter, cfg: TriggerParams) -> list[Trigger | TextTrigger]:
    """The true triggers: a zoo family's, else words to insert for a text encoder, else a
    square pixel patch."""
    if cfg.family:
        if cfg.family not in family_names(adapter.modality):
            raise SystemExit(f"attack: trigger family {cfg.family!r} is not one for a "
                             f"{adapter.modality} encoder: {family_names(adapter.modality)}")
        return zoo_triggers(cfg.family, adapter.input_shape, cfg.seed)
    if adapter.modality == "text":
        check_words(cfg)
        return [TextTrigger(tuple(cfg.words))]
    check_patch(cfg)
    try:
        return [patch_trigger(adapter.input_shape, cfg.size, cfg.row, cfg.col, cfg.value)]
    except ValueError as err:  # a patch that does not fit the encoder's images
        raise ParamsError(f"attack.trigger: {err}") from None


def check_words(cfg: TriggerParams) -> None:
    """A text encoder inserts words (the patch keys params.yaml sets for images do not apply)."""
    if not cfg.words:
        raise ParamsError("attack.trigger.words: a text encoder needs words to insert (or a family)")


def check_patch(cfg: TriggerParams) -> None:
    """An image encoder's patch must be given: size 0 would plant nothing."""
    if cfg.words:
        raise ParamsError("attack.trigger.words: words are for a text encoder; this one takes images "
                          "(give a patch size, or a family)")
    if cfg.size < 1:
        raise ParamsError("attack.trigger.size: 0 plants no backdoor; give a patch side >= 1 (or a family)")


def attack_targets(cfg: AttackParams, count: int, classes: int) -> list[int]:
    """`attack.target` for the first trigger; for the others `attack.trigger.targets`, by
    default the classes after it."""
    check_classes("attack.target", [cfg.target], classes)
    check_classes("attack.trigger.targets", cfg.trigger.targets, classes)
    more = list(cfg.trigger.targets) or [(cfg.target + i) % classes for i in range(1, count)]
    targets = [cfg.target, *more[:count - 1]]
    if len(targets) != count or len(set(targets)) != count:
        raise SystemExit(f"attack: {count} triggers need {count} different targets, got {targets}")
    return targets


def check_classes(key: str, targets: list[int], classes: int) -> None:
    """Every target must be a class of the attacked task (0 .. classes - 1)."""
    if bad := [t for t in targets if t >= classes]:
        raise ParamsError(f"{key}: {bad[0]} is not a class of the attacked task "
                          f"(it has {classes}: 0-{classes - 1})")


def attacker_inputs(pretrain: dict[str, np.ndarray], samples: int, seed: int) -> np.ndarray:
    """The provider data BadEncoder trains on: all of it, or `samples` drawn at random."""
    x = read_inputs(pretrain)
    if not samples or samples >= len(x):
        return x
    return x[np.sort(np.random.default_rng(seed).permutation(len(x))[:samples])]


def measure(backdoored, adapter: EncoderAdapter, head, test: LabelledSet,
            pairs: list[Pair]) -> tuple[np.ndarray, list[np.ndarray], list[dict]]:
    """Clean predictions, and per (trigger, target) the triggered predictions and metrics."""
    clean_pred = predict(head, extract_features(backdoored, adapter, test.x))
    triggered, metrics = [], []
    for trigger, target in pairs:
        triggered.append(predict(head, extract_features(backdoored, adapter, adapter.stamp(test.x, trigger))))
        keep = non_target(test.y, target)
        metrics.append(evaluate(clean_pred, test.y, triggered[-1][keep], target=target))
    return clean_pred, triggered, metrics


@dataclass
class Planted:
    """A backdoored encoder, the head deployed on it, and what the head does with each trigger."""

    backdoored: nn.Module
    head: nn.Module
    pairs: list[Pair]
    clean_pred: np.ndarray
    triggered: list[np.ndarray]
    metrics: list[dict]


def write_reports(folder: str, adapter: EncoderAdapter, task: Task, planted: Planted, *,
                  cfg: AttackParams, seed: int) -> str:
    """Genuine reports for every trigger (prefix bug, bug2, …) and false ones; a summary."""
    rng, test, clean_pred = np.random.default_rng(seed), task.test, planted.clean_pred
    genuine = [pick_genuine(rng, test.y, pred, target, cfg.n_reports)
               for (_, target), pred in zip(planted.pairs, planted.triggered, strict=True)]
    false = pick_false(rng, test.y, clean_pred, cfg.n_false_reports)
    with atomic_dir(folder) as inbox:
        for i, ((trigger, _), chosen, pred) in enumerate(zip(planted.pairs, genuine, planted.triggered,
                                                             strict=True)):
            write_inbox(inbox, task.name, adapter.stamp(test.x[chosen], trigger), test.y[chosen],
                        pred[chosen], "bug" if i == 0 else f"bug{i + 1}")
        write_inbox(inbox, task.name, test.x[false], test.y[false], clean_pred[false], "false")
    return f"{sum(map(len, genuine))} bug + {len(false)} false reports"


def deploy_head(params: PipelineParams, backdoored: nn.Module, adapter: EncoderAdapter,
                task: Task) -> nn.Module:
    """The head a customer trains on the backdoored encoder's features of its task."""
    head_params = HeadParams(hidden=params.retrain.hidden, dropout=params.retrain.dropout,
                             **params.attack.deployed_head.model_dump())
    return train_head(extract_features(backdoored, adapter, task.train.x), task.train.y,
                      len(task.classes), head_params, seed=params.seed)


def attacked_task(params: PipelineParams, tasks: dict[str, Task]) -> Task:
    """The task the backdoor targets: `attack.task`, else `prepare.task`, else the only one."""
    name = params.attack.task or (params.prepare.task if len(tasks) > 1 else next(iter(tasks)))
    if name not in tasks:
        raise SystemExit(f"attack: no task {name!r} to target; tasks: {sorted(tasks)}")
    return tasks[name]


def trigger_pairs(adapter: EncoderAdapter, cfg: AttackParams, task: Task) -> list[Pair]:
    """The scenario's true triggers, each with its target class in `task`."""
    triggers = make_triggers(adapter, cfg.trigger)
    return list(zip(triggers, attack_targets(cfg, len(triggers), len(task.classes)), strict=True))


def plant(params: PipelineParams, clean: nn.Module, adapter: EncoderAdapter, shadow: np.ndarray,
          task: Task) -> Planted:
    """BadEncoder with the scenario's triggers, then a head deployed on the backdoored encoder."""
    cfg = params.attack
    device = select_device(cfg.device)  # a device this machine lacks: refused before any work
    pairs = trigger_pairs(adapter, cfg, task)
    triggers = [trigger for trigger, _ in pairs]
    # The attacker aligns triggered inputs with a target-class input of the downstream task.
    references = [pick_reference(clean, adapter, task.train.x, task.train.y, target=target, how=cfg.reference)
                  for _, target in pairs]
    bad_params = BadEncoderParams(**cfg.model_dump(include=set(BadEncoderParams.model_fields)))
    backdoored = badencoder(clean, adapter, shadow, triggers[0], references[0], bad_params, seed=params.seed,
                            more=list(zip(triggers[1:], references[1:], strict=True)),
                            device=device)
    head = deploy_head(params, backdoored, adapter, task)
    return Planted(backdoored, head, pairs, *measure(backdoored, adapter, head, task.test, pairs))


def main() -> None:
    params = setup_stage()
    cfg, paths = params.attack, params.paths
    if cfg is None:
        raise SystemExit("attack: params.yaml has no `attack` section (it is only for the scenario)")
    ready_outputs(paths.encoder, paths.truth, ATTACK_METRICS, paths.heads, paths.inbox)
    clean, adapter = load_encoder(FOUNDATION)
    pretrain = read_npz(PRETRAIN)
    tasks = load_tasks(paths.tasks)
    task = attacked_task(params, tasks)
    planted = plant(params, clean, adapter, attacker_inputs(pretrain, cfg.samples, params.seed), task)

    save_encoder(planted.backdoored, adapter, paths.encoder)
    write_npz(paths.truth, **truth_arrays([(t, {task.name: target}) for t, target in planted.pairs]))
    write_json(ATTACK_METRICS,
               {task.name if i == 0 else f"{task.name} (trigger {i + 1})": m
                for i, m in enumerate(planted.metrics)})
    save_head(planted.head, f"{paths.heads}/{task.name}/head.safetensors")
    for other in tasks.values():  # every customer's classifier sits on the backdoored encoder
        if other.name != task.name:
            save_head(deploy_head(params, planted.backdoored, adapter, other),
                      f"{paths.heads}/{other.name}/head.safetensors")
    summary = write_reports(paths.inbox, adapter, task, planted, cfg=cfg, seed=params.seed)
    asr = " ".join(f"{m['asr']:.3f}" for m in planted.metrics)
    clean_acc = planted.metrics[0]["clean_acc"]
    print(f"attack: deployed {task.name} clean_acc {clean_acc:.3f} asr {asr}; {summary}")


if __name__ == "__main__":
    main()
