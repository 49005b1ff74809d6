"""What several stages share: loading the deployed model and the known truth, if any, with
what is left out said on stderr."""

from __future__ import annotations

import sys

from mudjack import deployed
from mudjack.deployed import Deployed
from mudjack.triggers import Trigger
from mudjack.truth import TruthPair, read_truth
from stages.config import PathsParams


def load_deployed(paths: PathsParams) -> Deployed:
    """The deployed model `paths` names; each head left out (mudjack.deployed) is named on
    stderr, and its task's reports are refused with the reason while the other tasks go on."""
    model = deployed.load_deployed(paths.encoder, paths.heads, paths.tasks)
    for problem in model.left_out.values():
        print(f"deployed head left out: {problem}", file=sys.stderr)
    return model


def load_truth(paths: PathsParams) -> tuple[Trigger | None, dict[str, int]]:
    """The true trigger and per-task targets when the scenario knows them, else (None, {}).
    Of a scenario with several triggers (a dual backdoor), the first."""
    pairs = load_truth_pairs(paths)
    return pairs[0] if pairs else (None, {})


def load_truth_pairs(paths: PathsParams) -> list[TruthPair]:
    """Every (true trigger, per-task targets) pair the scenario planted; [] when unknown, and
    when the truth file is malformed: its reason goes to stderr and the run goes on as if the
    truth were unknown (targets inferred, the bugs' reversed triggers measured)."""
    pairs, problem = read_truth(paths.truth)
    say_rejected(paths.truth, problem)
    return pairs


def say_rejected(path: str, problem: str | None) -> None:
    """On stderr, why the truth file is not used (nothing when it is)."""
    if problem:
        print(f"truth: {path} rejected ({problem}); going on without it", file=sys.stderr)
