"""Clean accuracy, attack success rate and triggered-input accuracy (TBA).

ASR here follows Mudjacking: among triggered test inputs whose true label is not
the target, the fraction predicted as the target. TBA is the accuracy against the
true labels on those same triggered inputs. flip_asr is ASR over only the non-target inputs
the classifier gets right without the trigger: what the trigger itself does. Plain ASR also
counts the classifier's own errors into the target class, which on a two-class task
(SST-2) puts a floor under it that no repair can go below. target_tba is the accuracy on the
target class's own test inputs with the trigger: ~1 for a backdoored model; a repair that
turns the trigger into an anti-trigger (sends those inputs to another class: on SST-2 no
other number shows it) lowers it below the clean accuracy of that class. anti_flip says so
directly, as flip_asr does for ASR: among the target class's inputs the classifier gets right
without the trigger, the share the trigger sends to another class: ~0 for a backdoored model.
After a repair it is read against what the trigger's own content does to a never-attacked
model: near 0 for a few odd words, 0.88 for a noise blend over a GTSRB sign on resnet20.
"""

from __future__ import annotations

import numpy as np


def non_target(labels: np.ndarray, target: int) -> np.ndarray:
    """Boolean selector of the inputs that count for ASR and TBA."""
    return labels != target


def clean_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float((predictions == labels).mean()) if len(labels) else 0.0


def attack_success_rate(triggered_predictions: np.ndarray, target: int) -> float:
    return float((triggered_predictions == target).mean()) if len(triggered_predictions) else 0.0


def evaluate(clean_predictions: np.ndarray, labels: np.ndarray,
             triggered_predictions: np.ndarray, *, target: int,
             target_triggered: np.ndarray | None = None) -> dict[str, float]:
    """`triggered_predictions` are for the non-target inputs only, in order; with
    `target_triggered` (the target-class inputs', in order) also target_tba and anti_flip."""
    selected = non_target(labels, target)
    kept = labels[selected]
    if len(kept) != len(triggered_predictions):
        raise ValueError("triggered predictions must cover exactly the non-target inputs")
    right = clean_predictions[selected] == kept
    target_class = ({} if target_triggered is None
                    else _target_class(clean_predictions[~selected], target_triggered, target))
    return {
        "clean_acc": clean_accuracy(clean_predictions, labels),
        "asr": attack_success_rate(triggered_predictions, target),
        "tba": clean_accuracy(triggered_predictions, kept),
        "flip_asr": attack_success_rate(triggered_predictions[right], target),
        **target_class,
    }


def _target_class(clean: np.ndarray, triggered: np.ndarray, target: int) -> dict[str, float]:
    """target_tba and anti_flip from the target-class inputs' predictions without and with the trigger."""
    if len(clean) != len(triggered):
        raise ValueError("triggered target-class predictions must cover exactly the target-class inputs")
    right = clean == target
    return {"target_tba": attack_success_rate(triggered, target),
            "anti_flip": float((triggered[right] != target).mean()) if right.any() else 0.0}
