"""Benchmark (not a test): the authors' Mudjacking step structure against ours, resnet20 → GTSRB.

    .venv/bin/python bench/patch_speed.py                  # defaults: see --help
    .venv/bin/python bench/patch_speed.py --shadow 512 --epochs 1 --head-epochs 5   # smoke run

(a) reference, restated plainly (tests/helpers/reference_mudjacking.py): per step h' runs five times
    and h twice on full batches (x, x⊕t, and batch-size copies of x_b, x_r, x_r⊕t); every
    image is augmented on its own in the Dataset's __getitem__ of a torch DataLoader.
(b) ours (mudjack/patching/mudjacking.py): one pass of h' over [x, x⊕t, K views each of x_b,
    x_r, x_r⊕t] and one no-grad pass of h over [x, the K views of x_r]; batched augmentation;
    frozen BatchNorm folded into the convolutions; channels_last weights.
Both start from the same backdoored encoder and see the same shadow images, bug, optimiser,
batch size, epochs and thread count. Their epochs alternate (b a, a b, b a, ...) so that load
drifts on a shared host hit both. Reported per variant: shadow images per second, peak RSS
(the high-water mark is reset before each epoch through /proc/self/clear_refs, then read with
resource.getrusage; freed heap pages are first returned with malloc_trim, so the rise over
the epoch's starting RSS is the variant's own working memory) and clean accuracy,
ASR (non-target triggered test inputs predicted as the target) and TBA after retraining a
head on GTSRB with the true trigger. Writes bench/results/patch_speed.json.

The backdoored encoder comes from runs/resnet20-gtsrb/models/backdoored/ when that run made
one; otherwise BadEncoder (Adam 5e-4) builds it from the imported resnet20 and caches it in
bench/.cache/.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import hashlib
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mudjack.attacks import BadEncoderParams, badencoder, pick_attack_reference
from mudjack.augment import ViewAugmentation
from mudjack.bugs import Bug
from mudjack.data import Task, load_shadow, load_tasks
from mudjack.deployed import Deployed
from mudjack.device import cpu_has_bf16
from mudjack.encoders import (
    EncoderAdapter,
    ImageEncoder,
    get_adapter,
    import_encoder,
    load_encoder,
    save_encoder,
)
from mudjack.evaluation import AttackSpec, retrain_and_evaluate
from mudjack.features import extract_features
from mudjack.heads import Head, HeadParams, predict
from mudjack.intake import pick_reference
from mudjack.io import read_npz, sha256_bytes, write_json
from mudjack.loaders import DataSpec, limit_stratified, load_data, load_npz_images
from mudjack.metrics import non_target
from mudjack.patching.checkpoint import deterministic
from mudjack.patching.mudjacking import MudjackingParams, PatchRun, start_run
from mudjack.patching.speed import contiguous
from mudjack.triggers import Trigger, patch_trigger, trigger_from_arrays
from stages.artifacts import BACKDOORED, BACKDOORED_ENCODER, BACKDOORED_TRUTH, PREPARED_SHADOW, PREPARED_TASKS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # baseline (a), the test oracle, lives in tests/helpers

from tests.helpers.reference_mudjacking import (  # noqa: E402
    ReferenceViews,
    plain_models,
    plain_optimiser,
    plain_step,
    reference_loader,
)

SHARED = ROOT.parent / "shared"
WORKSPACE = ROOT / "runs" / "resnet20-gtsrb"
WEIGHTS = SHARED / "weights" / "resnet_cifar10" / "resnet20-12fca82f.th"
CIFAR = SHARED / "data" / "cifar10_jpeg" / "cifar10_jpeg_train.tgz"
GTSRB = SHARED / "data" / "gtsrb" / "gtsrb_subset_32x32.npz"
CACHE = Path(__file__).resolve().parent / ".cache"
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "patch_speed.json"
TARGET = 12  # GTSRB "priority road", as scenarios/resnet20-gtsrb.yaml
TRIGGER = {"size": 10, "row": 21, "col": 21, "value": 255}


# --------------------------------------------------------------------------- the scenario


@dataclass
class Scenario:
    adapter: EncoderAdapter
    backdoored: ImageEncoder
    shadow: np.ndarray
    task: Task
    trigger: Trigger
    target: int
    source: str


def load_inputs(limit: int, seed: int) -> tuple[np.ndarray, Task]:
    """Shadow images and the GTSRB task: the scenario's prepared data, else from ../shared."""
    shadow_file, tasks_dir = WORKSPACE / PREPARED_SHADOW, WORKSPACE / PREPARED_TASKS
    if shadow_file.is_file() and (tasks_dir / "gtsrb").is_dir():
        return load_shadow(shadow_file), load_tasks(tasks_dir)["gtsrb"]
    shadow = load_data(DataSpec(loader="image_folders", path=str(CIFAR), split="train", limit=limit), seed)
    test = limit_stratified(load_npz_images(GTSRB, "test"), 3000, seed)
    return shadow.x, Task("gtsrb", list(range(43)), load_npz_images(GTSRB, "train"), test)


def backdoor(adapter: EncoderAdapter, shadow: np.ndarray, task: Task, trigger: Trigger,
             args: argparse.Namespace) -> tuple[ImageEncoder, str]:
    """BadEncoder on the imported resnet20, cached by its settings."""
    key = hashlib.sha256(json.dumps([args.bad_samples, args.bad_epochs, args.seed, len(shadow),
                                     TRIGGER, TARGET]).encode()).hexdigest()[:12]
    path = CACHE / f"resnet20-badencoder-{key}.safetensors"
    if path.is_file():
        return load_encoder(path)[0], f"cached BadEncoder ({path.name})"
    clean, _ = import_encoder(adapter, WEIGHTS)
    reference = pick_attack_reference(clean, adapter, task.train.x, task.train.y, target=TARGET)
    used = np.random.default_rng(args.seed).permutation(len(shadow))[:args.bad_samples]
    params = BadEncoderParams(optimizer="adam", lr=5e-4, epochs=args.bad_epochs, batch_size=256)
    encoder = badencoder(clean, adapter, shadow[np.sort(used)], trigger, reference, params, seed=args.seed)
    CACHE.mkdir(exist_ok=True)
    (CACHE / ".gitignore").write_text("*\n")
    save_encoder(encoder, adapter, path)
    return encoder, f"BadEncoder built here ({path.name})"


def load_scenario(args: argparse.Namespace) -> Scenario:
    adapter = get_adapter("resnet_cifar", {"depth": 20})
    shadow, task = load_inputs(5000, args.seed)
    encoder_file, truth_file = WORKSPACE / BACKDOORED_ENCODER, WORKSPACE / BACKDOORED_TRUTH
    if encoder_file.is_file() and truth_file.is_file():
        encoder, _ = load_encoder(encoder_file)
        truth = read_npz(truth_file)
        target = dict(zip(truth["tasks"].tolist(), truth["targets"].tolist(), strict=True))["gtsrb"]
        return Scenario(adapter, encoder, shadow, task, trigger_from_arrays(truth), int(target),
                        str((WORKSPACE / BACKDOORED).relative_to(ROOT)))
    trigger = patch_trigger(adapter.input_shape, **TRIGGER)
    encoder, source = backdoor(adapter, shadow, task, trigger, args)
    return Scenario(adapter, encoder, shadow, task, trigger, TARGET, source)


def make_bug(scenario: Scenario, head: Head) -> Bug:
    """A triggered non-target test input the deployed head calls the target, with a reference."""
    test, adapter = scenario.task.test, scenario.adapter
    candidates = np.flatnonzero(non_target(test.y, scenario.target))
    stamped = adapter.stamp(test.x[candidates], scenario.trigger)
    predicted = predict(head, extract_features(scenario.backdoored, adapter, stamped))
    fooled = np.flatnonzero(predicted == scenario.target)
    if len(fooled) == 0:
        raise SystemExit("the backdoored encoder fools no test input: nothing to patch")
    image, label = stamped[fooled[0]], int(test.y[candidates[fooled[0]]])
    deployed = Deployed(scenario.backdoored, adapter, {scenario.task.name: head})
    ref = pick_reference(deployed, scenario.task, label, sha256_bytes(image.tobytes()))
    return Bug("bench", scenario.task.name, label, scenario.target, image,
               scenario.task.train.x[ref], scenario.trigger)


# --------------------------------------------------------------------------- the two variants


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Return freed heap pages to the OS, then restart the high-water mark at the current RSS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


@contextlib.contextmanager
def measured(record: dict[str, Any]) -> Iterator[None]:
    """Time the block; record the peak RSS in it and its rise over the RSS at its start."""
    reset_peak_rss()
    baseline = peak_rss_mb()
    start = time.perf_counter()
    yield
    record["seconds"].append(time.perf_counter() - start)
    peak = peak_rss_mb()
    record["peak_rss_mb"] = max(record.get("peak_rss_mb", 0.0), peak)
    record["rss_rise_mb"] = max(record.get("rss_rise_mb", 0.0), peak - baseline)


@dataclass
class Variant:
    name: str
    label: str
    run_epoch: Callable[[], dict[str, float]]
    encoder: Callable[[], ImageEncoder]
    record: dict[str, Any] = field(default_factory=lambda: {"seconds": [], "log": []})

    def epoch(self) -> None:
        with measured(self.record):
            self.record["log"].append(self.run_epoch())


def mean_terms(steps: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(sum(s[k] for s in steps) / len(steps), 5) for k in steps[0]}


def ours(run: PatchRun, batch_size: int) -> Callable[[], dict[str, float]]:
    """An epoch of the library's step, as mudjacking()'s loop runs it (deterministic kernels)."""

    def epoch() -> dict[str, float]:
        order = torch.randperm(len(run.pixels))
        with deterministic(run.device):
            return mean_terms([run.step(order[i:i + batch_size])
                               for i in range(0, len(order), batch_size)])

    return epoch


def reference(encoder: ImageEncoder, run: PatchRun, args: argparse.Namespace) -> tuple[Callable, Callable]:
    """An epoch of the plain restatement over the same images and bug; its encoder."""
    patched, frozen = plain_models(encoder)
    optimiser = plain_optimiser(patched, lr=args.lr, momentum=0.9, weight_decay=5e-4)
    bugs = run.bug_views
    dataset = ReferenceViews(run.pixels, bugs.bug.cpu(), bugs.reference.cpu(), bugs.masks.cpu(),
                             bugs.patterns.cpu(), ViewAugmentation())
    loader = reference_loader(dataset, batch_size=args.batch, seed=args.seed, workers=args.workers)

    def epoch() -> dict[str, float]:
        return mean_terms([plain_step(patched, frozen, optimiser, views, lambda_gen=args.lambda_gen,
                                      lambda_eff=args.lambda_eff)
                           for views in loader])

    return epoch, lambda: patched.eval()


def variants(scenario: Scenario, bug: Bug, args: argparse.Namespace) -> tuple[Variant, Variant]:
    params = MudjackingParams(device="cpu", epochs=args.epochs, lr=args.lr, batch_size=args.batch,
                              views=args.views, clean_samples=args.shadow, compile=args.compile,
                              cpu_bf16=args.cpu_bf16,
                              lambda_gen=args.lambda_gen, lambda_eff=args.lambda_eff,
                              generality="patched")  # the authors' loss, as the reference restates it
    run = start_run(scenario.backdoored, scenario.adapter, scenario.shadow, [bug], params, seed=args.seed)
    plain_epoch, plain_encoder = reference(scenario.backdoored, run, args)
    return (Variant("a", "(a) reference: 5+2 full-batch passes, per-image aug", plain_epoch, plain_encoder),
            Variant("b", f"(b) ours: 1+1 passes, K={args.views} views, batched aug{bf16_label(args)}",
                    ours(run, args.batch), lambda: contiguous(run.patched.eval())))


def bf16_label(args: argparse.Namespace) -> str:
    return ", bf16" if args.cpu_bf16 and cpu_has_bf16() else ""


def evaluate_seeds(encoder: ImageEncoder, scenario: Scenario, attack: AttackSpec, params: HeadParams,
                   seeds: int) -> dict[str, Any]:
    """Metrics of heads retrained with `seeds` seeds, averaged: one head's seed moves clean
    accuracy by about 0.005 here, as much as the variants differ."""
    runs = [retrain_and_evaluate(encoder, scenario.adapter, scenario.task, attack, params, seed=seed)[1]
            for seed in range(seeds)]
    mean = {key: float(np.mean([run[key] for run in runs])) for key in runs[0]}
    return {**mean, "per_seed": runs}


def train_alternating(a: Variant, b: Variant, epochs: int) -> None:
    for epoch in range(epochs):
        for variant in ((b, a) if epoch % 2 == 0 else (a, b)):
            variant.epoch()
            print(f"  epoch {epoch + 1} {variant.name}: {variant.record['seconds'][-1]:.1f}s "
                  f"{variant.record['log'][-1]}", flush=True)


# --------------------------------------------------------------------------- report


def summarise(variant: Variant, images: int, metrics: dict[str, Any]) -> dict[str, Any]:
    seconds = sum(variant.record["seconds"])
    return {"label": variant.label, "images_per_second": round(images * len(variant.record["seconds"])
                                                               / seconds, 2),
            "seconds": round(seconds, 1), "epoch_seconds": [round(s, 1) for s in variant.record["seconds"]],
            "peak_rss_mb": round(variant.record["peak_rss_mb"], 1),
            "rss_rise_mb": round(variant.record["rss_rise_mb"], 1), "final_loss": variant.record["log"][-1],
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}}


def epoch_ratios(a: Variant, b: Variant) -> list[float]:
    """a's seconds over b's, epoch by epoch (each pair ran back to back: less exposed to load drift)."""
    return [round(ta / tb, 2) for ta, tb in zip(a.record["seconds"], b.record["seconds"], strict=True)]


def print_table(report: dict[str, Any]) -> None:
    config, load = report["config"], report["host"]
    print(f"\nthreads={report['threads']} shadow={config['shadow']} epochs={config['epochs']} "
          f"batch={config['batch']} K={config['views']} load(1m) {load['load_start']}→{load['load_end']}")
    header = ("variant", "img/s", "seconds", "peak RSS MB", "RSS rise MB", "clean_acc", "asr", "tba")
    print(f"{header[0]:<58}" + "".join(f"{h:>12}" for h in header[1:]))
    rows = [("backdoored (before)", [None] * 4, report["backdoored"])]
    rows += [(v["label"], [v["images_per_second"], v["seconds"], v["peak_rss_mb"], v["rss_rise_mb"]], v)
             for v in report["variants"].values()]
    for label, numbers, m in rows:
        cells = [*numbers, m["clean_acc"], m["asr"], m["tba"]]
        print(f"{label:<58}" + "".join(f"{'' if c is None else c:>12}" for c in cells))
    print(f"ratio b/a (images/s): {report['ratio']:.2f}; per epoch {report['epoch_ratios']}")


def shown_path(path: Path) -> str:
    """`path` relative to the repository when inside it: results carry no machine paths."""
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else resolved.name


def host() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "cpu_native_bf16": cpu_has_bf16(),
            "load_start": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    threads_found = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    info = host()
    scenario = load_scenario(args)
    head_params = HeadParams(epochs=args.head_epochs, batch_size=128)
    attack = AttackSpec(scenario.trigger, scenario.target, "truth")
    head, before = retrain_and_evaluate(scenario.backdoored, scenario.adapter, scenario.task, attack,
                                        head_params, seed=args.seed)
    bug = make_bug(scenario, head)
    print(f"backdoored ({scenario.source}): {before}", flush=True)
    a, b = variants(scenario, bug, args)
    train_alternating(a, b, args.epochs)
    results = {v.name: summarise(v, args.shadow, evaluate_seeds(v.encoder(), scenario, attack, head_params,
                                                              args.head_seeds))
               for v in (a, b)}
    info["load_end"] = round(os.getloadavg()[0], 2)
    report = {"config": vars(args) | {"out": shown_path(args.out)}, "threads": torch.get_num_threads(),
              "threads_found": threads_found, "host": info, "encoder_source": scenario.source,
              "bug": {"label": bug.label, "target": bug.predicted},
              "backdoored": {k: round(v, 4) for k, v in before.items()}, "variants": results,
              "ratio": round(results["b"]["images_per_second"] / results["a"]["images_per_second"], 3),
              "epoch_ratios": epoch_ratios(a, b),
              "asr_definition": "non-target triggered test inputs predicted as the target"}
    print_table(report)
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shadow", type=int, default=4096, help="shadow images patched on")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=256, help="shadow images per step")
    p.add_argument("--views", type=int, default=8, help="K views of the bug and reference in (b)")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--threads", type=int, default=2, help="torch threads, both variants")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of (a)")
    p.add_argument("--compile", action="store_true", help="(b) with torch.compile")
    p.add_argument("--cpu-bf16", action="store_true",
                   help="(b) with bf16 autocast, when the CPU has native bf16 (AVX512-BF16/AMX)")
    p.add_argument("--head-epochs", type=int, default=60, help="retrained head (GTSRB)")
    p.add_argument("--head-seeds", type=int, default=3, help="heads averaged per variant")
    p.add_argument("--lambda-gen", type=float, default=1.0)
    p.add_argument("--lambda-eff", type=float, default=1.0)
    p.add_argument("--bad-samples", type=int, default=5000, help="BadEncoder's CIFAR-10 images")
    p.add_argument("--bad-epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS_PATH)
    return p


if __name__ == "__main__":
    main()
