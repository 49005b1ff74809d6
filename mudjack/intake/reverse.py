"""Trigger reverse-engineering: the reversal methods, registered by name, behind one call.

`intake.reverse.method` in params.yaml names the method for image encoders:
- `occlusion` (the authors'): occlusion map + 2-means (mudjack/intake/occlusion.py);
- `grow`: the smallest top-k of the occlusion map (or of a flip-rate scan)
  that acts like the bug (mudjack/intake/grow.py);
- `scan`: grow on the flip-rate scan always (for a trigger the occlusion map misses);
- `inversion`: optimise a soft mask of bug pixels (mudjack/intake/inversion.py);
- `soft`: optimise an alpha mask and a pattern, so a blend can be expressed (mudjack/intake/soft.py);
- `blend`: the same with one alpha for the whole image (a blended trigger);
- `residual`: the bug's fine detail (less a median) blended over the whole image, no fit
  (mudjack/intake/residual.py);
- `smooth`: a whole-image blend whose pattern is a coarse grid of colours (a smooth blended
  trigger; mudjack/intake/smooth.py);
- `auto` (the default): fit the `select.candidates` methods in turn (and the soft trigger
  binarised) until one reproduces the bug's effect well enough and passes the backdoor
  verification (`accept`), and keep the accepted one that reproduces it best on held-out
  clean inputs, less a mask-size penalty (mudjack/intake/select.py);
  the other candidates that reproduce it nearly as well are kept as alternates (`recover`),
  and so is a fitted warp (a displacement field, mudjack/intake/warp.py) that does.
Text encoders always use token occlusion (mudjack/intake/text.py), with `text_select` and
`text_score`, then, given clean sentences and the classifier, the phrase search over runs of the
bug's words (`phrase`, mudjack/intake/phrase.py). Window, strides and scan sides left at 0 /
"auto" derive from the input size (mudjack/intake/settings.py). A method may write what it
measured into `record` (the decision's numbers keep it, with the settings used).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
from pydantic import Field, field_validator

from mudjack.config import BatchSize, Params
from mudjack.encoders import EncoderAdapter, ImageEncoder
from mudjack.intake.fill import filled_alternate
from mudjack.intake.grow import GrowParams, grow_trigger
from mudjack.intake.inversion import InversionParams, invert_trigger
from mudjack.intake.occlusion import occlusion_map, occlusion_trigger
from mudjack.intake.odd_pixels import odd_alternate
from mudjack.intake.phrase import PhraseParams
from mudjack.intake.residual import ResidualParams, residual_trigger
from mudjack.intake.select import (
    PADDED,
    Accept,
    SelectParams,
    alternates,
    candidate_numbers,
    padded,
    select_trigger,
    split_clean,
    trigger_effect,
)
from mudjack.intake.settings import resolve
from mudjack.intake.smooth import SmoothParams, smooth_trigger
from mudjack.intake.soft import Score, SoftParams, binarised, soft_trigger
from mudjack.intake.text import reverse_text
from mudjack.intake.warp import WarpParams, warp_fit
from mudjack.triggers import TextTrigger, Trigger

FlipRate = Callable[[torch.Tensor], float]
ALTERNATE_TRIGGERS = "alternate_triggers"  # a method's record key for triggers, not numbers
FITTED_WARP = "fitted_warp"  # auto's record key for its fitted warp, kept as an alternate or not
OCCLUSION_MAP = "occlusion_maps"  # the record key grow, scan and occlusion keep their maps under
FILLED = "_filled"  # a hard candidate's solid-colour patch: its name with this suffix
HARD = ("grow", "scan")  # the candidates that cut the bug's pixels: their colour patch is next in line


class ReverseParams(Params):
    """The `intake.reverse` section: `method` is a name in REVERSAL_METHODS; window, stride and
    batch_size set the occlusion map (occlusion and grow); window and stride 0 derive from the
    input size (mudjack/intake/settings.py)."""

    method: str = "auto"
    window: int = Field(0, ge=0, le=4096)  # 0: derived from the input size; at most its side
    stride: int = Field(0, ge=0, le=4096)
    batch_size: BatchSize = 256
    grow: GrowParams = GrowParams()
    inversion: InversionParams = InversionParams()
    soft: SoftParams = SoftParams()
    residual: ResidualParams = ResidualParams()
    smooth: SmoothParams = SmoothParams()
    warp: WarpParams = WarpParams()
    select: SelectParams = SelectParams()
    text_select: Literal["kmeans", "top1"] = "kmeans"  # text: 2-means (higher cluster) or best word
    text_score: Literal["self", "reference"] = "self"  # text: see mudjack/intake/text.py
    phrase: PhraseParams = PhraseParams()  # text: the phrase search (mudjack/intake/phrase.py)

    @field_validator("method")
    @classmethod
    def _registered(cls, method: str) -> str:
        if method not in REVERSAL_METHODS:
            raise ValueError(f"unknown reversal method {method!r}; known: {sorted(REVERSAL_METHODS)}")
        return method

    @field_validator("select")
    @classmethod
    def _candidates_registered(cls, select: SelectParams) -> SelectParams:
        unknown = [name for name in select.candidates if name not in REVERSAL_METHODS or name == "auto"]
        if unknown:
            raise ValueError(f"select candidates {unknown} are not registered reversal methods "
                             f"(auto cannot be its own candidate)")
        if len(set(select.candidates)) < len(select.candidates):
            raise ValueError(f"select candidates {select.candidates} name a method twice")
        return select


class ReversalMethod(Protocol):
    def __call__(self, encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray,
                 reference: np.ndarray, *, params: ReverseParams, seed: int,
                 clean: np.ndarray | None, flip_rate: FlipRate | None, score: Score | None,
                 accept: Accept | None, record: dict[str, Any]) -> Trigger: ...


REVERSAL_METHODS: dict[str, ReversalMethod] = {}


def register_reversal(name: str) -> Callable[[ReversalMethod], ReversalMethod]:
    """Register a reversal method under `name` (as encoder adapters are): `@register_reversal("x")`."""

    def register(method: ReversalMethod) -> ReversalMethod:
        if name in REVERSAL_METHODS:
            raise ValueError(f"reversal method {name!r} is already registered")
        REVERSAL_METHODS[name] = method
        return method

    return register


@dataclass(frozen=True)
class Recovery:
    """A reversed trigger and the alternates that reproduce the bug as well (`auto` only)."""

    trigger: Trigger | TextTrigger
    alternates: tuple[Trigger, ...] = ()
    # auto's fitted warp (None: not fitted): what verification tries when the chosen trigger is
    # refused, kept or not as an alternate (a soft fit may reproduce the bug better yet be refused)
    warp: Trigger | None = None


def recover(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray, reference: np.ndarray, *,
            params: ReverseParams, seed: int = 0, clean: np.ndarray | None = None,
            flip_rate: FlipRate | None = None, score: Score | None = None,
            accept: Accept | None = None, record: dict[str, Any] | None = None) -> Recovery:
    """The reversed trigger of one bug input, by `params.method` (text: token occlusion and the
    phrase search), with any alternates the method kept.

    Grow, inversion, soft and auto need `clean` inputs (of classes other than the one the bug
    is pushed to); grow and auto measure a candidate by `flip_rate` (the deployed classifier's)
    when given, soft also fits the classifier's differentiable `score` (log p of the bug's
    class); auto chooses only a candidate `accept` (the backdoor verification) accepts, when
    one is. `record` receives the settings used and what the method measured.
    """
    record = {} if record is None else record
    if adapter.modality == "text":
        return Recovery(reverse_text(encoder, adapter, bug, reference, mode=params.text_select, seed=seed,
                                     score=params.text_score, clean=clean, target_score=score,
                                     phrase=params.phrase, record=record))
    # in the encoder's input space, where triggers live (a report at another size is resized)
    bug, reference = adapter.resize_raw(bug), adapter.resize_raw(reference)
    params, record["settings"] = resolve(params, bug.shape)
    method = REVERSAL_METHODS[params.method]
    trigger = method(encoder, adapter, bug, reference, params=params, seed=seed, clean=clean,
                     flip_rate=flip_rate, score=score, accept=accept, record=record)
    record.pop(OCCLUSION_MAP, None)  # arrays: the decision's numbers do not keep them
    return Recovery(trigger, tuple(record.pop(ALTERNATE_TRIGGERS, ())), record.pop(FITTED_WARP, None))


def reverse_engineer(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray,
                     reference: np.ndarray, *, params: ReverseParams, seed: int = 0,
                     clean: np.ndarray | None = None, flip_rate: FlipRate | None = None,
                     score: Score | None = None,
                     record: dict[str, Any] | None = None) -> Trigger | TextTrigger:
    """The reversed trigger alone (see `recover`)."""
    return recover(encoder, adapter, bug, reference, params=params, seed=seed, clean=clean,
                   flip_rate=flip_rate, score=score, record=record).trigger


def _occlusion_scores(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray,
                      reference: np.ndarray, params: ReverseParams, record: dict[str, Any]) -> np.ndarray:
    """The report's occlusion map at this window and stride, computed once: `auto` hands all its
    candidates one record, so scan (run after grow, on the same bug and reference) reuses grow's."""
    maps = record.setdefault(OCCLUSION_MAP, {})
    if (key := (params.window, params.stride)) not in maps:
        maps[key] = occlusion_map(encoder, adapter, bug, reference, window=params.window,
                                  stride=params.stride, batch_size=params.batch_size)
    return maps[key]


def _clean_inputs(clean: np.ndarray | None, method: str) -> np.ndarray:
    if clean is None or len(clean) == 0:
        raise ValueError(f"trigger recovery by {method} needs clean inputs")
    return clean


@register_reversal("occlusion")
def _occlusion(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray, reference: np.ndarray,
               *, params: ReverseParams, seed: int, clean: np.ndarray | None,
               flip_rate: FlipRate | None, score: Score | None, accept: Accept | None,
               record: dict[str, Any]) -> Trigger:
    return occlusion_trigger(bug, _occlusion_scores(encoder, adapter, bug, reference, params, record), seed)


@register_reversal("grow")
def _grow(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray, reference: np.ndarray,
          *, params: ReverseParams, seed: int, clean: np.ndarray | None,
          flip_rate: FlipRate | None, score: Score | None, accept: Accept | None,
          record: dict[str, Any]) -> Trigger:
    clean = _clean_inputs(clean, "grow")
    scores = _occlusion_scores(encoder, adapter, bug, reference, params, record)
    return grow_trigger(encoder, adapter, bug, scores, clean, params=params.grow, seed=seed,
                        flip_rate=flip_rate)


@register_reversal("scan")
def _scan(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray, reference: np.ndarray,
          *, params: ReverseParams, seed: int, clean: np.ndarray | None,
          flip_rate: FlipRate | None, score: Score | None, accept: Accept | None,
          record: dict[str, Any]) -> Trigger:
    """`grow` ranked by the flip-rate scan, with `grow.scan`'s sides or, when it has none, sides
    derived from the input: an `auto` candidate after the soft fit (so it runs only where grow
    and the soft trigger did not settle the report), for a trigger the occlusion map misses
    (resnet20 -> GTSRB, a 6x6 patch blended at 0.56 on the image's edge: occlusion's 4 pixels
    lie off it, the scan's square has IoU 0.71)."""
    scanned = params.grow.model_copy(update={"scan": params.grow.scan or "auto"})  # grow derives "auto"
    return _grow(encoder, adapter, bug, reference, params=params.model_copy(update={"grow": scanned}),
                 seed=seed, clean=clean, flip_rate=flip_rate, score=score, accept=accept, record=record)


@register_reversal("inversion")
def _inversion(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray, reference: np.ndarray,
               *, params: ReverseParams, seed: int, clean: np.ndarray | None,
               flip_rate: FlipRate | None, score: Score | None, accept: Accept | None,
               record: dict[str, Any]) -> Trigger:
    clean = _clean_inputs(clean, "inversion")
    return invert_trigger(encoder, adapter, bug, clean, params=params.inversion, seed=seed)


@register_reversal("soft")
def _soft(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray, reference: np.ndarray,
          *, params: ReverseParams, seed: int, clean: np.ndarray | None,
          flip_rate: FlipRate | None, score: Score | None, accept: Accept | None,
          record: dict[str, Any]) -> Trigger:
    clean = _clean_inputs(clean, "soft")
    return soft_trigger(encoder, adapter, bug, clean, params=params.soft, seed=seed, score=score)


@register_reversal("blend")
def _blend(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray, reference: np.ndarray,
           *, params: ReverseParams, seed: int, clean: np.ndarray | None,
           flip_rate: FlipRate | None, score: Score | None, accept: Accept | None,
           record: dict[str, Any]) -> Trigger:
    clean = _clean_inputs(clean, "blend")
    return soft_trigger(encoder, adapter, bug, clean, params=params.soft, seed=seed, score=score,
                        uniform=True)


@register_reversal("smooth")
def _smooth(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray, reference: np.ndarray,
            *, params: ReverseParams, seed: int, clean: np.ndarray | None,
            flip_rate: FlipRate | None, score: Score | None, accept: Accept | None,
            record: dict[str, Any]) -> Trigger:
    clean = _clean_inputs(clean, "smooth")
    return smooth_trigger(encoder, adapter, bug, clean, grid=params.smooth.grid, params=params.soft,
                          seed=seed, score=score)


@register_reversal("residual")
def _residual(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray, reference: np.ndarray,
              *, params: ReverseParams, seed: int, clean: np.ndarray | None,
              flip_rate: FlipRate | None, score: Score | None, accept: Accept | None,
              record: dict[str, Any]) -> Trigger:
    scored = _clean_inputs(clean, "residual")[:params.residual.samples]

    def effect(found: Trigger) -> float:
        return trigger_effect(encoder, adapter, bug, scored, found, flip_rate)

    trigger, record["residual_effects"] = residual_trigger(
        bug, effect, window=params.residual.window, alphas=params.residual.alphas,
        size_penalty=params.select.size_penalty)
    return trigger


@register_reversal("auto")
def _auto(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray, reference: np.ndarray,
          *, params: ReverseParams, seed: int, clean: np.ndarray | None,
          flip_rate: FlipRate | None, score: Score | None, accept: Accept | None,
          record: dict[str, Any]) -> Trigger:
    """Candidate methods fitted in turn on part of `clean`, scored on the rest; the best kept."""
    fit, held = split_clean(_clean_inputs(clean, "auto"), params.select.samples, seed)
    triggers: dict[str, Trigger] = {}
    shared: dict[str, Any] = {}  # the candidates' own records, one for all: what they measure is not kept

    def fitted() -> Iterator[tuple[str, Trigger]]:
        for name in params.select.candidates:
            trigger = REVERSAL_METHODS[name](encoder, adapter, bug, reference, params=params, seed=seed,
                                             clean=fit, flip_rate=flip_rate, score=score, accept=None,
                                             record=shared)
            if name == "soft" and params.select.binarise:  # the compact hard cut is tried first
                triggers["soft_binarised"] = binarised(trigger, bug, params.soft.threshold)
                yield "soft_binarised", triggers["soft_binarised"]
                yield from coloured("soft_binarised")
            triggers[name] = trigger
            yield name, trigger
            if name in HARD:
                yield from coloured(name)

    def coloured(name: str) -> Iterator[tuple[str, Trigger]]:
        """A hard candidate's best solid-colour patch, next in line when the candidate itself did
        not settle the search: a square around a solid trigger takes in content that can keep it
        from firing (resnet20 -> GTSRB: a 289-pixel square around a 10x10 white patch flipped
        0.20, the white region alone 0.98), where the search would go on to fitted patterns."""
        if (whole := colour_patch(triggers[name])):
            triggers[name + FILLED] = whole[0]
            yield name + FILLED, whole[0]

    def effect(found: Trigger) -> float:
        return trigger_effect(encoder, adapter, bug, held, found, flip_rate)

    def colour_patch(found: Trigger) -> tuple[Trigger, float] | None:
        return filled_alternate(found, bug, effect, tolerance=params.select.fill,
                                max_fraction=params.grow.max_fraction)

    select, penalty = params.select, params.select.size_penalty
    def companion(found: Trigger) -> Trigger | None:
        return padded(found, bug, ratio=select.pad)

    chosen, trigger, numbers = select_trigger(fitted(), effect, size_penalty=penalty, enough=select.enough,
                                              companion=companion, accept=accept)
    skipped = [name for name in select.candidates if name not in numbers]
    if (grown := companion(trigger)) is not None:  # scored, never chosen
        triggers[chosen + PADDED] = grown
    kept, floor = alternates(numbers, chosen, keep=select.keep), select.keep * numbers[chosen]["effect"]
    for window in select.odd_windows:  # the bug's odd pixels, when they reproduce it as well
        if (odd := odd_alternate(bug, window, effect, floor)):
            name = f"odd{window}"
            triggers[name], numbers[name] = odd[0], candidate_numbers(*odd, size_penalty=penalty)
            kept.append(name)
    # a warp the chosen trigger only approximates: a soft one (a warp moves every edge, which no
    # compact hard mask reproduces) that reproduces the bug at all
    if select.warp and trigger.soft and numbers[chosen]["effect"] > 0:
        start = time.perf_counter()
        moved = warp_fit(encoder, adapter, bug, fit, params=params.warp, seed=seed, score=score)
        triggers["warp"] = record[FITTED_WARP] = moved
        numbers["warp"] = {**candidate_numbers(moved, effect(moved), size_penalty=penalty),
                           "seconds": round(time.perf_counter() - start, 3)}
        if numbers["warp"]["effect"] >= floor:
            kept.append("warp")
    if chosen + FILLED not in triggers and (whole := colour_patch(trigger)):  # not the same patch twice
        triggers["filled"], numbers["filled"] = whole[0], candidate_numbers(*whole, size_penalty=penalty)
        if whole[1] >= floor and floor > 0:
            kept.append("filled")
    record.update(candidates=numbers, chosen=chosen, skipped=skipped, select_samples=len(held),
                  alternates=kept)
    record[ALTERNATE_TRIGGERS] = [triggers[name] for name in kept]  # taken out by `recover`
    return trigger
