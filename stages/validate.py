"""Stage `validate`: Great Expectations suites over the data and the bug-report inbox.

Writes reports/validation.json. Exits 1 when a data table (shadow, train, test) fails or
cannot be read; rejected bug reports are only listed (intake skips them), one line per file.
First, special files (FIFO, device, socket, a link leaving the inbox) are moved out of the
inbox into the quarantine folder, and temporaries of a killed earlier run are removed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mudjack.io import ready_outputs, write_json
from mudjack.safepath import quarantine
from stages.artifacts import QUARANTINE, VALIDATION
from stages.config import inbox_folder, setup_stage
from stages.expectations import GXRunner, format_failures, format_rejections, validate_all


def main(runner: GXRunner | None = None) -> int:
    """Run the stage in the current folder; `runner` reuses a GX context (tests, benchmarks)."""
    params = setup_stage()
    ready_outputs(VALIDATION)
    try:
        inbox = inbox_folder(params.paths)  # a mistyped inbox is an error, not an empty run
        for moved in quarantine(inbox, QUARANTINE):
            print(moved.log_line(), file=sys.stderr)
        result = validate_all(params.paths.model_dump(), params.validation.model_dump(), runner)
    except (OSError, KeyError, ValueError) as err:  # unreadable data, no inbox: the stage fails
        write_json(VALIDATION, {"passed": False, "error": f"{type(err).__name__}: {err}",
                         "tables": [], "reports": {"accepted": [], "rejected": {}, "codes": {}}})
        print(f"validate: cannot read the data: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    write_json(VALIDATION, result)
    for folder in result["not_tasks"]:
        print(f"validate: {Path(params.paths.tasks) / folder} holds no task.json: not a task, left out",
              file=sys.stderr)
    if rejections := format_rejections(result["reports"]):
        print(rejections)
    if not result["passed"]:
        print("validate: data failed its expectations:\n" + format_failures(result["tables"]),
              file=sys.stderr)
        return 1
    accepted = len(result["reports"]["accepted"])
    print(f"validate: {len(result['tables'])} tables passed; {accepted} reports accepted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
