"""The DVC stages, one module each (`python -m stages.<name>`).

An input the stage cannot use (bad weights, an encoder config or parameters, a missing or
damaged file an earlier stage wrote: the bug registry, a summary, a log), or a file the
operating system will not let it read or write (a full disk, a read-only or missing folder, a
file where a folder should be), ends it with the error's one-line reason on stderr and exit
code 1, not a traceback: these errors name the file and the problem, and a traceback would
bury that line in the output `mudjack` shows.
"""

from __future__ import annotations

import faulthandler
import sys
from pathlib import Path
from types import TracebackType

from mudjack.config import ParamsError
from mudjack.io import ArtifactError
from mudjack.safeload import WeightsError

# ArtifactError: RegistryError too; OSError: ENOSPC, EACCES, EEXIST... with the path in the message
INPUT_ERRORS = (WeightsError, ParamsError, ArtifactError, OSError)


def _report_input_errors(kind: type[BaseException], error: BaseException,
                         traceback: TracebackType | None) -> None:
    if issubclass(kind, INPUT_ERRORS):
        print(f"{Path(sys.argv[0]).stem}: {error}", file=sys.stderr)
    else:
        sys.__excepthook__(kind, error, traceback)


sys.excepthook = _report_input_errors
# A crash inside torch (a segfault) would end the stage with no word: say where it happened.
faulthandler.enable()
