"""Repair stage: export each task's patched encoder + head to ONNX and verify it with onnxruntime."""

from __future__ import annotations

from mudjack.data import load_tasks
from mudjack.encoders import load_encoder
from mudjack.export import describe_onnx, export_onnx, verify_onnx
from mudjack.heads import Classifier, load_head
from mudjack.io import atomic_dir, write_json
from stages.config import setup_stage

PATCHED = "models/patched/encoder.safetensors"
HEADS = "models/heads"
OUT = "models/onnx"
SUMMARY = "reports/export.json"


def main() -> None:
    params = setup_stage()
    encoder, adapter = load_encoder(PATCHED)
    manifest, worst = {"opset": params.export.opset, "tasks": {}}, 0.0
    with atomic_dir(OUT) as out:
        for name, task in load_tasks(params.paths.tasks).items():
            model = Classifier(encoder, load_head(f"{HEADS}/{name}/patched.safetensors")).eval()
            pixels = adapter.preprocess(task.test.x)
            path = out / f"{name}.onnx"
            export_onnx(model, pixels[:2], path, opset=params.export.opset)
            check = verify_onnx(path, model, pixels, params.export.tolerance)
            if not check["passed"]:
                raise SystemExit(f"export: {name}: ONNX differs from PyTorch by "
                                 f"{check['max_abs_diff']:.2e} > {params.export.tolerance}")
            worst = max(worst, check["max_abs_diff"])
            manifest["tasks"][name] = {**describe_onnx(path), **check, "classes": task.classes,
                                       "input": "float32 pixels in [0, 1], (batch, C, H, W)"}
            print(f"export: {name}: max_abs_diff {check['max_abs_diff']:.2e} "
                  f"on {check['providers'][0]}")
        write_json(out / "manifest.json", manifest)
    write_json(SUMMARY, {"max_abs_diff": worst, "tasks": sorted(manifest["tasks"])})


if __name__ == "__main__":
    main()
