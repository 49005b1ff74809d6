"""How good is a foundation encoder? Its linear-probe accuracy on a labelled image set.

    .venv/bin/python bench/probe_accuracy.py \
        --encoder runs/vit-cifar/models/foundation/encoder.safetensors \
        --train image_folders:../shared/data/cifar10_jpeg/cifar10_jpeg_train.tgz:train:10000 \
        --test image_folders:../shared/data/cifar10_jpeg/cifar10_jpeg_test.tgz:test:2000

A source is LOADER:PATH[:SPLIT[:LIMIT]] (mudjack.loaders; the limit is stratified). The encoder
stays frozen; one linear layer is fitted on its features of the train set (Adam 1e-2, the heads'
trainer) and scored on the test set. Results go to --out (JSON, paths as given).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from mudjack.encoders import load_encoder
from mudjack.features import extract_features
from mudjack.heads import predict, train_linear_probe
from mudjack.io import write_json
from mudjack.loaders import DataSpec, load_data


def data_spec(text: str) -> DataSpec:
    """LOADER:PATH[:SPLIT[:LIMIT]] as a DataSpec."""
    parts = text.split(":")
    if not 2 <= len(parts) <= 4:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LOADER:PATH[:SPLIT[:LIMIT]]")
    loader, path, split, limit = (*parts, "", "0")[:4]
    return DataSpec(loader=loader, path=path, split=split, limit=int(limit or 0))


def probe_accuracy(encoder_path: Path, train: DataSpec, test: DataSpec, *, epochs: int = 100,
                   seed: int = 0) -> dict[str, Any]:
    """The linear probe's train and test accuracy on the encoder's frozen features."""
    start = time.perf_counter()
    encoder, adapter = load_encoder(encoder_path)
    sets = {name: load_data(spec, seed) for name, spec in (("train", train), ("test", test))}
    features = {name: extract_features(encoder, adapter, data.x) for name, data in sets.items()}
    classes = int(max(data.y.max() for data in sets.values())) + 1
    head = train_linear_probe(features["train"], sets["train"].y, classes, epochs=epochs, seed=seed)
    accuracy = {name: float(np.mean(predict(head, features[name]) == sets[name].y)) for name in sets}
    return {"encoder": str(encoder_path), "adapter": adapter.name, "classes": classes,
            "train_images": len(sets["train"].y), "test_images": len(sets["test"].y),
            "probe": f"linear, Adam 1e-2, {epochs} epochs", "train_acc": round(accuracy["train"], 4),
            "test_acc": round(accuracy["test"], 4), "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", type=Path, required=True)
    parser.add_argument("--train", type=data_spec, required=True)
    parser.add_argument("--test", type=data_spec, required=True)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the result")
    args = parser.parse_args(argv)
    result = probe_accuracy(args.encoder, args.train, args.test, epochs=args.epochs)
    print(f"linear probe: train {result['train_acc']:.4f}, test {result['test_acc']:.4f} "
          f"({result['train_images']} / {result['test_images']} images, {result['seconds']} s)")
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
