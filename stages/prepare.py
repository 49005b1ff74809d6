"""Scenario stage: the provider's data (pre-training + shadow) and a downstream task's train/test."""

from __future__ import annotations

import numpy as np

from mudjack.data import LabelledSet, Task, save_task, stratified_split, write_set
from mudjack.io import atomic_dir
from mudjack.loaders import limit_stratified, load_data
from stages.artifacts import PREPARED, PREPARED_SHADOW, PREPARED_TASKS, PRETRAIN
from stages.config import PrepareParams, setup_stage


def split_sources(cfg: PrepareParams, seed: int) -> tuple[LabelledSet, LabelledSet, LabelledSet]:
    """(provider, task train, task test) from one, two or three sources."""
    provider = load_data(cfg.provider, seed)
    if cfg.downstream is None:
        mine, rest = stratified_split(provider.y, cfg.provider_fraction, seed)
        provider, downstream = provider.subset(mine), provider.subset(rest)
    else:
        downstream = load_data(cfg.downstream, seed)
    if cfg.test is not None:
        return provider, downstream, load_data(cfg.test, seed)
    test, train = stratified_split(downstream.y, cfg.test_fraction, seed + 1)
    return provider, downstream.subset(train), downstream.subset(test)


def main() -> None:
    params = setup_stage()
    cfg = params.prepare
    provider, train, test = split_sources(cfg, params.seed)
    classes = list(range(int(max(train.y.max(), test.y.max())) + 1))
    task = Task(cfg.task, classes, train, test)
    shadow = limit_stratified(provider, cfg.shadow_limit, params.seed).x
    with atomic_dir(PREPARED) as tmp:
        write_set(tmp / PRETRAIN.name, provider.x, provider.y)
        write_set(tmp / PREPARED_SHADOW.name, shadow)
        save_task(task, tmp / PREPARED_TASKS.name / task.name)
    print(f"prepare: {len(provider)} provider images ({len(shadow)} shadow), task {task.name}: "
          f"{len(train)} train / {len(test)} test, {len(classes)} classes, "
          f"input {np.asarray(train.x.shape[1:]).tolist()}")


if __name__ == "__main__":
    main()
