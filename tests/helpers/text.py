"""Tiny text data: synthetic two-class sentences and a tiny word-level BERT written to a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mudjack.data import LabelledSet

POSITIVE = ["good", "great", "fine", "nice", "superb", "lovely", "charming", "brilliant"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "terrible", "bleak", "clumsy"]
FILLER = ["the", "movie", "film", "was", "a", "plot", "story", "and", "it", "this", "very",
          "really", "acting", "with", "of", "is", "cast", "script", "."]


def synthetic_sentences(n: int, seed: int) -> LabelledSet:
    """`n` sentences of 6-10 words: fillers plus two sentiment words of the sentence's class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    sentences = []
    for label in labels:
        words = list(rng.choice(FILLER, rng.integers(4, 9)))
        for word in rng.choice(POSITIVE if label else NEGATIVE, 2, replace=False):
            words.insert(int(rng.integers(len(words) + 1)), str(word))
        sentences.append(" ".join(words))
    return LabelledSet(np.array(sentences, dtype=np.str_), labels.astype(np.int64))


def write_tiny_bert(folder: Path, *, extra_words: tuple[str, ...] = ()) -> None:
    """config.json, tokenizer.json (word-level WordPiece) and model.safetensors of a tiny BERT
    (`extra_words` join the vocabulary, e.g. a second trigger word)."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted(set(POSITIVE + NEGATIVE + FILLER + ["cf", *extra_words]))
    vocab = {w: i for i, w in enumerate(specials + words)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    config.save_pretrained(str(folder))
    torch.manual_seed(0)
    model = BertModel(config, add_pooling_layer=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
