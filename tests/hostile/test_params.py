"""Hostile parameter files: every one is refused with a one-line ParamsError naming the file and
the key, quickly (an alias bomb never expands), and never silently turned into a run."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from mudjack.config import ParamsError
from mudjack.device import select_device
from stages.config import inbox_folder, load_params

ROOT = Path(__file__).resolve().parents[2]


def params_with(path: Path, key: str, value: Any) -> Path:
    """params.yaml with `key` (dotted) set to `value`, written to `path`."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    *sections, last = key.split(".")
    node = params
    for section in sections:
        node = node.setdefault(section, {})
    node[last] = value
    path.write_text(yaml.safe_dump(params))
    return path


def run_stage(stage: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def refused(path: Path, *fragments: str) -> str:
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path)), message
    assert all(f in message for f in fragments), message
    return message


OUT_OF_RANGE = [
    ("foundation.epochs", -1), ("foundation.epochs", 0), ("foundation.batch_size", 0),
    ("foundation.lr", math.nan), ("foundation.lr", math.inf), ("foundation.lr", -0.1),
    ("attack.lr", 0.0), ("attack.epochs", -5), ("attack.momentum", 1.5), ("attack.weight_decay", -1.0),
    ("attack.target", -1), ("attack.n_reports", -1), ("attack.trigger.value", 300),
    ("attack.trigger.size", -2), ("attack.deployed_head.batch_size", 0),
    ("patch.lr", math.nan), ("patch.epochs", 0), ("patch.batch_size", 0), ("patch.views", 0),
    ("patch.shadow_fraction", 0.0), ("patch.shadow_fraction", 1.5), ("patch.lambda_gen", -1.0),
    ("patch.momentum", -0.1), ("patch.clean_samples", -3),
    ("retrain.batch_size", 0), ("retrain.dropout", 1.0), ("retrain.hidden", [0]),
    ("retrain.hidden", [10**9]), ("retrain.lr", math.inf), ("retrain.heads", 0), ("retrain.heads", 10**6),
    ("prepare.test_fraction", 1.5), ("prepare.provider_fraction", -0.5), ("prepare.shadow_limit", -1),
    ("prepare.provider.limit", -1), ("validate.min_rows", -1), ("validate.max_pixel", 256),
    ("export.tolerance", 0.0), ("export.opset", 0), ("gates.max_patched_asr", 2.0),
    ("gates.max_onnx_diff", math.nan), ("seed", -1), ("seed", 2**40), ("threads", -1),
    # an optimiser overflow at patch time, 275 GB of head weights, a torch error at patch time
    ("patch.weight_decay", 1e300), ("retrain.hidden", [65536] * 16),
    ("patch.epochs", True), ("patch.lr", True), ("intake.verify.min_z_flip", False),  # YAML's yes / no
    *[(f"{section}.device", device) for section in ("patch", "attack", "sequela")
      for device in ("banana", "", "meta", "cuda:x")],
    # an empty path named the working folder, or gave "No such file or directory: ''"
    *[(f"paths.{key}", "") for key in ("shadow", "tasks", "encoder", "heads", "inbox")],
]


@pytest.mark.parametrize(("key", "value"), OUT_OF_RANGE, ids=[f"{k}={v}" for k, v in OUT_OF_RANGE])
def test_an_out_of_range_number_is_refused_naming_its_key(key: str, value: Any, tmp_path: Path) -> None:
    refused(params_with(tmp_path / "params.yaml", key, value), key)  # `key: ...` or `key.0: ...`


@pytest.mark.parametrize(("method", "key", "value"), [
    ("finetune", "lr", 0.0), ("finetune", "dropout", -0.5), ("super_finetune", "cycle_steps", 0),
    ("super_finetune", "max_lr_phase1", math.nan), ("mudjacking_text", "word_dropout", 1.0),
])
def test_a_patch_method_key_out_of_range_is_refused(method: str, key: str, value: Any,
                                                    tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["patch"] = {"method": method, key: value}
    path.write_text(yaml.safe_dump(params))
    refused(path, f"patch.{key}:")


@pytest.mark.parametrize(("text", "fragment"), [
    ({"word_dropout": 1.0}, "word_dropout"), ({"optimizer": "rmsprop"}, "optimizer"),
    ([0.1], "must be a mapping")])
def test_text_settings_out_of_range_are_refused(text: Any, fragment: str, tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["patch"]["text"] = text
    path.write_text(yaml.safe_dump(params))
    refused(path, "patch", fragment)


@pytest.mark.parametrize(("key", "value"), [
    ("intake.verify.min_z_flip", -1.0), ("intake.verify.samples", 0), ("intake.reverse.window", -1),
    ("intake.reverse.grow.growth", 1.0), ("intake.reverse.grow.min_pixels", 0),
    ("intake.reverse.inversion.lr", float("nan")), ("intake.reverse.grow.fraction", 2.0)])
def test_intake_thresholds_are_range_checked(key: str, value: Any, tmp_path: Path) -> None:
    refused(params_with(tmp_path / "params.yaml", key, value), key.split(".")[-1])


@pytest.mark.parametrize(("text", "fragment"), [
    ("1: 2", "a key must be a name, not 1"), ("~: 2", "not None"), ("true: 1", "not True"),
    ("notes: {text: {1: 2}}", "not 1"),  # at any depth
    ("seed: 3", "'seed' is given twice"),  # PyYAML's last-wins replaced a section silently
])
def test_a_key_that_is_not_a_name_or_comes_twice_is_refused(text: str, fragment: str, tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text() + text + "\n")
    refused(path, fragment)


@pytest.mark.parametrize(("value", "fragment"), [
    ("1:30", "'1:30' is a base-60 number"),  # YAML 1.1 read this seed as 90
    ("-1:30.5", "base-60"), ("010", "'010' is an octal number"),  # and this one as 8
])
def test_a_yaml11_base60_or_octal_number_is_refused(value: str, fragment: str, tmp_path: Path) -> None:
    text = (ROOT / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    assert "\nseed: 0\n" in text
    path.write_text(text.replace("\nseed: 0\n", f"\nseed: {value}\n", 1))
    refused(path, fragment)


@pytest.mark.parametrize("value", ["10", "0", "0x1f", "1_000", "0.5", "00.5", "'1:30'"])
def test_plain_yaml_numbers_still_read_as_written(value: str) -> None:
    from mudjack.config import _StrictLoader
    assert yaml.load(f"a: {value}", Loader=_StrictLoader) == yaml.safe_load(f"a: {value}")  # noqa: S506


@pytest.mark.parametrize(("patch", "fragment"), [
    (None, "not NoneType"), (3, "not int"), (["mudjacking"], "not list"),
    ({"method": ["mudjacking"]}, "patch.method ['mudjacking'] is not one of"),
])
def test_a_patch_section_that_is_not_a_mapping_with_a_method_is_refused(patch: Any, fragment: str,
                                                                       tmp_path: Path) -> None:
    refused(params_with(tmp_path / "params.yaml", "patch", patch), "patch", fragment)


def test_thousands_of_bad_keys_make_a_bounded_message(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text() + "".join(f"k{i}: 0\n" for i in range(5000)))
    message = refused(path, "k0", "and 4990 more errors")
    assert len(message) < 2000


def test_the_shipped_params_and_scenarios_still_load() -> None:
    assert load_params(ROOT / "params.yaml").patch.method == "mudjacking"


# 10**9 x's from a few hundred bytes under an unknown key: the error message for the key walks them
BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x, x]"]
                 + [f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]"
                    for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
                 + ["seed: 0", "paths: {shadow: s, tasks: t, encoder: e, heads: h, inbox: i}", "unknown: *i"])


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    """In a stage process, with a deadline: walking the bomb holds the GIL, so no in-process
    timeout could stop it (measured: today's code still ran after minutes, 1.5 GB and growing)."""
    (tmp_path / "params.yaml").write_text(BOMB)
    done = run_stage("validate", tmp_path, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "validate: params.yaml: YAML aliases are not allowed (*a) (line 2, column 8)"]


@pytest.mark.timeout(60)  # expanding the bomb would take minutes and gigabytes
def test_a_yaml_alias_is_refused_before_it_expands_in_process(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(BOMB)
    refused(tmp_path / "params.yaml", "aliases are not allowed")


@pytest.mark.timeout(60)
def test_a_scenario_file_with_an_alias_bomb_is_refused(tmp_path: Path) -> None:
    from pipeline.scenarios import SCENARIOS, scenario_params

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / SCENARIOS).mkdir(parents=True)
    (tmp_path / SCENARIOS / "bomb.yaml").write_text(BOMB)
    with pytest.raises(ParamsError, match="aliases are not allowed"):
        scenario_params(tmp_path, "bomb")


def test_even_a_harmless_alias_is_refused(tmp_path: Path) -> None:
    text = (ROOT / "params.yaml").read_text().replace("seed: 0", "seed: &s 0\nthreads: *s", 1)
    (tmp_path / "params.yaml").write_text(text.replace("threads: 1\n", "", 1))
    refused(tmp_path / "params.yaml", "aliases are not allowed", "line")


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("kind", "fragment"), [
    ("fifo", "not a regular file"), ("/dev/zero", "not a regular file"), ("2 MB", "the limit is"),
    ("nested 10,000 deep", "nested too deeply"), ("not UTF-8", "utf-8"), ("a list", "expected a mapping"),
    ("bad syntax", "line 3"), ("missing", "not found"),
])
def test_an_unusable_params_file_is_refused_in_one_line(kind: str, fragment: str, tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "/dev/zero":
        path.symlink_to("/dev/zero")
    elif kind != "missing":
        path.write_bytes({
            "2 MB": (ROOT / "params.yaml").read_bytes() + b"#" * (2 << 20),
            "nested 10,000 deep": b"seed: " + b"[" * 10_000 + b"]" * 10_000,
            "not UTF-8": b"seed: \xff\xfe",
            "a list": b"- 1\n- 2\n",
            "bad syntax": b"seed: 0\npaths: {inbox: [\n",
        }[kind])
    refused(path, fragment)


# --------------------------------------------------------------------------- the inbox


def test_a_missing_inbox_is_an_error_and_an_empty_one_is_not(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    paths = load_params(params_with(tmp_path / "params.yaml", "paths.inbox", "inbxo")).paths
    with pytest.raises(ParamsError, match=r"paths.inbox: no such folder 'inbxo'"):
        inbox_folder(paths)
    (tmp_path / "inbxo").mkdir()
    assert inbox_folder(paths) == Path("inbxo")


def test_validate_fails_in_one_line_on_a_mistyped_inbox(tmp_path: Path) -> None:
    params_with(tmp_path / "params.yaml", "paths.inbox", "inbxo")
    done = run_stage("validate", tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "validate: cannot read the data: ParamsError: paths.inbox: no such folder 'inbxo' "
        "(an empty folder means no reports)"]


def test_a_stage_prints_a_bad_parameter_in_one_line(tmp_path: Path) -> None:
    params_with(tmp_path / "params.yaml", "retrain.batch_size", 0)
    done = run_stage("export", tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "export: params.yaml: invalid parameters: retrain.batch_size: Input should be greater than "
        "or equal to 1 (got 0)"]


def test_the_foundation_stage_refuses_a_bad_model_folder_in_one_line(tmp_path: Path) -> None:
    """An hf_vision folder whose config.json the adapter refuses ended the stage in a
    traceback (a plain ValueError); a small_cnn config error was one line already."""
    from mudjack.io import write_npz

    folder = tmp_path / "models" / "vit"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "preprocessor_config.json").write_text("{}")
    foundation = {"adapter": "hf_vision", "config": {"folder": "models/vit"}}
    params_with(tmp_path / "params.yaml", "foundation", foundation)
    write_npz(tmp_path / "data/prepared/pretrain.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=np.arange(4))
    done = run_stage("foundation", tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        "foundation: foundation.config (hf_vision): hf_vision: unknown model_type 'llama'; allowed: "
        "['clip_vision_model', 'convnext', 'deit', 'dinov2', 'resnet', 'siglip_vision_model', 'vit']"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_asking_for_cuda_on_a_machine_without_it_is_a_params_error(device: str) -> None:
    with pytest.raises(ParamsError, match="0 CUDA device"):
        select_device(device)


def test_a_text_patch_method_on_an_image_encoder_is_a_params_error(tmp_path: Path) -> None:
    """It passed the parameter check and ended in an AttributeError ('words') at patch time."""
    from mudjack.patching import method_for

    params = load_params(params_with(tmp_path / "params.yaml", "patch", {"method": "mudjacking_text"}))
    assert params.patch.for_modality("text")[0] == "mudjacking_text"
    with pytest.raises(ParamsError, match="patches text encoders; this encoder takes images"):
        params.patch.for_modality("image")
    assert method_for("mudjacking", "image") == "mudjacking"
