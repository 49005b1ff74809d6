"""Backdoor sequela on tiny inputs: membership inference and re-injection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mudjack.attacks import BadEncoderParams, pick_attack_reference
from mudjack.features import extract_features
from mudjack.heads import Head, HeadParams, train_head
from mudjack.metrics import non_target
from mudjack.sequela import (
    Backdoor,
    auc,
    balanced_indices,
    best_advantage,
    membership_inference,
    reinjection,
)


def test_auc_and_advantage_by_hand() -> None:
    assert auc(np.array([3.0, 2.0]), np.array([1.0, 0.0])) == 1.0
    assert best_advantage(np.array([3.0, 2.0]), np.array([1.0, 0.0])) == 1.0
    assert auc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 0.0
    assert auc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5  # ties count half
    assert best_advantage(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.0
    # members 3, 1; non-members 2, 0: pairs won 3 of 4; best threshold 3 -> TPR 0.5, FPR 0
    assert auc(np.array([3.0, 1.0]), np.array([2.0, 0.0])) == 0.75
    assert best_advantage(np.array([3.0, 1.0]), np.array([2.0, 0.0])) == 0.5


def test_balanced_indices_are_equal_in_number_and_seeded() -> None:
    members, nonmembers = balanced_indices(50, 30, samples=40, seed=1)
    assert len(members) == len(nonmembers) == 30 and members.max() < 50 and nonmembers.max() < 30
    again = balanced_indices(50, 30, samples=40, seed=1)
    assert np.array_equal(members, again[0]) and np.array_equal(nonmembers, again[1])
    assert len(balanced_indices(50, 30, samples=10, seed=1)[0]) == 10


def _random_set(rng: np.random.Generator, count: int) -> tuple[torch.Tensor, np.ndarray]:
    return torch.from_numpy(rng.normal(size=(count, 16)).astype(np.float32)), rng.integers(0, 4, count)


def test_a_memorising_classifier_leaks_membership_a_random_one_does_not() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    members, nonmembers = _random_set(rng, 200), _random_set(rng, 300)  # random labels: only memory helps
    memoriser = train_head(*members, 4, HeadParams(hidden=[128], dropout=0.0, epochs=300, lr=1e-2), seed=0)
    leaky = membership_inference(memoriser, members, nonmembers, samples=150, seed=0)
    assert leaky["samples"] == 150 and leaky["auc"] > 0.8 and leaky["advantage"] > 0.4
    untrained = Head(16, 4, hidden=[32], dropout=0.0)
    blind = membership_inference(untrained, members, nonmembers, samples=150, seed=0)
    assert abs(blind["auc"] - 0.5) < 0.1 and blind["advantage"] < 0.2


@pytest.fixture(scope="module")
def clean_setup(scenario):
    """A head on the clean tiny encoder, the attacker's backdoor and held-out checks."""
    adapter, clean = scenario.adapter, scenario.clean
    head = train_head(extract_features(clean, adapter, scenario.task.train.x), scenario.task.train.y, 10,
                      HeadParams(epochs=60), seed=0)
    reference = pick_attack_reference(clean, adapter, scenario.task.train.x, scenario.task.train.y, target=0)
    check = scenario.task.test.x[non_target(scenario.task.test.y, 0)][:100]
    return head, Backdoor(scenario.trigger, reference, 0), check


def test_reinjection_counts_steps_to_the_goal(scenario, clean_setup) -> None:
    head, backdoor, check = clean_setup
    result = reinjection(scenario.clean, scenario.adapter, head, backdoor, shadow=scenario.shadow[:320],
                         check=check, attack=BadEncoderParams(), goal=0.8, max_steps=300, check_every=10,
                         seed=0)
    assert result["reached"] and 0 < result["steps"] <= 300 and result["steps"] % 10 == 0
    assert result["curve"][0][1] < 0.8 <= result["final_asr"]
    assert [step for step, _ in result["curve"]] == list(range(0, result["steps"] + 1, 10))


def test_reinjection_stops_at_the_cap(scenario, clean_setup) -> None:
    head, backdoor, check = clean_setup
    frozen = BadEncoderParams(lr=1e-30, momentum=0.0, weight_decay=0.0)  # the encoder never moves
    result = reinjection(scenario.clean, scenario.adapter, head, backdoor, shadow=scenario.shadow[:64],
                         check=check, attack=frozen, goal=0.9, max_steps=7, check_every=3, seed=0)
    assert result["steps"] is None and not result["reached"] and result["max_steps"] == 7
    assert [step for step, _ in result["curve"]] == [0, 3, 6, 7]  # 64 inputs / batch 64: 7 epochs


def test_reinjection_of_a_backdoored_encoder_takes_no_step(scenario) -> None:
    check = scenario.task.test.x[non_target(scenario.task.test.y, 0)][:100]
    backdoor = Backdoor(scenario.trigger, scenario.task.train.x[0], 0)
    result = reinjection(scenario.backdoored, scenario.adapter, scenario.head, backdoor,
                         shadow=scenario.shadow, check=check, attack=BadEncoderParams(), goal=0.5,
                         max_steps=10, check_every=5, seed=0)
    assert result["steps"] == 0 and result["curve"] == [[0, result["final_asr"]]]
