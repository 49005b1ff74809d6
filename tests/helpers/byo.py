"""A bring-your-own project built from a test scenario: the user's files under byo/ (encoder,
deployed head, tasks, shadow set, one genuine report in the inbox) and a params.yaml pointing
`paths` at them, with no truth file; and the repair stages run on it in-process."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
import yaml

from mudjack.data import LabelledSet, Task, load_digits_images, save_task, stratified_split
from mudjack.encoders import EncoderAdapter, ImageEncoder, save_encoder
from mudjack.features import extract_features
from mudjack.heads import predict, save_head
from mudjack.io import write_npz
from mudjack.triggers import Trigger

if TYPE_CHECKING:
    from tests.conftest import Scenario

ROOT = Path(__file__).resolve().parents[2]
PATHS = {"shadow": "byo/shadow.npz", "tasks": "byo/tasks", "encoder": "byo/encoder.safetensors",
         "heads": "byo/deployed", "inbox": "byo/inbox", "truth": ""}


def parity(task: Task) -> Task:
    """A second task on the same encoder: the digits' parity (0 even, 1 odd)."""
    def relabel(part: LabelledSet) -> LabelledSet:
        return LabelledSet(part.x, part.y % 2)
    return Task("parity", [0, 1], relabel(task.train), relabel(task.test))


def write_project(root: Path, scenario: Scenario, *, tasks: list[Task],
                  overrides: dict[str, dict[str, Any]]) -> None:
    """The user's files: the encoder, the scenario task's deployed head, `tasks`, the shadow
    set and one report from the scenario's task (a triggered test input sent to the target);
    params.yaml is the project's with `overrides` merged into its sections."""
    from stages.attack import write_inbox

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["paths"] = PATHS
    for section, values in overrides.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    save_encoder(scenario.backdoored, scenario.adapter, root / PATHS["encoder"])
    save_head(scenario.head, root / PATHS["heads"] / scenario.task.name / "head.safetensors")
    for task in tasks:
        save_task(task, root / PATHS["tasks"] / task.name)
    write_npz(root / PATHS["shadow"], x=scenario.shadow)
    test = scenario.task.test
    stamped = scenario.adapter.stamp(test.x, scenario.trigger)
    predicted = predict(scenario.head, extract_features(scenario.backdoored, scenario.adapter, stamped))
    bug = np.flatnonzero((test.y != scenario.target) & (predicted == scenario.target))[:1]
    (root / PATHS["inbox"]).mkdir(parents=True)
    write_inbox(root / PATHS["inbox"], scenario.task.name, stamped[bug], test.y[bug], predicted[bug], "r")


def run_repair(root: Path, *, validate: bool) -> None:
    """The repair stages in `root`, in-process: validate (else its result written as passed),
    intake, patch, retrain, export, report."""
    from mudjack.io import write_json
    from stages import export, intake, patch, report, retrain
    from stages.artifacts import VALIDATION

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(root)
        if validate:
            from stages import validate as validate_stage

            assert validate_stage.main() == 0
        else:
            write_json(VALIDATION, {"reports": {"rejected": {}}})
        for stage in (intake, patch, retrain, export, report):
            stage.main()


def upscale(part: LabelledSet, side: int) -> LabelledSet:
    """8x8 digits at `side` (a multiple of 8), each pixel a block."""
    block = np.ones((1, side // 8, side // 8, 1), dtype=np.uint8)
    return LabelledSet(np.kron(part.x, block), part.y)


def warm_up(encoder: ImageEncoder, adapter: EncoderAdapter, data: LabelledSet) -> ImageEncoder:
    """A short supervised fit from the folder's random weights: a random ViT's CLS token barely
    separates the digits, and BadEncoder keeps what the clean encoder gives."""
    from mudjack.training import fit_cross_entropy

    model = torch.nn.Sequential(encoder, torch.nn.Linear(adapter.feature_dim, 10)).train()
    fit_cross_entropy(model, adapter.preprocess(data.x), torch.as_tensor(data.y),
                      torch.optim.Adam(model.parameters(), lr=3e-3), epochs=30, batch_size=64,
                      generator=torch.Generator().manual_seed(0))
    return encoder.eval()


def digits_backdoor(adapter: EncoderAdapter, *, trigger: Trigger, digits_side: int,
                    target: int = 0) -> tuple[Scenario, Task]:
    """A tiny encoder warmed up on half the digits (at its input side), backdoored with
    BadEncoder (`trigger` to `target`), its deployed head on the other half at `digits_side`,
    and a second task on the same images at the encoder's side: the digits' parity."""
    from mudjack.attacks import BadEncoderParams, badencoder, pick_attack_reference
    from mudjack.heads import HeadParams, train_head
    from tests.conftest import Scenario

    side = adapter.input_side[0]
    data = load_digits_images()
    provider, rest = stratified_split(data.y, 0.5, 0)
    downstream = data.subset(rest)
    test, train = stratified_split(downstream.y, 0.5, 1)
    shadow = upscale(data.subset(provider), side)
    clean = warm_up(adapter.load_pretrained(), adapter, shadow)
    reference = pick_attack_reference(clean, adapter, shadow.x, shadow.y, target=target)
    backdoored = badencoder(clean, adapter, shadow.x, trigger, reference,
                            BadEncoderParams(optimizer="adam", lr=1e-3, epochs=12), seed=0)
    digits = Task("digits", list(range(10)),
                  *(upscale(downstream.subset(i), digits_side) for i in (train, test)))
    head = train_head(extract_features(backdoored, adapter, digits.train.x), digits.train.y, 10,
                      HeadParams(epochs=60), seed=0)
    at_side = Task("digits", digits.classes, *(upscale(downstream.subset(i), side) for i in (train, test)))
    return Scenario(adapter, clean, backdoored, head, shadow.x, digits, trigger, target), parity(at_side)
