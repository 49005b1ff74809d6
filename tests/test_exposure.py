"""Exposure of every task (mudjack.exposure) on toy classifiers: target inference with its
evidence, the paired test that tells an exposed task from an unexposed one, the worst trigger."""

from __future__ import annotations

import numpy as np
import pytest

from mudjack.bugs import Bug
from mudjack.data import LabelledSet
from mudjack.exposure import (
    NamedTrigger,
    TaskModels,
    evidence,
    exposure_rows,
    infer_target,
    named_triggers,
    task_exposure,
    triggered_predictions,
    worst_trigger,
)
from mudjack.triggers import TextTrigger, patch_trigger, stamp

CLASSES = 5
TRIGGER = patch_trigger((4, 4, 3), 1, 0, 0)  # pixel (0, 0) at 255
OTHER = patch_trigger((4, 4, 3), 1, 3, 0)    # pixel (3, 0) at 255


def toy_test(n: int = 200, seed: int = 0) -> LabelledSet:
    """Images that carry their label in pixel (2, 2), with no trigger pixel set."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 200, (n, 4, 4, 3), dtype=np.uint8)
    y = np.arange(n) % CLASSES
    x[:, 2, 2, 0] = y
    return LabelledSet(x, y)


def toy(sends_to: int | None, *, moved: float = 1.0, pixel: tuple[int, int] = (0, 0)):
    """A classifier that reads the label, except that a fraction `moved` of the inputs with
    pixel `pixel` at 255 go to class `sends_to` (None: the trigger does nothing)."""
    def classify(x: np.ndarray) -> np.ndarray:
        predictions = x[:, 2, 2, 0].astype(np.int64)
        if sends_to is not None:
            hit = (x[:, pixel[0], pixel[1], 0] == 255) & (np.arange(len(x)) < moved * len(x))
            predictions[hit] = sends_to
        return predictions
    return classify


def models(before, after, test: LabelledSet | None = None) -> TaskModels:
    return TaskModels(toy_test() if test is None else test, CLASSES,
                      {"backdoored": before, "patched": after}, stamp)


def test_a_trigger_that_sends_inputs_to_class_k_infers_target_k_with_its_share() -> None:
    result = task_exposure("t", models(toy(3), toy(None)), [NamedTrigger("bug:b1", TRIGGER)])
    record = result["exposure"]["triggers"]["bug:b1"]
    assert (record["target"], record["target_from"]) == (3, "inferred")
    assert record["share"] == 1.0 and record["clean_share"] == 0.0 and record["exposed"]
    assert record["backdoored"]["asr"] == 1.0 and record["patched"]["asr"] == 0.0
    assert result["exposure"]["exposed"] is True and result["exposure"]["trigger"] == "bug:b1"
    assert result["backdoored"] == {"clean_acc": 1.0, "asr": 1.0, "tba": 0.0, "flip_asr": 1.0,
                                    "target_tba": 1.0, "anti_flip": 0.0}


def test_a_repair_that_turns_the_trigger_into_an_anti_trigger_shows_in_target_tba_and_anti_flip() -> None:
    """A patch that sends every triggered input to another class than the target has ASR 0 and,
    on two classes, full TBA: only the target class's own triggered inputs show it (a text
    patch from a partly recovered phrase did this on SST-2)."""
    result = task_exposure("t", models(toy(3), toy(4)), [NamedTrigger("truth", TRIGGER, {"t": 3})])
    assert result["patched"]["asr"] == 0.0 and result["patched"]["target_tba"] == 0.0
    assert result["patched"]["anti_flip"] == 1.0
    assert result["backdoored"]["target_tba"] == 1.0 and result["backdoored"]["anti_flip"] == 0.0


def heads(*classifiers):
    """Several heads on one encoder: one row of predictions per head."""
    return lambda x: np.stack([classify(x) for classify in classifiers])


def test_several_heads_are_averaged_and_the_first_decides_the_target() -> None:
    # the first patched head still obeys the trigger on half the inputs, the second not at all;
    # of the backdoored heads, the second sends triggered inputs to class 1, the first to 3
    result = task_exposure("t", models(heads(toy(3), toy(1)), heads(toy(3, moved=0.5), toy(None))),
                           [NamedTrigger("bug:b1", TRIGGER)])
    record = result["exposure"]["triggers"]["bug:b1"]
    assert record["target"] == 3 and record["exposed"]  # the first head's evidence
    assert record["per_head"]["backdoored"]["asr"] == [1.0, 0.0]
    first = record["per_head"]["patched"]["asr"][0]
    assert 0.45 < first < 0.55 and record["per_head"]["patched"]["asr"][1] == 0.0
    assert record["patched"]["asr"] == pytest.approx(first / 2)
    assert result["patched"]["asr"] == record["patched"]["asr"]  # the headline is the mean
    assert result["per_head"]["patched"]["asr"] == record["per_head"]["patched"]["asr"]
    assert result["per_head"]["backdoored"]["clean_acc"] == [1.0, 1.0]


def test_one_head_in_rows_reads_as_one_head() -> None:
    single = task_exposure("t", models(toy(3), toy(None)), [NamedTrigger("bug:b1", TRIGGER)])
    rows = task_exposure("t", models(heads(toy(3)), heads(toy(None))), [NamedTrigger("bug:b1", TRIGGER)])
    assert rows == single and "per_head" not in rows


def test_a_trigger_that_moves_nothing_leaves_the_task_unexposed() -> None:
    result = task_exposure("t", models(toy(None), toy(None)), [NamedTrigger("bug:b1", TRIGGER)])
    record = result["exposure"]["triggers"]["bug:b1"]
    assert record["moved_in"] == 0 and record["p_value"] == 1.0 and not record["exposed"]
    assert record["share"] == record["clean_share"] == 0.0
    assert result["exposure"]["exposed"] is False
    # measured, not missing: an unexposed task still has its numbers
    assert result["patched"]["asr"] == 0.0


def test_the_known_target_is_used_where_the_truth_names_one() -> None:
    trigger = NamedTrigger("truth", TRIGGER, {"t": 1})
    record = task_exposure("t", models(toy(3), toy(3)), [trigger])["exposure"]["triggers"]["truth"]
    assert (record["target"], record["target_from"]) == (1, "known")
    assert not record["exposed"] and record["backdoored"]["asr"] == 0.0
    other = task_exposure("u", models(toy(3), toy(3)), [trigger])["exposure"]["triggers"]["truth"]
    assert (other["target"], other["target_from"]) == (3, "inferred")


@pytest.mark.parametrize(("moved", "n", "exposed"), [
    (3 / 200, 200, False),   # 3 inputs into class 3: within chance (p 0.125)
    (0.3, 200, True),        # a weak backdoor on a large enough test set
    (0.3, 20, False),        # the same share of 20 inputs proves nothing
])
def test_exposure_is_a_significance_test_not_a_share_threshold(moved: float, n: int,
                                                                 exposed: bool) -> None:
    test = toy_test(n)
    triggered = toy(3, moved=moved)(stamp(test.x, TRIGGER))
    labels, clean = test.y, toy(None)(test.x)
    assert infer_target(labels, triggered, CLASSES) == 3
    proof = evidence(labels, clean, triggered, target=3, inferred=True, n_classes=CLASSES)
    assert proof.exposed is exposed
    assert proof.moved_in == (test.y[:round(moved * n)] != 3).sum() and proof.moved_out == 0


def test_inputs_leaving_the_class_count_against_it() -> None:
    labels = np.array([0, 0, 1, 1] * 10)
    clean = np.where(np.arange(40) < 20, 2, labels)  # half predicted 2 without the trigger
    triggered = np.where(np.arange(40) < 20, labels, 2)  # the trigger swaps which half
    proof = evidence(labels, clean, triggered, target=2, inferred=False, n_classes=3)
    assert (proof.moved_in, proof.moved_out) == (20, 20) and proof.share == proof.clean_share
    assert not proof.exposed


def record(*, exposed: bool, before: float, after: float) -> dict:
    return {"exposed": exposed, "backdoored": {"asr": before}, "patched": {"asr": after}}


def test_worst_trigger_is_the_highest_asr_after_then_before() -> None:
    records = {"bug:a": record(exposed=True, before=0.9, after=0.2),
               "bug:b": record(exposed=True, before=0.95, after=0.2),
               "bug:c": record(exposed=True, before=1.0, after=0.1),
               "bug:d": record(exposed=False, before=0.3, after=0.3)}
    assert worst_trigger(records, set()) == "bug:b"


def test_worst_trigger_prefers_exposing_true_triggers() -> None:
    records = {"truth": record(exposed=True, before=1.0, after=0.02),
               "truth:1": record(exposed=True, before=0.9, after=0.05),
               "bug:a": record(exposed=True, before=1.0, after=0.4)}
    assert worst_trigger(records, {"truth", "truth:1"}) == "truth:1"
    records["truth"]["exposed"] = records["truth:1"]["exposed"] = False
    assert worst_trigger(records, {"truth", "truth:1"}) == "bug:a"


def test_worst_trigger_of_an_unexposed_task_and_of_none() -> None:
    records = {"bug:a": record(exposed=False, before=0.1, after=0.0),
               "bug:b": record(exposed=False, before=0.2, after=0.0)}
    assert worst_trigger(records, set()) == "bug:b"
    assert worst_trigger({}, set()) is None


def test_the_headline_is_the_worst_of_several_triggers() -> None:
    before = toy(3)

    def after(x: np.ndarray) -> np.ndarray:  # the patch removed TRIGGER but not OTHER
        return toy(4, pixel=(3, 0))(x)

    def both(x: np.ndarray) -> np.ndarray:
        return np.where(x[:, 3, 0, 0] == 255, toy(4, pixel=(3, 0))(x), before(x))

    triggers = [NamedTrigger("bug:a", TRIGGER), NamedTrigger("bug:b", OTHER)]
    result = task_exposure("t", models(both, after), triggers)
    assert result["exposure"]["trigger"] == "bug:b" and result["exposure"]["target"] == 4
    assert result["patched"]["asr"] == 1.0
    assert result["exposure"]["triggers"]["bug:a"]["patched"]["asr"] == 0.0


def test_no_trigger_measures_clean_accuracy_only() -> None:
    result = task_exposure("t", models(toy(None), toy(None)), [])
    assert result["backdoored"] == {"clean_acc": 1.0, "asr": None, "tba": None, "flip_asr": None,
                                    "target_tba": None, "anti_flip": None}
    assert result["exposure"]["exposed"] is None and result["exposure"]["triggers"] == {}


def test_named_triggers_truth_first_then_bugs() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    bug = Bug("r-1", "t", 1, 3, image, image, OTHER)
    named = named_triggers([(TRIGGER, {"t": 0}), (OTHER, {"u": 2})], [bug])
    assert [(n.name, n.targets, n.true) for n in named] == [
        ("truth", {"t": 0}, True), ("truth:1", {"u": 2}, True), ("bug:r-1", {}, False)]


def source_toy(source: int, sends_to: int | None):
    """A classifier that reads the label, except that inputs of class `source` with the
    trigger pixel at 255 go to `sends_to` (a source-specific backdoor)."""
    def classify(x: np.ndarray) -> np.ndarray:
        predictions = x[:, 2, 2, 0].astype(np.int64)
        if sends_to is not None:
            predictions[(x[:, 0, 0, 0] == 255) & (predictions == source)] = sends_to
        return predictions
    return classify


def test_a_bug_accepted_on_its_own_class_is_measured_on_that_class() -> None:
    """Over every class a trigger that fires for class 2 alone moves a fifth of the inputs;
    measured on class 2, where intake verified it, it moves all of them, and that heads the task."""
    image = np.zeros((4, 4, 3), np.uint8)

    def bug(name: str, *, passed: bool) -> Bug:
        second = {"source_pass": {"class": 2, "passed": passed}}
        return Bug(name, "t", 2, 3, image, image, TRIGGER, record=second)

    sourced, plain = bug("r-1", passed=True), bug("r-2", passed=False)
    named = named_triggers([], [sourced, plain])
    assert [n.sources for n in named] == [{"t": 2}, {}]
    result = task_exposure("t", models(source_toy(2, 3), source_toy(2, None)), named)
    records = result["exposure"]["triggers"]
    assert records["bug:r-1"]["source_class"] == 2 and "source_class" not in records["bug:r-2"]
    assert records["bug:r-1"]["backdoored"]["asr"] == 1.0 and records["bug:r-1"]["patched"]["asr"] == 0.0
    assert records["bug:r-2"]["backdoored"]["asr"] == pytest.approx(0.25)  # class 2 of the 4 not 3
    assert result["exposure"]["trigger"] == "bug:r-1" and result["backdoored"]["asr"] == 1.0
    # on another task the bug's class means nothing: measured over every class there
    other = task_exposure("u", models(source_toy(2, 3), source_toy(2, None)), named[:1])
    assert "source_class" not in other["exposure"]["triggers"]["bug:r-1"]
    # a test set without the class: over every class too, not over nothing
    test = toy_test()
    keep = np.flatnonzero(test.y != 2)
    absent = task_exposure("t", models(source_toy(2, 3), source_toy(2, None), test.subset(keep)), named[:1])
    record = absent["exposure"]["triggers"]["bug:r-1"]
    assert "source_class" not in record and record["backdoored"]["asr"] == 0.0


def test_exposure_rows_one_per_task() -> None:
    metrics = {"tasks": {"b": task_exposure("b", models(toy(None), toy(None)),
                                            [NamedTrigger("bug:x", TRIGGER)]),
                         "a": task_exposure("a", models(toy(2), toy(None)),
                                            [NamedTrigger("bug:x", TRIGGER)])}}
    rows = exposure_rows(metrics)
    assert [(r["task"], r["exposed"], r["trigger"], r["asr_before"], r["asr_after"]) for r in rows] == [
        ("a", True, "bug:x", 1.0, 0.0), ("b", False, "bug:x", 0.0, 0.0)]


def test_a_trigger_that_does_not_fit_the_task_is_named_not_stamped() -> None:
    triggers = [NamedTrigger("truth", patch_trigger((8, 8, 3), 2, 0, 0), {"t": 0}),
                NamedTrigger("bug:w", TextTrigger(("cf",))), NamedTrigger("bug:b", TRIGGER)]
    exposure = task_exposure("t", models(toy(3), toy(None)), triggers)["exposure"]
    assert set(exposure["triggers"]) == {"bug:b"} and exposure["trigger"] == "bug:b"
    assert set(exposure["not_measured"]) == {"truth", "bug:w"}
    assert "(8, 8)" in exposure["not_measured"]["truth"]


def test_a_known_target_outside_the_tasks_classes_is_named_not_measured() -> None:
    """A truth file that names class 12 for a task of CLASSES classes (or -1) would measure an
    ASR of 0 toward a class no input can reach; the trigger is named with the reason instead,
    and the same trigger with a real target is measured."""
    triggers = [NamedTrigger("truth", TRIGGER, {"t": CLASSES + 2}),
                NamedTrigger("truth:1", TRIGGER, {"t": -1}), NamedTrigger("truth:2", TRIGGER, {"t": 3})]
    exposure = task_exposure("t", models(toy(3), toy(None)), triggers)["exposure"]
    assert set(exposure["not_measured"]) == {"truth", "truth:1"}
    assert f"target {CLASSES + 2} is not a class" in exposure["not_measured"]["truth"]
    assert set(exposure["triggers"]) == {"truth:2"} and exposure["exposed"] is True


def test_a_trigger_in_the_space_a_stamp_resizes_to_is_measured_on_inputs_of_another_size() -> None:
    """8x8 test inputs that the stamp and the classifiers shrink to 4x4 first (as hf_vision
    resizes a task of another size): the 4x4 trigger fits once the stamp's side is given."""
    def shrink(x: np.ndarray) -> np.ndarray:
        return x[:, ::2, ::2] if x.shape[1] == 8 else x

    small = toy_test()
    large = LabelledSet(np.kron(small.x, np.ones((1, 2, 2, 1), np.uint8)), small.y)
    before, after = toy(3), toy(None)
    predictors = {"backdoored": lambda x: before(shrink(x)), "patched": lambda x: after(shrink(x))}
    trigger = [NamedTrigger("bug:b", TRIGGER)]
    resized = TaskModels(large, CLASSES, predictors, lambda x, t: stamp(shrink(x), t), side=(4, 4))
    result = task_exposure("t", resized, trigger)
    assert result["exposure"]["exposed"] is True and result["exposure"]["not_measured"] == {}
    assert result["backdoored"]["asr"] == 1.0 and result["patched"]["asr"] == 0.0
    as_given = TaskModels(large, CLASSES, predictors, stamp)
    assert task_exposure("t", as_given, trigger)["exposure"]["not_measured"] == {
        "bug:b": "trigger of (4, 4) on inputs of (8, 8)"}


def test_images_are_stamped_and_classified_a_batch_at_a_time() -> None:
    """A 224 px test set is never stamped whole: each stamp call gets at most a batch, and the
    predictions are those of stamping everything at once."""
    sizes: list[int] = []

    def recording_stamp(x: np.ndarray, trigger) -> np.ndarray:
        sizes.append(len(x))
        return stamp(x, trigger)

    test = toy_test(n=150)
    batched = TaskModels(test, CLASSES, {"backdoored": toy(3), "patched": toy(None)}, recording_stamp)
    got = triggered_predictions(batched, TRIGGER, batch_size=64)
    assert sizes == [64, 64, 22]
    whole = stamp(test.x, TRIGGER)
    assert np.array_equal(got["backdoored"], toy(3)(whole))
    assert np.array_equal(got["patched"], toy(None)(whole))
