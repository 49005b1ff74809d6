"""Text trigger recovery by phrase search: which run of the bug's words, inserted into clean
sentences of other classes, puts them in the class the bug was misread as.

Token occlusion (text.py) scores a word by what removing it does to the bug alone. A trigger of
several words that act together is then found one word at a time, and the patch turns the rest
of the phrase into an anti-trigger (docs/results.md, stop 49); a moderate phrase whose words
matter no more alone than the sentence's content words is not found at all. The search measures
what each candidate does where a trigger acts: every run of up to `max_words` consecutive words
of the bug (and the occlusion's words, which need not be consecutive) is inserted into the same
`samples` clean sentences at the same places, and scored by the deployed classifier's
log-odds of the bug's class on each (probabilities near 1 would hide that a part of a phrase
pushes less far than the whole).

The trigger is the shortest candidate as good as the best one: the paired difference on those
sentences within two of its standard errors, or within what an ordinary word of the bug does
(the median lift of the one-word candidates over the clean sentences; inserting any word moves a
weak classifier a little). A run that adds a content word to the whole trigger acts no better,
so it is not chosen; a part of a phrase acts worse, so it is not either.

A trigger may be longer than `max_words` (a planted sentence such as "i watched this 3d
movie"): while the run the search would choose is as long as any tried, its runs one word
longer in the bug are tried too (`grown_runs`), so such a trigger is found whole, not as its
part. Growth stops where the longer runs act no better, as a trigger with a content word
added does.

A trigger planted at one place sits there in the bug: a run that opens the bug is also tried
at the start of the clean sentences, one that closes it at the end. A fixed place is kept only
when the words act better there than at a random place, by the same test, since a patch for
`random` covers every place.

Verification's text controls are chosen the same way (`strongest_runs`): each clean sentence of
the bug's class gives its strongest run of as many words as the trigger has, measured on the
same sentences (`RunSearch`), since a forged report's trigger is its own sentence's strongest run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import Field

from mudjack.config import Params
from mudjack.encoders import EncoderAdapter
from mudjack.features import extract_features
from mudjack.triggers import TextTrigger, stamp_text

Score = Callable[[torch.Tensor], torch.Tensor]  # per-input log p of the bug's class, from features
Z = 2.0  # standard errors of a paired difference still counted as "as good"
SCREEN_KEEPS = 4  # runs per control that the first pass over long controls keeps (strongest_runs)
LOG_ODDS_BOUND = 15.0  # |log-odds| kept: float32 log-probabilities cannot tell p from 1 near 16.6


class PhraseParams(Params):
    """`intake.reverse.phrase`: the text phrase search (max_words 0 keeps token occlusion alone)."""

    max_words: int = Field(4, ge=0, le=16)  # every run of the bug's words up to this long is tried
    samples: int = Field(16, ge=2, le=512)  # clean sentences each candidate is inserted into
    control_runs: int = Field(512, ge=1)    # verification's text controls: more runs than this
                                            # are screened first (RunSearch.budget)


@dataclass(frozen=True)
class RunSearch:
    """Where runs of words are measured: clean sentences of other classes (`sample_sentences`
    of the reversal's pool) and the classifier's log p of the bug's class, stamped at `seed`.
    Controls with more than `budget` runs in all (None: no limit) are screened first
    (`strongest_runs`)."""

    sentences: np.ndarray
    score: Score
    seed: int = 0
    budget: int | None = None


def runs_of_words(words: list[str], max_words: int) -> list[tuple[str, ...]]:
    """Every run of 1..max_words consecutive words, each once (shortest first)."""
    found: dict[tuple[str, ...], None] = {}
    for length in range(1, min(max_words, len(words)) + 1):
        for start in range(len(words) - length + 1):
            found[tuple(words[start:start + length])] = None
    return list(found)


def target_log_odds(encoder: torch.nn.Module, adapter: EncoderAdapter, sentences: np.ndarray,
                    triggers: list[TextTrigger], score: Score, seed: int) -> np.ndarray:
    """(triggers, sentences) log-odds of the bug's class with each trigger inserted (each
    sentence stamped at the same seeded place for every trigger of one position)."""
    stamped = np.concatenate([stamp_text(sentences, t, seed) for t in triggers])
    return sentence_log_odds(encoder, adapter, stamped, score).reshape(len(triggers), len(sentences))


@torch.no_grad()
def sentence_log_odds(encoder: torch.nn.Module, adapter: EncoderAdapter, sentences: np.ndarray,
             score: Score) -> np.ndarray:
    """The classifier's log-odds of the bug's class for each sentence, log p - log(1 - p) from
    the `score`'s log p, within +-LOG_ODDS_BOUND (verification's `trial.log_odds` reads them
    off the logits instead). Log-odds, not p: a trigger and its part that both put p near 1
    still differ in how far they push."""
    log_p = score(extract_features(encoder, adapter, sentences)).double().clamp(max=-1e-300)
    odds = log_p - torch.log(-torch.expm1(log_p))
    return odds.clamp(-LOG_ODDS_BOUND, LOG_ODDS_BOUND).numpy()


def as_good(p: np.ndarray, best: np.ndarray, *, slack: float = 0.0) -> bool:
    """Whether per-sentence log-odds `p` are as good as `best`: their paired gap within two
    standard errors, or within `slack`."""
    gap = best - p
    spread = float(gap.std(ddof=1)) / np.sqrt(len(gap)) if len(gap) > 1 else 0.0
    return float(gap.mean()) <= max(Z * spread, slack) + 1e-6


def ordinary_lift(triggers: list[TextTrigger], p: np.ndarray, baseline: np.ndarray) -> float:
    """What an ordinary word of the bug does: the median lift over the clean `baseline` of the
    one-word candidates (at least 0)."""
    singles = [float((p[i] - baseline).mean()) for i, t in enumerate(triggers) if t.pixels == 1]
    return max(0.0, float(np.median(singles))) if singles else 0.0


def shortest_as_good(triggers: list[TextTrigger], p: np.ndarray, *, slack: float) -> int:
    """Index of the shortest trigger as good as the best (the most likely among equals); it may
    fall short by `slack`."""
    best = p[int(np.argmax(p.mean(1)))]
    order = sorted(range(len(triggers)), key=lambda i: (triggers[i].pixels, -p[i].mean()))
    return next(i for i in order if as_good(p[i], best, slack=slack))


def search_phrase(encoder: torch.nn.Module, adapter: EncoderAdapter, bug: str, occluded: TextTrigger,
                  clean: np.ndarray, *, score: Score, params: PhraseParams, seed: int = 0,
                  record: dict[str, Any] | None = None) -> TextTrigger:
    """The reversed text trigger by phrase search (see the module docstring); `occluded` is token
    occlusion's trigger, one more candidate. `record` receives what was measured."""
    sentences, seen = sample_sentences(clean, params.samples, seed), _words_seen(adapter)

    def measure(runs: list[TextTrigger]) -> np.ndarray:
        return target_log_odds(encoder, adapter, sentences, runs, score, seed)

    candidates = candidates_of(str(bug), occluded, params.max_words, seen=seen)
    p = measure(candidates)
    baseline = sentence_log_odds(encoder, adapter, sentences, score)
    slack = ordinary_lift(candidates, p, baseline)
    candidates, p = grown_runs(str(bug), candidates, p, slack=slack, seen=seen, measure=measure)
    found = candidates[anywhere(candidates, p, shortest_as_good(candidates, p, slack=slack), slack=slack)]
    if record is not None:
        effects = p.mean(1)
        record["phrase"] = {"candidates": len(candidates), "samples": len(sentences),
                            "longest_run": max(c.pixels for c in candidates),
                            "occlusion_words": list(occluded.words), "top": _top(candidates, effects),
                            "clean_effect": round(float(baseline.mean()), 4), "slack": round(slack, 4),
                            "chosen_words": list(found.words), "position": found.position,
                            "chosen_effect": round(float(effects[candidates.index(found)]), 4)}
    return found


def candidates_of(bug: str, occluded: TextTrigger, max_words: int, *,
                  seen: int | None = None) -> list[TextTrigger]:
    """Every run of the bug's words at a random place; a run that opens the bug also at the
    start, one that closes it also at the end (a trigger planted at one place sits there in the
    bug); then occlusion's words when they are none of the runs. Only the first `seen` words
    reach the encoder (the rest is cut off by its tokenizer), so only they are searched: a long
    report costs no more than one the encoder sees whole."""
    runs = runs_of_words(bug.split()[:seen], max_words)
    return _placed(bug, runs, seen) + ([] if occluded.words in runs else [occluded])


def _placed(bug: str, runs: list[tuple[str, ...]], seen: int | None) -> list[TextTrigger]:
    """Runs of the bug's words at a random place, and those that open (close) the bug also at
    the start (end); a bug longer than the `seen` words has no end the encoder sees."""
    words = bug.split()
    found = [TextTrigger(run) for run in runs]
    found += [TextTrigger(run, "start") for run in runs if tuple(words[:len(run)]) == run]
    if seen is None or len(words) <= seen:
        found += [TextTrigger(run, "end") for run in runs if tuple(words[-len(run):]) == run]
    return found


def grown_runs(bug: str, candidates: list[TextTrigger], p: np.ndarray, *, slack: float,
               seen: int | None, measure: Callable[[list[TextTrigger]], np.ndarray],
               ) -> tuple[list[TextTrigger], np.ndarray]:
    """The candidates and their log-odds (rows of `p`), with longer runs while the one the
    search would choose (`shortest_as_good`) is as long as any tried: its runs one word longer
    in the bug (to either side) are measured too, so a trigger longer than `max_words` (a
    planted sentence) is found whole, not as its part. A run that only adds content words to
    the trigger acts no better than it, so growth stops there."""
    window = bug.split()[:seen]
    while True:
        chosen = candidates[shortest_as_good(candidates, p, slack=slack)]
        if chosen.pixels < max(c.pixels for c in candidates):
            return candidates, p
        longer = [t for t in _placed(bug, _extensions(window, chosen.words), seen) if t not in candidates]
        if not longer:
            return candidates, p
        candidates, p = candidates + longer, np.concatenate([p, measure(longer)])


def _extensions(words: list[str], run: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Each run of `words` one word longer than `run` that holds it, once each."""
    size = len(run)
    starts = [at for at in range(len(words) - size + 1) if tuple(words[at:at + size]) == run]
    found = [tuple(words[begin:begin + size + 1]) for at in starts for begin in (at - 1, at)
             if begin >= 0 and begin + size + 1 <= len(words)]
    return list(dict.fromkeys(found))


def anywhere(candidates: list[TextTrigger], p: np.ndarray, index: int, *, slack: float) -> int:
    """`index`, or the same words at a random place when they act as well there (within
    `slack`): a patch for `random` covers every place."""
    chosen = candidates[index]
    if chosen.position == "random":
        return index
    loose = candidates.index(TextTrigger(chosen.words))
    return loose if as_good(p[loose], p[index], slack=slack) else index


def strongest_runs(encoder: torch.nn.Module, adapter: EncoderAdapter, exemplars: np.ndarray,
                   trigger: TextTrigger, search: RunSearch) -> list[TextTrigger]:
    """Per exemplar sentence, its run of as many consecutive words as `trigger` has (the whole
    sentence when shorter), at the trigger's place, that puts the search's sentences furthest
    into the bug's class by mean log-odds: what the phrase search would reverse from a report
    made of that content (text verification's controls)."""
    seen = _words_seen(adapter)
    runs = [_runs_like(str(e).split()[:seen], trigger) for e in exemplars]
    sentences, every = search.sentences, _unique(runs)
    if search.budget is not None and len(every) > search.budget:
        # long sentences have a run per word: a first pass on a quarter of the sentences keeps
        # each exemplar's few strongest, so they cost about a quarter of measuring every run
        first = max(2, len(sentences) // 4)
        screen = _mean_effects(encoder, adapter, search, every, sentences[:first])
        runs = [sorted(found, key=screen.__getitem__, reverse=True)[:SCREEN_KEEPS] for found in runs]
        rest = _mean_effects(encoder, adapter, search, _unique(runs), sentences[first:])
        share = first / len(sentences)
        effect = {run: share * screen[run] + (1 - share) * value for run, value in rest.items()}
    else:
        effect = _mean_effects(encoder, adapter, search, every, sentences)
    return [max(found, key=effect.__getitem__) for found in runs]


def _unique(runs: list[list[TextTrigger]]) -> list[TextTrigger]:
    """Each run once: one found in several sentences ("the", "is a") is measured once, since
    stamping is seeded by the search sentence alone."""
    return list(dict.fromkeys(run for found in runs for run in found))


def _mean_effects(encoder: torch.nn.Module, adapter: EncoderAdapter, search: RunSearch,
                  runs: list[TextTrigger], sentences: np.ndarray) -> dict[TextTrigger, float]:
    """Each run's mean log-odds of the bug's class over `sentences` (0 over none)."""
    if not len(sentences):
        return dict.fromkeys(runs, 0.0)
    effects = target_log_odds(encoder, adapter, sentences, runs, search.score, search.seed).mean(1)
    return dict(zip(runs, effects.tolist(), strict=True))


def _runs_like(words: list[str], trigger: TextTrigger) -> list[TextTrigger]:
    """The runs of as many consecutive words as `trigger` has, at its place (the words
    themselves when fewer). A sentence without words has none: its control is the trigger
    itself, as in triggers.text_control_trigger."""
    length = trigger.pixels
    if not words:
        return [trigger]
    runs = [tuple(words[i:i + length]) for i in range(max(1, len(words) - length + 1))]
    return [TextTrigger(run, trigger.position) for run in dict.fromkeys(runs)]


def _words_seen(adapter: EncoderAdapter) -> int | None:
    """The leading words that reach a text model (encoders/text.py); None: all of them."""
    return getattr(adapter, "words_seen", None)


def sample_sentences(clean: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` clean sentences drawn without replacement (all when there are fewer), in order."""
    pick = np.random.default_rng(seed).choice(len(clean), size=min(count, len(clean)), replace=False)
    return np.asarray([str(clean[int(i)]) for i in np.sort(pick)], dtype=np.str_)


def _top(candidates: list[TextTrigger], effects: np.ndarray, n: int = 5) -> list[list[Any]]:
    """The n candidates that act most: [words (and a fixed place), mean log-odds]."""
    order = np.argsort(-effects, kind="stable")[:n]
    return [[_name(candidates[i]), round(float(effects[i]), 4)] for i in order]


def _name(trigger: TextTrigger) -> str:
    words = " ".join(trigger.words)
    return words if trigger.position == "random" else f"{words} @{trigger.position}"
