"""Scenario stage: pre-train the clean foundation encoder on the provider's labelled data."""

from __future__ import annotations

import time

from mudjack.data import LabelledSet
from mudjack.encoders import get_adapter, save_encoder
from mudjack.io import read_npz
from mudjack.training import PretrainParams, pretrain_encoder
from stages.config import setup_stage

DATA = "data/prepared/pretrain.npz"
OUT = "models/foundation/encoder.safetensors"


def main() -> None:
    params = setup_stage()
    cfg = params.foundation
    data = read_npz(DATA)
    pixels = LabelledSet(data["x"], data["y"])
    mean = (pixels.x / 255.0).mean(axis=(0, 1, 2)).tolist()
    std = (pixels.x / 255.0).std(axis=(0, 1, 2)).tolist()
    adapter = get_adapter(cfg.adapter, {"input_shape": list(pixels.x.shape[1:]), "mean": mean,
                                        "std": std, "width": cfg.width,
                                        "feature_dim": cfg.feature_dim})
    start = time.perf_counter()
    train_params = PretrainParams(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size)
    encoder = pretrain_encoder(adapter, pixels, int(pixels.y.max()) + 1, train_params, params.seed)
    save_encoder(encoder, adapter, OUT)
    print(f"foundation: trained {cfg.adapter} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
