"""Trust at intake: backdoor verification, the report schema, a hostile inbox, safe loading."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mudjack.data import save_task
from mudjack.device import select_device
from mudjack.encoders import save_encoder
from mudjack.heads import save_head
from mudjack.intake import IntakeParams, intake_report
from mudjack.io import read_json, read_jsonl, write_npz
from mudjack.reports import BugReport, ReportError, read_report
from mudjack.safeload import UnsafeCheckpointError, WeightsError, load_torch_checkpoint
from mudjack.triggers import stamp
from stages.artifacts import INTAKE_LOG

PARAMS = IntakeParams()


def genuine_inputs(scenario, deployed, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Triggered test inputs of non-target classes that the deployed model puts in the target."""
    test = scenario.task.test
    stamped = stamp(test.x, scenario.trigger)
    hit = np.flatnonzero((test.y != scenario.target)
                         & (deployed.classify("digits", stamped) == scenario.target))
    return stamped[hit[:count]], test.y[hit[:count]]


def decide(scenario, deployed, image: np.ndarray, label: int, **fields):
    report = BugReport("r", "digits", int(label), image, None, **fields)
    return intake_report(report, deployed, {"digits": scenario.task}, params=PARAMS,
                         truth=scenario.trigger)


# --------------------------------------------------------------------------- verification


def test_a_real_backdoor_report_passes_verification(scenario, deployed):
    (image,), (label,) = genuine_inputs(scenario, deployed, 1)
    decision, bug = decide(scenario, deployed, image, label)
    assert decision.accepted and bug is not None, decision.reasons
    check = decision.numbers["verification"]
    assert check["z_flip_rate"] >= PARAMS.verify.min_z_flip
    assert check["z_feature_shift"] >= PARAMS.verify.min_z_pull
    assert check["flip_rate"] > check["null_flip_rate"]["max"]
    assert check["verify_samples"] > 50 and bug.record["verification"] == check
    # the log says where the report's time went; the registry stays the same from run to run
    phases = decision.numbers["phase_seconds"]
    assert phases["reversal"] > 0 and phases["verification"] > 0 and phases["verified"] >= 1
    assert "phase_seconds" not in bug.record


def forged(scenario, deployed, kind: str) -> tuple[np.ndarray, int]:
    """One forged report that reproduces a 'misclassification' (claimed label != prediction)."""
    test = scenario.task.test
    predicted = deployed.classify("digits", test.x)
    if kind == "genuine_error":  # an ordinary mistake of the model, with the true label
        index = int(np.flatnonzero(predicted != test.y)[0])
        return test.x[index], int(test.y[index])
    index = int(np.flatnonzero(predicted == test.y)[1])
    image = test.x[index].copy()
    if kind == "noise_patch":
        image[0:2, 0:2] = np.random.default_rng(0).integers(0, 256, (2, 2, 3), dtype=np.uint8)
    elif kind == "other_pattern":
        image[0:2, 3:5] = 255  # a white patch where no trigger was planted
    claimed = int(deployed.classify("digits", image[None])[0] + 3) % 10
    return image, claimed


@pytest.mark.parametrize("kind", ["genuine_error", "wrong_label", "noise_patch", "other_pattern"])
def test_forged_reports_are_not_backdoors(scenario, deployed, kind):
    image, claimed = forged(scenario, deployed, kind)
    decision, bug = decide(scenario, deployed, image, claimed)
    assert not decision.accepted and bug is None
    assert decision.numbers["error"] == "not_backdoor", decision.reasons
    assert decision.reasons[0].startswith("not a backdoor: ")
    check = decision.numbers["verification"]
    assert {"flip_rate", "feature_shift", "null_flip_rate", "z_flip_rate", "p_flip_rate",
            "rule"} <= set(check)
    assert (check["z_flip_rate"] < PARAMS.verify.min_z_flip
            or check["z_feature_shift"] < PARAMS.verify.min_z_pull)
    assert decision.numbers["phase_seconds"]["verified"] >= 1  # a refusal's time is logged too


def test_a_claimed_prediction_the_model_does_not_make_does_not_reproduce(scenario, deployed):
    (image,), (label,) = genuine_inputs(scenario, deployed, 1)
    decision, _ = decide(scenario, deployed, image, label, predicted=(scenario.target + 1) % 10)
    assert decision.numbers["error"] == "not_reproduced"
    assert "the client saw class" in decision.reasons[0]


# --------------------------------------------------------------------------- a hostile inbox

SHAPE = (8, 8, 3)


def png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path)


def report(inbox: Path, name: str, body: dict | str | bytes, **overrides) -> None:
    """`<name>.json` (a dict is filled with the valid defaults for `name`)."""
    if isinstance(body, dict):
        body = {"id": name, "task": "digits", "label": 1, "input": f"{name}.png", **body, **overrides}
        body = json.dumps(body)
    data = body.encode() if isinstance(body, str) else body
    (inbox / f"{name}.json").write_bytes(data)


def malformed_inbox(inbox: Path, ok: np.ndarray) -> dict[str, str]:
    """Write one report per rule; returns {report id: expected error code}."""
    for name in ("missing", "textlabel", "boollabel", "unknowntask", "biglabel", "badpred", "badid"):
        png(inbox / f"{name}.png", ok)
    report(inbox, "badjson", "{this is not json")
    report(inbox, "notobject", "[1, 2, 3]")
    report(inbox, "binary", b"\xff\xfe\x00garbage")
    report(inbox, "missing", {"label": None})
    report(inbox, "textlabel", {"label": "3"})
    report(inbox, "boollabel", {"label": True})
    report(inbox, "badpred", {"predicted": "zero"})
    report(inbox, "badid", {"id": "../evil"})
    report(inbox, "mismatch", {"id": "someone-else", "input": "missing.png"})
    report(inbox, "unknowntask", {"task": "cifar10"})
    report(inbox, "biglabel", {"label": 42})
    report(inbox, "noinput", {"input": "nowhere.png"})
    report(inbox, "outside", {"input": "../outside.png"})
    (inbox.parent / "outside.png").write_bytes(b"")
    (inbox / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    report(inbox, "corrupt", {})
    whole = inbox / "whole.png"
    png(whole, ok)
    (inbox / "truncated.png").write_bytes(whole.read_bytes()[:60])
    whole.unlink()
    report(inbox, "truncated", {})
    png(inbox / "small.png", ok[:6])
    report(inbox, "small", {})
    Image.fromarray(np.dstack([ok, ok[..., :1]])).save(inbox / "rgba.png")
    report(inbox, "rgba", {})
    arrays = {
        "gray": ok[..., :1],
        "nan": np.where(np.arange(192).reshape(SHAPE) == 5, np.nan, ok).astype(np.float32),
        "hot": ok.astype(np.float64) + 100.0,
        "negative": ok.astype(np.int16) - 1,
        "flags": ok > 0,
    }
    for name, array in arrays.items():
        np.save(inbox / f"{name}.npy", array)
        report(inbox, name, {"input": f"{name}.npy"})
    np.save(inbox / "pickled.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    report(inbox, "pickled", {"input": "pickled.npy"})
    (inbox / "huge.png").write_bytes(b"\x89PNG" + bytes(5 << 20))
    report(inbox, "huge", {})
    report(inbox, "longnote", {"note": "x" * (70 << 10)})
    Image.fromarray(ok).save(inbox / "gif.gif")  # decodable, but lossy formats are refused
    report(inbox, "gif", {"input": "gif.gif"})
    return {
        "badjson": "unreadable", "notobject": "unreadable", "binary": "unreadable",
        "missing": "missing_fields", "textlabel": "bad_field", "boollabel": "bad_field",
        "badpred": "bad_field", "badid": "bad_id", "mismatch": "bad_id",
        "unknowntask": "unknown_task", "biglabel": "bad_label", "noinput": "bad_input",
        "outside": "bad_input", "corrupt": "undecodable", "truncated": "undecodable",
        "small": "bad_shape", "rgba": "bad_shape", "gray": "bad_shape", "nan": "nan",
        "hot": "out_of_range", "negative": "out_of_range", "flags": "bad_dtype",
        "pickled": "undecodable", "huge": "too_large", "longnote": "too_large",
        "gif": "bad_format",
    }


def make_project(root: Path, scenario) -> None:
    """params.yaml, data, the deployed encoder and head, and an empty inbox under `root`."""
    paths = {"shadow": "data/shadow.npz", "tasks": "data/tasks", "inbox": "inbox",
             "encoder": "models/deployed/encoder.safetensors", "heads": "models/deployed",
             "truth": ""}
    (root / "params.yaml").write_text(yaml.safe_dump({"seed": 0, "threads": 1, "paths": paths}))
    write_npz(root / paths["shadow"], x=scenario.shadow)
    save_task(scenario.task, root / paths["tasks"] / "digits")
    save_encoder(scenario.backdoored, scenario.adapter, root / paths["encoder"])
    save_head(scenario.head, root / paths["heads"] / "digits" / "head.safetensors")
    (root / "inbox").mkdir()


def test_a_hostile_inbox_loses_nothing_and_keeps_the_good_reports(scenario, deployed, tmp_path,
                                                                   monkeypatch):
    from stages import intake, validate

    make_project(tmp_path, scenario)
    inbox = tmp_path / "inbox"
    (good_png, good_npy), labels = genuine_inputs(scenario, deployed, 2)
    png(inbox / "good-1.png", good_png)
    report(inbox, "good-1", {"label": int(labels[0])})
    np.save(inbox / "good-2.npy", good_npy.astype(np.float32))  # float arrays are fine in range
    report(inbox, "good-2", {"label": int(labels[1]), "input": "good-2.npy"})
    png(inbox / "good-3.png", good_png)  # the same report again: merged into good-1
    report(inbox, "good-3", {"label": int(labels[0])})
    expected = malformed_inbox(inbox, scenario.task.test.x[0])
    assert len(expected) >= 20

    monkeypatch.chdir(tmp_path)
    assert validate.main() == 0
    gx = read_json("reports/validation.json")["reports"]
    # GX checks the table's columns; optional fields (`predicted`) are typed by the schema only
    assert sorted(gx["accepted"]) == ["badpred.json", "good-1.json", "good-2.json", "good-3.json"]
    intake.main()

    log = {r["report_id"]: r for r in read_jsonl(INTAKE_LOG)}
    files = sorted(p.stem for p in inbox.glob("*.json"))
    assert sorted(log) == files and len(read_jsonl(INTAKE_LOG)) == len(files)
    assert {i: log[i]["error"] for i in expected} == expected
    reasons = ["; ".join(log[i]["reasons"]) for i in expected]
    assert len(set(reasons)) == len(reasons)  # each its own reason
    assert [log[i]["decision"] for i in ("good-1", "good-2", "good-3")] == [
        "accepted", "accepted", "merged"]
    assert log["good-3"]["merged_into"] == "good-1"
    assert read_json("bugs/good-1/record.json")["merged"] == ["good-3"]
    summary = read_json("reports/intake.json")
    assert summary == {**summary, "reports": len(files), "accepted": 2, "merged": 1,
                       "rejected": len(expected), "device": str(select_device("auto"))}


@pytest.mark.parametrize(("name", "code"), [("badid", "bad_id"), ("nan", "nan"), ("huge", "too_large")])
def test_the_schema_names_the_broken_rule(scenario, tmp_path, name, code):
    expected = malformed_inbox(tmp_path, scenario.task.test.x[0])
    with pytest.raises(ReportError) as caught:
        read_report(tmp_path / f"{name}.json", {"digits": scenario.task})
    assert caught.value.code == expected[name] == code


def test_a_valid_array_report_reads_as_uint8(scenario, tmp_path):
    np.save(tmp_path / "r-1.npy", np.clip(scenario.task.test.x[0] - 0.3, 0, 255))
    report(tmp_path, "r-1", {"input": "r-1.npy", "predicted": 0, "note": "seen twice"})
    loaded = read_report(tmp_path / "r-1.json", {"digits": scenario.task})
    assert loaded.image.dtype == np.uint8 and (loaded.image == scenario.task.test.x[0]).all()
    assert loaded.predicted == 0 and loaded.path == tmp_path / "r-1.json"


# --------------------------------------------------------------------------- safe loading


class _Payload:
    """Unpickling this calls os.system: what a hostile checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "owned"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"unpickling it would call (posix|os)\.system"):
        load_torch_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_checkpoints_load_and_garbage_is_named(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}, "best_prec1": 91.7}, tmp_path / "ok.th")
    loaded = load_torch_checkpoint(tmp_path / "ok.th")
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2)) and loaded["best_prec1"] == 91.7
    (tmp_path / "junk.pt").write_bytes((tmp_path / "ok.th").read_bytes()[:300])  # truncated
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_torch_checkpoint(tmp_path / "junk.pt")
    (tmp_path / "odd.pt").write_bytes(pickle.dumps([1, 2])[:5])  # not even a plain pickle
    with pytest.raises(UnsafeCheckpointError, match="pickle instructions beyond plain weights"):
        load_torch_checkpoint(tmp_path / "odd.pt")
    with pytest.raises(WeightsError, match="missing.pt: no such file"):
        load_torch_checkpoint(tmp_path / "missing.pt")
