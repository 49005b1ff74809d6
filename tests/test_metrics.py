import numpy as np
import pytest

from mudjack.metrics import evaluate, non_target


def test_asr_and_tba_count_only_non_target_inputs():
    labels = np.array([0, 1, 2, 3])
    clean = np.array([0, 1, 2, 0])
    kept = non_target(labels, target=0)
    triggered = np.array([0, 2, 0])  # predictions for labels 1, 2, 3
    metrics = evaluate(clean, labels, triggered, target=0)
    assert kept.sum() == 3
    # flip_asr leaves out label 3, which the classifier puts in the target class anyway
    assert metrics == {"clean_acc": 0.75, "asr": pytest.approx(2 / 3), "tba": pytest.approx(1 / 3),
                       "flip_asr": 0.5}


def test_triggered_predictions_must_match_the_non_target_inputs():
    with pytest.raises(ValueError):
        evaluate(np.array([0, 1]), np.array([0, 1]), np.array([0, 0]), target=0)


def test_anti_flip_counts_the_target_class_inputs_the_trigger_sends_away():
    labels = np.array([0, 0, 0, 0, 1])
    clean = np.array([0, 0, 0, 1, 1])  # the fourth target-class input is wrong without the trigger
    target_triggered = np.array([1, 0, 0, 1])  # the trigger moves the first of the three right ones
    metrics = evaluate(clean, labels, np.array([0]), target=0, target_triggered=target_triggered)
    assert metrics["target_tba"] == 0.5
    assert metrics["anti_flip"] == pytest.approx(1 / 3)  # the wrong one does not count
    assert "anti_flip" not in evaluate(clean, labels, np.array([0]), target=0)


def test_target_class_predictions_must_match_the_target_class_inputs():
    with pytest.raises(ValueError):
        evaluate(np.array([0, 1]), np.array([0, 1]), np.array([0]), target=0,
                 target_triggered=np.array([0, 0]))
