"""Repair stage: export each task's patched encoder + head to ONNX and verify it with onnxruntime."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mudjack.data import Task, load_tasks
from mudjack.encoders import EncoderAdapter, load_patch_of
from mudjack.encoders.text import ONNX_INPUTS, HFTextAdapter, TextClassifier
from mudjack.export import describe_onnx, export_onnx, export_onnx_inputs, verify_onnx, verify_onnx_batches
from mudjack.heads import Classifier, Head, head_misfit, load_head
from mudjack.io import atomic_dir, ready_outputs, write_json
from mudjack.safeload import weights_error
from stages.artifacts import EXPORT_SUMMARY, HEADS, ONNX_DIR, ONNX_MANIFEST, PATCHED_ENCODER
from stages.config import PipelineParams, setup_stage


def export_image(encoder: nn.Module, adapter: EncoderAdapter, head: Head, task: Task, path: Path,
                 params: PipelineParams) -> tuple[dict, str]:
    model = Classifier(encoder, head).eval()
    pixels = adapter.preprocess(task.test.x)
    export_onnx(model, pixels[:2], path, opset=params.export.opset)
    check = verify_onnx(path, model, pixels, tolerance=params.export.tolerance)
    return check, image_input(adapter, task)


def image_input(adapter: EncoderAdapter, task: Task) -> str:
    """The manifest's words for an image model's input; an encoder that resizes says from what
    and how, since the ONNX model takes its own size only."""
    height, width, channels = adapter.input_shape
    described = f"float32 pixels in [0, 1], (batch, {channels}, {height}, {width})"
    if adapter.resizes_inputs and tuple(task.input_shape[:2]) != (height, width):
        described += (f": the task's {task.input_shape[0]}x{task.input_shape[1]} uint8 images resized "
                      f"first (bilinear, antialiased, rounded to uint8: the adapter's resize_raw)")
    return described


def export_text(encoder: nn.Module, adapter: HFTextAdapter, head: Head, task: Task, path: Path,
                params: PipelineParams) -> tuple[dict, str]:
    """input_ids + attention_mask, both dynamic in batch and sequence; checked on the test set
    in length-ordered batches (one sentence, then 64 at a time)."""
    model = TextClassifier(encoder, head).eval()
    batches = adapter.onnx_batches(task.test.x)
    dims = {0: "batch", 1: "sequence"}
    export_onnx_inputs(model, adapter.tokenize(task.test.x[:2]), path, opset=params.export.opset,
                       input_names=list(ONNX_INPUTS), dynamic_shapes=(dims, dims))
    check = verify_onnx_batches(path, model, batches, tolerance=params.export.tolerance)
    return check, "int64 input_ids and attention_mask, (batch, sequence), from the encoder's tokenizer"


def retrained_head(path: Path, adapter: EncoderAdapter, task: Task) -> Head:
    """The task's head retrained on the patched encoder; a WeightsError naming it when it does not
    take the encoder's features or give the task's classes (the ONNX model would not match
    the manifest, or not run)."""
    head = load_head(path)
    if misfit := head_misfit(head, features=adapter.feature_dim, classes=len(task.classes)):
        raise weights_error(path, f"the head {misfit} (patched encoder {PATCHED_ENCODER}, task "
                                  f"{task.name})")
    return head


def main() -> None:
    params = setup_stage()
    ready_outputs(ONNX_DIR, EXPORT_SUMMARY)
    encoder, adapter = load_patch_of(PATCHED_ENCODER, params.paths.encoder)
    manifest, worst = {"opset": params.export.opset, "tasks": {}}, 0.0
    with atomic_dir(ONNX_DIR) as out:
        for name, task in load_tasks(params.paths.tasks).items():
            head = retrained_head(HEADS / name / "patched.safetensors", adapter, task)
            path = out / f"{name}.onnx"
            export = export_text if adapter.modality == "text" else export_image
            check, described = export(encoder, adapter, head, task, path, params)
            if not check["passed"]:
                raise SystemExit(f"export: {name}: ONNX differs from PyTorch by "
                                 f"{check['max_abs_diff']:.2e} > {params.export.tolerance}")
            worst = max(worst, check["max_abs_diff"])
            manifest["tasks"][name] = {**describe_onnx(path), **check, "classes": task.classes,
                                       "input": described}
            print(f"export: {name}: max_abs_diff {check['max_abs_diff']:.2e} "
                  f"on {check['providers'][0]}")
        write_json(out / ONNX_MANIFEST.name, manifest)
    write_json(EXPORT_SUMMARY, {"max_abs_diff": worst, "tasks": sorted(manifest["tasks"])})


if __name__ == "__main__":
    main()
