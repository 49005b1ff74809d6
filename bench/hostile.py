"""Benchmark (not a test): hostile inbox entries and client reports, by class, through the
validate and intake stages and `mudjack submit`.

    PYTHONPATH=. .venv/bin/python bench/hostile.py              # ~270 cases
    PYTHONPATH=. .venv/bin/python bench/hostile.py --repeat 1   # one of each kind

Each case runs in a fresh copy of a tiny digits workspace built in a temporary folder (a
random encoder and head: the default scenario's shape, no ../shared, no training), with one
genuine report beside the hostile entries (tests/hostile/generate.py makes both). A case is

- rejected with a documented code: every hostile file got its expected code (or was
  quarantined, or, when well-formed, accepted);
- crashed: a stage raised, validate exited non-zero, an `internal` code, a CLI traceback;
- hung: it ran past --timeout seconds (SIGALRM to the main thread interrupts a blocking open);
- wrote outside: an entry beside the workspace (or, for submit, outside the inbox) changed;
- genuine lost: the genuine report's verdict differs from its verdict in a clean inbox.

Prints the table and writes bench/results/hostile.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mudjack.io import write_json
from tests.hostile.generate import (
    CLASSES,
    SUBMIT_KINDS,
    Workspace,
    build_workspace,
    cases,
    init_dvc,
    submit_case,
)
from tests.hostile.judge import judge, judge_submit, outside_inbox, run_stages, run_submit, tree
from tests.hostile.test_inbox import copy

RESULTS = Path(__file__).parent / "results" / "hostile.json"
ROWS = ("tried", "rejected with a documented code", "wrong or missing code", "crashed", "hung",
        "wrote outside", "genuine reports lost")


class Hung(BaseException):
    """Past the deadline: a BaseException, so the stages' per-report `except Exception` (which
    turns a report's failure into its rejection) cannot swallow it."""


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    def expire(_signum: int, _frame: Any) -> None:
        raise Hung(f"over {seconds} s")

    # The alarm is sent to the main thread itself: a process-wide SIGALRM may land on a
    # helper thread (torch, GX) and never interrupt the main thread's blocking open().
    previous = signal.signal(signal.SIGALRM, expire)
    timer = threading.Timer(seconds, signal.pthread_kill, (threading.main_thread().ident, signal.SIGALRM))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        signal.signal(signal.SIGALRM, previous)


def stage_case(template: Workspace, folder: Path, name: str, variant: int, *, runner: Any,
               baseline: dict[str, Any]) -> tuple[str, list[str]]:
    ws = copy(template, folder)
    expected = CLASSES[name](ws, f"{name}-{variant}", variant)
    before = tree(ws.root.parent, ws.root)
    problems = judge(ws, expected, run_stages(ws, runner), baseline)
    if tree(ws.root.parent, ws.root) != before:
        return "wrote outside", ["an entry beside the workspace changed"]
    return _verdict(problems)


def submit_run(template: Workspace, folder: Path, variant: int) -> tuple[str, list[str]]:
    ws = copy(template, folder)
    argument, want = submit_case(ws, ws.root.parent / "mail", variant)
    before = outside_inbox(ws)
    problems = judge_submit(ws, want, *run_submit(ws, argument))
    if outside_inbox(ws) != before:
        return "wrote outside", ["an entry outside the inbox changed"]
    return _verdict(problems)


def _verdict(problems: dict[str, list[str]]) -> tuple[str, list[str]]:
    for kind, row in (("crashed", "crashed"), ("lost", "genuine reports lost"),
                      ("code", "wrong or missing code"), ("temporaries", "wrong or missing code")):
        if problems.get(kind):
            return row, problems[kind]
    return "rejected with a documented code", []


def run_case(run: Callable[[], tuple[str, list[str]]], timeout: int) -> tuple[str, list[str]]:
    try:
        with deadline(timeout):
            return run()
    except Hung as err:
        return "hung", [str(err)]
    except Exception as err:  # the harness itself failed on this case: count it, go on
        return "crashed", [f"{type(err).__name__}: {err}"]


def bench(repeat: int, timeout: int) -> dict[str, Any]:
    from stages.expectations import GXRunner

    runner = GXRunner()
    with tempfile.TemporaryDirectory(prefix="mudjack-hostile-") as tmp:
        base = Path(tmp)
        template = build_workspace(base / "template")
        init_dvc(template.root)
        clean = run_stages(copy(template, base / "baseline"), runner)
        baseline = clean.records[0]
        jobs = [(f"stages/{name}", lambda f, n=name, v=variant: stage_case(
                    template, f, n, v, runner=runner, baseline=baseline)) for name, variant in cases(repeat)]
        jobs += [("submit", lambda f, v=variant: submit_run(template, f, v))
                 for variant in range(len(SUBMIT_KINDS) * repeat)]
        counts: Counter[str] = Counter()
        by_class: dict[str, Counter[str]] = {}
        failures = []
        start = time.perf_counter()
        for i, (label, job) in enumerate(jobs):
            folder = base / f"case-{i}"
            folder.mkdir()
            row, details = run_case(lambda j=job, f=folder: j(f), timeout)
            shutil.rmtree(folder, ignore_errors=True)
            counts[row] += 1
            by_class.setdefault(label, Counter())[row] += 1
            if row != "rejected with a documented code":
                failures.append({"case": f"{label} #{i}", "row": row, "details": details[:3]})
    counts["tried"] = len(jobs)
    return {"counts": {row: counts[row] for row in ROWS},
            "by_class": {k: dict(v) for k, v in sorted(by_class.items())},
            "failures": failures[:50], "seconds": round(time.perf_counter() - start, 1),
            "baseline_genuine": {"decision": baseline["decision"], "error": baseline.get("error")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=4, help="variants of each kind (default 4)")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per case before it counts as hung")
    args = parser.parse_args()
    result = bench(args.repeat, args.timeout)
    width = max(map(len, ROWS))
    for row in ROWS:
        print(f"{row:<{width}}  {result['counts'][row]:>5}")
    for failure in result["failures"][:10]:
        print(json.dumps(failure)[:300])
    write_json(RESULTS, result)
    print(f"wrote {RESULTS} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
