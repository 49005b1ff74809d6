"""Scenario stage: backdoor the foundation encoder (BadEncoder), deploy a head, file bug reports."""

from __future__ import annotations

import numpy as np

from mudjack.attacks import BadEncoderParams, badencoder, pick_attack_reference
from mudjack.data import load_tasks, read_inputs, save_input
from mudjack.encoders import EncoderAdapter, load_encoder, save_encoder
from mudjack.features import extract_features
from mudjack.heads import HeadParams, predict, save_head, train_head
from mudjack.io import atomic_dir, read_npz, write_json, write_npz
from mudjack.metrics import evaluate, non_target
from mudjack.triggers import TextTrigger, Trigger, patch_trigger
from stages.artifacts import ATTACK_METRICS, FOUNDATION, PRETRAIN
from stages.common import truth_arrays
from stages.config import AttackParams, TriggerParams, setup_stage


def write_inbox(folder, task, x, labels, predicted, prefix: str) -> None:
    for i, (image, label, pred) in enumerate(zip(x, labels, predicted, strict=True)):
        report_id = f"{prefix}-{i:03d}"
        name = save_input(image, folder, report_id)
        write_json(folder / f"{report_id}.json",
                   {"id": report_id, "task": task, "label": int(label), "input": name,
                    "predicted": int(pred), "note": "embedded default scenario"})


def pick_reports(rng, labels, triggered_pred, clean_pred, cfg: AttackParams):
    """Genuine: triggered, non-target, predicted as target. False: clean and classified right."""
    genuine = np.flatnonzero(non_target(labels, cfg.target) & (triggered_pred == cfg.target))
    false = np.flatnonzero(clean_pred == labels)
    return (rng.choice(genuine, min(cfg.n_reports, len(genuine)), replace=False),
            rng.choice(false, min(cfg.n_false_reports, len(false)), replace=False))


def make_trigger(adapter: EncoderAdapter, cfg: TriggerParams) -> Trigger | TextTrigger:
    """The true trigger: words to insert for a text encoder, else a square pixel patch."""
    if adapter.modality == "text":
        if not cfg.words:
            raise SystemExit("attack: a text encoder needs attack.trigger.words")
        return TextTrigger(tuple(cfg.words))
    return patch_trigger(adapter.input_shape, cfg.size, cfg.row, cfg.col, cfg.value)


def attacker_inputs(pretrain: dict[str, np.ndarray], samples: int, seed: int) -> np.ndarray:
    """The provider data BadEncoder trains on: all of it, or `samples` drawn at random."""
    x = read_inputs(pretrain)
    if not samples or samples >= len(x):
        return x
    return x[np.sort(np.random.default_rng(seed).permutation(len(x))[:samples])]


def main() -> None:
    params = setup_stage()
    cfg, paths = params.attack, params.paths
    if cfg is None:
        raise SystemExit("attack: params.yaml has no `attack` section (it is only for the scenario)")
    clean, adapter = load_encoder(FOUNDATION)
    pretrain = read_npz(PRETRAIN)
    (task,) = load_tasks(paths.tasks).values()
    trigger = make_trigger(adapter, cfg.trigger)
    # The attacker aligns triggered inputs with a target-class input of the downstream task.
    reference = pick_attack_reference(clean, adapter, task.train.x, task.train.y, target=cfg.target)
    bad_params = BadEncoderParams(**cfg.model_dump(include=set(BadEncoderParams.model_fields)))
    shadow = attacker_inputs(pretrain, cfg.samples, params.seed)
    backdoored = badencoder(clean, adapter, shadow, trigger, reference, bad_params, seed=params.seed)

    head_params = HeadParams(hidden=params.retrain.hidden, dropout=params.retrain.dropout,
                             **cfg.deployed_head.model_dump())
    head = train_head(extract_features(backdoored, adapter, task.train.x), task.train.y,
                      len(task.classes), head_params, seed=params.seed)
    test = task.test
    clean_pred = predict(head, extract_features(backdoored, adapter, test.x))
    triggered_pred = predict(head, extract_features(backdoored, adapter, adapter.stamp(test.x, trigger)))
    keep = non_target(test.y, cfg.target)
    metrics = evaluate(clean_pred, test.y, triggered_pred[keep], target=cfg.target)

    save_encoder(backdoored, adapter, paths.encoder)
    write_npz(paths.truth, **truth_arrays(trigger, {task.name: cfg.target}))
    write_json(ATTACK_METRICS, {task.name: metrics})
    save_head(head, f"{paths.heads}/{task.name}/head.safetensors")
    genuine, false = pick_reports(np.random.default_rng(params.seed), test.y, triggered_pred,
                                  clean_pred, cfg)
    with atomic_dir(paths.inbox) as inbox:
        stamped = adapter.stamp(test.x[genuine], trigger)
        write_inbox(inbox, task.name, stamped, test.y[genuine], triggered_pred[genuine], "bug")
        write_inbox(inbox, task.name, test.x[false], test.y[false], clean_pred[false], "false")
    print(f"attack: deployed {task.name} clean_acc {metrics['clean_acc']:.3f} "
          f"asr {metrics['asr']:.3f}; {len(genuine)} bug + {len(false)} false reports")


if __name__ == "__main__":
    main()
