"""Scenario stage: split digits into the provider's data and a downstream task."""

from __future__ import annotations

from mudjack.data import Task, load_digits_images, save_task, stratified_split
from mudjack.io import atomic_dir, write_npz
from stages.config import setup_stage

OUT = "data/prepared"


def main() -> None:
    params = setup_stage()
    cfg = params.prepare
    data = load_digits_images()
    provider, downstream = stratified_split(data.y, cfg.pretrain_fraction, params.seed)
    rest = data.subset(downstream)
    test, train = stratified_split(rest.y, cfg.test_fraction, params.seed + 1)
    task = Task(cfg.task, sorted(int(c) for c in set(data.y)), rest.subset(train), rest.subset(test))
    with atomic_dir(OUT) as tmp:
        write_npz(tmp / "pretrain.npz", x=data.x[provider], y=data.y[provider])
        write_npz(tmp / "shadow.npz", x=data.x[provider])
        save_task(task, tmp / "tasks" / task.name)
    print(f"prepare: {len(provider)} provider images, task {task.name}: "
          f"{len(task.train)} train / {len(task.test)} test")


if __name__ == "__main__":
    main()
