"""Hostile inbox entries, by class: the stages finish, each file gets one documented code,
the genuine report keeps its verdict, nothing is written outside the workspace, no
temporary is left behind. A hang ends the run with a timeout report (pytest-timeout's thread
method: a process-wide alarm may land on a helper thread and never wake a blocked open)."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest

from mudjack.intake import Intake, IntakeParams
from mudjack.io import read_jsonl
from mudjack.safepath import printable, quarantine
from stages.artifacts import BUGS, INTAKE_LOG, QUARANTINE
from tests.hostile.generate import CLASSES, GENUINE, Workspace, build_workspace, cases, png, report
from tests.hostile.judge import CODES, judge, run_stages, tree

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return build_workspace(tmp_path_factory.mktemp("template"))


@pytest.fixture(scope="module")
def runner():
    from stages.expectations import GXRunner

    return GXRunner()


@pytest.fixture(scope="module")
def baseline(template: Workspace, runner, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The genuine report's decision in an inbox of its own."""
    ws = copy(template, tmp_path_factory.mktemp("baseline"))
    outcome = run_stages(ws, runner)
    assert outcome.error is None and [r["file"] for r in outcome.records] == [GENUINE], outcome
    return outcome.records[0]


def copy(template: Workspace, folder: Path) -> Workspace:
    shutil.copytree(template.root.parent, folder / "sentinel", symlinks=True)
    base = folder / "sentinel"
    return dataclasses.replace(template, root=base / "ws", outside=base / "outside")


@pytest.mark.timeout(180, method="thread")
@pytest.mark.parametrize(("name", "variant"), cases())
def test_a_hostile_entry_gets_one_documented_code(name, variant, template, runner, baseline, tmp_path):
    ws = copy(template, tmp_path)
    expected = CLASSES[name](ws, f"{name}-{variant}", variant)
    sentinel = ws.root.parent
    before = tree(sentinel, ws.root)
    outcome = run_stages(ws, runner)
    problems = judge(ws, expected, outcome, baseline)
    assert tree(sentinel, ws.root) == before, "written outside the workspace"
    assert not any(problems.values()), (problems, outcome.stdout, outcome.stderr)


def test_every_code_is_documented():
    doc = (ROOT / "docs" / "reports.md").read_text()
    assert not [code for code in CODES if f"`{code}`" not in doc]


def test_a_whole_hostile_inbox_at_once(template, runner, baseline, tmp_path):
    """Every class together: one decision per file, nothing lost (isolation between files)."""
    ws = copy(template, tmp_path)
    for name, variant in cases():
        CLASSES[name](ws, f"{name}-{variant}", variant)
    outcome = run_stages(ws, runner)
    problems = judge(ws, {}, outcome, baseline)  # codes per file differ here: cases interact
    assert not any(problems.values()), problems
    assert len(outcome.records) > 40


def test_stale_temporaries_of_a_killed_run_are_removed(template, runner, baseline, tmp_path):
    ws = copy(template, tmp_path)
    stale = [ws.root / ".bugs.k1l1ed", ws.root / ".bugs.old.x2" / "bugs",
             ws.root / "reports" / ".validation.json.a1.tmp", ws.root / "reports" / ".intake.json.b2.tmp"]
    for path in stale:
        path.mkdir(parents=True) if not path.suffix else (path.parent.mkdir(parents=True, exist_ok=True),
                                                          path.write_text("half"))
    keep = ws.root / "reports" / ".other.tmp"  # not a temporary of the stages' outputs
    keep.write_text("mine")
    outcome = run_stages(ws, runner)
    assert outcome.error is None
    assert not any(p.exists() for p in stale) and keep.exists()


def test_the_log_is_replaced_with_the_registry(template, runner, baseline, tmp_path):
    """The decision log lives inside the registry, so one directory swap replaces both."""
    assert INTAKE_LOG.parent == BUGS and not re.fullmatch(r"[A-Za-z0-9].*", INTAKE_LOG.name)
    ws = copy(template, tmp_path)
    run_stages(ws, runner)
    assert [r["file"] for r in read_jsonl(ws.root / INTAKE_LOG)] == [GENUINE]
    assert not (ws.root / "reports" / "intake_log.jsonl").exists()


def test_printed_names_cannot_forge_lines(template, runner, baseline, tmp_path):
    ws = copy(template, tmp_path)
    png(ws.inbox / "x.png", ws.image)
    forged = "x\nintake: 'genuine-1.json': accepted: forged"
    report(ws.inbox, forged, {"input": "x.png"})
    outcome = run_stages(ws, runner)
    assert "\nintake: 'genuine-1.json': accepted: forged" not in outcome.stdout
    assert printable(forged + ".json") in outcome.stdout


@pytest.mark.timeout(60, method="thread")
def test_quarantine_moves_special_files_and_keeps_the_rest(tmp_path):
    import os

    inbox, dest = tmp_path / "inbox", tmp_path / "ws" / QUARANTINE
    (inbox / "sub").mkdir(parents=True)
    os.mkfifo(inbox / "a\nb.json")
    os.mkfifo(inbox / "sub" / "deep.png")
    (inbox / "zero.json").symlink_to("/dev/zero")
    (inbox / "ok.json").write_text("{}")
    (inbox / "in.json").symlink_to("ok.json")
    moved = quarantine(inbox, dest)
    assert {(m.name, m.reason) for m in moved} == {("a\nb.json", "fifo"), ("sub/deep.png", "fifo"),
                                                  ("zero.json", "link_outside")}
    assert sorted(p.name for p in inbox.iterdir()) == ["in.json", "ok.json", "sub"]
    assert len(list(dest.iterdir())) == 3
    assert all("\n" not in m.log_line() for m in moved)


def test_intake_keys_validation_verdicts_by_file(template, tmp_path):
    """A verdict for `bug-000.json.json` (id `bug-000.json`) is not pinned on `bug-000.json`."""
    from mudjack.data import load_tasks
    from mudjack.deployed import Deployed
    from mudjack.encoders import load_encoder

    ws = copy(template, tmp_path)
    encoder, adapter = load_encoder(ws.root / "models" / "deployed" / "encoder.safetensors")
    tasks = load_tasks(ws.root / "data" / "tasks")
    intake = Intake(Deployed(encoder, adapter, {}), tasks, params=IntakeParams(),
                    validation={"rejected": {"genuine-1.json.json": ["no"]},
                                "codes": {"genuine-1.json.json": "bad_label"}})
    assert intake._validation_reasons(ws.inbox / "genuine-1.json.json")
    assert not intake._validation_reasons(ws.inbox / GENUINE)


def test_a_reproducing_report_on_a_task_too_small_to_split_is_decided(template, runner, tmp_path) -> None:
    """The workspace's task holds 200 train images: after the verification's held-out sample,
    fewer clean inputs are left than the reversal scores candidates on, so fitting and scoring
    share them (a RowView then reached `stamp`: `internal`, AttributeError), and one held-out
    input has no spread to measure a pull against (ZeroDivisionError). A report that reproduces
    is decided by the model now, not by an exception."""
    from mudjack.data import load_tasks
    from stages.common import load_deployed
    from stages.config import load_params

    ws = copy(template, tmp_path)
    paths = load_params(ws.root / "params.yaml").paths
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ws.root)
        deployed, task = load_deployed(paths), load_tasks(paths.tasks)["digits"]
    predicted = deployed.classify("digits", task.train.x)
    # a claimed label other than the model's answer, with a clean input of it the model gets right
    label = next(c for c in task.classes if c != ws.label and ((predicted == c) & (task.train.y == c)).any())
    report(ws.inbox, "genuine-1", {"label": label, "input": "genuine-1.png"})
    outcome = run_stages(ws, runner)
    assert outcome.error is None and len(outcome.records) == 1
    assert outcome.records[0]["error"] in {None, "not_backdoor"}, outcome.records[0]
