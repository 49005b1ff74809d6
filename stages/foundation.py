"""Scenario stage: the clean foundation encoder, trained on the provider's data or imported."""

from __future__ import annotations

import time

from torch import nn

from mudjack.data import LabelledSet, is_text, read_inputs
from mudjack.encoders import EncoderAdapter, get_adapter, import_encoder, save_encoder
from mudjack.io import read_npz, ready_outputs
from mudjack.safeload import WeightsError
from mudjack.training import PretrainParams, pretrain_encoder
from stages.artifacts import FOUNDATION, PRETRAIN
from stages.config import FoundationParams, setup_stage


def adapter_config(cfg: FoundationParams, data: LabelledSet) -> dict:
    """The adapter's config; a trained encoder normalises with its training data's statistics."""
    if is_text(data.x):
        return dict(cfg.config)  # a text encoder's folder holds its tokenizer and architecture
    config = {"input_shape": list(data.x.shape[1:]), **cfg.config}
    if not cfg.checkpoint:
        pixels = data.x / 255.0
        config.setdefault("mean", pixels.mean(axis=(0, 1, 2)).tolist())
        config.setdefault("std", pixels.std(axis=(0, 1, 2)).tolist())
    return config


def clean_encoder(cfg: FoundationParams, adapter: EncoderAdapter, data: LabelledSet, *,
                  seed: int) -> tuple[nn.Module, str]:
    """The clean foundation encoder (imported, a model folder's own weights, or trained on `data`)
    and what was done."""
    if cfg.checkpoint:
        encoder, ignored = import_encoder(adapter, cfg.checkpoint)
        return encoder, f"imported {cfg.checkpoint} (ignored: {', '.join(ignored) or 'nothing'})"
    if (folder := adapter.pretrained_folder) is not None:
        return adapter.load_pretrained(), f"loaded {cfg.adapter} from {folder}"
    start = time.perf_counter()
    train = PretrainParams(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size)
    encoder = pretrain_encoder(adapter, data, int(data.y.max()) + 1, train, seed=seed)
    return encoder, f"trained {cfg.adapter} in {time.perf_counter() - start:.1f}s"


def main() -> None:
    params = setup_stage()
    ready_outputs(FOUNDATION)
    cfg = params.foundation
    arrays = read_npz(PRETRAIN)
    data = LabelledSet(read_inputs(arrays), arrays["y"])
    try:  # a model folder or config the adapter refuses: one line, not a traceback
        adapter = get_adapter(cfg.adapter, adapter_config(cfg, data))
    except (ValueError, FileNotFoundError) as err:
        raise WeightsError(f"foundation.config ({cfg.adapter}): {err}") from None
    # weights the adapter refuses (a folder's, a checkpoint's) are a WeightsError: one line, by INPUT_ERRORS
    encoder, done = clean_encoder(cfg, adapter, data, seed=params.seed)
    print(f"foundation: {done}")
    save_encoder(encoder, adapter, FOUNDATION)


if __name__ == "__main__":
    main()
