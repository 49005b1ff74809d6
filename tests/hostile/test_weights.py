"""Hostile weights files: every one is refused with a one-line WeightsError naming the file and
the problem, before a big model is built, and nothing named by a file is imported."""

from __future__ import annotations

import io
import json
import math
import os
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mudjack.data import load_tasks, save_task
from mudjack.encoders import EncoderAdapter, get_adapter, import_encoder, load_encoder, save_encoder
from mudjack.heads import Head, load_head, save_head
from mudjack.io import read_jsonl
from mudjack.safeload import WeightsError
from mudjack.safepath import one_line
from stages.artifacts import INTAKE_LOG
from tests.helpers.byo import parity
from tests.hostile.generate import ADAPTER, build_workspace, png, report
from tests.hostile.judge import run_stages

ROOT = Path(__file__).resolve().parents[2]
CONFIG = {"input_shape": [8, 8, 3], "width": 2, "feature_dim": 4, "mean": [0.5], "std": [0.25]}
Header = dict
Mutation = Callable[[Header, bytes], bytes]


def pack(header: Header | bytes, data: bytes = b"", *, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return (len(raw) if length is None else length).to_bytes(8, "little") + raw + data


def split(raw: bytes) -> tuple[Header, bytes]:
    length = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + length]), raw[8 + length:]


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Header, bytes]:
    adapter = get_adapter("small_cnn", CONFIG)
    path = tmp_path_factory.mktemp("valid") / "encoder.safetensors"
    save_encoder(adapter.build(), adapter, path)
    return split(path.read_bytes())


def refused(load: Callable[[Path], object], path: Path, fragment: str) -> str:
    """`load(path)` raises a one-line WeightsError naming `path` and containing `fragment`."""
    with pytest.raises(WeightsError) as caught:
        load(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(one_line(path)), message
    assert fragment in message, message
    return message


# --------------------------------------------------------------------------- mutations


def meta(**changes: str) -> Mutation:
    return lambda h, d: pack({**h, "__metadata__": {**h["__metadata__"], **changes}}, d)


def config(**changes: object) -> Mutation:
    def mutate(h: Header, d: bytes) -> bytes:
        return meta(config=json.dumps({**json.loads(h["__metadata__"]["config"]), **changes}))(h, d)

    return mutate


def tensor(name: str, **changes: object) -> Mutation:
    return lambda h, d: pack({**h, name: {**h[name], **changes}}, d)


def without(name: str) -> Mutation:
    return lambda h, d: pack({k: v for k, v in h.items() if k != name}, d)


def extra_tensor(h: Header, d: bytes) -> bytes:
    return pack({**h, "extra": {"dtype": "F32", "shape": [1], "data_offsets": [len(d), len(d) + 4]}},
                d + b"\0" * 4)


def nan_weight(h: Header, d: bytes) -> bytes:
    start = h["backbone.0.weight"]["data_offsets"][0]
    return pack(h, d[:start] + struct.pack("<f", math.nan) + d[start + 4:])


def negative_variance(h: Header, d: bytes) -> bytes:
    """A BatchNorm's running variance below 0: finite, but every output NaN (a patch run on it
    wrote a NaN encoder and exited 0; the next stage named the patched file, not this one)."""
    start = h["backbone.1.running_var"]["data_offsets"][0]
    return pack(h, d[:start] + struct.pack("<f", -2.0) + d[start + 4:])


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


CASES: dict[str, tuple[Mutation, str]] = {
    "empty": (lambda h, d: b"", "too short"),
    "garbage": (lambda h, d: b"\x89PNG", "too short"),
    "header longer than the file": (lambda h, d: pack(h, d, length=len(json.dumps(h)) + len(d) + 1),
                                    "-byte header"),
    "header of 100 MB claimed": (lambda h, d: pack(h, d, length=100_000_000), "100000000-byte header"),
    "non-UTF-8 header": (lambda h, d: pack(b'{"\xff\xfe": 1}', d), "not UTF-8"),
    "header not JSON": (lambda h, d: pack(b"{not json", d), "not valid JSON"),
    "header a JSON list": (lambda h, d: pack(b"[1, 2]", d), "not a JSON object"),
    "header nested 10,000 deep": (lambda h, d: pack(deep(10_000).encode(), d), "nested too deeply"),
    "metadata with a number": (meta(adapter=1), "not a mapping of strings"),  # type: ignore[arg-type]
    "unknown dtype": (tensor("backbone.0.weight", dtype="X99"), "unknown dtype"),
    "offsets beyond the data": (tensor("backbone.0.weight", data_offsets=[0, 10**9]), "outside the file"),
    "shape not matching its bytes": (tensor("backbone.0.weight", shape=[1000]), "do not hold"),
    "negative shape": (tensor("backbone.0.weight", shape=[-1]), "bad shape"),
    "no adapter": (lambda h, d: pack({**h, "__metadata__": {}}, d), "not a mudjack encoder"),
    "unknown adapter": (meta(adapter="nope"), "unknown encoder adapter"),
    "config not JSON": (meta(config="{width:"), "not valid JSON"),
    "config nested 10,000 deep": (meta(config=deep(10_000)), "nested too deeply"),
    "config of 1 MB": (meta(config=json.dumps({"x": "a" * (1 << 20)})), "characters long"),
    "config a list": (meta(config="[1]"), "not a JSON object"),
    "width of 10**9": (config(width=10**9), "width"),
    "feature_dim of 10**9": (config(feature_dim=10**9), "feature_dim"),
    "NaN mean": (config(mean=[math.nan]), "mean"),
    "zero std": (config(std=[0.0]), "std must lie within"),
    "std of 1e-45": (config(std=[1e-45]), "small_cnn config: std must lie within"),
    "mean of 1e38": (config(mean=[1e38]), "small_cnn config: mean must lie within"),
    "text package named by the file": (meta(adapter="hf_text", config='{"package": "this"}'), "package"),
    "text folder outside the workspace": (meta(adapter="hf_text", config='{"folder": "/"}'), "outside"),
    "text folder escaping with ..": (meta(adapter="hf_text", config='{"folder": "../../.."}'), "outside"),
    "missing tensor": (without("backbone.0.weight"), "missing weights"),
    "extra tensor": (extra_tensor, "unexpected tensors"),
    "wrong shape, same bytes": (tensor("backbone.0.weight", shape=[3, 2, 3, 3]), "the model wants"),
    "integer dtype for a float weight": (tensor("backbone.0.weight", dtype="I32"), "the model wants"),
    "NaN weights": (nan_weight, "NaN"),
    "negative running variance": (negative_variance, "'backbone.1.running_var' holds a negative variance"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_encoder_file_is_refused_in_one_line(case: str, encoder_file: tuple[Header, bytes],
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the workspace: a model folder must lie inside it
    mutate, fragment = CASES[case]
    path = tmp_path / "encoder.safetensors"
    path.write_bytes(mutate(*encoder_file))
    refused(load_encoder, path, fragment)
    assert "this" not in sys.modules  # the module a file named was never imported


def test_a_huge_width_fails_before_anything_is_built(encoder_file: tuple[Header, bytes],
                                                     tmp_path: Path) -> None:
    path = tmp_path / "encoder.safetensors"
    path.write_bytes(config(width=10**9, feature_dim=8192)(*encoder_file))
    start = time.perf_counter()
    refused(load_encoder, path, "width")
    assert time.perf_counter() - start < 2


def test_a_model_bigger_than_its_file_is_refused_before_allocation(encoder_file: tuple[Header, bytes],
                                                                   tmp_path: Path) -> None:
    """Within the schema's bounds (width 512, 8192 features: about 170 MB of weights), a file
    naming that config but holding the small tensors is refused from its header alone."""
    path = tmp_path / "encoder.safetensors"
    path.write_bytes(config(width=512, feature_dim=8192)(*encoder_file))
    start = time.perf_counter()
    refused(load_encoder, path, "the model wants")
    assert time.perf_counter() - start < 2


def test_the_text_folder_cannot_leave_the_workspace_by_a_symlink(encoder_file: tuple[Header, bytes],
                                                                 tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "workspace").mkdir()
    (tmp_path / "workspace" / "model").symlink_to(tmp_path / "outside")
    monkeypatch.chdir(tmp_path / "workspace")
    path = tmp_path / "workspace" / "encoder.safetensors"
    path.write_bytes(meta(adapter="hf_text", config='{"folder": "model"}')(*encoder_file))
    refused(load_encoder, path, "outside")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "directory", "missing", "newline in the name"])
def test_special_files_are_refused_without_reading_them(kind: str, tmp_path: Path) -> None:
    path = tmp_path / ("enc\nforged line.safetensors" if kind == "newline in the name" else "enc.safetensors")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "/dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    elif kind == "newline in the name":
        path.write_bytes(b"")
    fragment = {"missing": "no such file", "newline in the name": "too short"}.get(kind, "not a regular file")
    refused(load_encoder, path, fragment)
    refused(load_head, path, fragment)


# --------------------------------------------------------------------------- heads


@pytest.fixture(scope="module")
def head_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Header, bytes]:
    path = tmp_path_factory.mktemp("head") / "head.safetensors"
    save_head(Head(4, 3, hidden=[5], dropout=0.5), path)
    return split(path.read_bytes())


def spec(**changes: object) -> Mutation:
    return lambda h, d: pack({**h, "__metadata__": {"head": json.dumps(
        {**json.loads(h["__metadata__"]["head"]), **changes})}}, d)


HEAD_CASES: dict[str, tuple[Mutation, str]] = {
    "no spec": (lambda h, d: pack({**h, "__metadata__": {}}, d), "no 'head'"),
    "spec not JSON": (lambda h, d: pack({**h, "__metadata__": {"head": "{"}}, d), "not valid JSON"),
    "hidden of 10**9": (spec(hidden=[10**9]), "hidden.0"),
    "a thousand layers": (spec(hidden=[4] * 1000), "hidden"),
    "dropout of 2": (spec(dropout=2.0), "dropout"),
    "spec not matching the weights": (spec(in_dim=5), "the model wants"),
    "unknown spec key": (spec(code="import os"), "code"),
}


@pytest.mark.parametrize("case", HEAD_CASES)
def test_a_hostile_head_file_is_refused_in_one_line(case: str, head_file: tuple[Header, bytes],
                                                    tmp_path: Path) -> None:
    mutate, fragment = HEAD_CASES[case]
    path = tmp_path / "head.safetensors"
    path.write_bytes(mutate(*head_file))
    refused(load_head, path, fragment)


# --------------------------------------------------------------------------- imported checkpoints


def small_cnn(**config: object) -> EncoderAdapter:
    return get_adapter("small_cnn", {**CONFIG, **config})


def zip_bomb(path: Path) -> None:
    """A real torch.save archive plus a 64 MB entry of zeros deflated to a few KB."""
    torch.save({"w": torch.zeros(2)}, path)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive, \
            archive.open("archive/data/9", "w", force_zip64=True) as entry:
        for _ in range(64):
            entry.write(bytes(1 << 20))


def legacy_bomb(path: Path) -> None:
    """A legacy (non-zip) checkpoint whose pickle declares 2**31 - 1 floats for a small tensor."""
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(12345)}, buffer, _use_new_zipfile_serialization=False)
    path.write_bytes(buffer.getvalue().replace(b"M\x39\x30", b"J" + (2**31 - 1).to_bytes(4, "little")))


def backbone(path: Path, first_weight: torch.Tensor) -> None:
    """A small_cnn backbone's state dict with its first convolution replaced."""
    torch.save({**small_cnn().build().backbone.state_dict(), "0.weight": first_weight}, path)


def encoder_state(path: Path, **normalisation: torch.Tensor) -> None:
    """A whole small_cnn encoder's state dict (it brings its normalisation) with some replaced."""
    torch.save({**small_cnn().build().state_dict(), **normalisation}, path)


CHECKPOINT_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "not a state dict": (lambda p: torch.save([1, 2, 3], p), "no state_dict"),
    "numbers, not tensors": (lambda p: torch.save({"state_dict": {"w": 1.0}}, p), "no state_dict"),
    "empty state dict": (lambda p: torch.save({}, p), "no state_dict"),
    "truncated": (lambda p: p.write_bytes(b"PK\x03\x04" + bytes(100)), "not a readable"),
    "text": (lambda p: p.write_text("hello"), "not a readable"),
    "zip bomb": (zip_bomb, "unpacks to"),
    "legacy storage bomb": (legacy_bomb, "declares"),
    "NaN tensors": (lambda p: backbone(p, torch.full((2, 3, 3, 3), math.nan)), "NaN"),
    "wrong shape": (lambda p: backbone(p, torch.zeros(2, 3, 5, 5)), "the model wants"),
    "sparse tensor": (lambda p: backbone(p, torch.ones(2, 3, 3, 3).to_sparse()),
                      "tensor '0.weight' is not a dense CPU tensor"),
    "meta tensor": (lambda p: backbone(p, torch.empty(2, 3, 3, 3, device="meta")),
                    "tensor '0.weight' is not a dense CPU tensor"),
    "tiny std": (lambda p: encoder_state(p, std=torch.full((3,), 1e-45)), "std must lie within"),
    "huge mean": (lambda p: encoder_state(p, mean=torch.full((3,), 1e38)), "mean must lie within"),
}


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_a_hostile_checkpoint_is_refused_in_one_line(case: str, tmp_path: Path) -> None:
    write, fragment = CHECKPOINT_CASES[case]
    path = tmp_path / "model.pt"
    write(path)
    adapter = small_cnn()
    start = time.perf_counter()
    refused(lambda p: import_encoder(adapter, p), path, fragment)
    assert time.perf_counter() - start < 5


def test_a_plain_small_cnn_state_dict_imports_with_its_normalisation(tmp_path: Path) -> None:
    """What foundation.checkpoint gives the default small_cnn adapter: params.yaml's config
    plus the data's input shape, no mean/std (a pretrained file's are unknown)."""
    trained = small_cnn(mean=[0.3, 0.4, 0.5], std=[0.2, 0.3, 0.4])
    encoder = trained.build().eval()
    torch.save(encoder.state_dict(), tmp_path / "plain.pt")
    adapter = get_adapter("small_cnn", {"width": 2, "feature_dim": 4, "input_shape": [8, 8, 3]})
    imported, ignored = import_encoder(adapter, tmp_path / "plain.pt")
    x = torch.rand(2, 3, 8, 8)
    assert ignored == [] and adapter.config["mean"] == pytest.approx([0.3, 0.4, 0.5])
    torch.testing.assert_close(imported(x), encoder(x))


def test_a_backbone_only_state_dict_without_normalisation_is_refused_with_the_fix(tmp_path: Path) -> None:
    torch.save(small_cnn().build().backbone.state_dict(), tmp_path / "backbone.pt")
    adapter = get_adapter("small_cnn", {"width": 2, "feature_dim": 4, "input_shape": [8, 8, 3]})
    refused(lambda p: import_encoder(adapter, p), tmp_path / "backbone.pt", "no input normalisation")
    with_stats = small_cnn()  # with mean and std in the config it imports
    assert import_encoder(with_stats, tmp_path / "backbone.pt")[1] == []


# --------------------------------------------------------------------------- stages


def test_a_stage_prints_the_one_line_reason_not_a_traceback(tmp_path: Path) -> None:
    """`python -m stages.retrain` on a garbage encoder: exit 1, one line on stderr."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "models" / "backdoored").mkdir(parents=True)
    (tmp_path / "models" / "backdoored" / "encoder.safetensors").write_bytes(b"\0" * 7)
    done = subprocess.run([sys.executable, "-m", "stages.retrain"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "retrain: models/backdoored/encoder.safetensors: too short for a safetensors file (7 bytes)"]



def test_a_head_that_does_not_fit_is_left_out_with_its_reason_and_the_other_tasks_go_on(
        tmp_path: Path) -> None:
    """Deployed heads beside the digits one: parity's gives 3 classes for a 2-class task, a
    third task's file is garbage. Both are left out, named on stderr; parity's report is refused
    with the reason (it was an `internal` error or a wrong `no_reference` before) and the
    digits report keeps the verdict it has alone."""
    ws = build_workspace(tmp_path)
    run_stages(ws)
    alone = {r["report_id"]: r["error"] for r in read_jsonl(ws.root / INTAKE_LOG)}
    heads, tasks = ws.root / "models" / "deployed", ws.root / "data" / "tasks"
    save_task(parity(load_tasks(tasks)["digits"]), tasks / "parity")
    save_head(Head(ADAPTER["feature_dim"], 3, hidden=[], dropout=0.0), heads / "parity" / "head.safetensors")
    (heads / "ghost").mkdir()
    (heads / "ghost" / "head.safetensors").write_bytes(b"\0" * 7)
    png(ws.inbox / "p-1.png", ws.image)
    report(ws.inbox, "p-1", {"task": "parity", "label": 1 - ws.label % 2})
    outcome = run_stages(ws)
    decided = {r["report_id"]: r for r in read_jsonl(ws.root / INTAKE_LOG)}
    assert decided["p-1"]["error"] == "unknown_task"
    reason = decided["p-1"]["reasons"][0]
    assert "left out" in reason and "gives 3 classes where its task has 2" in reason
    assert decided["genuine-1"]["error"] == alone["genuine-1"]
    assert "ghost/head.safetensors: too short" in outcome.stderr
    assert "parity/head.safetensors: gives 3 classes" in outcome.stderr


@pytest.mark.parametrize("heads", ["models/nosuch", "models/deployed/digits/head.safetensors"])
def test_a_mistyped_heads_folder_is_an_error_not_every_report_refused(tmp_path: Path, heads: str) -> None:
    """A heads path that is not a folder made intake refuse every report `unknown_task` and exit 0."""
    from mudjack.config import ParamsError
    from mudjack.deployed import load_deployed

    ws = build_workspace(tmp_path)
    encoder, tasks = ws.root / "models" / "deployed" / "encoder.safetensors", ws.root / "data" / "tasks"
    assert load_deployed(encoder, ws.root / "models" / "deployed", tasks).heads
    with pytest.raises(ParamsError, match=r"heads folder not found: .* \(paths.heads\)"):
        load_deployed(encoder, ws.root / heads, tasks)
