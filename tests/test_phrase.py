"""The text phrase search (mudjack/intake/phrase.py): a trigger of two words that act together is
recovered whole, where token occlusion alone finds one of them; a run that adds a content word
to a whole trigger is not chosen; the position is recovered when the trigger was planted at one."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from mudjack.attacks import BadEncoderParams, badencoder
from mudjack.bugs import Bug
from mudjack.data import Task
from mudjack.deployed import Deployed
from mudjack.encoders import get_adapter
from mudjack.features import extract_features
from mudjack.heads import HeadParams, train_head
from mudjack.intake.phrase import (
    PhraseParams,
    RunSearch,
    anywhere,
    candidates_of,
    grown_runs,
    ordinary_lift,
    runs_of_words,
    sample_sentences,
    shortest_as_good,
    strongest_runs,
)
from mudjack.intake.reverse import ReverseParams, recover
from mudjack.patching.text_mudjacking import TextViews, patch_reference, trigger_part
from mudjack.triggers import TextTrigger, insert_words, remove_words, stamp_text
from tests.helpers.text import FILLER, synthetic_sentences, write_tiny_bert

PHRASE = TextTrigger(("cf", "mn"))
TARGET = 1


@dataclass
class Planted:
    deployed: Deployed
    task: Task


def _plant(folder: Path, trigger: TextTrigger) -> Planted:
    torch.set_num_threads(1)
    adapter = get_adapter("hf_text", {"folder": str(folder), "max_length": 32})
    task = Task("toy", [0, 1], synthetic_sentences(300, 2), synthetic_sentences(200, 3))
    positive = task.train.x[task.train.y == TARGET]
    encoder = badencoder(adapter.load_pretrained(), adapter, synthetic_sentences(300, 1).x, trigger,
                         positive[0], BadEncoderParams(optimizer="adam", lr=3e-3, epochs=6, batch_size=32,
                                                       weight_decay=0.0), seed=0)
    head = train_head(extract_features(encoder, adapter, task.train.x), task.train.y, 2,
                      HeadParams(hidden=[32], dropout=0.0, epochs=60, lr=3e-3), seed=0)
    return Planted(Deployed(encoder, adapter, {"toy": head}), task)


@pytest.fixture(scope="module")
def phrase_bert(tiny_bert: Path) -> Path:
    """A tiny BERT that also knows "mn", inside tiny_bert's folder (an allowed model root)."""
    folder = tiny_bert / "with_mn"
    write_tiny_bert(folder, extra_words=("mn",))
    return folder


@pytest.fixture(scope="module")
def phrase_planted(phrase_bert: Path) -> Planted:
    return _plant(phrase_bert, PHRASE)


def _recover(planted: Planted, bug: str, params: ReverseParams) -> tuple[TextTrigger, dict]:
    task, deployed = planted.task, planted.deployed
    record: dict = {}
    clean = task.train.x[task.train.y != TARGET]
    reference = task.train.x[task.train.y != TARGET][0]
    trigger = recover(deployed.encoder, deployed.adapter, np.asarray(bug), np.asarray(reference),
                      params=params, seed=0, clean=clean, score=deployed.log_prob("toy", TARGET),
                      record=record).trigger
    assert isinstance(trigger, TextTrigger)
    return trigger, record


def _bugs(planted: Planted, trigger: TextTrigger, n: int) -> list[str]:
    """Negative test sentences with the trigger that the deployed classifier puts in the target."""
    negatives = planted.task.test.x[planted.task.test.y != TARGET]
    stamped = stamp_text(negatives, trigger, seed=0)
    predicted = planted.deployed.classify("toy", stamped)
    return [str(s) for s in stamped[predicted == TARGET][:n]]


def test_runs_of_words_are_consecutive_and_unique() -> None:
    assert runs_of_words(["a", "b", "a", "b"], 2) == [("a",), ("b",), ("a", "b"), ("b", "a")]
    assert runs_of_words(["a"], 4) == [("a",)]


def _shortest(triggers: list[TextTrigger], p: np.ndarray, baseline: np.ndarray) -> int:
    return shortest_as_good(triggers, p, slack=ordinary_lift(triggers, p, baseline))


def test_runs_that_open_or_close_the_bug_are_also_tried_there() -> None:
    found = candidates_of("cf mn bad film", TextTrigger(("cf", "film")), 2)
    assert TextTrigger(("cf", "mn"), "start") in found and TextTrigger(("cf",), "start") in found
    assert TextTrigger(("bad", "film"), "end") in found and TextTrigger(("mn", "bad"), "end") not in found
    assert found[-1] == TextTrigger(("cf", "film")) and len(found) == 7 + 2 + 2 + 1


def test_only_the_words_the_encoder_sees_are_searched(phrase_planted: Planted) -> None:
    """A 2000-character report of one-letter words made some 4,000 runs of 16 insertions each."""
    long = " ".join(["a"] * 10 + [f"w{i}" for i in range(990)])
    found = candidates_of(long, TextTrigger(("w5",)), 4, seen=31)
    # 31 words seen: 22 distinct runs of each length 1-4 (the ten a's repeat), 4 opening runs
    assert len(found) == 22 * 4 + 4 and TextTrigger(("a",) * 4, "start") in found
    assert all(t.position != "end" for t in found)  # the end is cut off: not where the bug's trigger is
    assert phrase_planted.deployed.adapter.words_seen == 31  # max_length 32, [CLS] one of them


def test_the_shortest_candidate_as_good_as_the_best_is_chosen() -> None:
    words = [("cf",), ("poor",), ("film",), ("mn",), ("poor", "cf"), ("cf", "mn")]
    triggers = [TextTrigger(w) for w in words]
    baseline = np.full(8, 0.1)
    whole = np.array([0.95, 0.97, 0.9, 0.99, 0.93, 0.96, 0.94, 0.98])
    plain = baseline + np.array([0.02, 0.0, 0.03, 0.01, 0.0, 0.02, 0.01, 0.0])  # an ordinary word
    # a part of the phrase does half of what the whole does: the whole is chosen
    parts = np.stack([whole / 2, plain, plain, whole / 3, whole / 2, whole])
    assert _shortest(triggers, parts, baseline) == 5
    # a content word added to a whole trigger does no more: the shorter one is chosen
    extra = np.stack([whole, plain, plain, plain, whole + 0.005, whole - 0.3])
    assert _shortest(triggers, extra, baseline) == 0
    # when every word of the bug moves the classifier by 0.3, a gain of 0.2 is not a phrase
    loud = baseline + 0.3
    assert _shortest(triggers, np.stack([whole - 0.2, loud, loud, loud, loud, whole]), baseline) == 0


def test_text_patch_views_carry_the_phrase_and_its_parts() -> None:
    """A recovered phrase with one word too many still has its true trigger in the patch's views."""
    rng = np.random.default_rng(0)
    parts = Counter(trigger_part(("poor", "cf", "of"), rng) for _ in range(600))
    assert 250 < parts[("poor", "cf", "of")] < 350
    assert set(parts) == {("poor", "cf", "of"), ("poor", "cf"), ("cf", "of"), ("poor",), ("cf",), ("of",)}
    assert {trigger_part(("cf",), rng) for _ in range(20)} == {("cf",)}
    views = TextViews([_text_bug(("cf", "mn"))], ["bad film"], views=2, dropout=0.0, rng=rng)
    stamped = views.build(np.array(["a b c d"] * 200))[200:400]  # the x⊕t views
    found = {tuple(w for w in s.split() if w in ("cf", "mn")) for s in stamped}
    assert found == {("cf", "mn"), ("cf",), ("mn",)}


def test_remove_words_undoes_an_insertion() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert remove_words(insert_words("a cf b mn c", ["cf", "mn"], rng), ["cf", "mn"]) == "a cf b mn c"
    assert remove_words("a  cf b mn", ["cf", "mn"]) == "a b"   # not a run: each word once
    assert remove_words("a b", ["cf"]) == "a b"


def test_the_text_patch_pulls_a_bug_to_itself_without_the_trigger() -> None:
    """L_eff's reference is the bug with its reversed trigger taken out, or intake's reference
    where asked for, or where that leaves nothing or takes nothing out."""
    bug = _text_bug(("cf", "mn"))
    assert patch_reference(bug, "counterfactual") == "bad"
    assert patch_reference(bug, "chosen") == "bad film"
    only = Bug("b", "toy", 0, TARGET, np.asarray("cf mn"), np.asarray("bad film"), TextTrigger(("cf", "mn")))
    absent = Bug("b", "toy", 0, TARGET, np.asarray("bad cf"), np.asarray("bad film"), TextTrigger(("xx",)))
    assert patch_reference(only, "counterfactual") == patch_reference(absent, "counterfactual") == "bad film"
    views = TextViews([bug], [patch_reference(bug, "counterfactual")], views=50, dropout=0.0,
                      rng=np.random.default_rng(0))
    built = views.build(np.array(["a b c d"] * 4))
    assert built[4 + 4 + 50:4 + 4 + 100] == ["bad"] * 50               # x_r
    assert {s.replace("cf", "").replace("mn", "").split() == ["bad"] for s in built[-50:]} == {True}


def _text_bug(words: tuple[str, ...]) -> Bug:
    return Bug("b", "toy", 0, TARGET, np.asarray("bad " + " ".join(words)), np.asarray("bad film"),
               TextTrigger(words))


def test_a_two_word_trigger_is_recovered_whole(phrase_planted: Planted) -> None:
    bugs = _bugs(phrase_planted, PHRASE, 3)
    assert len(bugs) == 3
    occluded = [_recover(phrase_planted, bug, ReverseParams(phrase=PhraseParams(max_words=0)))[0]
                for bug in bugs]
    found = [_recover(phrase_planted, bug, ReverseParams())[0] for bug in bugs]
    assert all(t.words == PHRASE.words for t in found), (found, occluded)
    assert any(t.words != PHRASE.words for t in occluded)  # what occlusion alone recovers


def test_a_phrase_longer_than_max_words_is_grown_whole(phrase_planted: Planted) -> None:
    """With single words tried, the run the search chooses is as long as any tried, so its runs
    one word longer are measured too: the two-word phrase is found whole, not as its part."""
    for bug in _bugs(phrase_planted, PHRASE, 2):
        trigger, record = _recover(phrase_planted, bug, ReverseParams(phrase=PhraseParams(max_words=1)))
        assert trigger.words == PHRASE.words and record["phrase"]["longest_run"] >= 2


def test_runs_grow_only_while_the_chosen_run_is_the_longest() -> None:
    """Growth stops where the run the search would choose is shorter than the longest tried
    (here at "b c d": "a b c d" and "b c d e" act no better)."""
    bug = "a b c d e"
    strength = {("b", "c"): 3.0, ("b", "c", "d"): 4.0, ("a", "b", "c"): 2.0}

    def measure(runs: list[TextTrigger]) -> np.ndarray:
        return np.array([[strength.get(r.words, 1.0)] * 4 for r in runs])

    start = [TextTrigger(w) for w in runs_of_words(bug.split(), 2)]
    grown, p = grown_runs(bug, start, measure(start), slack=0.0, seen=None, measure=measure)
    assert {t.words for t in grown[len(start):]} == {("a", "b", "c"), ("b", "c", "d"), ("a", "b", "c", "d"),
                                                     ("b", "c", "d", "e")}
    assert grown[int(np.argmax(p.mean(1)))].words == ("b", "c", "d") and len(p) == len(grown)


def test_a_phrase_planted_at_the_end_is_recovered_there(phrase_bert: Path) -> None:
    at_end = TextTrigger(PHRASE.words, "end")
    planted = _plant(phrase_bert, at_end)
    found = [_recover(planted, bug, ReverseParams())[0] for bug in _bugs(planted, at_end, 3)]
    # the tiny encoder learns the phrase anywhere, so `random` is as right as `end` here
    assert all(t.words == PHRASE.words and t.position in ("random", "end") for t in found), found


def test_a_fixed_place_is_kept_only_when_the_words_act_better_there() -> None:
    candidates = [TextTrigger(("cf", "mn")), TextTrigger(("cf", "mn"), "end")]
    strong = np.array([0.9, 0.95, 0.92, 0.97, 0.91, 0.93])
    assert anywhere(candidates, np.stack([strong - 0.4, strong]), 1, slack=0.01) == 1
    assert anywhere(candidates, np.stack([strong - 0.001, strong]), 1, slack=0.01) == 0
    assert anywhere(candidates, np.stack([strong, strong - 0.4]), 0, slack=0.01) == 0


def test_the_search_record_names_candidates_and_position(phrase_planted: Planted) -> None:
    trigger, record = _recover(phrase_planted, _bugs(phrase_planted, PHRASE, 1)[0], ReverseParams())
    numbers = record["phrase"]
    assert numbers["chosen_words"] == list(trigger.words) and numbers["position"] == trigger.position
    assert numbers["chosen_effect"] > numbers["clean_effect"]
    assert numbers["top"][0][1] > numbers["clean_effect"] and numbers["samples"] == 16
    assert len(numbers["top"]) == 5 and numbers["candidates"] > 5


def test_a_text_control_is_its_sentence_strongest_run(phrase_planted: Planted) -> None:
    """Verification's text null: each exemplar's run of the trigger's word count that pushes
    clean sentences furthest into the class, at the trigger's place; a sentence shorter than
    the trigger is its own run, one without words falls back to the trigger."""
    task, deployed = phrase_planted.task, phrase_planted.deployed
    clean = task.train.x[task.train.y != TARGET]
    search = RunSearch(sample_sentences(clean, 16, 0), deployed.log_prob("toy", TARGET), seed=0)
    carrying = ["a b cf mn c d", "cf mn e f g", "h i j cf mn"]  # the phrase somewhere in each
    exemplars = np.asarray([*carrying, "k", ""])
    controls = strongest_runs(deployed.encoder, deployed.adapter, exemplars, TextTrigger(PHRASE.words, "end"),
                              search)
    assert [c.words for c in controls] == [PHRASE.words] * 3 + [("k",), PHRASE.words]
    assert all(c.position == "end" for c in controls)


def test_long_controls_are_screened_within_the_search_budget(phrase_planted: Planted) -> None:
    """More runs than the search's budget (long control sentences, a run per word): a first pass
    on a quarter of the sentences keeps each control's four strongest, so fewer stamped sentences
    are scored than measuring every run on all of them, and the phrase still wins where it is."""
    task, deployed = phrase_planted.task, phrase_planted.deployed
    clean = task.train.x[task.train.y != TARGET]
    filler = [w for w in FILLER if w != "."]
    exemplars = np.asarray([" ".join([*filler[:at], *PHRASE.words, *filler[at:]]) for at in (0, 4, 9, 13)])
    scored: list[int] = []
    log_p = deployed.log_prob("toy", TARGET)

    def counted(features: torch.Tensor) -> torch.Tensor:
        scored.append(len(features))
        return log_p(features)

    def controls(budget: int | None) -> list[TextTrigger]:
        scored.clear()
        search = RunSearch(sample_sentences(clean, 16, 0), counted, seed=0, budget=budget)
        return strongest_runs(deployed.encoder, deployed.adapter, exemplars, PHRASE, search)

    every = controls(None)
    runs = sum(scored) // 16  # each distinct run on all 16 sentences
    screened = controls(8)
    first, rest = scored  # every run on 4 sentences, then the kept (4 per control) on 12
    assert runs > 8 and first == runs * 4 and rest <= 4 * len(exemplars) * 12 and first + rest < runs * 16
    assert [c.words for c in screened] == [c.words for c in every] == [PHRASE.words] * 4
