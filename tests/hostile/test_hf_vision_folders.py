"""Careless Hugging Face vision folders (tiny random models written with save_pretrained): weights
transformers would fail on with a traceback, or load silently as something else, are a one-line
WeightsError naming the folder or file, and the foundation stage ends with that line."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from mudjack.encoders import get_adapter
from mudjack.io import write_npz
from mudjack.safeload import WeightsError
from tests.test_hf_vision import write_tiny_model

ROOT = Path(__file__).resolve().parents[2]
Mutation = Callable[[Path], None]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The tiny model folder of a family, written once per module."""
    folders: dict[str, Path] = {}

    def folder(family: str) -> Path:
        if family not in folders:
            torch.set_num_threads(1)
            folders[family] = write_tiny_model(family, tmp_path_factory.mktemp(family))
        return folders[family]

    return folder


def edit_json(name: str, **changes: object) -> Mutation:
    def edit(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**data, **changes}))

    return edit


def cut_in_half(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def as_pytorch_bin(folder: Path) -> None:
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


def as_int8(only: str = "") -> Mutation:
    """The weights whose names start with `only` stored as int8 (x100, as a careless quantiser)."""
    def quantise(folder: Path) -> None:
        tensors = load_file(folder / "model.safetensors")
        save_file({k: (v * 100).to(torch.int8) if k.startswith(only) else v for k, v in tensors.items()},
                  folder / "model.safetensors", metadata={"format": "pt"})

    return quantise


def index_naming(shard: str) -> Mutation:
    return lambda folder: (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"embeddings.cls_token": shard}}))


# family, mutation, what the one line says (after the file or folder it names)
REFUSED: dict[str, tuple[str, Mutation, str]] = {
    "weights cut to half their size": ("vit", cut_in_half, "model.safetensors: tensor"),
    "model_type deit on ViT weights": ("vit", edit_json("config.json", model_type="deit"),
                                       "lacks weights ['embeddings.distillation_token']"),
    "only a pytorch_model.bin": ("vit", as_pytorch_bin, "has no model.safetensors"),
    "an index naming a missing shard": ("vit", index_naming("model-00001-of-00002.safetensors"),
                                        "model-00001-of-00002.safetensors: no such file"),
    "int8 weights": ("vit", as_int8(), "model.safetensors: tensor 'embeddings.cls_token' is int8; "
                                       "the model's is float32"),
    "int8 weights of a classifier (deit. prefix)": ("deit", as_int8("deit."),
                                                    "is int8; the model's is float32"),
}


def damaged(pristine: Callable[[str], Path], tmp_path: Path, case: str) -> Path:
    family, mutate, _ = REFUSED[case]
    folder = Path(shutil.copytree(pristine(family), tmp_path / "models" / "m"))
    mutate(folder)
    return folder


def assert_one_line(error: pytest.ExceptionInfo[WeightsError], folder: Path, fragment: str) -> None:
    message = str(error.value)
    assert fragment in message and str(folder) in message and "\n" not in message, message


@pytest.mark.parametrize("case", REFUSED)
def test_weights_that_cannot_load_as_the_config_says_are_a_weights_error(pristine, tmp_path, case):
    folder = damaged(pristine, tmp_path, case)
    adapter = get_adapter("hf_vision", {"folder": str(folder)})
    with pytest.raises(WeightsError) as caught:
        adapter.load_pretrained()
    assert_one_line(caught, folder, REFUSED[case][2])


def test_int8_tensors_the_image_tower_leaves_out_are_not_read(pristine, tmp_path):
    """A CLIP folder's text tower is left out, as transformers leaves it: its dtypes do not matter."""
    folder = Path(shutil.copytree(pristine("clip"), tmp_path / "clip"))
    as_int8("text_model.")(folder)
    encoder = get_adapter("hf_vision", {"folder": str(folder)}).load_pretrained()
    assert all(p.is_floating_point() for p in encoder.parameters())


@pytest.mark.parametrize("vision_config", [["hidden_size"], "hidden_size patch_size", 3])
def test_a_clip_vision_config_that_is_not_a_mapping_is_refused(pristine, tmp_path, vision_config):
    folder = Path(shutil.copytree(pristine("clip"), tmp_path / "clip"))
    edit_json("config.json", vision_config=vision_config)(folder)
    with pytest.raises(ValueError, match="config.json's vision_config must be a mapping, got "):
        get_adapter("hf_vision", {"folder": str(folder)})


@pytest.mark.parametrize("case", ["model_type deit on ViT weights", "only a pytorch_model.bin",
                                  "an index naming a missing shard"])
def test_the_foundation_stage_refuses_a_folders_weights_in_one_line(pristine, tmp_path, monkeypatch, case):
    """Each was a traceback (ValueError, FileNotFoundError): the stage caught only get_adapter's."""
    from stages import foundation as stage

    folder = damaged(pristine, tmp_path, case)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["foundation"] = {"adapter": "hf_vision", "config": {"folder": "models/m"}, "epochs": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    write_npz(tmp_path / "data/prepared/pretrain.npz", x=images, y=np.arange(4))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError) as caught:
        stage.main()
    assert_one_line(caught, folder, REFUSED[case][2])
    assert not (tmp_path / "models/foundation/encoder.safetensors").exists()
