"""`mudjack compare` across tasks: rows per method x budget x task, the budget and the sequela
columns recorded, and the "a baseline wins" lines computed from hand-made run outputs (no DVC)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.compare import (
    COLUMNS,
    CompareError,
    budgets,
    merge_rows,
    method_rows,
    read_rows,
    task_count,
    to_csv,
    to_markdown,
    variant_settings,
    verdicts,
)
from pipeline.scenarios import scenario_params
from stages.config import PipelineParams

ROOT = Path(__file__).resolve().parents[2]
SEQUELA = {"membership": {"gtsrb": {"backdoored": {"auc": 0.6, "advantage": 0.2},
                                    "patched": {"auc": 0.55, "advantage": 0.1}},
                          "mnist": {"backdoored": {"auc": 0.52, "advantage": 0.04},
                                    "patched": {"auc": 0.51, "advantage": 0.03}}},
           "reinjection": {"task": "gtsrb", "repaired": {"steps": 40, "reached": True, "max_steps": 160},
                           "clean": {"steps": None, "reached": False, "max_steps": 160}}}


def _run(after: dict[str, tuple[float, float]], patch: dict) -> dict:
    """A run's outputs: per task (clean_acc, asr) after the repair; before: 0.9 and 1.0."""
    tasks = {task: {"backdoored": {"clean_acc": 0.9, "asr": 1.0},
                    "patched": {"clean_acc": acc, "asr": asr}} for task, (acc, asr) in after.items()}
    return {"metrics": {"tasks": tasks}, "patch": {"seconds": 2.0, "bugs": 1, **patch},
            "sequela": SEQUELA, "wall": 5.0}


MUDJACKING = {"method": "mudjacking", "clean_samples": 5000}
FT_REPORTING = {"method": "finetune", "labelled": True, "clean_samples": 300, "tasks": ["gtsrb"],
                "budget": "reporting"}
FT_ALL = {**FT_REPORTING, "clean_samples": 600, "tasks": ["gtsrb", "mnist"], "budget": "all"}


def _rows() -> list[dict]:
    runs = [("mudjacking", None, _run({"gtsrb": (0.89, 0.02), "mnist": (0.88, 0.05)}, MUDJACKING)),
            ("finetune", "reporting", _run({"gtsrb": (0.93, 0.04), "mnist": (0.70, 0.60)}, FT_REPORTING)),
            ("finetune", "all", _run({"gtsrb": (0.91, 0.03), "mnist": (0.90, 0.01)}, FT_ALL))]
    return [row for method, budget, run in runs for row in method_rows("multi", method, budget, run)]


def test_fine_tuning_runs_in_two_label_budgets_mudjacking_in_one():
    assert budgets("finetune") == budgets("super_finetune") == ["reporting", "all"]
    assert budgets("mudjacking") == [None]
    # one task: "every task's labels" are the reporting task's, so that run is not repeated
    assert budgets("finetune", tasks=1) == ["reporting"] and budgets("mudjacking", tasks=1) == [None]
    # `--budgets all`: only the every-task run of FT/SFT; Mudjacking has no budget to filter
    assert budgets("finetune", only=("all",)) == ["all"] and budgets("mudjacking", only=("all",)) == [None]
    assert task_count(ROOT, "resnet20-multi") == 3 and task_count(ROOT, "resnet20-gtsrb") == 1
    settings = variant_settings(ROOT, "resnet20-multi", "finetune", "all")
    params = PipelineParams(**scenario_params(ROOT, "resnet20-multi", settings))
    assert params.patch.method == "finetune" and params.patch.settings["tasks"] == "all"
    assert "tasks" not in variant_settings(ROOT, "resnet20-multi", "mudjacking", None)["patch"]


def test_one_row_per_method_budget_and_task_with_its_budget_and_sequela():
    rows = _rows()
    assert [(r["method"], r["budget"], r["task"]) for r in rows] == [
        ("mudjacking", "-", "gtsrb"), ("mudjacking", "-", "mnist"),
        ("finetune", "reporting", "gtsrb"), ("finetune", "reporting", "mnist"),
        ("finetune", "all", "gtsrb"), ("finetune", "all", "mnist")]
    assert rows[0]["clean_data"] == "5000 unlabelled + 1 reports"
    assert rows[2]["clean_data"] == "300 labelled (gtsrb)"
    assert rows[4]["clean_data"] == "600 labelled (gtsrb, mnist)"
    assert rows[0]["mi_auc_before"] == 0.6 and rows[0]["mi_advantage_after"] == 0.1
    assert rows[0]["reinject_steps_repaired"] == 40 and rows[0]["reinject_steps_clean"] == ">160"
    # mnist: its own MI numbers; the backdoor is not re-injected there
    assert rows[1]["mi_auc_after"] == 0.51 and rows[1]["reinject_steps_repaired"] is None
    assert "anti_flip_after" in COLUMNS and rows[0]["anti_flip_after"] is None  # not in these metrics
    run = _run({"gtsrb": (0.89, 0.02)}, MUDJACKING)
    run["metrics"]["tasks"]["gtsrb"]["patched"]["anti_flip"] = 0.385  # an anti-trigger the repair left
    assert method_rows("one", "mudjacking", None, run)[0]["anti_flip_after"] == 0.385


def test_the_table_says_where_a_baseline_wins():
    lines = verdicts(_rows())
    assert lines == [
        "- gtsrb: mudjacking has the lowest ASR (0.0200).",
        "- gtsrb: **a baseline wins**: finetune (reporting labels) has the highest clean accuracy "
        "(0.9300; mudjacking: 0.8900).",
        "- mnist: **a baseline wins**: finetune (all labels) has the lowest ASR "
        "(0.0100; mudjacking: 0.0500).",
        "- mnist: **a baseline wins**: finetune (all labels) has the highest clean accuracy "
        "(0.9000; mudjacking: 0.8800).",
    ]
    markdown = to_markdown(_rows())
    first = "| multi | gtsrb | mudjacking | - | 5000 unlabelled + 1 reports | 0.9000 | 0.8900 |"
    assert markdown.splitlines()[2].startswith(first)
    assert markdown.rstrip().endswith(lines[-1])
    assert to_csv(_rows()).splitlines()[1].startswith("multi,gtsrb,mudjacking,-,5000 unlabelled + 1 reports,")


def test_ties_and_unmeasured_asr():
    rows = _rows()[:2]
    tie = [{**rows[0], "method": "finetune", "budget": "all"}, rows[0]]
    assert verdicts(tie)[0] == "- gtsrb: finetune (all labels) = mudjacking has the lowest ASR (0.0200)."
    unmeasured = [{**rows[1], "asr_after": None}]
    assert [line for line in verdicts(unmeasured) if "ASR" in line] == []


STAGE = ("python -c \"import json, pathlib; p = pathlib.Path('reports'); p.mkdir(exist_ok=True); "
         "[(p / n).write_text(json.dumps(v)) for n, v in {}]\"")


def _toy_project(root: Path) -> None:
    """A project whose `report` stage writes a run's metrics and patch summary and whose
    `sequela` stage writes sequela.json: real DVC, no model."""
    import yaml

    outputs = {"metrics.json": {"tasks": {"gtsrb": {"backdoored": {"clean_acc": 0.9, "asr": 1.0},
                                                "patched": {"clean_acc": 0.9, "asr": 0.0}}}},
               "patch.json": {"seconds": 1.0, "bugs": 1, "clean_samples": 5}}
    stages = {"report": {"cmd": STAGE.format(sorted(outputs.items())), "params": ["patch"],
                         "outs": ["reports/metrics.json", "reports/patch.json"]},
              "sequela": {"cmd": STAGE.format([("sequela.json", SEQUELA)]), "deps": ["reports/metrics.json"],
                          "outs": ["reports/sequela.json"]}}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (root / "params.yaml").write_text(yaml.safe_dump({"prepare": {}, "patch": {"method": "mudjacking"}}))
    (root / "scenarios").mkdir()
    (root / "scenarios" / "toy.yaml").write_text("description: toy\n")


def test_without_sequela_only_the_stages_up_to_the_report_run(tmp_path: Path) -> None:
    """`mudjack compare --no-sequela`: the re-injection (BadEncoder twice per method) is skipped
    and the rows' sequela columns stay empty, never filled from an earlier run's file."""
    from pipeline.compare import run_method

    _toy_project(tmp_path)
    rows = run_method(tmp_path, "toy", "mudjacking", sequela=False)
    workspace = tmp_path / "runs" / "toy"
    assert (workspace / "reports" / "metrics.json").is_file()
    assert not (workspace / "reports" / "sequela.json").exists()
    assert rows[0]["asr_after"] == 0.0 and rows[0]["mi_auc_after"] is None
    rows = run_method(tmp_path, "toy", "mudjacking")
    assert rows[0]["mi_auc_after"] == SEQUELA["membership"]["gtsrb"]["patched"]["auc"]
    assert (workspace / "reports" / "sequela.json").is_file()
    rows = run_method(tmp_path, "toy", "mudjacking", sequela=False)  # the file is there now
    assert rows[0]["mi_auc_after"] is None


def test_a_table_read_back_merges_with_the_runs_redone(tmp_path: Path) -> None:
    """`--keep`: an earlier table's rows come back with their types; a method and budget run
    again replaces its rows, the others stay."""
    path = tmp_path / "multi.csv"
    path.write_text(to_csv(_rows()))
    kept = read_rows(path)
    assert kept == _rows() and read_rows(tmp_path / "none.csv") == []
    redone = [{**row, "asr_after": 0.5} for row in _rows() if row["budget"] == "all"]
    merged = merge_rows(kept, redone)
    assert [(r["method"], r["budget"]) for r in merged] == [
        ("mudjacking", "-"), ("mudjacking", "-"), ("finetune", "reporting"), ("finetune", "reporting"),
        ("finetune", "all"), ("finetune", "all")]
    assert [r["asr_after"] for r in merged[-2:]] == [0.5, 0.5]


def test_compare_keeps_the_earlier_rows_only_when_asked(tmp_path: Path) -> None:
    """Two `mudjack compare` calls on a real DVC toy project: the second, with `keep`, adds its
    method's rows to the first's table; without it, the table holds only its own rows."""
    from pipeline.compare import compare

    _toy_project(tmp_path)
    table = compare(tmp_path, "toy", ["mudjacking"], sequela=False)
    compare(tmp_path, "toy", ["finetune"], sequela=False, keep=True)
    rows = read_rows(table.with_suffix(".csv"))
    assert [(r["method"], r["budget"]) for r in rows] == [("mudjacking", "-"), ("finetune", "reporting")]
    assert sum(line.startswith("| toy |") for line in table.read_text().splitlines()) == 2
    compare(tmp_path, "toy", ["finetune"], sequela=False)
    assert [r["method"] for r in read_rows(table.with_suffix(".csv"))] == ["finetune"]


@pytest.mark.parametrize(("text", "problem"), [
    (b"a,b\n1,2\n", "no task, method, budget column"),
    (b"method,budget\nfinetune,all\n", "no task column"),
    (b"task,budget\ngtsrb,all\n", "no method column"),
    (b"task,method,budget\ngtsrb,finetune,all,extra\n", "line 2 does not have as many cells"),
    (b"task,method,budget\ngtsrb,finetune\n", "line 2 does not have as many cells"),
    (b"task,method,budget,asr_after\ngtsrb,finetune,all,high\n", "asr_after 'high' is not a number"),
    (b"task,method,budget\n\xff,finetune,all\n", "utf-8"),
])
def test_an_unreadable_earlier_table_stops_a_kept_compare_before_any_run(
        tmp_path: Path, monkeypatch, text: bytes, problem: str) -> None:
    """`--keep` with a table it could not have written gave a KeyError or TypeError only after
    every method had run, and lost their rows."""
    import pipeline.compare

    _toy_project(tmp_path)
    table = tmp_path / "reports" / "compare" / "toy.csv"
    table.parent.mkdir(parents=True)
    table.write_bytes(text)
    monkeypatch.setattr(pipeline.compare, "run_method", lambda *args, **kw: pytest.fail("ran"))
    with pytest.raises(CompareError, match=f"earlier table {table}: .*{problem}"):
        pipeline.compare.compare(tmp_path, "toy", ["mudjacking"], keep=True)
    assert table.read_bytes() == text and len(list(table.parent.iterdir())) == 1


def test_a_table_read_back_keeps_names_as_text(tmp_path: Path) -> None:
    """A method or task named like a number stays text: the verdicts call `str.startswith`."""
    path = tmp_path / "t.csv"
    path.write_text("task,method,budget,asr_after,extra\n7,1,-,0.5,x\n")
    [row] = read_rows(path)
    assert row == {"task": "7", "method": "1", "budget": "-", "asr_after": 0.5}
    assert verdicts([row]) == ["- 7: 1 has the lowest ASR (0.5000)."]


@pytest.mark.parametrize(("methods", "only"), [([], ("reporting", "all")), (["finetune"], ("all",)),
                                               (["super_finetune"], ())])
def test_a_compare_of_no_run_writes_nothing(tmp_path: Path, methods: list[str],
                                            only: tuple[str, ...]) -> None:
    """No method, or only FT/SFT in budgets the one-task scenario lacks, replaced the earlier
    table with an empty one."""
    from pipeline.compare import compare

    _toy_project(tmp_path)
    with pytest.raises(CompareError, match="nothing to compare: .* give no run"):
        compare(tmp_path, "toy", methods, only=only)
    assert not (tmp_path / "reports").exists()
