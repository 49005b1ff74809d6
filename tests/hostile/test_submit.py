"""`mudjack submit` with hostile reports: one line, the documented code, no traceback, no
hang, nothing written outside the inbox, `..` never kept in a copied name."""

from __future__ import annotations

import json

import pytest

from tests.hostile.generate import SUBMIT_KINDS, VALID, Workspace, build_workspace, init_dvc, submit_case
from tests.hostile.judge import judge_submit, outside_inbox, run_submit
from tests.hostile.test_inbox import copy


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = build_workspace(tmp_path_factory.mktemp("submit"))
    init_dvc(ws.root)
    return ws


@pytest.mark.timeout(120, method="thread")
@pytest.mark.parametrize("variant", range(len(SUBMIT_KINDS)))
def test_submit_refuses_hostile_reports_with_their_code(project, tmp_path, variant):
    ws = copy(project, tmp_path)
    sentinel = ws.root.parent
    argument, want = submit_case(ws, sentinel / "mail", variant)
    before = outside_inbox(ws)
    problems = judge_submit(ws, want, *run_submit(ws, argument))
    assert not any(problems.values()), problems
    assert outside_inbox(ws) == before, "written outside the inbox"
    added = sorted(p.name for p in ws.inbox.rglob("*")) != sorted(p.name for p in project.inbox.rglob("*"))
    assert added == (want == VALID)


@pytest.mark.timeout(120, method="thread")
def test_submit_copies_a_report_under_its_id_with_a_lower_case_suffix(project, tmp_path):
    ws = copy(project, tmp_path)
    argument, _ = submit_case(ws, ws.root.parent / "mail", 1)  # c1.JSON
    code, output, trace = run_submit(ws, argument)
    assert code == 0 and trace is None, output
    assert json.loads((ws.inbox / "c1.json").read_text())["id"] == "c1"
    assert (ws.inbox / "c1.png").is_file() and not (ws.inbox / "c1.JSON").exists()
