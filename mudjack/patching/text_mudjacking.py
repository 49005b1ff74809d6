"""Mudjacking for text encoders: the loss of mudjack.patching.mudjacking, on sentences.

Views of one step: the shadow batch x (B sentences); x⊕t, each shadow sentence with the
reversed trigger of bug j mod n inserted at a random word position; and K views each of
x_b, x_r and x_r⊕t (the trigger at a fresh random position in every view). All views are
tokenised together and run through h' in one forward; h runs once, without gradients,
on the x and x_r views. Nothing of h' is detached.

Augmentation (`word_dropout`; the image loop's `augment` does not apply): every word of a
view is dropped with probability `word_dropout`, except the trigger words, and a view keeps
at least one word. Image augmentations (flip, colour jitter) have no text counterpart; word
dropout plays their part of making the K views of x_b and x_r differ. At 0 the K views differ
only in where x_r⊕t carries the trigger.

The reference views x_r are the bug's counterfactual: the bug sentence with its reversed
trigger taken out (`reference: counterfactual`, mudjack.triggers.remove_words). L_eff then asks
only that the trigger change nothing in the sentence it was found in. Intake's reference, another
sentence of the bug's label (`reference: chosen`), also pulls the trigger's features toward
that class: on three planted SST-2 backdoors the repaired trigger became an anti-trigger, the
target class's own inputs with it read right 0.55-0.72 of the time where that class's clean
accuracy is about 0.79 (docs/results.md, stop 53).

A trigger of several words is inserted whole in half of the x⊕t and x_r⊕t views and as a
random run of its words in the other half (`trigger_part`). Intake's phrase search may take one
word too many or too few (mudjack/intake/phrase.py); with the parts in the views, a true trigger
inside a recovered phrase loses its effect as well, instead of only the phrase as a whole.

The encoder stays in eval mode (transformer dropout off; gradients still flow): L_loc
compares h' with the frozen h, and dropout noise would keep it from its optimum. There is
no BatchNorm; every weight, LayerNorm included, is trained (`adapter.trainable_parameters`).
Use Adam with weight_decay 0: an L2 term would move every word embedding, used or not.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from mudjack.bugs import Bug
from mudjack.config import BatchSize, Dropout, Epochs, LearningRate, WeightDecay
from mudjack.device import select_device
from mudjack.encoders import EncoderAdapter
from mudjack.encoders.text import length_batches
from mudjack.patching.base import PatchResult
from mudjack.patching.mudjacking import GeneralityDistance, MudjackingParams, loss_terms
from mudjack.training import sgd_or_adam
from mudjack.triggers import insert_words, remove_words

# what the reference views x_r are (module docstring)
ReferenceMode = Literal["counterfactual", "chosen"]


class TextMudjackingParams(MudjackingParams):
    """Mudjacking's keys with text defaults, plus the optimiser and word dropout. The image
    loop's speed switches (`compile`), checkpointing and `task_images` are not used by this
    loop. L_gen is the image default (frozen anchor, weight 1): on minilm-sst2's backdoored
    MiniLM it left ASR 0.159 and clean accuracy 0.789, the paper's form at 0.5 0.273 and 0.775.
    It keeps the paper's -cos, not the image default's chord distance: on the same backdoored
    MiniLM the distance left ASR 0.236 and clean accuracy 0.776, -cos 0.159 and 0.789."""

    optimizer: Literal["sgd", "adam"] = "adam"
    lr: LearningRate = 2e-5
    weight_decay: WeightDecay = 0.0
    epochs: Epochs = 2
    batch_size: BatchSize = 32
    views: int = Field(4, ge=1, le=1024)
    word_dropout: Dropout = 0.1
    generality_distance: GeneralityDistance = "cosine"
    # what x_r is: the bug without its reversed trigger, or intake's reference (module docstring)
    reference: ReferenceMode = "counterfactual"


def drop_words(sentence: str, *, rate: float, keep: set[str], rng: np.random.Generator) -> str:
    """Each word dropped with probability `rate`, except words in `keep`; at least one stays."""
    words = str(sentence).split()
    if rate <= 0 or len(words) <= 1:
        return " ".join(words)
    kept = [w for w in words if w in keep or rng.random() >= rate]
    return " ".join(kept) if kept else words[int(rng.integers(len(words)))]


def trigger_part(words: tuple[str, ...], rng: np.random.Generator) -> tuple[str, ...]:
    """The trigger's words whole (always for one word, else half of the time), or a shorter run
    of them (each length and start equally likely)."""
    if len(words) == 1 or rng.random() < 0.5:
        return words
    length = int(rng.integers(1, len(words)))
    start = int(rng.integers(0, len(words) - length + 1))
    return words[start:start + length]


def patch_reference(bug: Bug, mode: ReferenceMode) -> str:
    """The sentence L_eff pulls the bug to: its counterfactual (the bug without its reversed
    trigger), or intake's reference where asked for or where taking the trigger out leaves
    nothing or changes nothing."""
    sentence = " ".join(str(bug.bug).split())
    left = remove_words(sentence, bug.trigger.words) if mode == "counterfactual" else ""
    return left if left and left != sentence else str(bug.reference)


@dataclass
class TextViews:
    """Builds the sentences of one step: [x (B), x⊕t (B), x_b (V), x_r (V), x_r⊕t (V)]."""

    bugs: list[Bug]
    references: list[str]   # x_r of each bug (patch_reference)
    views: int
    dropout: float
    rng: np.random.Generator

    def _aug(self, sentence: str, keep: tuple[str, ...] = ()) -> str:
        return drop_words(sentence, rate=self.dropout, keep=set(keep), rng=self.rng)

    def _stamp(self, sentence: str, trigger: tuple[str, ...]) -> str:
        return insert_words(sentence, trigger_part(trigger, self.rng), self.rng)

    def build(self, shadow: np.ndarray) -> list[str]:
        words = [b.trigger.words for b in self.bugs]
        x = [self._aug(s) for s in shadow]
        x_t = [self._stamp(s, words[j % len(words)]) for j, s in enumerate(x)]
        x_b, x_r, x_r_t = [], [], []
        for bug, reference, trigger in zip(self.bugs, self.references, words, strict=True):
            for _ in range(self.views):
                x_b.append(self._aug(str(bug.bug), trigger))
                x_r.append(self._aug(reference))
                x_r_t.append(self._stamp(self._aug(reference), trigger))
        return [*x, *x_t, *x_b, *x_r, *x_r_t]


def text_mudjacking_loss(patched: nn.Module, frozen: nn.Module, tokens: torch.Tensor, *, batch: int,
                         per_bug: int, params: MudjackingParams) -> dict[str, torch.Tensor]:
    """Loss terms for tokenised views in the order TextViews.build returns them."""
    out = patched(tokens)
    start_r = 2 * batch + per_bug
    with torch.no_grad():
        frozen_out = frozen(torch.cat([tokens[:batch], tokens[start_r:start_r + per_bug]]))
    return loss_terms(out, frozen_out, batch=batch, per_bug=per_bug, params=params)


def _optimiser(parameters: list[nn.Parameter], params: TextMudjackingParams) -> torch.optim.Optimizer:
    return sgd_or_adam(parameters, params.optimizer, lr=params.lr, momentum=params.momentum,
                       weight_decay=params.weight_decay)


def _copies(encoder: nn.Module, device: torch.device) -> tuple[nn.Module, nn.Module]:
    frozen = copy.deepcopy(encoder).to(device).eval().requires_grad_(False)
    patched = copy.deepcopy(encoder).to(device).eval().requires_grad_(True)
    return patched, frozen


def text_mudjacking(encoder: nn.Module, adapter: EncoderAdapter, shadow: np.ndarray, bugs: list[Bug],
                    params: TextMudjackingParams, *, seed: int = 0) -> PatchResult:
    """Patch a text encoder from accepted bugs using unlabelled shadow sentences."""
    if not bugs:
        raise ValueError("mudjacking needs at least one accepted bug")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = select_device(params.device)
    patched, frozen = _copies(encoder, device)
    optimiser = _optimiser(adapter.trainable_parameters(patched), params)
    count = params.clean_samples or max(1, int(round(params.shadow_fraction * len(shadow))))
    sentences = shadow[np.sort(rng.permutation(len(shadow))[:count])]
    references = [patch_reference(bug, params.reference) for bug in bugs]
    views = TextViews(bugs, references, params.views, params.word_dropout, rng)
    per_bug = params.views * len(bugs)
    log, steps, start = [], 0, time.perf_counter()
    for epoch in range(1, params.epochs + 1):
        totals: dict[str, float] = {}
        batches = length_batches(sentences, params.batch_size, rng)
        for index in batches:
            tokens = adapter.preprocess(np.array(views.build(sentences[index]))).to(device)
            terms = text_mudjacking_loss(patched, frozen, tokens, batch=len(index), per_bug=per_bug,
                                         params=params)
            optimiser.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimiser.step()
            steps += 1
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach())
        log.append({"epoch": epoch, **{k: v / len(batches) for k, v in totals.items()}})
    return PatchResult(patched.eval().cpu(), log, time.perf_counter() - start, steps,
                       info={"device": str(device), "clean_samples": len(sentences),
                             "bug_ids": [b.id for b in bugs], "word_dropout": views.dropout,
                             "reference": params.reference,
                             "counterfactuals": sum(r != str(b.reference)
                                                    for r, b in zip(references, bugs, strict=True))})
