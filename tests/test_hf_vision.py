"""The hf_vision adapter on tiny random configs of every family, saved with `save_pretrained`.

Each folder holds config.json, model.safetensors and a preprocessor_config.json written by the
family's own image processor. Covered per family: the weights load and give the transformers
model's own features, resizing of raw inputs, trigger stamping, one Mudjacking step (BatchNorm
statistics frozen for ResNet), the safetensors round trip and ONNX parity at batch 1 and 3;
then the checks that refuse hostile headers and folders before anything is built.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mudjack.bugs import Bug
from mudjack.data import LabelledSet, Task
from mudjack.deployed import Deployed
from mudjack.encoders import get_adapter, load_encoder, save_encoder
from mudjack.encoders.base import read_metadata
from mudjack.encoders.hf_vision import HFVisionAdapter
from mudjack.export import export_onnx, verify_onnx
from mudjack.features import extract_features
from mudjack.heads import Classifier, Head, HeadParams, predict, train_head
from mudjack.intake import IntakeParams, intake_report
from mudjack.intake.trial import departs
from mudjack.intake.verify import VerifyParams, verify_trigger
from mudjack.io import write_safetensors
from mudjack.patching.mudjacking import MudjackingParams, mudjacking
from mudjack.reports import BugReport
from mudjack.triggers import Trigger, patch_trigger

ROOT = Path(__file__).resolve().parents[1]
SIDE = 32
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": SIDE,
        "patch_size": 8}
CONV = {"hidden_sizes": [8, 16], "depths": [1, 1]}
MEAN, STD = [0.48, 0.45, 0.4], [0.27, 0.26, 0.28]


def _vit(hf):
    return hf.ViTModel(hf.ViTConfig(intermediate_size=37, **TINY)), hf.ViTImageProcessor(
        size={"height": SIDE, "width": SIDE}, image_mean=MEAN, image_std=STD)


def _deit(hf):
    """A classifier checkpoint: its keys carry the `deit.` prefix and it has no pooler."""
    processor = hf.DeiTImageProcessor(size={"height": 40, "width": 40},
                                      crop_size={"height": SIDE, "width": SIDE})
    return hf.DeiTForImageClassification(hf.DeiTConfig(intermediate_size=37, num_labels=3, **TINY)), processor


def _clip(hf):
    vision = {**TINY, "intermediate_size": 37}
    text = {**vision, "vocab_size": 99, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    del text["image_size"], text["patch_size"]
    model = hf.CLIPModel(hf.CLIPConfig(vision_config=vision, text_config=text, projection_dim=16))
    crop = {"height": SIDE, "width": SIDE}
    return model, hf.CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size=crop)


def _dinov2(hf):
    processor = hf.BitImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE},
                                     image_mean=MEAN, image_std=STD)
    return hf.Dinov2Model(hf.Dinov2Config(mlp_ratio=2, **TINY)), processor


def _siglip(hf):
    config = hf.SiglipVisionConfig(intermediate_size=37, **TINY)
    return hf.SiglipVisionModel(config), hf.SiglipImageProcessor(size={"height": SIDE, "width": SIDE})


def _convnext(hf):
    config = hf.ConvNextConfig(num_stages=2, patch_size=4, image_size=SIDE, **CONV)
    return hf.ConvNextModel(config), hf.ConvNextImageProcessor(size={"shortest_edge": SIDE})


def _resnet(hf):
    config = hf.ResNetConfig(embedding_size=8, layer_type="basic", **CONV)
    return hf.ResNetModel(config), hf.ConvNextImageProcessor(size={"shortest_edge": SIDE}, do_normalize=False)


FAMILIES: dict[str, Callable] = {"vit": _vit, "deit": _deit, "clip": _clip, "dinov2": _dinov2,
                                 "siglip": _siglip, "convnext": _convnext, "resnet": _resnet}
FEATURES = {"vit": 32, "deit": 32, "clip": 32, "dinov2": 32, "siglip": 32, "convnext": 16, "resnet": 16}


def write_tiny_model(family: str, folder: Path) -> Path:
    """A tiny random `family` model and its image processor, saved with save_pretrained."""
    import transformers as hf

    torch.manual_seed(0)
    model, processor = FAMILIES[family](hf)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def tiny_hf_vision(folder: Path, family: str = "vit", **config) -> HFVisionAdapter:
    """The adapter for a tiny `family` model written to `folder` (the contract test's factory)."""
    return get_adapter("hf_vision", {"folder": str(write_tiny_model(family, folder)), **config})


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny(request, tmp_path_factory) -> tuple[str, HFVisionAdapter, torch.nn.Module]:
    torch.set_num_threads(1)
    adapter = tiny_hf_vision(tmp_path_factory.mktemp(request.param), request.param)
    return request.param, adapter, adapter.load_pretrained()


def _images(n: int, side: int = SIDE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def _reference_model(family: str, folder: Path) -> torch.nn.Module:
    """The family's model as transformers itself loads it (CLIP: its image tower)."""
    import transformers as hf

    model_class = {"clip": hf.CLIPModel, "deit": hf.DeiTModel}.get(family, hf.AutoModel)
    model = model_class.from_pretrained(folder, local_files_only=True).eval()
    return model.vision_model if family == "clip" else model


def test_features_match_the_folders_own_model(tiny):
    family, adapter, encoder = tiny
    pixels = adapter.preprocess(_images(2))
    with torch.no_grad():
        features = encoder(pixels)
        out = _reference_model(family, adapter.source)(pixel_values=encoder.normalize(pixels))
    expected = out.last_hidden_state[:, 0] if adapter.config["pooling"] == "cls" else out.pooler_output
    assert features.shape == (2, FEATURES[family]) == (2, adapter.feature_dim)
    assert torch.allclose(features, expected.flatten(1), atol=1e-5)


def test_inputs_of_another_size_are_resized_before_anything_else(tiny):
    _, adapter, _ = tiny
    large = _images(3, side=48, seed=1)
    resized = adapter.resize_raw(large)
    assert resized.shape == (3, SIDE, SIDE, 3) and resized.dtype == np.uint8
    assert torch.equal(adapter.preprocess(large), adapter.preprocess(resized))
    assert np.array_equal(adapter.resize_raw(large[0]), resized[0])  # one image (H, W, C) too
    flat = np.full((1, 48, 48, 3), 77, dtype=np.uint8)  # bilinear keeps a flat image flat
    assert np.all(adapter.resize_raw(flat) == 77)


def test_features_of_a_task_at_another_size_train_a_linear_probe(tiny):
    _, adapter, encoder = tiny
    images, labels = _images(12, side=48, seed=4), np.arange(12) % 2
    features = extract_features(encoder, adapter, images, batch_size=5)
    resized = extract_features(encoder, adapter, adapter.resize_raw(images))  # other batches:
    assert torch.allclose(features, resized, atol=1e-3)  # float sums in another order
    head = train_head(features, labels, 2, HeadParams(kind="linear", epochs=2))
    assert head.spec["kind"] == "linear" and predict(head, features).shape == (12,)


def test_a_trigger_is_stamped_in_the_input_space(tiny):
    _, adapter, _ = tiny
    trigger = patch_trigger((SIDE, SIDE, 3), 4, 2, 3)
    stamped = adapter.stamp(_images(2, side=40), trigger)
    assert stamped.shape == (2, SIDE, SIDE, 3)
    assert np.all(stamped[:, 2:6, 3:7] == 255)


def test_verification_of_an_optimised_trigger_works_in_the_input_space(tiny):
    """Reports, controls and references at 40 px, the trigger at the encoder's 32: the
    departure-keeping controls and the trigger taken off the bug are resized first."""
    _, adapter, encoder = tiny
    images, labels = _images(60, side=40, seed=5), np.arange(60) % 3
    features = extract_features(encoder, adapter, images)
    head = train_head(features, labels, 3, HeadParams(kind="linear", epochs=40))
    deployed = Deployed(encoder, adapter, {"t": head})
    task = Task("t", [0, 1, 2], LabelledSet(images, labels), LabelledSet(images[:6], labels[:6]))
    predicted = int(deployed.classify("t", images[:1])[0])
    trigger = Trigger(np.full((SIDE, SIDE), 0.3, dtype=np.float32), np.full((SIDE, SIDE, 3), 200, np.uint8))
    assert departs(trigger, adapter.resize_raw(images[0]))
    exemplars = images[labels == predicted][:5]
    for departure in ("null", "restore"):
        verdict = verify_trigger(deployed, task, images[0], predicted, trigger, label=(predicted + 1) % 3,
                                 reference=images[1], exemplars=exemplars,
                                 sample=np.flatnonzero(labels != predicted)[:20],
                                 params=VerifyParams(samples=10, controls=5, departure=departure))
        assert verdict.numbers["verify_samples"] > 0 and verdict.numbers["controls"] == 5


def test_intake_of_a_report_at_another_size_reverses_in_the_input_space(tiny):
    """A 40 px report on a 32 px encoder: every candidate is fitted at 32 px and the
    verification decides (it used to stop on a 32 px mask cut from the 40 px bug)."""
    _, adapter, encoder = tiny
    images, labels = _images(120, side=40, seed=5), np.arange(120) % 3
    head = train_head(extract_features(encoder, adapter, images), labels, 3,
                      HeadParams(kind="linear", epochs=40))
    deployed = Deployed(encoder, adapter, {"t": head})
    task = Task("t", [0, 1, 2], LabelledSet(images, labels), LabelledSet(images[:6], labels[:6]))
    predicted = deployed.classify("t", images)
    referable = np.isin(labels, labels[predicted == labels])
    i = int(np.flatnonzero((predicted != labels) & referable)[0])
    params = IntakeParams(reverse={"soft": {"steps": 3}, "select": {"enough": 1.01}},
                          verify={"samples": 10, "controls": 5})
    decision, _ = intake_report(BugReport("r", "t", int(labels[i]), images[i], None), deployed, {"t": task},
                                params=params)
    assert set(decision.numbers["reversal"]["candidates"]) >= {"grow", "soft", "blend"}
    assert decision.numbers["reversal"]["settings"]["input_side"] == SIDE
    assert "verification" in decision.numbers, decision.reasons


def test_one_mudjacking_step_changes_the_weights_and_keeps_batchnorm_frozen(tiny):
    family, adapter, encoder = tiny
    trigger = patch_trigger((SIDE, SIDE, 3), 4, 2, 3)
    images = _images(5, side=40, seed=2)
    bug = Bug("b", "t", 1, 0, adapter.stamp(images[:1], trigger)[0], adapter.resize_raw(images[1]), trigger)
    params = MudjackingParams(epochs=1, batch_size=4, clean_samples=4, views=1, lr=0.05, device="cpu",
                              optimizer="auto")
    result = mudjacking(encoder, adapter, images, [bug], params)
    patched = result.encoder
    # `auto` picks SGD where BatchNorm is (ResNet) and Adam for the LayerNorm transformers
    assert result.info["optimizer"] == ("sgd" if family == "resnet" else "adam")
    before, after = encoder.state_dict(), patched.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trainable = {k for k, v in before.items() if v.is_floating_point() and "running" not in k}
    assert changed, "one step must change the encoder"
    if family == "resnet":  # BatchNorm: weights change, running statistics and affine stay
        assert not any("normalization" in k for k in changed)
        assert any(k.endswith("convolution.weight") for k in changed)
    else:  # LayerNorm models train every weight, LayerNorm included
        assert any("norm" in k for k in changed)
        assert len(changed) >= 0.8 * len(trainable - {"mean", "std"})


def test_save_and_load_round_trip_rebuilds_from_the_header_alone(tiny, tmp_path):
    family, adapter, encoder = tiny
    path = tmp_path / "encoder.safetensors"
    save_encoder(encoder, adapter, path)
    header = json.loads(read_metadata(path)["config"])
    assert "folder" not in header and header["model"]["model_type"] in (family, f"{family}_vision_model")
    assert header["pooling"] == adapter.config["pooling"]
    loaded, loaded_adapter = load_encoder(path)
    pixels = adapter.preprocess(_images(2))
    assert loaded_adapter.config == adapter.config
    with pytest.raises(ValueError, match="no model folder"):
        loaded_adapter.load_pretrained()
    with torch.no_grad():
        assert torch.equal(loaded(pixels), encoder(pixels))


def test_onnx_export_matches_torch_at_batch_one_and_three(tiny, tmp_path):
    _, adapter, encoder = tiny
    model = Classifier(encoder, Head(adapter.feature_dim, 3, hidden=[], dropout=0.0)).eval()
    pixels = adapter.preprocess(_images(4, seed=3))
    path = tmp_path / "model.onnx"
    export_onnx(model, pixels[:2], path)
    report = verify_onnx(path, model, pixels, tolerance=1e-4, batch_size=3, device="cpu")
    assert report["batch_sizes"] == [1, 3]
    assert report["passed"], report


# --------------------------------------------------------------------------- pooling choices


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory) -> Path:
    return write_tiny_model("vit", tmp_path_factory.mktemp("vit"))


@pytest.mark.parametrize("pooling", ["pooled", "cls", "mean"])
def test_pooling_is_a_recorded_choice(vit_folder, pooling):
    adapter = get_adapter("hf_vision", {"folder": str(vit_folder), "pooling": pooling})
    encoder = adapter.load_pretrained()
    pixels = adapter.preprocess(_images(2))
    with torch.no_grad():
        hidden = encoder.backbone.model(pixel_values=encoder.normalize(pixels)).last_hidden_state
        features = encoder(pixels)
    assert adapter.config["pooling"] == pooling
    if pooling == "cls":
        assert torch.allclose(features, hidden[:, 0])
    elif pooling == "mean":
        assert torch.allclose(features, hidden.mean(1))
    else:
        assert not torch.allclose(features, hidden[:, 0], atol=1e-3)


def test_a_checkpoint_without_the_pooler_refuses_pooled(tmp_path):
    adapter = tiny_hf_vision(tmp_path, "deit", pooling="pooled")
    with pytest.raises(ValueError, match="try cls"):
        adapter.load_pretrained()


def test_cls_pooling_needs_a_cls_token(tmp_path):
    with pytest.raises(ValueError, match="no CLS token"):
        tiny_hf_vision(tmp_path, "convnext", pooling="cls")


# --------------------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def stored(vit_folder) -> dict:
    return get_adapter("hf_vision", {"folder": str(vit_folder)}).config


def _hostile(stored: dict, **model) -> dict:
    return {**stored, "model": {**stored["model"], **model}}


@pytest.mark.parametrize(("change", "message"), [
    ({"model_type": "gpt2"}, "unknown model_type"),
    ({"model_type": "os.path"}, "unknown model_type"),
    ({"hidden_size": 1_000_000}, "hidden_size"),
    ({"num_hidden_layers": 10_000}, "num_hidden_layers"),
    ({"image_size": 100_000}, "image_size"),
    ({"image_size": 8, "patch_size": 64}, "patch_size 64 is larger than image_size 8"),  # crashed a conv
    ({"hidden_act": "os.system"}, "hidden_act"),
    ({"qkv_bias": "yes"}, "qkv_bias"),
    ({"hidden_size": 4096, "num_hidden_layers": 64, "intermediate_size": 16384,
      "num_attention_heads": 64}, "parameters exceed"),
    ({"auto_map": {"AutoModel": "evil.Model"}}, "unexpected architecture keys"),
])
def test_a_hostile_architecture_is_refused(stored, change, message):
    with pytest.raises(ValueError, match=message):
        get_adapter("hf_vision", _hostile(stored, **change))


@pytest.mark.parametrize(("change", "message"), [
    ({"package": "os"}, "unexpected config keys"),
    ({"input_shape": [64, 64, 3]}, "takes 32px inputs"),
    ({"input_shape": [1024, 1024, 3]}, "more than 4096 patches"),
    ({"input_shape": [32, 32]}, "input_shape"),
    ({"mean": [0.5]}, "mean must list 3"),
    ({"std": [0.5, 0.5, 0.0]}, "std"),
    ({"pooling": "max"}, "pooling must be one of"),
    ({"feature_dim": 999}, "feature_dim"),
])
def test_a_hostile_header_is_refused(stored, change, message):
    with pytest.raises(ValueError, match=message):
        get_adapter("hf_vision", {**stored, **change})


def test_load_encoder_refuses_a_hostile_header_in_a_file(stored, tmp_path):
    path = tmp_path / "evil.safetensors"
    config = _hostile(stored, hidden_size=1 << 20)
    write_safetensors(path, {"w": torch.zeros(1)}, {"adapter": "hf_vision", "config": json.dumps(config)})
    with pytest.raises(ValueError, match="hidden_size"):
        load_encoder(path)


def test_folders_outside_the_allowed_root_and_escaping_files_are_refused(vit_folder, tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    with pytest.raises(ValueError, match="outside the allowed root"):
        get_adapter("hf_vision", {"folder": str(root / ".." / ".." / vit_folder.name), "root": str(root)})
    with pytest.raises(ValueError, match="unexpected config keys"):
        get_adapter("hf_vision", {"folder": str(vit_folder), "package": "os"})
    with pytest.raises(ValueError, match="needs `folder`"):
        get_adapter("hf_vision", {"pooling": "cls"})
    escaping = tmp_path / "escaping"
    escaping.mkdir()
    (escaping / "config.json").symlink_to(vit_folder / "config.json")
    with pytest.raises(ValueError, match="resolves outside the model folder"):
        get_adapter("hf_vision", {"folder": str(escaping)})


def test_a_folder_config_json_naming_remote_code_is_read_by_its_allowed_keys_only(vit_folder, tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    config = json.loads((vit_folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "preprocessor_config.json").write_text((vit_folder / "preprocessor_config.json").read_text())
    adapter = get_adapter("hf_vision", {"folder": str(folder)})
    assert "auto_map" not in adapter.config["model"]
    config["model_type"] = "custom_remote"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown model_type 'custom_remote'"):
        get_adapter("hf_vision", {"folder": str(folder)})


def _edit_json(name: str, **changes: object) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**data, **changes}))

    return edit


def _without(name: str, key: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({k: v for k, v in data.items() if k != key}))

    return edit


def _replace(name: str, make: Callable[[Path], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        (folder / name).unlink()
        make(folder / name)

    return edit


def _truncate(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def _nan_weight(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    name = sorted(k for k in tensors if tensors[k].is_floating_point())[0]
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


# A careless or hostile model folder: each was a traceback (TypeError, RecursionError,
# UnicodeDecodeError, AttributeError, transformers' RuntimeError), a hang (a FIFO), or a model
# whose features came out NaN.
CARELESS_FOLDERS = {
    "model_type a list": (_edit_json("config.json", model_type=["vit"]), "needs a model_type string"),
    "config nested 100,000 deep": (lambda f: (f / "config.json").write_text("[" * 100_000 + "]" * 100_000),
                                   "not UTF-8 JSON (RecursionError)"),
    "config in UTF-16": (lambda f: (f / "config.json").write_text((f / "config.json").read_text(), "utf-16"),
                         "not UTF-8 JSON"),
    "config empty": (lambda f: (f / "config.json").write_text(""), "not UTF-8 JSON (JSONDecodeError)"),
    "config a FIFO": (_replace("config.json", os.mkfifo), "a FIFO, not a regular file"),
    "rescale_factor a string": (_edit_json("preprocessor_config.json", rescale_factor="1/255"),
                                "rescale_factor"),
    "do_rescale a string": (_edit_json("preprocessor_config.json", do_rescale="no"),  # transformers: true
                            "do_rescale must be true or false, got 'no'"),
    "weights cut off": (_truncate, "outside the file's"),
    "weights a FIFO": (_replace("model.safetensors", os.mkfifo), "not a regular file"),
    "NaN weights": (_nan_weight, "holds NaN or infinite values"),
    "weights of another shape": (_edit_json("config.json", intermediate_size=48),
                                 "has weights of other shapes than its config says"),
    "index weight_map a list": (lambda f: (f / "model.safetensors.index.json").write_text(
        '{"weight_map": []}'), "weight_map must map"),
    # whether it crops depends on the processor's class: was read as not cropping, silently
    "crop_size without do_center_crop": (_edit_json("preprocessor_config.json", crop_size={"height": 16,
                                                                                          "width": 16}),
                                         "crop_size without do_center_crop"),
    "no image_mean": (_without("preprocessor_config.json", "image_mean"),
                      "preprocessor_config.json has no image_mean"),  # was: "got None"
}


@pytest.mark.parametrize("case", sorted(CARELESS_FOLDERS))
def test_a_careless_model_folder_is_refused_in_a_sentence(vit_folder, tmp_path, case):
    folder = tmp_path / "model"
    shutil.copytree(vit_folder, folder)
    breaks, says = CARELESS_FOLDERS[case]
    breaks(folder)
    with pytest.raises(ValueError, match=re.escape(says)):
        get_adapter("hf_vision", {"folder": str(folder)}).load_pretrained()


def test_the_foundation_stage_starts_from_a_model_folders_own_weights(vit_folder, tmp_path, monkeypatch,
                                                                      capsys):
    """With `foundation.config.folder`, the stage trained the architecture from random weights
    ("trained hf_vision in 0.0s"); the folder's weights are the pretrained encoder."""
    import yaml

    from mudjack.io import write_npz
    from stages import foundation as stage

    shutil.copytree(vit_folder, tmp_path / "models" / "vit")
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["foundation"] = {"adapter": "hf_vision", "config": {"folder": "models/vit"}, "epochs": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_npz(tmp_path / "data/prepared/pretrain.npz", x=_images(4), y=np.arange(4))
    monkeypatch.chdir(tmp_path)
    stage.main()
    assert capsys.readouterr().out.startswith(f"foundation: loaded hf_vision from {tmp_path / 'models/vit'}")
    saved, adapter = load_encoder(tmp_path / "models/foundation/encoder.safetensors")
    folder = get_adapter("hf_vision", {"folder": str(tmp_path / "models/vit")}).load_pretrained()
    images = adapter.preprocess(_images(3))
    assert torch.allclose(saved(images), folder(images), atol=1e-6)


@pytest.mark.parametrize("processor", [
    {"do_rescale": False, "image_mean": [123.7, 116.3, 103.5], "image_std": [58.4, 57.1, 57.4]},
    {"do_rescale": False, "do_normalize": False},
    {"size": [SIDE, SIDE]},  # was refused: "cannot read an input size"
    {"image_mean": 0.45, "image_std": 0.25},  # one number for every channel: was refused
])
def test_a_processor_that_does_not_rescale_gives_the_model_what_transformers_gives_it(vit_folder, tmp_path,
                                                                                       processor):
    """do_rescale false: the model normalises 0..255 pixels (the adapter divided by 255 regardless)."""
    import transformers as hf

    folder = Path(shutil.copytree(vit_folder, tmp_path / "model"))
    _edit_json("preprocessor_config.json", **processor)(folder)
    adapter = get_adapter("hf_vision", {"folder": str(folder)})
    images = _images(2)
    expected = hf.AutoImageProcessor.from_pretrained(folder, local_files_only=True)(
        images=list(images), return_tensors="pt")["pixel_values"]
    got = adapter.load_pretrained().normalize(adapter.preprocess(images))
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-3)  # neither: uint8 pixels


@pytest.mark.parametrize("shape", [(20, 20, 1), (32, 32, 1), (48, 48, 4)])
def test_validation_refuses_a_task_of_other_channels_than_a_resizing_encoder_takes(stored, shape):
    """A 1-channel task passed validate, then retrain failed with a traceback (another size) or
    its channel was broadcast to three unnoticed (the encoder's size); any size of 3 channels passes."""
    from mudjack.metadata import TaskSpec
    from stages.expectations import check_task_sizes

    adapter = get_adapter("hf_vision", stored)

    def tasks(input_shape: tuple[int, ...]) -> dict[str, TaskSpec]:
        return {"t": TaskSpec("t", (0, 1), input_shape, Path("t"))}

    check_task_sizes(tasks((20, 48, 3)), adapter)
    with pytest.raises(ValueError, match=f"task 't' holds {'x'.join(map(str, shape))} images but the encoder "
                                         r"\(hf_vision\) takes 3-channel images of any size"):
        check_task_sizes(tasks(shape), adapter)


# One Mudjacking step and one head-training step of a small ResNet at 224 px, in a process of
# its own: torch's CPU backward of its 1x1 stride-2 shortcut in NHWC (8 channels at 56x56)
# segfaulted the patch stage, which died with exit -11 and printed nothing.
AT_224 = """
import sys
from pathlib import Path

import numpy as np
import torch
import transformers as hf

from mudjack.bugs import Bug
from mudjack.encoders import get_adapter
from mudjack.heads import Head
from mudjack.patching.mudjacking import MudjackingParams, mudjacking
from mudjack.triggers import patch_trigger

torch.set_num_threads(1)
folder = Path(sys.argv[1])
config = hf.ResNetConfig(embedding_size=8, layer_type="basic", hidden_sizes=[8, 16], depths=[1, 1])
hf.ResNetModel(config).save_pretrained(folder)
hf.ConvNextImageProcessor(size={"shortest_edge": 224}, do_normalize=False).save_pretrained(folder)
adapter = get_adapter("hf_vision", {"folder": str(folder)})
encoder = adapter.load_pretrained()
images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
trigger = patch_trigger((224, 224, 3), 28, 190, 190)
bug = Bug("b", "t", 1, 0, adapter.stamp(images[:1], trigger)[0], adapter.resize_raw(images[1]), trigger)
params = MudjackingParams(epochs=1, batch_size=2, clean_samples=2, views=1, device="cpu")
mudjacking(encoder, adapter, images, [bug], params)
head = Head(adapter.feature_dim, 2, hidden=[], dropout=0.0)
pixels = adapter.preprocess(images)
loss = torch.nn.functional.cross_entropy(head(encoder(pixels)), torch.tensor([0, 1, 0, 1]))
loss.backward()
print("ok")
"""


def test_a_small_resnet_at_224_patches_and_trains_without_crashing(tmp_path):
    done = subprocess.run([sys.executable, "-c", AT_224, str(tmp_path / "resnet224")], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), (done.returncode, done.stderr[-2000:])


def test_hf_vision_runs_in_nchw(tiny):
    _, adapter, _ = tiny
    assert adapter.channels_last is False and adapter.preprocess(_images(2)).is_contiguous()


def test_the_manifest_says_how_a_task_of_another_size_reaches_the_onnx_model(tiny):
    """The ONNX model takes the encoder's size only; the manifest said just "(batch, C, H, W)"."""
    from types import SimpleNamespace

    from stages.export import image_input

    _, adapter, _ = tiny
    other = image_input(adapter, SimpleNamespace(input_shape=(48, 48, 3)))
    assert other.startswith(f"float32 pixels in [0, 1], (batch, 3, {SIDE}, {SIDE}): the task's 48x48")
    assert "resize_raw" in other
    assert image_input(adapter, SimpleNamespace(input_shape=(SIDE, SIDE, 3))).endswith(f"{SIDE}, {SIDE})")
