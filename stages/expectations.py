"""Great Expectations (1.x) suites over the metadata tables built by `mudjack.metadata`.

Data tables (shadow, each task's train and test) must pass whole; bug reports are judged one
by one: a bad report is rejected with its reasons and never stops the run. GX runs in an
ephemeral context and is imported lazily (it takes seconds to import).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mudjack.encoders import EncoderAdapter, read_adapter
from mudjack.metadata import (
    TEXT_DTYPE,
    ImageSet,
    TaskSpec,
    claim_errors,
    folders_without_task,
    image_sets,
    report_table,
    tasks_metadata,
)
from mudjack.reports import ARRAY_DTYPES, ID_PATTERN
from mudjack.safepath import one_line, printable

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuite, ExpectationSuiteValidationResult
    from great_expectations.core.expectation_validation_result import ExpectationValidationResult

SUMMARY = {"result_format": "SUMMARY"}
COMPLETE = {"result_format": "COMPLETE"}  # lists every unexpected row index: per-report verdicts
MAX_EXAMPLES = 5
MAX_CHARS = 2000  # default longest sentence of a text table or report (validate.max_chars)
NO_NAN = [False]
# The rejection code (docs/reports.md) of a report failing an expectation on each column.
COLUMN_CODES = {
    "report_id": "bad_id", "id_matches_file": "bad_id", "task": "unknown_task", "label": "bad_label",
    "height": "bad_shape", "width": "bad_shape", "channels": "bad_shape", "dtype": "bad_dtype",
    "min": "out_of_range", "max": "out_of_range", "has_nan": "nan", "length": "too_large",
    "readable": "unreadable",
}


class GXRunner:
    """One quiet ephemeral GX context whose dataframe asset validates any frame against a suite."""

    def __init__(self) -> None:
        os.environ["GX_ANALYTICS_ENABLED"] = "false"
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        asset = self.context.data_sources.add_pandas("mudjack").add_dataframe_asset("table")
        self._whole = asset.add_batch_definition_whole_dataframe("whole")

    def validate(
        self, frame: pd.DataFrame, suite: ExpectationSuite, result_format: dict[str, str]
    ) -> ExpectationSuiteValidationResult:
        batch = self._whole.get_batch(batch_parameters={"dataframe": frame})
        return batch.validate(suite, result_format=result_format)


def image_suite(image_set: ImageSet, max_pixel: float, min_rows: int,
                max_chars: int = MAX_CHARS) -> ExpectationSuite:
    """Shape, dtype, range, NaN, duplicate and (for labelled sets) label checks of a data table;
    for a text table: dtype, length in [1, max_chars], no blank sentence, duplicates, labels."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=image_set.name)
    content = (_text_expectations(max_chars, table=True) if image_set.modality == "text"
               else _image_expectations(image_set.input_shape, max_pixel))
    expectations = [
        gxe.ExpectTableRowCountToBeBetween(min_value=min_rows),
        *content,
        gxe.ExpectColumnValuesToBeUnique(column="sha256"),
    ]
    if image_set.classes is not None:
        expectations += [
            gxe.ExpectColumnValuesToNotBeNull(column="label"),
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(image_set.classes)),
        ]
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def _image_expectations(
    shape: Sequence[int], max_pixel: float, row_condition: Any = None,
    dtypes: Sequence[str] = ("uint8",),
) -> list[Any]:
    import great_expectations.expectations as gxe

    cond = {"row_condition": row_condition} if row_condition is not None else {}
    dims = [
        gxe.ExpectColumnValuesToBeInSet(column=col, value_set=[int(v)], **cond)
        for col, v in zip(("height", "width", "channels")[-len(shape):], shape, strict=True)
    ]
    return dims + [
        gxe.ExpectColumnValuesToBeInSet(column="dtype", value_set=list(dtypes), **cond),
        gxe.ExpectColumnValuesToBeBetween(column="min", min_value=0, **cond),
        gxe.ExpectColumnValuesToBeBetween(column="max", max_value=max_pixel, **cond),
        gxe.ExpectColumnValuesToBeInSet(column="has_nan", value_set=NO_NAN, **cond),
    ]


def _text_expectations(max_chars: int, row_condition: Any = None, table: bool = False) -> list[Any]:
    """Sentences: text dtype, 1 to `max_chars` characters; a table also flags blank rows."""
    import great_expectations.expectations as gxe

    cond = {"row_condition": row_condition} if row_condition is not None else {}
    checks = [
        gxe.ExpectColumnValuesToBeInSet(column="dtype", value_set=[TEXT_DTYPE], **cond),
        gxe.ExpectColumnValuesToNotBeNull(column="length", **cond),
        gxe.ExpectColumnValuesToBeBetween(column="length", min_value=1, max_value=max_chars, **cond),
    ]
    return checks + ([gxe.ExpectColumnValuesToBeInSet(column="blank", value_set=[False])] if table else [])


def report_suite(tasks: Mapping[str, TaskSpec], max_pixel: float,
                 max_chars: int = MAX_CHARS, *, any_size: bool = False) -> ExpectationSuite:
    """Row-wise checks of the reports table; task-specific ones are conditioned on the task.
    With `any_size` (an encoder that resizes its inputs), images of any height and width pass.

    The same rules as the schema in `mudjack.reports` (which intake applies again): `.npy`
    inputs may be integer or float arrays, so their range and NaN checks are meaningful. Ids
    are unique by rule (the first report file keeps its id: `mudjack.metadata`), not by an
    expectation that would reject the genuine report with its imitator.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    suite = gx.ExpectationSuite(name="reports")
    expectations: list[Any] = [
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("report_id", "task", "label")),
        gxe.ExpectColumnValuesToMatchRegex(column="report_id", regex=ID_PATTERN),
        gxe.ExpectColumnValuesToBeInSet(column="id_matches_file", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="task", value_set=sorted(tasks)),
        gxe.ExpectColumnValuesToBeInSet(column="readable", value_set=[True]),
    ]
    for name, task in tasks.items():
        on_task = Column("task") == name
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(
                column="label", value_set=list(task.classes), row_condition=on_task
            )
        )
        if task.modality == "text":
            expectations += _text_expectations(max_chars, on_task)
        else:
            shape = task.input_shape[2:] if any_size else task.input_shape
            expectations += _image_expectations(shape, max_pixel, on_task, ARRAY_DTYPES)
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def validate_tables(
    sets: Sequence[ImageSet], cfg: Mapping[str, Any], runner: GXRunner
) -> list[dict[str, Any]]:
    """One plain result dict per data table."""
    results = []
    for image_set in sets:
        suite = image_suite(image_set, cfg["max_pixel"], cfg["min_rows"],
                            cfg.get("max_chars", MAX_CHARS))
        outcome = runner.validate(image_set.frame, suite, SUMMARY)
        failures = [_failure(r) for r in outcome.results if not r.success]
        results.append({
            "table": image_set.name,
            "success": bool(outcome.success),
            "rows": len(image_set.frame),
            "failures": failures,
        })
    return results


def _failure(result: ExpectationValidationResult) -> dict[str, Any]:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "column")}
    info = result.result or {}
    return _plain({
        "expectation": config.type,
        "column": config.kwargs.get("column"),
        "kwargs": kwargs,
        "unexpected_count": info.get("unexpected_count"),
        "unexpected_examples": info.get("partial_unexpected_list", [])[:MAX_EXAMPLES],
        "unexpected_rows": info.get("partial_unexpected_index_list", [])[:MAX_EXAMPLES],
        "observed_value": info.get("observed_value"),
        "exception": _raised(result),
    })


def _raised(result: ExpectationValidationResult) -> str | None:
    """The error message when the expectation itself crashed, else None."""
    info = result.exception_info or {}
    return str(info.get("exception_message")) if info.get("raised_exception") else None


def validate_reports(
    frame: pd.DataFrame, tasks: Mapping[str, TaskSpec], cfg: Mapping[str, Any], runner: GXRunner,
    *, any_size: bool = False,
) -> dict[str, Any]:
    """Per-report verdicts keyed by report file name: {"accepted": [file...],
    "rejected": {file: [reasons...]}, "codes": {file: code}} (one code per rejected file)."""
    if frame.empty:
        return {"accepted": [], "rejected": {}, "codes": {}}
    suite = report_suite(tasks, cfg["max_pixel"], cfg.get("max_chars", MAX_CHARS), any_size=any_size)
    outcome = runner.validate(frame, suite, COMPLETE)
    reasons: dict[Any, list[str]] = {
        i: [str(frame.at[i, "error"])] if isinstance(frame.at[i, "error"], str) else []
        for i in frame.index
    }
    codes = {i: frame.at[i, "code"] if isinstance(frame.at[i, "code"], str) else None
             for i in frame.index}
    for result in outcome.results:
        if result.success:
            continue
        if error := _raised(result):  # cannot tell which rows: reject them all
            for i in frame.index:
                reasons[i].append(f"{result.expectation_config.type} could not run: {error}")
                codes[i] = codes[i] or "internal"
            continue
        for i in result.result.get("unexpected_index_list") or []:
            reasons[i].append(_reason(result, frame, i))
            codes[i] = codes[i] or _code(result, frame, i)
    for i, err in claim_errors(frame, [i for i in frame.index if not reasons[i]]).items():
        reasons[i].append(str(err))
        codes[i] = err.code
    files = frame["file"]
    return {
        "accepted": [files[i] for i in frame.index if not reasons[i]],
        "rejected": {files[i]: reasons[i] for i in frame.index if reasons[i]},
        "codes": {files[i]: codes[i] or "validation" for i in frame.index if reasons[i]},
    }


def _code(result: ExpectationValidationResult, frame: pd.DataFrame, i: Any) -> str:
    """The code intake gives the same report (docs/reports.md)."""
    config = result.expectation_config
    column = config.kwargs.get("column")
    if column in ("dtype", "length") and _other_modality(config.kwargs, frame.at[i, "dtype"]):
        return "bad_shape"  # intake: a sentence for an image task, or pixels for a text task
    if config.type == "expect_column_values_to_not_be_null":
        return "missing_fields"
    if column == "length" and frame.at[i, "length"] < 1:
        return "empty"
    return COLUMN_CODES.get(column, "validation")


def _other_modality(kwargs: Mapping[str, Any], dtype: Any) -> bool:
    """Whether a report's input (`dtype` column) is of the other modality than the expectation's."""
    expects_text = kwargs["column"] == "length" or TEXT_DTYPE in kwargs.get("value_set", ())
    return isinstance(dtype, str) and (dtype == TEXT_DTYPE) != expects_text


def _reason(result: ExpectationValidationResult, frame: pd.DataFrame, i: Any) -> str:
    config = result.expectation_config
    kwargs = config.kwargs
    column = kwargs.get("column")
    value = _plain(frame.at[i, column]) if column in frame else None
    if config.type == "expect_column_values_to_not_be_null":
        text = f"{column} is missing"
    elif config.type == "expect_column_values_to_be_in_set":
        text = f"{column}={value!r} not in {_short(kwargs['value_set'])}"
    elif config.type == "expect_column_values_to_be_between":
        text = f"{column}={value!r} outside [{kwargs.get('min_value')}, {kwargs.get('max_value')}]"
    elif config.type == "expect_column_values_to_be_unique":
        text = f"{column}={value!r} is not unique"
    elif config.type == "expect_column_values_to_match_regex":
        text = f"{column}={value!r} does not match {kwargs['regex']}"
    else:
        text = f"{column}={value!r} unexpected"
    if kwargs.get("row_condition") is not None:
        text += f" (task {frame.at[i, 'task']!r})"
    return f"{config.type}: {text}"


def _short(values: Sequence[Any], limit: int = 10) -> str:
    values = list(values)
    if len(values) <= limit:
        return repr(values)
    return f"[{', '.join(map(repr, values[:limit]))}, ... ({len(values)} values)]"


def _show(value: Any) -> str:
    return _short(value) if isinstance(value, list) else repr(value)


def _clip(value: Any, width: int = 16) -> Any:
    """Long strings (hashes) shortened for display."""
    return value[:width] + "..." if isinstance(value, str) and len(value) > width else value


def _plain(value: Any) -> Any:
    """A JSON-safe copy: numpy scalars to Python, NaN to None, unknown objects to text."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)  # pandas stores nullable ints as floats
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "to_json_dict"):
        return _plain(value.to_json_dict())
    return str(value)


def format_failures(results: Sequence[Mapping[str, Any]]) -> str:
    """A readable multi-line list of every failed expectation ('' when all passed)."""
    lines: list[str] = []
    for table in results:
        if table["success"]:
            continue
        lines.append(f"{table['table']} ({table['rows']} rows) FAILED:")
        for f in table["failures"]:
            target = f"column {f['column']!r}" if f["column"] else "table"
            args = ", ".join(f"{k}={_show(v)}" for k, v in f["kwargs"].items())
            args = f" ({args})" if args else ""
            if f["exception"]:
                found = f"raised {f['exception']}"
            elif f["unexpected_count"] is not None:
                examples = [_clip(v) for v in f["unexpected_examples"]]
                found = f"{f['unexpected_count']} unexpected, e.g. {examples}"
                found += f" at rows {f['unexpected_rows']}" if f["unexpected_rows"] else ""
            else:
                found = f"observed {f['observed_value']!r}"
            lines.append(f"  - {f['expectation']} on {target}{args}: {found}")
    return "\n".join(lines)


def format_rejections(reports: Mapping[str, Any]) -> str:
    """One line per rejected report file: its name (escaped), code and reasons ('' when none
    was rejected)."""
    codes = reports.get("codes", {})
    return "\n".join(
        f"validate: {printable(file)}: rejected [{codes.get(file, 'validation')}]: "
        + one_line("; ".join(reasons))
        for file, reasons in reports["rejected"].items()
    )


def check_task_sizes(tasks: Mapping[str, TaskSpec], adapter: EncoderAdapter) -> None:
    """ValueError when an image task's images are not the size a fixed-size encoder takes, or
    have other channels than an encoder that resizes takes (every model run on them would fail,
    or a single channel would be broadcast to three unnoticed)."""
    if adapter.modality != "image":
        return
    takes = tuple(adapter.input_shape)
    compared = slice(2, None) if adapter.resizes_inputs else slice(None)  # resizing: channels only
    takes_what = (f"{_size(takes[2:])}-channel images of any size" if adapter.resizes_inputs
                  else f"{_size(takes)} and does not resize them")
    for spec in tasks.values():
        if spec.modality == "image" and tuple(spec.input_shape)[compared] != takes[compared]:
            raise ValueError(f"task {spec.name!r} holds {_size(spec.input_shape)} images but the encoder "
                             f"({adapter.name}) takes {takes_what}")


def check_task_splits(tasks: Mapping[str, TaskSpec], sets: Sequence[ImageSet]) -> None:
    """ValueError when a task's train split cannot teach its test split: fewer than two classes
    in train (a constant head), or a test label no train image has (a head never predicts it)."""
    labels = {s.name: set(s.frame["label"].dropna()) for s in sets if s.classes is not None}
    for name, spec in tasks.items():
        train, test = labels[f"{name}/train"], labels[f"{name}/test"]
        where = f"{spec.folder / 'train.npz'}: task {name!r}"
        if len(train) < 2:
            raise ValueError(f"{where}: the train split holds {len(train)} class(es) {sorted(train)}; "
                             "a head needs at least two to learn anything")
        if unseen := sorted(test - train):
            raise ValueError(f"{where}: no train image has the test label(s) {_short(unseen)}; "
                             "a head trained on it can never predict them")


def _size(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def validate_all(
    paths: Mapping[str, str | Path], cfg: Mapping[str, Any], runner: GXRunner | None = None
) -> dict[str, Any]:
    """Validate the shadow set, every task's data and the inbox named by `paths`."""
    runner = runner or GXRunner()
    tasks = tasks_metadata(paths["tasks"])
    encoder = Path(paths.get("encoder") or "")
    adapter = read_adapter(encoder) if encoder.is_file() else None
    if adapter is not None:
        check_task_sizes(tasks, adapter)
    any_size = adapter is not None and adapter.resizes_inputs  # shadow, reports resized as read
    sets = image_sets(paths["shadow"], tasks, any_size=any_size)
    tables = validate_tables(sets, cfg, runner)
    if all(t["success"] for t in tables):  # labels are judged once the tables hold valid ones
        check_task_splits(tasks, sets)
    reports = validate_reports(report_table(Path(paths["inbox"]), tasks), tasks, cfg, runner,
                               any_size=any_size)
    return {
        "passed": all(t["success"] for t in tables),
        "tables": tables,
        "reports": reports,
        "not_tasks": folders_without_task(paths["tasks"]),
    }
