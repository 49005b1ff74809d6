"""Bounded memory and raw inputs of any size.

Image sets are stored uncompressed and mapped, and the loops that read them (features, the
validation tables, the patch run) hold one batch at a time: measured with tracemalloc (numpy
allocations) and the process's mapped file pages. An encoder that resizes (hf_vision) takes
reports and tasks of another size into its own input space; a fixed-size one refuses them.
"""

from __future__ import annotations

import json
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mudjack import metadata
from mudjack.bugs import Bug
from mudjack.data import (
    LabelledSet,
    RowView,
    Task,
    batch_rows,
    in_input_space,
    iter_batches,
    load_shadow,
    load_task,
    save_image,
    save_task,
    write_set,
)
from mudjack.deployed import Deployed
from mudjack.encoders import get_adapter, read_adapter, save_encoder
from mudjack.evaluation import stamped_features
from mudjack.features import extract_features
from mudjack.heads import HeadParams, train_head
from mudjack.intake import IntakeParams
from mudjack.intake.merge import Intake
from mudjack.io import open_npz, write_npz
from mudjack.patching.mudjacking import MudjackingParams, start_run
from mudjack.reports import ReportError, read_report
from mudjack.triggers import patch_trigger
from tests.helpers.tiny import HF_VISION

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

SIDE, LARGE = 32, 48


def two_class_images(n: int, side: int, seed: int = 0) -> LabelledSet:
    """Dark (class 0) and bright (class 1) noise images: a task any encoder separates."""
    labels = np.arange(n) % 2
    noise = np.random.default_rng(seed).integers(0, 128, (n, side, side, 3), dtype=np.uint8)
    return LabelledSet(noise + (128 * labels[:, None, None, None]).astype(np.uint8), labels.astype(np.int64))


def mapped_set(tmp_path: Path, n: int, side: int = SIDE) -> np.ndarray:
    write_set(tmp_path / "shadow.npz", two_class_images(n, side).x)
    return load_shadow(tmp_path / "shadow.npz")


def peak_bytes(work: Callable[[], object]) -> int:
    """The peak of traced (numpy and Python) allocations while `work` runs."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def mapped_file_kib() -> int:
    """This process's resident file-backed pages (a memory map's pages count here)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("RssFile:")[1].split()[0])


@pytest.fixture(scope="module")
def vit():
    torch.set_num_threads(1)
    adapter = get_adapter("hf_vision", HF_VISION)
    torch.manual_seed(0)
    return adapter, adapter.build().eval()


# --------------------------------------------------------------------------- storage


def test_image_sets_are_stored_uncompressed_and_mapped_labels_and_text_read(tmp_path):
    data = two_class_images(10, 8)
    save_task(Task("t", [0, 1], data, data.subset(np.arange(4))), tmp_path / "t")
    task = load_task(tmp_path / "t")
    assert isinstance(task.train.x, np.memmap) and np.array_equal(task.train.x, data.x)
    assert not isinstance(task.train.y, np.memmap) and np.array_equal(task.train.y, data.y)
    assert task.input_shape == (8, 8, 3)
    write_set(tmp_path / "text.npz", np.array(["a b", "c d e"]))
    assert not isinstance(load_shadow(tmp_path / "text.npz"), np.memmap)
    write_npz(tmp_path / "old.npz", x=data.x)  # a compressed set (older workspaces) is read whole
    old = open_npz(tmp_path / "old.npz")["x"]
    assert not isinstance(old, np.memmap) and np.array_equal(old, data.x)


def test_a_view_reads_its_rows_only_when_indexed(tmp_path):
    x = mapped_set(tmp_path, 20, 4)
    index = np.array([3, 7, 1, 18])
    view = RowView(x, index)
    assert len(view) == 4 and view.shape == (4, 4, 4, 3) and view.dtype == np.uint8
    assert np.array_equal(view[1:3], x[index[1:3]]) and np.array_equal(np.asarray(view), x[index])
    assert np.array_equal(np.concatenate(list(iter_batches(view, 3))), x[index])
    mask = np.arange(20) % 3 == 0  # a boolean mask selects as in x[mask]
    assert np.array_equal(np.asarray(RowView(x, mask)), x[mask])
    text = RowView(np.array(["a", "bb", "ccc"]), np.array([2, 0]))
    assert [str(s) for s in text] == ["ccc", "a"]


# --------------------------------------------------------------------------- the loops


def test_the_tracer_sees_a_whole_copy_of_the_set(tmp_path):
    """The control of the tests below: materialising the set shows up in the peak."""
    x = mapped_set(tmp_path, 600)
    assert peak_bytes(lambda: np.array(x)) >= x.nbytes
    assert peak_bytes(lambda: x[np.arange(len(x))]) >= x.nbytes  # fancy indexing copies too


def test_features_validation_tables_and_patch_steps_read_one_batch_at_a_time(tmp_path, vit, monkeypatch):
    adapter, encoder = vit
    x = mapped_set(tmp_path, 2000)  # 6 MiB
    bound = x.nbytes // 4
    assert peak_bytes(lambda: extract_features(encoder, adapter, x, batch_size=50)) < bound
    monkeypatch.setattr(metadata, "TABLE_BYTES", 100 * x[:1].nbytes)
    assert peak_bytes(lambda: metadata.image_table(x)) < bound
    trigger = patch_trigger(adapter.input_shape, 4, 1, 1)
    bug = Bug("b", "t", 0, 1, x[0].copy(), x[1].copy(), trigger)
    params = MudjackingParams(device="cpu", views=1, augment=False)
    run = start_run(encoder, adapter, x, [bug], params, seed=0)
    assert run.shadow is x and len(run.used) == len(x)
    assert peak_bytes(lambda: run.step(torch.arange(16))) < bound
    assert torch.equal(run.batch(torch.tensor([5, 2])), adapter.preprocess(x[[5, 2]]))


def test_a_batch_loop_lets_the_mapped_pages_go(tmp_path):
    x = mapped_set(tmp_path, 2000)  # 6 MiB
    before = mapped_file_kib()
    total = sum(int(rows[:, 0, 0, 0].sum()) for rows in iter_batches(x, 100))
    assert total == int(x[:, 0, 0, 0].astype(np.int64).sum())
    batch_rows(x, slice(0, 1))
    assert mapped_file_kib() - before < x.nbytes / 1024 / 2


# --------------------------------------------------------------------------- any size


def test_resizing_is_the_adapters_choice(tmp_path, vit):
    adapter, encoder = vit
    fixed = get_adapter("small_cnn", {"input_shape": [8, 8, 3], "mean": [0.5] * 3, "std": [0.5] * 3,
                                      "width": 4, "feature_dim": 8})
    image = np.zeros((LARGE, LARGE, 3), dtype=np.uint8)
    assert not fixed.resizes_inputs and fixed.resize_raw(image) is image
    assert adapter.resizes_inputs and adapter.resize_raw(image).shape == (SIDE, SIDE, 3)
    save_encoder(encoder, adapter, tmp_path / "vit.safetensors")
    save_encoder(fixed.build(), fixed, tmp_path / "cnn.safetensors")
    assert read_adapter(tmp_path / "vit.safetensors").resizes_inputs
    assert not read_adapter(tmp_path / "cnn.safetensors").resizes_inputs


def write_report(inbox: Path, image: np.ndarray, label: int, name: str = "r-1") -> Path:
    save_image(image, inbox / f"{name}.png")
    path = inbox / f"{name}.json"
    path.write_text(json.dumps({"id": name, "task": "t", "label": label, "input": f"{name}.png"}))
    return path


def test_a_report_of_another_size_is_refused_unless_the_encoder_resizes(tmp_path, vit):
    adapter, _ = vit
    image = two_class_images(1, LARGE).x[0]
    path = write_report(tmp_path, image, 0)
    task = Task("t", [0, 1], two_class_images(4, SIDE), two_class_images(2, SIDE))
    with pytest.raises(ReportError) as err:
        read_report(path, {"t": task})
    assert err.value.code == "bad_shape"
    report = read_report(path, {"t": task}, resize=adapter.resize_raw)
    assert np.array_equal(report.image, adapter.resize_raw(image))


def test_a_task_of_another_size_is_read_in_the_models_input_space(vit):
    adapter, _ = vit
    task = Task("t", [0, 1], two_class_images(6, LARGE), two_class_images(2, LARGE))
    resized = in_input_space(task, adapter.input_shape, adapter.resize_raw)
    assert resized.input_shape == (SIDE, SIDE, 3) and len(resized.train) == 6
    assert np.array_equal(resized.train.x[[1, 4]], adapter.resize_raw(task.train.x[[1, 4]]))
    same = Task("t", [0, 1], two_class_images(2, SIDE), two_class_images(2, SIDE))
    assert in_input_space(same, adapter.input_shape, adapter.resize_raw) is same


def test_a_larger_report_on_a_larger_task_is_accepted_and_reversed_in_the_models_space(tmp_path, vit):
    adapter, encoder = vit
    task = Task("t", [0, 1], two_class_images(40, LARGE), two_class_images(10, LARGE, seed=1))
    features = extract_features(encoder, adapter, task.train.x)
    head = train_head(features, task.train.y, 2, HeadParams(kind="linear", epochs=60, lr=1e-2))
    deployed = Deployed(encoder, adapter, {"t": head})
    image = task.test.x[0].copy()  # dark (class 0); brightened until the head says 1
    image[: LARGE * 3 // 4] |= 0x80
    label = 1 - int(deployed.classify("t", image[None])[0])
    params = IntakeParams(reverse={"window": 4, "stride": 4, "grow": {"samples": 8}},
                          verify={"enabled": False})
    intake = Intake(deployed, {"t": task}, params=params)
    decision = intake.decide(write_report(tmp_path, image, label))
    assert decision.accepted, decision.reasons
    (bug,) = intake.bugs.values()
    assert bug.bug.shape == bug.reference.shape == (SIDE, SIDE, 3)
    assert bug.trigger.mask.shape == (SIDE, SIDE)
    assert np.array_equal(bug.bug, adapter.resize_raw(image))


def test_asr_features_are_stamped_batch_by_batch(tmp_path, vit):
    adapter, encoder = vit
    x = mapped_set(tmp_path, 30)
    trigger = patch_trigger(adapter.input_shape, 4, 2, 2)
    kept = RowView(x, np.arange(1, 30, 2))
    expected = extract_features(encoder, adapter, adapter.stamp(x[1::2], trigger))
    found = stamped_features(encoder, adapter, kept, trigger, batch_size=4)
    assert torch.allclose(found, expected, atol=1e-6)


# --------------------------------------------------------------------------- the benches


def test_memory_bench_runs_a_stage_on_a_mapped_workspace_and_reads_its_peak(tmp_path):
    import memory

    memory.make_workspace(tmp_path, 12, SIDE)
    assert isinstance(load_shadow(tmp_path / "data" / "shadow.npz"), np.memmap)
    assert len(load_task(tmp_path / "data" / "tasks" / memory.TASK).train) == 12
    row = memory.run_stage(tmp_path, "stages.validate")
    assert row["returncode"] == 0 and row["peak_rss_mib"] > 20
    run = {"images": 12, "data_mib": 0.1, "stages": dict.fromkeys(["import", *memory.STAGES], row)}
    assert memory.table([run]).splitlines()[2].startswith("| 12 |")
    assert memory.bench_params(224)["intake"]["reverse"]["method"] == "grow"  # no backdoor to fit


def test_intake_cost_bench_counts_the_images_the_encoder_ran_on():
    import intake_cost

    row = intake_cost.measure(32)
    assert row["encoder_images"] > 100 and row["window"] == 2 and row["decision"] in ("accepted", "rejected")
    # the fits' passes (autograd on) are counted apart: the optimised candidates ran
    assert 0 < row["encoder_images_with_grad"] < row["encoder_images"]
    assert {"soft", "blend"} & set(row["reversal"]["fitted"]) and row["reversal"]["chosen"]
