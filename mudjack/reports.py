"""Bug reports as clients send them: `<id>.json` metadata plus the input file it names.

    {"id": "r-0001", "task": "digits", "label": 3, "input": "r-0001.png",
     "predicted": 0, "note": "free text"}

`label` is the TRUE label; `predicted` (optional) what the client saw. The input is
an image file (PNG/JPEG) of the task's input size, read as uint8 RGB.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mudjack.data import load_image
from mudjack.io import sha256_bytes

MAX_REPORT_BYTES = 1 << 20
REQUIRED_FIELDS = ("id", "task", "label", "input")


class ReportError(ValueError):
    """A report that cannot be used; the message is the reason, for the intake log."""


@dataclass
class BugReport:
    id: str
    task: str
    label: int
    image: np.ndarray  # uint8 (H, W, 3)
    path: Path

    @property
    def sha256(self) -> str:
        return sha256_bytes(self.image.tobytes())


def _read_metadata(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"unreadable report JSON: {err}") from err
    if not isinstance(meta, dict):
        raise ReportError("report JSON is not an object")
    missing = [key for key in REQUIRED_FIELDS if key not in meta]
    if missing:
        raise ReportError(f"missing fields: {', '.join(missing)}")
    if not isinstance(meta["label"], int) or isinstance(meta["label"], bool):
        raise ReportError(f"label must be an integer, got {meta['label']!r}")
    return meta


def _read_input(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ReportError(f"input file {path.name} does not exist")
    if path.stat().st_size > MAX_REPORT_BYTES:
        raise ReportError(f"input file {path.name} is larger than {MAX_REPORT_BYTES} bytes")
    try:
        return load_image(path)
    except Exception as err:  # PIL raises many types for undecodable files
        raise ReportError(f"input file {path.name} cannot be decoded: {err}") from err


def read_report(path: str | Path) -> BugReport:
    path = Path(path)
    meta = _read_metadata(path)
    input_path = (path.parent / str(meta["input"])).resolve()
    if path.parent.resolve() not in input_path.parents:
        raise ReportError(f"input {meta['input']!r} points outside the inbox")
    image = _read_input(input_path)
    return BugReport(str(meta["id"]), str(meta["task"]), int(meta["label"]), image, path)


def report_paths(inbox: str | Path) -> list[Path]:
    inbox = Path(inbox)
    return sorted(inbox.glob("*.json")) if inbox.is_dir() else []
