"""Backdoor sequela: how removing a backdoor changes a model's exposure to other attacks.

Two measures (the third contribution of the second seed paper):

- membership inference on a downstream classifier: a loss-threshold attack (score = minus
  the cross-entropy of the true label) on equal numbers of training members and test
  non-members drawn with a seed; its AUC and its best-threshold advantage
  (max over thresholds of TPR - FPR; 0 for a classifier that leaks nothing);
- re-injection: BadEncoder run step by step on an encoder (a repaired one, or the clean one
  for comparison), counting the optimiser steps until the attack success rate on a fixed
  held-out sample reaches a goal. ASR is read through a fixed downstream head (the one
  trained on the starting encoder) every `check_every` steps, so the count is
  exact to that resolution; a run that does not reach the goal within the cap reports None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mudjack.attacks import BadEncoderParams, badencoder_steps, steps_per_epoch, train_mode
from mudjack.encoders import EncoderAdapter
from mudjack.features import extract_features, on_device
from mudjack.heads import Head, predict
from mudjack.metrics import attack_success_rate
from mudjack.triggers import TextTrigger, Trigger

# --- membership inference -------------------------------------------------------------------


@torch.inference_mode()
def loss_scores(head: Head, features: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    """Membership score per sample: minus the head's cross-entropy on the true label."""
    logits = head.eval()(features)
    return -F.cross_entropy(logits, torch.as_tensor(labels, dtype=torch.long), reduction="none").numpy()


def balanced_indices(members: int, nonmembers: int, *, samples: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal numbers (min of the three counts) of member and non-member indices, drawn at random."""
    count = min(samples, members, nonmembers)
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(members)[:count]), np.sort(rng.permutation(nonmembers)[:count])


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """P(member score > non-member score) + half the ties (Mann-Whitney U / (n m))."""
    scores = np.concatenate([member_scores, nonmember_scores])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # ties share their mean rank
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n, m = len(member_scores), len(nonmember_scores)
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * m))


def best_advantage(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """max over thresholds t of TPR - FPR, calling `score >= t` a member (t = +inf gives 0)."""
    thresholds = np.unique(np.concatenate([member_scores, nonmember_scores]))
    tpr = (member_scores[None, :] >= thresholds[:, None]).mean(1)
    fpr = (nonmember_scores[None, :] >= thresholds[:, None]).mean(1)
    return float(max(0.0, (tpr - fpr).max()))


def membership_inference(head: Head, members: tuple[torch.Tensor, np.ndarray],
                         nonmembers: tuple[torch.Tensor, np.ndarray], *, samples: int,
                         seed: int) -> dict[str, float | int]:
    """The loss-threshold attack on (features, labels) of members and non-members, balanced."""
    keep_m, keep_n = balanced_indices(len(members[1]), len(nonmembers[1]), samples=samples, seed=seed)
    scores_m = loss_scores(head, members[0][keep_m], members[1][keep_m])
    scores_n = loss_scores(head, nonmembers[0][keep_n], nonmembers[1][keep_n])
    return {"auc": auc(scores_m, scores_n), "advantage": best_advantage(scores_m, scores_n),
            "samples": int(len(keep_m))}


# --- re-injection ---------------------------------------------------------------------------


@dataclass
class Backdoor:
    """What the re-injecting attacker plants: a trigger, the reference input whose features
    triggered inputs must take, and the target class the downstream head gives them."""

    trigger: Trigger | TextTrigger
    reference: np.ndarray
    target: int


def triggered_asr(encoder: nn.Module, adapter: EncoderAdapter, head: Head, check: np.ndarray,
                  backdoor: Backdoor, *, device: torch.device | None = None) -> float:
    """ASR of `head` on the encoder's features (computed on `device`, where the encoder is
    moved) of the (non-target) `check` inputs, triggered."""
    features = extract_features(encoder, adapter, adapter.stamp(check, backdoor.trigger), device=device)
    return attack_success_rate(predict(head, features), backdoor.target)


def reinjection(encoder: nn.Module, adapter: EncoderAdapter, head: Head, backdoor: Backdoor, *,
                shadow: np.ndarray, check: np.ndarray, attack: BadEncoderParams, goal: float,
                max_steps: int, check_every: int, seed: int,
                device: torch.device | None = None) -> dict[str, Any]:
    """BadEncoder (`attack`'s settings, more epochs if `max_steps` needs them) on a copy of
    `encoder` on `device` (the CPU by default; `encoder` itself stays where it is), ASR read on
    `check` every `check_every` steps: the first checked step at which ASR >= `goal` (0 when it
    already is), None when `max_steps` pass first; the ASR curve."""
    device = device or torch.device("cpu")
    curve = [[0, triggered_asr(on_device(encoder, device), adapter, head, check, backdoor)]]
    if curve[0][1] < goal:
        epochs = -(-max_steps // steps_per_epoch(len(shadow), attack))
        steps = badencoder_steps(encoder, adapter, shadow, [(backdoor.trigger, backdoor.reference)],
                                 attack.model_copy(update={"epochs": epochs}), seed=seed, device=device)
        for step, attacked in enumerate(steps, start=1):
            if step % check_every == 0 or step == max_steps:
                curve.append([step, triggered_asr(attacked, adapter, head, check, backdoor, device=device)])
                train_mode(attacked, adapter)
                if curve[-1][1] >= goal or step >= max_steps:
                    break
    reached = curve[-1][1] >= goal
    return {"steps": curve[-1][0] if reached else None, "reached": reached, "final_asr": curve[-1][1],
            "goal": goal, "max_steps": max_steps, "check_every": check_every, "curve": curve}
