"""The `mudjack` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import GATES_FAILED_EXIT, app
from stages.artifacts import METRICS, QUARANTINE

runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "serve", "server", "submit", "status", "promote", "rollback", "stages"):
        assert command in result.output
    assert "intake" not in result.output  # the deprecated alias of submit is hidden


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("run", ["--target", "--root", "--retries"]),
        ("serve", ["--cron", "PREFECT_API_URL", "--remote", "--webhook", "gates"]),
        ("server", ["127.0.0.1", "--port"]),
        ("submit", ["REPORT", "inbox", "rejected"]),
        ("promote", ["gates", "--version", "GTO", "prod"]),
        ("rollback", ["previous", "prod"]),
        ("stages", ["--target", "upstream"]),
        ("status", ["dvc status"]),
    ],
)
def test_command_help(command: str, words: list[str]) -> None:
    result = runner.invoke(app, [command, "--help"], terminal_width=120)
    assert result.exit_code == 0
    for word in words:
        assert word in result.output


def test_help_does_not_import_prefect() -> None:
    code = "import sys, pipeline.cli; print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_stages_prints_order(tiny_repo: Path) -> None:
    result = runner.invoke(app, ["stages", "--root", str(tiny_repo)])
    assert result.exit_code == 0, result.output
    assert result.output.split() == ["a", "b", "c"]
    result = runner.invoke(app, ["stages", "--root", str(tiny_repo), "--target", "b"])
    assert result.output.split() == ["a", "b"]


def test_stages_finds_root_from_a_subfolder(tiny_repo: Path, monkeypatch) -> None:
    monkeypatch.chdir(tiny_repo / "src")
    result = runner.invoke(app, ["stages"])
    assert result.exit_code == 0, result.output
    assert result.output.split() == ["a", "b", "c"]


def test_no_dvc_yaml_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["stages", "--root", str(tmp_path)])
    assert result.exit_code == 2


def test_invalid_dvc_yaml_is_reported_without_traceback(repo_factory) -> None:
    root = repo_factory("stages:\n  a:\n    cmd: echo\n    outs: {bad: 1}\n")
    result = runner.invoke(app, ["stages", "--root", str(root)], terminal_width=200)
    assert result.exit_code == 1
    assert "error: " in result.output and "dvc.yaml" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("target", ["nosuch", "../x"])
def test_run_refuses_an_unknown_target_before_the_flow(tiny_repo: Path, monkeypatch,
                                                       target: str) -> None:
    """The flow started (a temporary Prefect server) and failed in ~50 lines of tracebacks."""
    import pipeline.flow

    calls = []
    monkeypatch.setattr(pipeline.flow, "repair", lambda **kw: calls.append(kw))
    result = runner.invoke(app, ["run", "--root", str(tiny_repo), "--target", target],
                           terminal_width=200)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    [line] = result.stderr.splitlines()
    assert line.startswith("error: Stage '") and line.endswith("dvc.yaml' file")
    assert calls == []


def test_status_shows_changed_stages(tiny_repo: Path) -> None:
    result = runner.invoke(app, ["status", "--root", str(tiny_repo)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "a:" in result.output and "changed" in result.output


def test_run_prints_metrics_table(prefect_server: None, tiny_repo: Path) -> None:
    result = runner.invoke(
        app, ["run", "--root", str(tiny_repo), "--target", "c"], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    assert "c: ran" in result.output
    assert "digits" in result.output and "0.9500 -> 0.0100" in result.output


def test_run_exits_3_when_a_gate_fails(prefect_server: None, tiny_repo: Path) -> None:
    """It exited 0 with "gates fail; not promoted": a script or scheduler could not tell."""
    params = tiny_repo / "params.yaml"
    params.write_text(params.read_text() + "gates:\n  max_patched_asr: 0.001\n")  # patched ASR is 0.01
    result = runner.invoke(app, ["run", "--root", str(tiny_repo), "--target", "c"], terminal_width=200)
    assert result.exit_code == GATES_FAILED_EXIT == 3, result.output
    assert "0.9500 -> 0.0100" in result.output and "gates fail" in result.stderr
    params.write_text(params.read_text().replace("0.001", "0.05"))
    passing = runner.invoke(app, ["run", "--root", str(tiny_repo), "--target", "c"], terminal_width=200)
    assert passing.exit_code == 0, passing.output


def test_serve_passes_cron_and_options(tiny_repo: Path, monkeypatch) -> None:
    import pipeline.flow

    calls = []
    monkeypatch.setattr(pipeline.flow, "serve", lambda *args, **kw: calls.append((args, kw)))
    result = runner.invoke(app, ["serve", "--cron", "0 3 * * *", "--root", str(tiny_repo),
                                 "--remote", "/srv/store", "--webhook", "http://127.0.0.1:9/h"])
    assert result.exit_code == 0, result.output
    assert calls == [(("0 3 * * *", str(tiny_repo.resolve())),
                      {"promote": True, "remote": "/srv/store", "webhook_url": "http://127.0.0.1:9/h"})]


@pytest.mark.parametrize("cron", ["not a cron", "61 * * * *"])
def test_serve_refuses_a_bad_cron_before_serving(tiny_repo: Path, monkeypatch, cron: str) -> None:
    """A pydantic ValidationError traceback came from inside the deployment."""
    import pipeline.flow

    calls = []
    monkeypatch.setattr(pipeline.flow, "serve", lambda *args, **kw: calls.append((args, kw)))
    result = runner.invoke(app, ["serve", "--cron", cron, "--root", str(tiny_repo)],
                           terminal_width=200)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr.splitlines() == [
        f"error: --cron {cron!r} is not a cron expression: five fields, minute hour day month "
        "weekday (e.g. '0 * * * *')"]
    assert calls == []


def write_report(folder: Path, report_id: str, image: bytes | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if image is not None:
        (folder / f"{report_id}.png").write_bytes(image)
    path = folder / f"{report_id}.json"
    path.write_text(json.dumps({"id": report_id, "task": "digits", "label": 3,
                                "input": f"{report_id}.png"}))
    return path


@pytest.fixture
def png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def with_inbox(root: Path, inbox: str = "reports-in") -> Path:
    (root / "params.yaml").write_text((root / "params.yaml").read_text().replace(
        "paths:\n", f"paths:\n  inbox: {inbox}\n"))
    return root / inbox


def test_submit_copies_a_valid_report(tiny_repo: Path, tmp_path: Path, png: bytes) -> None:
    inbox = with_inbox(tiny_repo)
    report = write_report(tmp_path / "mail", "r-9", png)
    result = runner.invoke(app, ["submit", str(report), "--root", str(tiny_repo)])
    assert result.exit_code == 0, result.output
    assert "accepted: 'r-9' -> " in result.output
    assert (inbox / "r-9.png").read_bytes() == png
    assert json.loads((inbox / "r-9.json").read_text())["id"] == "r-9"
    again = runner.invoke(app, ["submit", str(report), "--root", str(tiny_repo)])
    assert again.exit_code == 1 and "already in the inbox" in again.output


@pytest.mark.parametrize("name", ["R-11.json", "pic.JSON"])
def test_submit_refuses_an_input_named_as_a_report(tiny_repo: Path, tmp_path: Path, png: bytes,
                                                    name: str) -> None:
    """An input `R-11.json` beside report `r-11.json` was accepted: two names differing only in
    case, and every validate run then read the PNG as an unreadable report."""
    inbox = with_inbox(tiny_repo)
    report = write_report(tmp_path / "mail", "r-11", None)
    (report.parent / name).write_bytes(png)
    report.write_text(json.dumps({"id": "r-11", "task": "digits", "label": 3, "input": name}))
    result = runner.invoke(app, ["submit", str(report), "--root", str(tiny_repo)])
    assert result.exit_code == 1 and "is named as a report (.json)" in result.output, result.output
    assert not inbox.exists() or not list(inbox.iterdir())


def _image(value: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def _mail(folder: Path, report_id: str, name: str, image: bytes, label: int = 3) -> Path:
    """A report `report_id` with input `name` in `folder`, as a client sends it."""
    folder.mkdir(parents=True)
    (folder / name).write_bytes(image)
    path = folder / f"{report_id}.json"
    path.write_text(json.dumps({"id": report_id, "task": "digits", "label": label, "input": name}))
    return path


def _submit(report: Path, inbox: Path) -> Path:
    from mudjack.reports import read_report
    from pipeline.inbox import add_to_inbox

    return add_to_inbox(report, read_report(report), inbox)


@pytest.mark.parametrize("shared", ["id", "input"])
def test_submit_never_replaces_what_another_submit_put_after_the_check(
        tmp_path: Path, monkeypatch, shared: str) -> None:
    """Two submits at once of reports sharing an id (or an input name) both said accepted: the
    name was free when each checked, and the later rename replaced the first one's file."""
    import pipeline.inbox as inbox_module

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    ids, names = (("dup", "dup"), ("a.png", "b.png")) if shared == "id" else \
        (("r-a", "r-b"), ("in.png", "in.png"))
    first = _mail(tmp_path / "a", ids[0], names[0], _image(10), label=1)
    second = _mail(tmp_path / "b", ids[1], names[1], _image(20), label=2)
    listing = inbox_module.entries

    def other_submit_lands_right_after(folder, suffix):  # each check sees the inbox before it
        seen = [p for p in listing(folder, suffix) if p.name not in {first.name, names[0]}]
        for sent in (first.parent / names[0], first):
            if not (inbox / sent.name).exists():
                (inbox / sent.name).write_bytes(sent.read_bytes())
        return seen

    monkeypatch.setattr(inbox_module, "entries", other_submit_lands_right_after)
    with pytest.raises(inbox_module.InboxError, match="already in the inbox"):
        _submit(second, inbox)
    assert sorted(os.listdir(inbox)) == sorted({first.name, names[0]})  # nothing of b, no temporary
    assert (inbox / first.name).read_bytes() == first.read_bytes()
    assert (inbox / names[0]).read_bytes() == _image(10)


def test_submit_waits_for_another_submit_then_refuses_in_one_line(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """A submit now holds a lock on the inbox while it checks and copies (so that none takes
    another's input, not yet named by its JSON, for a killed submit's leftover)."""
    import fcntl

    import pipeline.inbox as inbox_module

    monkeypatch.setattr(inbox_module, "LOCK_WAIT_S", 0.2, raising=False)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    held = os.open(inbox, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(inbox_module.InboxError, match="another submit is writing to the inbox"):
            _submit(_mail(tmp_path / "mail", "r-1", "in.png", _image(10)), inbox)
    finally:
        os.close(held)
    assert os.listdir(inbox) == []


def test_submit_that_cannot_write_the_report_takes_its_input_back(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """With the disk full at the report JSON, the copied input stayed in the inbox and every
    resubmit was refused `already in the inbox: 'in-a.png'`."""
    import tempfile

    inbox = tmp_path / "inbox"
    report = _mail(tmp_path / "mail", "rep", "in-a.png", _image(10))
    make_temporary = tempfile.mkstemp

    def disk_full_at_the_report(*args, prefix: str = "", **kwargs):
        if prefix.startswith(".rep.json."):
            raise OSError(28, "No space left on device")
        return make_temporary(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", disk_full_at_the_report)
    with pytest.raises(OSError, match="No space left on device"):
        _submit(report, inbox)
    assert os.listdir(inbox) == []
    monkeypatch.undo()
    assert _submit(report, inbox) == inbox / "rep.json"
    assert sorted(os.listdir(inbox)) == ["in-a.png", "rep.json"]


@pytest.mark.parametrize(("left", "named", "accepted"), [
    ("same", False, True),      # a submit killed between its input and its JSON
    ("other", False, False),    # another file of that name: not this report's
    ("same", True, False),      # the input of a report already in the inbox
])
def test_submit_reuses_only_the_input_a_killed_submit_left(tmp_path: Path, left: str,
                                                           named: bool, accepted: bool) -> None:
    """A submit killed after copying the input left it without a report; the resubmit was
    refused `already in the inbox: 'in-a.png'` and nothing could put the report in again."""
    from pipeline.inbox import InboxError

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "in-a.png").write_bytes(_image(10 if left == "same" else 99))
    if named:
        (inbox / "other.json").write_text(json.dumps(
            {"id": "other", "task": "digits", "label": 1, "input": "in-a.png"}))
    report = _mail(tmp_path / "mail", "rep", "in-a.png", _image(10))
    before = {p.name: p.read_bytes() for p in inbox.iterdir()}
    if accepted:
        assert _submit(report, inbox) == inbox / "rep.json"
        assert (inbox / "rep.json").read_bytes() == report.read_bytes()
    else:
        with pytest.raises(InboxError, match="already in the inbox: 'in-a.png'"):
            _submit(report, inbox)
        assert {p.name: p.read_bytes() for p in inbox.iterdir()} == before
    assert (inbox / "in-a.png").read_bytes() == before["in-a.png"]


@pytest.mark.parametrize("damage", ["folder", "unparsable"])
def test_stages_and_status_name_a_damaged_dvc_config_in_one_line(tiny_repo: Path, damage: str) -> None:
    """A .dvc/config that is a folder was a 150-line traceback of `stages`; a broken one made
    `status` print `dvc status`'s own traceback."""
    config = tiny_repo / ".dvc" / "config"
    config.unlink()
    if damage == "folder":
        config.mkdir()
    else:
        config.write_text("[core\nno_scm = True\n")
    for command in ("stages", "status"):
        result = runner.invoke(app, [command, "--root", str(tiny_repo)], terminal_width=200)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) <= 2, result.output


def test_submit_rejects_with_the_reason(tiny_repo: Path, tmp_path: Path) -> None:
    inbox = with_inbox(tiny_repo)
    report = write_report(tmp_path / "mail", "r-10", None)
    result = runner.invoke(app, ["submit", str(report), "--root", str(tiny_repo)],
                           terminal_width=200)
    assert result.exit_code == 1
    assert "rejected: 'r-10.json' [bad_input]: " in result.output and "r-10.png" in result.output
    assert not inbox.exists()


def test_submit_refuses_an_inbox_a_stage_writes(tiny_repo: Path, tmp_path: Path,
                                                png: bytes) -> None:
    with_inbox(tiny_repo, "b.txt")  # an output of stage b
    report = write_report(tmp_path / "mail", "r-11", png)
    result = runner.invoke(app, ["submit", str(report), "--root", str(tiny_repo)],
                           terminal_width=200)
    assert result.exit_code == 1 and "output of stage 'b'" in result.output


def test_intake_is_a_deprecated_alias_of_submit(tiny_repo: Path, tmp_path: Path, png: bytes) -> None:
    inbox = with_inbox(tiny_repo)
    report = write_report(tmp_path / "mail", "r-12", png)
    result = runner.invoke(app, ["intake", str(report), "--root", str(tiny_repo)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "deprecated" in result.stderr and "mudjack submit" in result.stderr
    assert "accepted: 'r-12' -> " in result.stdout
    assert (inbox / "r-12.png").read_bytes() == png
    rejected = runner.invoke(app, ["intake", str(write_report(tmp_path / "mail", "r-13", None)),
                                   "--root", str(tiny_repo)], terminal_width=200)
    assert rejected.exit_code == 1 and "rejected: 'r-13.json' [bad_input]: " in rejected.stdout


@pytest.mark.timeout(300)
@pytest.mark.parametrize("where", ["reports-in", "../shared-inbox"])  # submit refuses the second
def test_status_quarantines_a_fifo_in_the_inbox_before_dvc_hashes_it(tiny_repo: Path, where: str) -> None:
    inbox = with_inbox(tiny_repo, where)
    inbox.mkdir()
    os.mkfifo(inbox / "x\n.json")  # DVC would block reading it; the name must not forge a line
    (inbox / "r.json").write_text("{}")
    result = runner.invoke(app, ["status", "--root", str(tiny_repo)], terminal_width=200)
    assert "quarantine: 'x\\n.json' (fifo) moved to " in result.output, result.output
    assert sorted(p.name for p in inbox.iterdir()) == ["r.json"]
    assert len(list((tiny_repo / QUARANTINE).iterdir())) == 1


def test_promote_status_and_rollback_commands(tiny_repo: Path, tmp_path: Path) -> None:
    from pipeline.dag import run_dvc

    root, remote = str(tiny_repo), str(tmp_path / "store")
    run_dvc([sys.executable, "-m", "dvc", "repro"], tiny_repo)
    first = runner.invoke(app, ["promote", "--root", root, "--remote", remote], terminal_width=200)
    assert first.exit_code == 0, first.output
    assert "max_patched_asr" in first.output and "promoted mudjack-encoder@v1.0.0" in first.output
    params = tiny_repo / "params.yaml"
    params.write_text(params.read_text().replace("factor: 2", "factor: 5"))
    run_dvc([sys.executable, "-m", "dvc", "repro"], tiny_repo)
    assert runner.invoke(app, ["promote", "--root", root, "--remote", remote]).exit_code == 0

    status = runner.invoke(app, ["status", "--root", root], terminal_width=200)
    assert "mudjack-encoder@v2.0.0" in status.output and "[prod]" in status.output
    assert "max_patched_asr" in status.output
    back = runner.invoke(app, ["rollback", "--root", root], terminal_width=200)
    assert back.exit_code == 0 and "prod: mudjack-encoder@v1.0.0 (was v2.0.0)" in back.output
    again = runner.invoke(app, ["promote", "--root", root, "--version", "v2.0.0"])
    assert again.exit_code == 0 and "prod: mudjack-encoder@v2.0.0" in again.output


@pytest.mark.parametrize("args", [["status"], ["rollback"], ["promote", "--version", "v1.0.0"],
                                  ["promote", "--remote", "STORE"], ["run", "--promote"],
                                  ["serve", "--cron", "0 * * * *"]])
def test_registry_commands_refuse_a_project_without_git(nogit_repo: Path, tmp_path: Path,
                                                        args: list[str]) -> None:
    """They ended in an SCMError traceback; `promote` pushed the data before `git add` failed;
    `run --promote` and `serve` failed only after the whole run."""
    metrics = {"tasks": {"digits": {"backdoored": {"clean_acc": 0.9, "asr": 0.95, "tba": 0.05},
                                    "patched": {"clean_acc": 0.89, "asr": 0.01, "tba": 0.88}}},
               "export": {"max_abs_diff": 1e-6}}
    (nogit_repo / "reports").mkdir()
    (nogit_repo / "reports" / "metrics.json").write_text(json.dumps(metrics))  # gates pass
    store = tmp_path / "store"
    args = [str(store) if arg == "STORE" else arg for arg in args]
    result = runner.invoke(app, [*args, "--root", str(nogit_repo)], terminal_width=300)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.stderr.splitlines() == [
        f"error: {nogit_repo.resolve()} is not a git repository: promotion, rollback and the "
        "version registry need one (versions are git tags, promotions git commits)"]
    assert not store.exists()


def test_promote_refuses_when_a_gate_fails(tiny_repo: Path, tmp_path: Path) -> None:
    from pipeline.dag import run_dvc

    run_dvc([sys.executable, "-m", "dvc", "repro"], tiny_repo)
    with open(tiny_repo / "params.yaml", "a") as params:
        params.write("gates:\n  max_patched_asr: 0.001\n")
    result = runner.invoke(app, ["promote", "--root", str(tiny_repo), "--remote",
                                 str(tmp_path / "store")], terminal_width=200)
    assert result.exit_code == 1 and "Gates failed: nothing promoted." in result.output
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("name", ["../../escaped", "../params", "nope", "/etc/passwd", ""])
def test_run_refuses_an_unknown_scenario_before_making_any_folder(tmp_path: Path, name: str) -> None:
    """`run --scenario ../../x` made a folder outside the project, then printed a traceback;
    `../params` ran the project's own params.yaml as a scenario in a workspace beside runs/;
    `""` ran the project's own pipeline as if no scenario had been given."""
    project = tmp_path / "a" / "project"
    project.mkdir(parents=True)
    root = Path(__file__).resolve().parents[2]
    for item in ("dvc.yaml", "params.yaml"):
        (project / item).write_text((root / item).read_text())
    (project / "scenarios").symlink_to(root / "scenarios")
    before = sorted(tmp_path.rglob("*"))
    result = runner.invoke(app, ["run", "--root", str(project), "--scenario", name])
    assert result.exit_code == 1 and f"error: no scenario {name!r}; known: digits" in result.output
    assert "Traceback" not in result.output
    assert sorted(tmp_path.rglob("*")) == before  # nothing made, inside the project or out


@pytest.mark.parametrize(("text", "fragment"), [
    ("patch: [1]\n", "fz.yaml: patch must be a mapping"),  # a 60-line traceback of the merge
    ("seed: abc\n", "fz.yaml: invalid parameters: seed"),  # failed after a Prefect server started
])
def test_run_refuses_a_scenario_of_bad_settings_before_anything_starts(tmp_path: Path, text: str,
                                                                       fragment: str) -> None:
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "fz.yaml").write_text(text)
    for item in ("dvc.yaml", "params.yaml"):
        (tmp_path / item).write_text((root / item).read_text())
    result = runner.invoke(app, ["run", "--root", str(tmp_path), "--scenario", "fz"])
    assert result.exit_code == 1 and fragment in result.output
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()


def test_status_names_a_damaged_metrics_file_in_one_line(tiny_repo: Path) -> None:
    """A metrics.json of the wrong shape was a TypeError traceback of the gates table."""
    (tiny_repo / METRICS).parent.mkdir(exist_ok=True)
    (tiny_repo / METRICS).write_text('{"tasks": [], "export": {"max_abs_diff": 0.0}}')
    result = runner.invoke(app, ["status", "--root", str(tiny_repo)], terminal_width=200)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "metrics.json: tasks: Input should be a valid dictionary" in result.output


def test_status_while_a_run_holds_dvcs_lock_is_one_line(tiny_repo: Path) -> None:
    """It printed DVC's five lines (`... is busy, it is being blocked by: ... rwlock ...`)."""
    lock_dir = tiny_repo / ".dvc" / "tmp"
    lock_dir.mkdir(exist_ok=True)
    holder = {"pid": os.getpid(), "cmd": "dvc repro"}  # a live process other than `dvc status`
    (lock_dir / "rwlock").write_text(json.dumps({"write": {str(tiny_repo / "a.txt"): holder}}))
    result = runner.invoke(app, ["status", "--root", str(tiny_repo)], terminal_width=300)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: DVC is busy: another run holds the lock (PID {os.getpid()}); try again when it ends"]
