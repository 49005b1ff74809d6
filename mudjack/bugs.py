"""The bug registry: accepted bug reports with their reference input and reversed trigger.

One folder per bug: `record.json` (who, what, numbers) and `arrays.npz`
(`bug`, `reference`, `mask`, `pattern`, and `alt<i>_mask`, `alt<i>_pattern` for each
alternate trigger: another candidate that reproduced the bug as well, which the patch also
trains against because the chosen one may cover only part of the true trigger).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mudjack.io import read_json, read_npz, write_json, write_npz
from mudjack.triggers import Trigger, trigger_arrays, trigger_from_arrays


@dataclass
class Bug:
    id: str
    task: str
    label: int          # the true label the client reported
    predicted: int      # what the deployed classifier said
    bug: np.ndarray     # uint8 (H, W, C), carries the trigger
    reference: np.ndarray
    trigger: Trigger    # reverse-engineered
    record: dict[str, Any] = field(default_factory=dict)
    alternates: tuple[Trigger, ...] = ()  # other reversed triggers that reproduce the bug

    @property
    def triggers(self) -> list[Trigger]:
        """The chosen trigger first, then the alternates."""
        return [self.trigger, *self.alternates]


def save_bug(bug: Bug, registry: str | Path) -> None:
    folder = Path(registry) / bug.id
    alternates = {f"alt{i}_{key}": array for i, trigger in enumerate(bug.alternates)
                  for key, array in trigger_arrays(trigger).items()}
    write_npz(folder / "arrays.npz", bug=bug.bug, reference=bug.reference,
              **trigger_arrays(bug.trigger), **alternates)
    record = {"id": bug.id, "task": bug.task, "label": bug.label, "predicted": bug.predicted,
              **bug.record}
    write_json(folder / "record.json", record)


def load_bugs(registry: str | Path) -> list[Bug]:
    bugs = []
    for record_path in sorted(Path(registry).glob("*/record.json")):
        record = read_json(record_path)
        arrays = read_npz(record_path.parent / "arrays.npz")
        bugs.append(Bug(id=record["id"], task=record["task"], label=int(record["label"]),
                        predicted=int(record["predicted"]), bug=arrays["bug"],
                        reference=arrays["reference"], trigger=trigger_from_arrays(arrays),
                        record=record, alternates=_alternates(arrays)))
    return bugs


def _alternates(arrays: dict[str, np.ndarray]) -> tuple[Trigger, ...]:
    found = []
    while f"alt{len(found)}_mask" in arrays:
        prefix = f"alt{len(found)}_"
        trigger = trigger_from_arrays({key.removeprefix(prefix): array for key, array in arrays.items()
                                       if key.startswith(prefix)})
        if not isinstance(trigger, Trigger):
            raise ValueError("an alternate trigger must be an image trigger")
        found.append(trigger)
    return tuple(found)
