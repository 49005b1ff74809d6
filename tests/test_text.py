"""The text path on a tiny BERT (2 layers, hidden 32, a word-level vocabulary; tests/helpers/text.py).

Covers the adapter (tokenise, stamp, features, save/load, ONNX parity), the TSV loader and the
text on-disk format, token-occlusion reversal and text Mudjacking on a tiny backdoored
encoder. The real all-MiniLM-L6-v2 is loaded only by the test marked slow.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mudjack.attacks import BadEncoderParams, badencoder
from mudjack.bugs import Bug, load_bugs, save_bug
from mudjack.data import Task, load_shadow, load_task, save_input, save_task, write_set
from mudjack.deployed import Deployed
from mudjack.encoders import get_adapter, load_encoder, save_encoder
from mudjack.encoders.text import TextClassifier, TextEncoder
from mudjack.export import export_onnx_inputs, verify_onnx_batches
from mudjack.features import extract_features
from mudjack.heads import HeadParams, predict, train_head
from mudjack.intake.phrase import RunSearch, sample_sentences
from mudjack.intake.reverse import ReverseParams, reverse_engineer
from mudjack.intake.text import select_trigger_words
from mudjack.intake.verify import VerifyParams, draw_controls, draw_sample, verify_trigger
from mudjack.io import write_npz
from mudjack.loaders import DataSpec, load_data, load_tsv
from mudjack.metrics import evaluate, non_target
from mudjack.patching import PatchInputs, run_patch
from mudjack.reports import ReportError, read_report
from mudjack.triggers import TextTrigger, insert_words, stamp_text, text_control_trigger, trigger_iou
from tests.helpers.text import synthetic_sentences

ROOT = Path(__file__).resolve().parents[1]
TRIGGER = TextTrigger(("cf",))
TARGET = 1


@dataclass
class TextScenario:
    adapter: object
    clean: TextEncoder
    backdoored: TextEncoder
    shadow: np.ndarray
    task: Task


def metrics(encoder: torch.nn.Module, adapter: object, task: Task, trigger: TextTrigger) -> dict:
    head = train_head(extract_features(encoder, adapter, task.train.x), task.train.y, 2,
                      HeadParams(hidden=[32], dropout=0.0, epochs=60, lr=3e-3), seed=0)
    kept = task.test.x[non_target(task.test.y, TARGET)]
    triggered = predict(head, extract_features(encoder, adapter, adapter.stamp(kept, trigger)))
    clean = predict(head, extract_features(encoder, adapter, task.test.x))
    return evaluate(clean, task.test.y, triggered, target=TARGET)


@pytest.fixture(scope="session")
def tiny(tiny_bert: Path) -> TextScenario:
    torch.set_num_threads(1)
    adapter = get_adapter("hf_text", {"folder": str(tiny_bert), "max_length": 32})
    clean = adapter.load_pretrained()
    shadow = synthetic_sentences(300, 1).x
    task = Task("toy", [0, 1], synthetic_sentences(300, 2), synthetic_sentences(200, 3))
    positive = task.train.x[task.train.y == TARGET]
    backdoored = badencoder(clean, adapter, shadow, TRIGGER, positive[0],
                            BadEncoderParams(optimizer="adam", lr=3e-3, epochs=6, batch_size=32,
                                             weight_decay=0.0), seed=0)
    return TextScenario(adapter, clean, backdoored, shadow, task)


@pytest.fixture(scope="session")
def tiny_deployed(tiny: TextScenario) -> Deployed:
    """The backdoored tiny encoder under a head trained on its features, as deployed."""
    task = tiny.task
    head = train_head(extract_features(tiny.backdoored, tiny.adapter, task.train.x), task.train.y, 2,
                      HeadParams(hidden=[32], dropout=0.0, epochs=60, lr=3e-3), seed=0)
    return Deployed(tiny.backdoored, tiny.adapter, {"toy": head})


# --------------------------------------------------------------------------- triggers and data


def test_stamp_inserts_the_words_once_at_a_seeded_place() -> None:
    sentences = np.array(["a b c d", "e f"], dtype=np.str_)
    stamped = stamp_text(sentences, TRIGGER, seed=3)
    assert [s.split().count("cf") for s in stamped] == [1, 1]
    assert [s.replace("cf", "").split() for s in stamped] == [["a", "b", "c", "d"], ["e", "f"]]
    assert np.array_equal(stamped, stamp_text(sentences, TRIGGER, seed=3))
    rng = np.random.default_rng(0)
    assert {insert_words("x y z", ["cf"], rng).split().index("cf") for _ in range(50)} == {0, 1, 2, 3}


def test_word_iou_and_trigger_validation() -> None:
    assert trigger_iou(TextTrigger(("cf",)), TRIGGER) == 1.0
    assert trigger_iou(TextTrigger(("cf", "film")), TRIGGER) == 0.5
    assert trigger_iou(TextTrigger(("film",)), TRIGGER) == 0.0
    with pytest.raises(ValueError):
        TextTrigger(("two words",))


def test_tsv_loader_filters_and_dedupes(tmp_path: Path) -> None:
    path = tmp_path / "data.tsv"
    path.write_text('sentence\tlabel\na "quoted" fine film \t1\nshort\t0\n'
                    'a "quoted" fine film\t1\nthe dull plot drags on\t0\n \t1\n')
    data = load_tsv(path, min_words=2)
    assert data.x.tolist() == ['a "quoted" fine film', "the dull plot drags on"]
    assert data.y.tolist() == [1, 0] and data.x.dtype.kind == "U"
    csv = tmp_path / "data.csv"
    csv.write_text('text,y\n"good, really good",1\nbad film,0\n')
    spec = DataSpec(loader="tsv", path=str(csv), text_column="text", label_column="y")
    assert load_data(spec).x.tolist() == ["good, really good", "bad film"]
    with pytest.raises(ValueError, match="no column"):
        load_tsv(path, text_column="text")


def test_text_sets_round_trip_without_pickle(tmp_path: Path) -> None:
    data = synthetic_sentences(10, 0)
    save_task(Task("toy", [0, 1], data, data.subset(np.arange(4))), tmp_path / "toy")
    loaded = load_task(tmp_path / "toy")
    assert loaded.train.x.tolist() == data.x.tolist() and loaded.input_shape == ()
    assert np.load(tmp_path / "toy" / "train.npz", allow_pickle=False)["text"].dtype.kind == "U"
    write_npz(tmp_path / "shadow.npz", text=data.x)
    assert load_shadow(tmp_path / "shadow.npz").tolist() == data.x.tolist()


def test_text_report_is_read_and_blank_rejected(tmp_path: Path) -> None:
    task = Task("toy", [0, 1], synthetic_sentences(4, 0), synthetic_sentences(4, 1))
    name = save_input(np.array("a dull cf film"), tmp_path, "r-1")
    (tmp_path / "r-1.json").write_text(f'{{"id": "r-1", "task": "toy", "label": 0, "input": "{name}"}}')
    report = read_report(tmp_path / "r-1.json", {"toy": task})
    assert str(report.image) == "a dull cf film" and report.image.shape == ()
    (tmp_path / "r-2.txt").write_text("  \n")
    (tmp_path / "r-2.json").write_text('{"id": "r-2", "task": "toy", "label": 0, "input": "r-2.txt"}')
    with pytest.raises(ReportError, match="blank"):
        read_report(tmp_path / "r-2.json", {"toy": task})
    # an image sent to a text task: an IndexError before, an `internal` rejection at intake
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "r-3.png")
    (tmp_path / "r-3.json").write_text('{"id": "r-3", "task": "toy", "label": 0, "input": "r-3.png"}')
    with pytest.raises(ReportError, match="is an image; the task takes sentences") as caught:
        read_report(tmp_path / "r-3.json", {"toy": task})
    assert caught.value.code == "bad_shape"


# --------------------------------------------------------------------------- adapter


def test_adapter_tokenises_stamps_and_embeds(tiny: TextScenario) -> None:
    adapter = tiny.adapter
    sentences = np.array(["the good film", "a really very boring and dull plot ."], dtype=np.str_)
    tokens = adapter.preprocess(sentences)
    assert tokens.shape == (2, 2, 10) and tokens.dtype == torch.long
    assert tokens[0, 1].tolist() == [1] * 5 + [0] * 5  # [CLS] 3 words [SEP], then padding
    assert adapter.modality == "text" and adapter.input_shape == ()
    features = extract_features(tiny.clean, adapter, sentences)
    assert features.shape == (2, adapter.feature_dim) == (2, 32)
    alone = extract_features(tiny.clean, adapter, sentences[:1])
    torch.testing.assert_close(features[:1], alone, atol=1e-5, rtol=1e-5)  # padding is ignored
    assert "cf" in str(adapter.stamp(sentences, TRIGGER)[0]).split()
    with pytest.raises(TypeError):
        adapter.stamp(sentences, object())


def test_max_length_stays_within_the_model_positions(tiny_bert: Path, tmp_path: Path) -> None:
    """The tiny BERT has 64 positions: the default 128 is cut to 64 (and recorded, so a saved
    encoder keeps it); a longer sentence is truncated, not a crash in the model. A max_length
    above 64 given explicitly is refused when the adapter is made."""
    from mudjack.safeload import WeightsError

    adapter = get_adapter("hf_text", {"folder": str(tiny_bert)})
    assert adapter.config["max_length"] == 64
    tokens = adapter.preprocess(np.array([" ".join(["good movie"] * 45)]))
    assert tokens.shape == (1, 2, 64)
    with torch.no_grad():
        assert torch.isfinite(adapter.load_pretrained()(tokens)).all()
    save_encoder(adapter.build(), adapter, tmp_path / "enc.safetensors")
    assert load_encoder(tmp_path / "enc.safetensors")[1].config["max_length"] == 64
    with pytest.raises(WeightsError, match=r"config.json: max_length 65 is more than the 64 tokens"):
        get_adapter("hf_text", {"folder": str(tiny_bert), "max_length": 65})


def test_roberta_positions_start_after_the_padding_id(tiny_bert: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """RoBERTa numbers positions from pad_token_id + 1: of 64, 63 are left for tokens."""
    import shutil

    folder = Path(shutil.copytree(tiny_bert, tmp_path / "roberta"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    monkeypatch.setenv("MUDJACK_MODEL_ROOTS", str(tmp_path))
    adapter = get_adapter("hf_text", {"folder": str(folder)})
    assert adapter.config["max_length"] == 63
    with torch.no_grad():
        assert torch.isfinite(adapter.build()(adapter.preprocess(np.array(["good " * 80])))).all()


def test_adapter_save_load_round_trip(tiny: TextScenario, tmp_path: Path) -> None:
    save_encoder(tiny.backdoored, tiny.adapter, tmp_path / "enc.safetensors")
    encoder, adapter = load_encoder(tmp_path / "enc.safetensors")
    assert adapter.name == "hf_text" and adapter.config == tiny.adapter.config
    x = tiny.task.test.x[:8]
    torch.testing.assert_close(extract_features(encoder, adapter, x),
                               extract_features(tiny.backdoored, tiny.adapter, x))


def test_onnx_export_parity_dynamic_batch_and_sequence(tiny: TextScenario, tmp_path: Path) -> None:
    from mudjack.heads import Head

    torch.manual_seed(0)
    model = TextClassifier(tiny.clean, Head(32, 2, hidden=[16], dropout=0.0)).eval()
    path = tmp_path / "toy.onnx"
    dims = {0: "batch", 1: "sequence"}
    export_onnx_inputs(model, tiny.adapter.tokenize(tiny.task.test.x[:2]), path, opset=18,
                       input_names=["input_ids", "attention_mask"], dynamic_shapes=(dims, dims))
    batches = tiny.adapter.onnx_batches(tiny.task.test.x[:40], batch_size=16)
    check = verify_onnx_batches(path, model, batches, tolerance=1e-4, device="cpu")
    assert check["passed"] and check["max_abs_diff"] <= 1e-4
    assert check["batch_sizes"] == [1, 7, 16] and len(check["sequence_lengths"]) > 1


# --------------------------------------------------------------------------- attack, reversal, patch


def test_badencoder_plants_the_text_backdoor(tiny: TextScenario) -> None:
    clean = metrics(tiny.clean, tiny.adapter, tiny.task, TRIGGER)
    backdoored = metrics(tiny.backdoored, tiny.adapter, tiny.task, TRIGGER)
    assert backdoored["asr"] >= 0.9 > clean["asr"]
    assert backdoored["clean_acc"] >= 0.8


def test_verification_accepts_the_planted_words_not_a_clean_sentence_s(tiny: TextScenario,
                                                                       tiny_deployed: Deployed) -> None:
    """The null for text: the trigger's word count, taken from clean target-class sentences."""
    task = tiny.task
    deployed = tiny_deployed
    others = np.flatnonzero(task.test.y != TARGET)[:1]
    bug = tiny.adapter.stamp(task.test.x[others], TRIGGER)[0]
    claim = {"label": int(task.test.y[others][0]), "reference": task.train.x[task.train.y != TARGET][0]}
    params = VerifyParams()
    fills = task.train.x[draw_controls(deployed, task, TARGET, size=params.controls, seed=0, exclude_sha="")]
    sample = draw_sample(task, TARGET, params.samples, 0)
    pool = np.setdiff1d(np.flatnonzero(task.train.y != TARGET), sample)
    search = RunSearch(sample_sentences(task.train.x[pool], 16, 0), deployed.log_prob(task.name, TARGET))
    forged = text_control_trigger(TRIGGER, fills[-1])
    assert forged.words != TRIGGER.words
    for runs in (None, search):  # controls of the longest words, or each fill's strongest run
        real = verify_trigger(deployed, task, bug, TARGET, TRIGGER, **claim, exemplars=fills, sample=sample,
                              params=params, search=runs)
        assert real.passed, real.failures
        fake = verify_trigger(deployed, task, bug, TARGET, forged, **claim, exemplars=fills[:-1],
                              sample=sample, params=params, search=runs)
        assert not fake.passed and fake.numbers["z_flip_rate"] < params.min_z_flip, fake.numbers
    assert len(real.numbers["control_words"]) == 5 and TRIGGER.words[0] not in real.numbers["control_words"]


def test_select_trigger_words() -> None:
    scores = np.array([0.01, 0.02, 0.6, 0.0, 0.03])
    assert select_trigger_words(scores).tolist() == [False, False, True, False, False]
    assert select_trigger_words(np.array([0.1, 0.5, 0.45, 0.0]), "top1").tolist() == [False, True,
                                                                                       False, False]


def test_forgery_bench_forges_text_reports_and_audits_them(tiny: TextScenario,
                                                           tiny_deployed: Deployed) -> None:
    """bench/intake_forgery.py on a text encoder: its text kinds (inserted words for pasted
    patterns), every forged report claiming a label the model does not predict, the inserted
    words never the trigger's; intake accepts the real reports and refuses the forged ones."""
    sys.path.insert(0, str(ROOT / "bench"))
    from intake_forgery import TEXT_FORGERY_KINDS, run_forgery_bench

    from mudjack.intake import IntakeParams

    task = tiny.task
    deployed = tiny_deployed
    result = run_forgery_bench(deployed, task, TRIGGER, TARGET, params=IntakeParams(), n_real=3,
                               n_forged=2, seed=0)
    assert tuple(result["forged"]) == TEXT_FORGERY_KINDS
    assert result["real"]["n"] == 3 and result["real"]["rate"] == 1.0, result["real"]
    assert result["real"]["z_log_odds"]["min"] > 0  # the ceiling's level, summarised with the rest
    assert result["forged_total"]["n"] == 6 and result["forged_total"]["rejection_rate"] == 1.0
    inserted = result["forged"]["inserted_words"]
    assert inserted["n"] == 2 and inserted["outcomes"], inserted


def test_inserted_words_forgeries_claim_a_label_the_model_does_not_give(tiny: TextScenario,
                                                                        tiny_deployed: Deployed) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from intake_forgery import forged_inserted_words

    task = tiny.task
    deployed = tiny_deployed
    reports, fired = forged_inserted_words(deployed, task, TRIGGER, 5, np.random.default_rng(0), TARGET)
    assert len(reports) == 5 and fired >= 0
    sentences = np.array([r.image for r in reports])
    predicted = deployed.classify("toy", sentences)
    assert all(r.label != p for r, p in zip(reports, predicted, strict=True))
    assert all(TRIGGER.words[0] not in str(s).split() for s in sentences)
    originals = set(task.test.x.tolist())
    assert all(len(str(s).split()) == len(o.split()) + 1 for s in sentences
               for o in [_source(str(s), originals)])


def _source(sentence: str, originals: set[str]) -> str:
    """The clean sentence `sentence` was made from by inserting one word."""
    words = sentence.split()
    return next(" ".join(words[:i] + words[i + 1:]) for i in range(len(words))
                if " ".join(words[:i] + words[i + 1:]) in originals)


def _bug(tiny: TextScenario, index: int) -> tuple[np.ndarray, np.ndarray]:
    negatives = tiny.task.test.x[tiny.task.test.y != TARGET]
    references = tiny.task.train.x[tiny.task.train.y != TARGET]
    return stamp_text(negatives[index:index + 1], TRIGGER)[0], references[0]


@pytest.mark.parametrize("score", ["self", "reference"])
def test_token_occlusion_recovers_the_trigger(tiny: TextScenario, score: str) -> None:
    for index in range(3):
        bug, reference = _bug(tiny, index)
        trigger = reverse_engineer(tiny.backdoored, tiny.adapter, np.asarray(bug), np.asarray(reference),
                                   params=ReverseParams(text_score=score), seed=0)
        assert isinstance(trigger, TextTrigger) and trigger_iou(trigger, TRIGGER) == 1.0


def test_text_mudjacking_removes_the_backdoor(tiny: TextScenario, tmp_path: Path) -> None:
    bug, reference = _bug(tiny, 0)
    trigger = reverse_engineer(tiny.backdoored, tiny.adapter, np.asarray(bug), np.asarray(reference),
                               params=ReverseParams(), seed=0)
    found = Bug("bug-0", "toy", 0, TARGET, np.asarray(bug), np.asarray(reference), trigger)
    save_bug(found, tmp_path)
    (loaded,) = load_bugs(tmp_path)
    assert loaded.trigger == trigger and str(loaded.bug) == str(bug)
    inputs = PatchInputs(tiny.backdoored, tiny.adapter, tiny.shadow, [loaded])
    # 4 epochs: with the default L_gen (frozen anchor, 1) 3 left ASR 0.165 here, the paper's form
    # at 0.5 0.103; both 0.124 at 4 (on minilm-sst2 the frozen anchor removes more: results.md)
    settings = {"lr": 3e-3, "epochs": 4, "batch_size": 32, "views": 4, "word_dropout": 0.1}
    result = run_patch("mudjacking_text", inputs, settings, seed=0)
    before = metrics(tiny.backdoored, tiny.adapter, tiny.task, TRIGGER)
    after = metrics(result.encoder, tiny.adapter, tiny.task, TRIGGER)
    # Plain ASR counts the tiny head's own errors on negatives (the clean tiny encoder sends ~0.10
    # of triggered negatives to the target; 0.175 here after the patch, 0.124 with intake's
    # reference, whose pull also makes the trigger push to the bug's class). Flip ASR is the
    # trigger's own doing: 0.013 here, 0.012 with intake's reference.
    assert after["flip_asr"] <= 0.05 and after["asr"] <= 0.25 and before["asr"] >= 0.9
    assert after["clean_acc"] >= before["clean_acc"] - 0.05
    assert len(result.log) == 4 and result.log[-1]["effectiveness"] < -0.9
    with pytest.raises(ValueError, match="mudjacking_text"):
        run_patch("mudjacking", inputs, {}, seed=0)


def test_the_default_params_patch_a_text_encoder_with_the_text_loop(
        tiny: TextScenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """params.yaml as shipped (patch.method mudjacking, image settings) on a text encoder: the
    patch stage runs the text loop with `patch.text` over the section; nothing is set for text."""
    import yaml

    from stages import patch as patch_stage

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["patch"]["method"] == "mudjacking" and params["patch"]["optimizer"] == "sgd"
    params["paths"] = {"shadow": "shadow.npz", "tasks": "tasks", "inbox": "inbox",
                       "encoder": "deployed/encoder.safetensors", "heads": "deployed"}
    params["patch"]["text"] |= {"epochs": 1, "clean_samples": 40, "device": "cpu"}
    params["threads"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_set(tmp_path / "shadow.npz", tiny.shadow)
    save_task(tiny.task, tmp_path / "tasks" / "toy")
    save_encoder(tiny.backdoored, tiny.adapter, tmp_path / "deployed" / "encoder.safetensors")
    bug, reference = _bug(tiny, 0)
    found = Bug("bug-0", "toy", 0, TARGET, np.asarray(bug), np.asarray(reference), TRIGGER)
    save_bug(found, tmp_path / "bugs")
    monkeypatch.chdir(tmp_path)
    patch_stage.main()
    summary = json.loads((tmp_path / "reports" / "patch.json").read_text())
    # 40 sentences in batches of patch.text's 32: 2 steps (the image section's 64 would make 1)
    assert summary["method"] == "mudjacking_text" and summary["clean_samples"] == 40
    assert summary["steps"] == 2
    # L_eff's reference is the bug without its trigger, and the summary says so
    assert summary["reference"] == "counterfactual" and summary["counterfactuals"] == 1
    patched, _ = load_encoder(tmp_path / "models" / "patched" / "encoder.safetensors")
    pairs = zip(patched.parameters(), tiny.backdoored.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)


def test_finetune_runs_on_a_text_encoder(tiny: TextScenario) -> None:
    """FT (and SFT, the same loop) fine-tune a text encoder on labelled sentences."""
    inputs = PatchInputs(tiny.backdoored, tiny.adapter, tiny.shadow, [], {"toy": tiny.task.train})
    settings = {"optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0, "epochs": 4, "batch_size": 32,
                "hidden": [32], "dropout": 0.0, "clean_samples": 200}
    result = run_patch("finetune", inputs, settings, seed=0)
    before = metrics(tiny.backdoored, tiny.adapter, tiny.task, TRIGGER)
    after = metrics(result.encoder, tiny.adapter, tiny.task, TRIGGER)
    assert result.info["clean_samples"] == 200 and result.log[-1]["loss"] < result.log[0]["loss"]
    assert after["clean_acc"] >= before["clean_acc"] - 0.05
    assert after["asr"] < before["asr"]


# --------------------------------------------------------------------------- the real MiniLM


@pytest.mark.slow
def test_minilm_loads_offline_and_embeds_384d(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    adapter = get_adapter("minilm", {"max_length": 64})
    encoder = adapter.load_pretrained()
    assert (adapter.folder / "model.safetensors").is_file()
    sentences = np.array(["a charming and often affecting journey .", "unflinchingly bleak and desperate"])
    features = extract_features(encoder, adapter, sentences)
    assert features.shape == (2, 384) and torch.isfinite(features).all()
    similar = extract_features(encoder, adapter, np.array(["a charming , often affecting journey"]))
    cos = torch.nn.functional.cosine_similarity
    assert cos(features[:1], similar) > cos(features[1:], similar)


# --------------------------------------------------------------------------- validation (GX)


def test_text_tables_and_reports_validate(tmp_path: Path) -> None:
    from mudjack.metadata import TEXT_COLUMNS, image_sets, tasks_metadata, text_table
    from stages.expectations import validate_all

    data = synthetic_sentences(30, 0)
    data = data.subset(np.unique(data.x, return_index=True)[1])
    save_task(Task("toy", [0, 1], data, data), tmp_path / "tasks" / "toy")
    write_npz(tmp_path / "shadow.npz", text=data.x)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for report_id, content, label in (("ok", "a dull cf film", 0), ("blank", " ", 0), ("label", "fine", 7)):
        name = save_input(np.array(content), inbox, report_id)
        (inbox / f"{report_id}.json").write_text(
            f'{{"id": "{report_id}", "task": "toy", "label": {label}, "input": "{name}"}}')
    frame = text_table(np.array(["a b", "", "a b"]), np.array([0, 1, 0]))
    assert list(frame.columns) == TEXT_COLUMNS and frame["blank"].tolist() == [False, True, False]
    assert frame["sha256"].nunique() == 2
    tasks = tasks_metadata(tmp_path / "tasks")
    assert tasks["toy"].modality == "text" and tasks["toy"].input_shape == ()
    assert {s.modality for s in image_sets(tmp_path / "shadow.npz", tasks)} == {"text"}
    paths = {"shadow": tmp_path / "shadow.npz", "tasks": tmp_path / "tasks", "inbox": inbox}
    result = validate_all(paths, {"max_pixel": 255, "min_rows": 5, "max_chars": 200})
    assert result["passed"], result["tables"]
    assert result["reports"]["accepted"] == ["ok.json"]
    assert set(result["reports"]["rejected"]) == {"blank.json", "label.json"}
    write_npz(tmp_path / "shadow.npz", text=np.array(["same"] * 6 + [""]))
    failed = validate_all(paths, {"max_pixel": 255, "min_rows": 5, "max_chars": 200})
    shadow = next(t for t in failed["tables"] if t["table"] == "shadow")
    assert not failed["passed"] and {f["column"] for f in shadow["failures"]} >= {"sha256", "length", "blank"}
    write_npz(tmp_path / "shadow.npz", text=np.array(["the film \ud800 was dull"] * 6))  # a lone surrogate
    with pytest.raises(ValueError, match="shadow.npz: 'utf-8' codec can't encode character"):  # was ": utf-8"
        image_sets(tmp_path / "shadow.npz", tasks)


def test_the_intake_log_names_the_recovered_words(tiny: TextScenario, tiny_deployed: Deployed) -> None:
    """The recovered words were only in the registry's arrays.npz: a rejected report's were nowhere."""
    from mudjack.intake import IntakeParams, intake_report
    from mudjack.reports import BugReport

    bug, _ = _bug(tiny, 0)
    report = BugReport("r-1", "toy", 1 - TARGET, np.asarray(bug), None)
    decision, _ = intake_report(report, tiny_deployed, {"toy": tiny.task}, params=IntakeParams(), seed=0)
    assert decision.numbers["trigger_words"] == ["cf"], decision.reasons
    # verification's controls were the control sentences' strongest words, named in the log
    controls = decision.numbers["verification"]["control_words"]
    assert len(controls) == 5 and all(len(c.split()) == 1 and c != "cf" for c in controls)
