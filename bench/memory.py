"""Benchmark (not a test): peak resident memory of the repair stages against the number of images.

    .venv/bin/python bench/memory.py --sizes 1000 3000 --side 224
    # or one size per process, in parallel, adding to the same results file:
    .venv/bin/python bench/memory.py --sizes 1000 --append &
    .venv/bin/python bench/memory.py --sizes 3000 --append

For each N, a workspace is generated under --work (default: a temp folder): a tiny random
`hf_vision` ViT at side x side, a shadow set of N synthetic images, one task of N train and
N/10 test images (two classes: dark and bright images), its deployed linear head and one
bug report. The stored sets are uncompressed npz files, as the prepare stage writes them
(`mudjack.data.write_set`), so the stages map them instead of reading them. Then validate,
intake, patch (one epoch over every shadow image, checkpointing on) and retrain each run as a
subprocess in the workspace, and that process's peak RSS (VmHWM of /proc/self/status at its exit) is
recorded, next to a process that only imports the stages (the fixed cost of Python, torch
and transformers). Writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mudjack.data import Task, load_task, save_image  # noqa: E402
from mudjack.encoders import EncoderAdapter, ImageEncoder, get_adapter, save_encoder  # noqa: E402
from mudjack.features import extract_features  # noqa: E402
from mudjack.heads import HeadParams, predict, save_head, train_head  # noqa: E402
from mudjack.io import read_json, write_json  # noqa: E402

STAGES = ("validate", "intake", "patch", "retrain")
TASK = "synthetic"
CHUNK = 500  # images generated at a time


def tiny_vit(side: int, patch: int = 0) -> EncoderAdapter:
    """A 2-layer random ViT (hidden 32) at side x side; patches of `patch` pixels, by default
    side/7 (32 px at 224)."""
    patch = patch or max(4, side // 7)
    model = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 37, "image_size": side, "patch_size": patch}
    return get_adapter("hf_vision", {"model": model, "input_shape": [side, side, 3], "mean": [0.5] * 3,
                                     "std": [0.5] * 3, "pooling": "cls"})


def synthetic_images(start: int, count: int, side: int, labels: np.ndarray, seed: int) -> np.ndarray:
    """Noise images, dark (0-127) for class 0 and bright (128-255) for class 1."""
    rng = np.random.default_rng([seed, start])
    noise = rng.integers(0, 128, (count, side, side, 3), dtype=np.uint8)
    return noise + (128 * labels[start:start + count, None, None, None]).astype(np.uint8)


def write_synthetic_set(path: Path, n: int, side: int, *, seed: int, labelled: bool = True) -> np.ndarray:
    """N synthetic images (with `y` when labelled) as an uncompressed npz, CHUNK images at a
    time (the full set is never in memory, here either); returns the labels."""
    labels = np.random.default_rng([seed, n]).integers(0, 2, n).astype(np.int64)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staged = np.lib.format.open_memmap(Path(tmp) / "x.npy", mode="w+", dtype=np.uint8,
                                           shape=(n, side, side, 3))
        for start in range(0, n, CHUNK):
            staged[start:start + CHUNK] = synthetic_images(start, min(CHUNK, n - start), side, labels, seed)
        staged.flush()
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            archive.write(Path(tmp) / "x.npy", "x.npy")
            if labelled:
                with archive.open("y.npy", "w") as f:
                    np.lib.format.write_array(f, labels)
        del staged
    return labels


def _head_and_report(encoder: ImageEncoder, adapter: EncoderAdapter, task: Task,
                     root: Path, seed: int) -> None:
    """The deployed linear head (trained on 200 train images) and one report it gets wrong."""
    sample = np.arange(min(200, len(task.train)))
    features = extract_features(encoder, adapter, task.train.x[sample])
    head = train_head(features, task.train.y[sample], 2, HeadParams(kind="linear", epochs=30), seed=seed)
    save_head(head, root / "heads" / TASK / "head.safetensors")
    image = np.array(task.test.x[0])
    half = image.shape[0] // 2
    image[:half] = 255 - image[:half]  # half dark, half bright: a label the head may get wrong
    predicted = int(predict(head, extract_features(encoder, adapter, image[None]))[0])
    save_image(image, root / "inbox" / "r-0001.png")
    write_json(root / "inbox" / "r-0001.json", {"id": "r-0001", "task": TASK, "label": 1 - predicted,
                                          "input": "r-0001.png"})


def bench_params(side: int) -> dict[str, Any]:
    """params.yaml of the workspace: the defaults, with the occlusion window and stride at
    side/16 (intake at 224 px with window 2, stride 1 would take hours on a CPU) and grow only
    (`auto` would go on to fit blend and soft triggers on a model with no backdoor), verification
    off (a random model has no backdoor to verify), one patch epoch and a short retrain."""
    step = max(2, side // 16)
    return {
        "seed": 0, "threads": 1,
        "paths": {"shadow": "data/shadow.npz", "tasks": "data/tasks", "encoder": "models/encoder.safetensors",
                  "heads": "heads", "inbox": "inbox", "truth": ""},
        "intake": {"reverse": {"method": "grow", "window": step, "stride": step, "batch_size": 64,
                               "grow": {"samples": 16}}, "verify": {"enabled": False}},
        "patch": {"method": "mudjacking", "checkpoint_every": 50, "device": "cpu", "epochs": 1,
                  "batch_size": 32, "views": 2},
        "retrain": {"kind": "linear", "epochs": 5, "batch_size": 256},
    }


def make_workspace(root: Path, n: int, side: int, seed: int = 0) -> None:
    adapter = tiny_vit(side)
    encoder = adapter.build().eval()
    save_encoder(encoder, adapter, root / "models" / "encoder.safetensors")
    (root / "data" / "tasks" / TASK).mkdir(parents=True)
    write_synthetic_set(root / "data" / "shadow.npz", n, side, seed=seed, labelled=False)
    folder = root / "data" / "tasks" / TASK
    write_synthetic_set(folder / "train.npz", n, side, seed=seed + 1)
    write_synthetic_set(folder / "test.npz", max(20, n // 10), side, seed=seed + 2)
    write_json(folder / "task.json", {"name": TASK, "classes": [0, 1], "input_shape": [side, side, 3]})
    _head_and_report(encoder, adapter, load_task(folder), root, seed)
    (root / "params.yaml").write_text(yaml.safe_dump(bench_params(side)))


# Runs a module as __main__ and writes its peak RSS (VmHWM, KiB) to the file argv[1] names. Not
# ru_maxrss: that keeps the high-water mark of the process before exec, the bench's own memory.
PEAK = """
import runpy, sys
out, sys.argv = sys.argv[1], sys.argv[2:]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
finally:
    status = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
    open(out, "w").write(status)
"""


def run_stage(root: Path, module: str) -> dict[str, Any]:
    """Run `python -m module` in the workspace; its peak RSS (MiB), wall time and exit code."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    name = module.rsplit(".", 1)[-1]
    peak = root / f"{name}.peak"
    start = time.perf_counter()
    with open(root / f"{name}.log", "w") as log:
        done = subprocess.run([sys.executable, "-c", PEAK, str(peak), module], cwd=root, env=env,
                              stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = round(time.perf_counter() - start, 1)
    return {"peak_rss_mib": round(int(peak.read_text()) / 1024, 1), "seconds": seconds,
            "returncode": done.returncode}


def measure(root: Path, n: int, side: int) -> dict[str, Any]:
    """Generate the workspace of N images and run the import baseline and every stage."""
    make_workspace(root, n, side)
    data_mib = sum(f.stat().st_size for f in (root / "data").rglob("*.npz")) / 2**20
    rows = {"import": run_stage(root, "stages.config")}  # imports torch, pydantic; does nothing
    for stage in STAGES:
        rows[stage] = run_stage(root, f"stages.{stage}")
        if rows[stage]["returncode"] != 0:
            tail = (root / f"{stage}.log").read_text()[-2000:]
            raise SystemExit(f"memory bench: stage {stage} failed at N={n}:\n{tail}")
    return {"images": n, "side": side, "data_mib": round(data_mib, 1), "stages": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000])
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--work", type=Path, default=None,
                        help="where workspaces go (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "memory.json")
    parser.add_argument("--append", action="store_true",
                        help="add to the runs already in --out (runs of other sizes in parallel)")
    args = parser.parse_args(argv)
    command = "bench/memory.py " + " ".join(sys.argv[1:] if argv is None else argv)
    for n in args.sizes:
        with tempfile.TemporaryDirectory(dir=args.work) as tmp:
            run = {**measure(Path(tmp), n, args.side), "command": command}
        print(table([run]), flush=True)
        old = read_json(args.out)["runs"] if args.append and args.out.is_file() else []
        runs = sorted([*(r for r in old if r["images"] != n), run], key=lambda r: r["images"])
        write_json(args.out, {"cpu_threads": 1, "runs": runs})  # after each size: partial runs count
        args.append = True


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: peak RSS (MiB) per stage and N."""
    names = ["import", *STAGES]
    lines = ["| N | data MiB | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for run in results:
        rows = run["stages"]
        cells = [f"{rows[s]['peak_rss_mib']:.0f} ({rows[s]['seconds']:.0f}s)" for s in names]
        lines.append(f"| {run['images']} | {run['data_mib']:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
