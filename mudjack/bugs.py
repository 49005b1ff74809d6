"""The bug registry: accepted bug reports with their reference input and reversed trigger.

One folder per bug, named by its id: `record.json` (who, what, numbers) and `arrays.npz`
(`bug`, `reference`, `mask`, `pattern`, and `alt<i>_mask`, `alt<i>_pattern` for each
alternate trigger: another candidate that reproduced the bug as well, which the patch also
trains against because the chosen one may cover only part of the true trigger). A text bug
holds two sentences (0-d unicode) as `bug` and `reference`, and `words` (and `position`,
unless random) for its trigger; it has no alternates.

Stages read the registry through `load_bugs`, which checks every bug and raises one
`RegistryError` naming the file and the problem; `check_bugs` then fits them to the tasks
and encoder at hand.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from mudjack.io import ArtifactError, read_json_bounded, read_npz, write_json, write_npz
from mudjack.reports import MAX_TEXT_BYTES
from mudjack.safepath import one_line, printable
from mudjack.triggers import TextTrigger, Trigger, trigger_arrays, trigger_from_arrays

if TYPE_CHECKING:
    from mudjack.data import Task
    from mudjack.encoders.base import EncoderAdapter

MAX_RECORD_BYTES = 16 << 20  # a record is a few KiB: its numbers and the ids merged into it
RECORD_FIELDS: dict[str, type] = {"id": str, "task": str, "label": int, "predicted": int}
IMAGE_KEYS = ("mask", "pattern")    # an alternate's are prefixed alt<i>_
FLOW_KEY = "flow"                    # optional beside them: a warp (triggers.Trigger.flow)
TEXT_KEYS = ("words", "position")    # position is optional: the default (random) is not stored


class RegistryError(ArtifactError):
    """A bug registry, or a bug in it, that cannot be used: one line naming the folder or file
    and the problem."""


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
    def modality(self) -> str:
        """The kind of inputs and trigger it carries, "image" or "text" (an adapter's `modality`)."""
        return "text" if isinstance(self.trigger, TextTrigger) else "image"

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
    """Every bug of the registry, each checked on its own (record fields; arrays present, of one
    modality and shape, triggers well-formed and non-empty): a RegistryError naming the file
    for the first that is damaged, and for a registry that is missing or not a folder (intake
    always writes one, empty when it accepted nothing)."""
    return [_load_bug(folder) for folder in bug_folders(registry)]


def bug_folders(registry: str | Path) -> list[Path]:
    """The registry's bug folders, by name: every folder but `_`- and `.`-named ones (no report
    id starts so; the intake log is `_intake_log.jsonl`). Files beside them are not bugs."""
    registry = Path(registry)
    if not registry.is_dir():
        what = "not a folder" if registry.exists() else "missing"
        raise RegistryError(f"{one_line(registry)}: the bug registry is {what}: run intake first")
    with os.scandir(registry) as scan:
        names = sorted(e.name for e in scan if e.is_dir() and not e.name.startswith(("_", ".")))
    return [registry / name for name in names]


def _load_bug(folder: Path) -> Bug:
    record = _record(folder / "record.json")
    path = folder / "arrays.npz"
    arrays = _arrays(path)
    try:
        modality = "text" if "words" in arrays else "image"
        bug, reference = _inputs(arrays, modality)
        if modality == "text":
            trigger, alternates = _text_trigger(arrays), ()
        else:
            trigger, alternates = _image_trigger(arrays, bug), _alternates(arrays, bug)
        if extra := sorted(set(arrays) - _known_keys(modality, len(alternates))):
            raise ValueError(f"unexpected arrays beside the {modality} trigger: {extra}")
    except ValueError as err:  # the triggers' own checks too
        raise RegistryError(f"{one_line(path)}: {one_line(err)}") from None
    return Bug(id=record["id"], task=record["task"], label=record["label"], predicted=record["predicted"],
               bug=bug, reference=reference, trigger=trigger, record=record, alternates=alternates)


def _record(path: Path) -> dict[str, Any]:
    try:
        record = read_json_bounded(path, limit=MAX_RECORD_BYTES)
    except ArtifactError as err:
        raise RegistryError(str(err)) from None
    if problem := _record_problem(record, path.parent.name):
        raise RegistryError(f"{one_line(path)}: {problem}")
    return record


def _record_problem(record: Any, folder: str) -> str | None:
    if not isinstance(record, dict):
        return f"not a JSON object but a {type(record).__name__}"
    for name, kind in RECORD_FIELDS.items():
        if name not in record:
            return f'no "{name}" field'
        value = record[name]
        if type(value) is not kind:  # `type`, not isinstance: true is not a label
            wanted = "a string" if kind is str else "an integer"
            return f'"{name}" must be {wanted}, got {type(value).__name__} {printable(value)}'
    if record["id"] != folder:  # the folder is the bug's name; a copied folder keeps another's id
        return f'"id" {printable(record["id"])} is not the name of its folder {printable(folder)}'
    if min(record["label"], record["predicted"]) < 0:
        return f'"label" {record["label"]} and "predicted" {record["predicted"]} must be class indices'
    if record["label"] == record["predicted"]:  # intake never writes one: nothing was misclassified
        return f'"predicted" {record["predicted"]} is its "label": a bug is a misclassification'
    return None


def _arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        return read_npz(path)
    except FileNotFoundError:
        raise RegistryError(f"{one_line(path)}: missing") from None
    except (OSError, ValueError) as err:  # read_npz's messages name the file
        raise RegistryError(one_line(err)) from None


def _inputs(arrays: dict[str, np.ndarray], modality: str) -> tuple[np.ndarray, np.ndarray]:
    """The reported input and the reference: uint8 images of one shape, or two sentences."""
    if missing := [key for key in ("bug", "reference") if key not in arrays]:
        raise ValueError(f"no {' or '.join(missing)} array")
    bug, reference = arrays["bug"], arrays["reference"]
    if modality == "text":
        for name, sentence in (("bug", bug), ("reference", reference)):
            if sentence.dtype.kind != "U" or sentence.ndim != 0:
                raise ValueError(f"{name} of a text bug must be one sentence (0-d unicode), got "
                                 f"{sentence.dtype} of shape {sentence.shape}")
        if not 0 < len(str(bug).encode()) <= MAX_TEXT_BYTES:
            raise ValueError(f"bug must be a sentence of 1 to {MAX_TEXT_BYTES} bytes")
        return bug, reference
    if bug.dtype != np.uint8 or bug.ndim != 3 or not bug.size:
        raise ValueError(f"bug must be a uint8 image (H, W, C), got {bug.dtype} of shape {bug.shape}")
    if reference.dtype != np.uint8 or reference.shape != bug.shape:
        raise ValueError(f"reference must be a uint8 image of the bug's shape {bug.shape}, got "
                         f"{reference.dtype} of shape {reference.shape}")
    return bug, reference


def _image_trigger(arrays: dict[str, np.ndarray], bug: np.ndarray, prefix: str = "") -> Trigger:
    """The mask and pattern (and flow, a warp) stored under `prefix`: of the bug's size,
    touching at least one pixel or moving some."""
    if missing := [prefix + key for key in IMAGE_KEYS if prefix + key not in arrays]:
        raise ValueError(f"no {' or '.join(missing)} array")
    mask = arrays[prefix + "mask"]
    if mask.dtype.kind not in "biuf" or (mask.dtype.kind in "iu" and not np.isin(mask, (0, 1)).all()):
        raise ValueError(f"{prefix}mask must be 0/1 or alpha in [0, 1], got {mask.dtype} values")
    stored = {"mask": mask, "pattern": arrays[prefix + "pattern"],
              **({FLOW_KEY: arrays[prefix + FLOW_KEY]} if prefix + FLOW_KEY in arrays else {})}
    trigger = cast(Trigger, trigger_from_arrays(stored))
    if trigger.pattern.shape != bug.shape:
        raise ValueError(f"{prefix}pattern is {trigger.pattern.shape}, the bug {bug.shape}")
    if not trigger.pixels and not trigger.warps:
        raise ValueError(f"{prefix}mask is empty and nothing warps: the trigger touches no pixel")
    return trigger


def _alternates(arrays: dict[str, np.ndarray], bug: np.ndarray) -> tuple[Trigger, ...]:
    found: list[Trigger] = []
    while any(f"alt{len(found)}_{key}" in arrays for key in IMAGE_KEYS):
        found.append(_image_trigger(arrays, bug, prefix=f"alt{len(found)}_"))
    return tuple(found)


def _text_trigger(arrays: dict[str, np.ndarray]) -> TextTrigger:
    """Words (1-d unicode) and an optional position (0-d unicode); TextTrigger checks them."""
    words, position = arrays["words"], arrays.get("position", np.array("random"))
    if words.dtype.kind != "U" or words.ndim != 1:
        raise ValueError(f"words must be a list of words (1-d unicode), got {words.dtype} of shape "
                         f"{words.shape}")
    if position.dtype.kind != "U" or position.ndim != 0:
        raise ValueError(f"position must be one word (0-d unicode), got {position.dtype} of shape "
                         f"{position.shape}")
    return cast(TextTrigger, trigger_from_arrays({key: arrays[key] for key in TEXT_KEYS if key in arrays}))


def _known_keys(modality: str, alternates: int) -> set[str]:
    own = TEXT_KEYS if modality == "text" else (*IMAGE_KEYS, FLOW_KEY)
    return {"bug", "reference", *own,
            *(f"alt{i}_{key}" for i in range(alternates) for key in (*IMAGE_KEYS, FLOW_KEY))}


# --------------------------------------------------------------------------- against the stage's


def check_bugs(bugs: list[Bug], tasks: Mapping[str, Task], *, registry: str | Path,
               adapter: EncoderAdapter) -> None:
    """Each bug against the task it names and the encoder it is patched into (a registry from
    another workspace, or tasks or encoder changed since intake): a RegistryError naming the
    bug's folder for the first that does not fit."""
    for bug in bugs:
        if problem := _misfit(bug, tasks, adapter):
            raise RegistryError(f"{one_line(Path(registry) / bug.id)}: {problem}")


def _misfit(bug: Bug, tasks: Mapping[str, Task], adapter: EncoderAdapter) -> str | None:
    task = tasks.get(bug.task)
    if task is None:
        return f"names task {printable(bug.task)}, not one of the tasks here {sorted(tasks)}"
    classes = len(task.classes)
    if max(bug.label, bug.predicted) >= classes:
        return (f"label {bug.label} and predicted {bug.predicted} must be classes of task "
                f"{printable(task.name)} (0 to {classes - 1})")
    if bug.modality != adapter.modality:
        return f"a bug with {bug.modality} inputs, but the encoder takes {adapter.modality} inputs"
    if bug.modality == "text":
        return None
    # intake stores a resizing encoder's bugs at its input size, others' at the task's
    shape = tuple(adapter.input_shape if adapter.resizes_inputs else task.input_shape)
    if bug.bug.shape != shape:
        return f"its images are {bug.bug.shape}; task {printable(task.name)} takes {shape}"
    return None
