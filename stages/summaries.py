"""The shapes of the stage summaries the report stage and the promotion gates read: mappings
are mappings, numbers are numbers. A damaged file is one ArtifactError naming it and the first
field that is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, StrictBool, StrictFloat, StrictInt, StrictStr, TypeAdapter, ValidationError

from mudjack.io import ArtifactError, read_json_bounded
from mudjack.safepath import one_line
from stages.artifacts import EXPORT_SUMMARY, METRICS, PATCH_LOG, PATCH_SUMMARY, RETRAIN_SUMMARY

Numbers = dict[str, StrictFloat | None]  # a model's metrics (None: not measured), a patch log row


class TriggerResult(BaseModel):
    p_value: StrictFloat = 1.0
    backdoored: Numbers = {}
    patched: Numbers = {}


class Exposure(BaseModel):
    exposed: StrictBool | None = None
    triggers: dict[str, TriggerResult] = {}


class TaskResult(BaseModel):
    backdoored: Numbers
    patched: Numbers
    per_head: dict[str, Any] = {}
    exposure: Exposure = Exposure()


class RetrainSummary(BaseModel):
    tasks: dict[str, TaskResult]


class PatchSummary(BaseModel):
    seconds: StrictFloat
    method: StrictStr
    bugs: StrictInt


class ExportSummary(BaseModel):
    max_abs_diff: StrictFloat


class Metrics(BaseModel):
    """reports/metrics.json, as the promotion gates (pipeline.gates) read it."""

    tasks: dict[str, TaskResult]
    export: ExportSummary


SHAPES = {RETRAIN_SUMMARY: TypeAdapter(RetrainSummary), PATCH_SUMMARY: TypeAdapter(PatchSummary),
          EXPORT_SUMMARY: TypeAdapter(ExportSummary), PATCH_LOG: TypeAdapter(list[Numbers]),
          METRICS: TypeAdapter(Metrics)}


def checked(path: Path, shape: TypeAdapter) -> Any:
    """The JSON in `path` if it has `shape`; an ArtifactError naming the file and the first
    field that does not."""
    document = read_json_bounded(path)
    try:
        shape.validate_python(document)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(key) for key in first["loc"])
        reason = first["msg"].split(" or instance of ")[0]  # the class named there means nothing here
        raise ArtifactError(one_line(f"{path}: {where + ': ' if where else ''}{reason}")) from None
    return document  # as written, the keys no shape names included
