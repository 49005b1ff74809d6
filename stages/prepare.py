"""Scenario stage: the provider's data (pre-training + shadow) and the downstream tasks' train/test
(`prepare.task`, and any `prepare.more_tasks`)."""

from __future__ import annotations

import numpy as np

from mudjack.data import LabelledSet, Task, save_task, stratified_split, write_set
from mudjack.io import atomic_dir, ready_outputs
from mudjack.loaders import limit_stratified, load_data
from stages.artifacts import PREPARED, PREPARED_SHADOW, PREPARED_TASKS, PRETRAIN
from stages.config import PrepareParams, TaskSource, setup_stage


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


def make_task(name: str, train: LabelledSet, test: LabelledSet) -> Task:
    return Task(name, list(range(int(max(train.y.max(), test.y.max())) + 1)), train, test)


def further_task(source: TaskSource, seed: int) -> Task:
    """One of `prepare.more_tasks`: its own train source, its test source or a split of it."""
    data = load_data(source.downstream, seed)
    if source.test is not None:
        return make_task(source.name, data, load_data(source.test, seed))
    test, train = stratified_split(data.y, source.test_fraction, seed + 1)
    return make_task(source.name, data.subset(train), data.subset(test))


def main() -> None:
    params = setup_stage()
    ready_outputs(PREPARED)
    cfg = params.prepare
    provider, train, test = split_sources(cfg, params.seed)
    tasks = [make_task(cfg.task, train, test), *(further_task(t, params.seed) for t in cfg.more_tasks)]
    shadow = limit_stratified(provider, cfg.shadow_limit, params.seed).x
    with atomic_dir(PREPARED) as tmp:
        write_set(tmp / PRETRAIN.name, provider.x, provider.y)
        write_set(tmp / PREPARED_SHADOW.name, shadow)
        for task in tasks:
            save_task(task, tmp / PREPARED_TASKS.name / task.name)
    print(f"prepare: {len(provider)} provider images ({len(shadow)} shadow)")
    for task in tasks:
        print(f"prepare: task {task.name}: {len(task.train)} train / {len(task.test)} test, "
              f"{len(task.classes)} classes, input {np.asarray(task.train.x.shape[1:]).tolist()}")


if __name__ == "__main__":
    main()
