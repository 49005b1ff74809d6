"""The images Mudjacking trains on: the shadow set and, with `task_images`, unlabelled train
images of the downstream tasks the encoder serves.

The shadow set stands for the encoder's pre-training data; the tasks' images are what the
deployed classifiers see. A patch that removes the backdoor from the first can leave part of
it on the second (vit-cifar: CIFAR-10 shadow, GTSRB task), and the provider retraining those
classifiers holds their images anyway. No labels are used.
"""

from __future__ import annotations

import numpy as np

from mudjack.data import RowView, StackedView, in_shape, is_text
from mudjack.encoders import EncoderAdapter
from mudjack.patching.base import PatchInputs


def _in_input_space(x: np.ndarray, adapter: EncoderAdapter, name: str) -> np.ndarray:
    shape = tuple(adapter.input_shape)
    if not adapter.resizes_inputs and tuple(x.shape[1:]) != shape:
        raise ValueError(f"{name}: images of shape {tuple(x.shape[1:])}, the encoder takes {shape}")
    return in_shape(x, shape, adapter.resize_raw)


def _shares(count: int, parts: int) -> list[int]:
    """`count` split as evenly as possible over `parts`, the remainder to the first ones."""
    return [count // parts + (i < count % parts) for i in range(parts)]


def task_pool(inputs: PatchInputs, count: int, *, seed: int = 0) -> np.ndarray:
    """The shadow set followed by `count` train images drawn at random from the labelled tasks
    (split evenly between them, labels dropped), all in the encoder's input space; the shadow
    set as it is when `count` is 0 or there is no image task. Rows are read when indexed."""
    names = sorted(name for name, data in inputs.labelled.items() if not is_text(data.x))
    if count <= 0 or not names:
        return inputs.shadow
    rng = np.random.default_rng(seed)
    parts = [_in_input_space(inputs.shadow, inputs.adapter, "shadow set")]
    for name, share in zip(names, _shares(count, len(names)), strict=True):
        x = inputs.labelled[name].x
        rows = np.sort(rng.permutation(len(x))[:share])
        parts.append(_in_input_space(RowView(x, rows), inputs.adapter, f"task {name}"))
    return StackedView(parts)
