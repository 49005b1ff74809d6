"""Heads: the MLP and the linear probe, their spec in the file header, and backwards compatibility."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression

from mudjack.encoders import get_adapter
from mudjack.encoders.base import read_metadata
from mudjack.export import export_onnx, verify_onnx
from mudjack.heads import (
    Classifier,
    Head,
    HeadParams,
    linear_probe,
    load_head,
    predict,
    save_head,
    train_head,
)

IN_DIM, CLASSES = 16, 3


def _features(n: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Three separable clusters of features."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    centres = rng.normal(0, 3, (CLASSES, IN_DIM))
    return torch.tensor(centres[labels] + rng.normal(0, 0.5, (n, IN_DIM)), dtype=torch.float32), labels


@pytest.mark.parametrize(("params", "kind", "layers"), [
    (HeadParams(hidden=[8], dropout=0.1, epochs=3), "mlp", 2),
    (HeadParams(kind="linear", epochs=3), "linear", 1),
    (HeadParams(hidden=[], epochs=3), "linear", 1),
])
def test_both_kinds_train_and_round_trip_through_the_file(params, kind, layers, tmp_path):
    features, labels = _features(60)
    head = train_head(features, labels, CLASSES, params)
    assert sum(isinstance(m, torch.nn.Linear) for m in head.modules()) == layers
    path = tmp_path / "head.safetensors"
    save_head(head, path)
    spec = json.loads(read_metadata(path)["head"])
    assert spec["kind"] == kind and spec["normalize"] is True
    loaded = load_head(path)
    assert loaded.spec == head.spec
    assert torch.equal(loaded(features), head(features))


def test_a_linear_kind_with_hidden_layers_is_refused():
    with pytest.raises(ValidationError, match="a linear head has no hidden layers"):
        HeadParams(kind="linear", hidden=[8])


def test_a_head_file_from_before_the_kind_field_loads_as_the_same_mlp(tmp_path):
    torch.manual_seed(0)
    head = Head(IN_DIM, CLASSES, hidden=[8, 4], dropout=0.5).eval()
    path = tmp_path / "old.safetensors"
    old_spec = {"in_dim": IN_DIM, "classes": CLASSES, "hidden": [8, 4], "dropout": 0.5}
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(path),
              metadata={"head": json.dumps(old_spec)})
    loaded = load_head(path)
    features, _ = _features(5)
    assert loaded.spec["kind"] == "mlp" and loaded.normalize
    assert torch.equal(loaded(features), head(features))


def test_an_unknown_head_kind_is_refused(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_file({"mlp.0.weight": torch.zeros(CLASSES, IN_DIM)}, str(path),
              metadata={"head": json.dumps({"kind": "forest", "in_dim": IN_DIM, "classes": CLASSES})})
    with pytest.raises(ValueError, match=r"kind: Input should be 'mlp' or 'linear' \(got 'forest'\)"):
        load_head(path)


def test_exported_logistic_regression_weights_predict_as_scikit_learn(tmp_path):
    features, labels = _features(90, seed=1)
    regression = LogisticRegression(max_iter=500).fit(features.numpy(), labels)
    head = linear_probe(regression.coef_, regression.intercept_)
    path = tmp_path / "probe.safetensors"
    save_head(head, path)
    loaded = load_head(path)
    assert loaded.spec["kind"] == "linear" and loaded.normalize is False
    assert np.array_equal(predict(loaded, features), regression.predict(features.numpy()))
    with pytest.raises(ValueError, match="a linear probe needs"):
        linear_probe(regression.coef_[:1], regression.intercept_[:1])


def test_an_encoder_with_a_linear_probe_exports_at_parity(tmp_path):
    torch.manual_seed(0)
    adapter = get_adapter("small_cnn", {"input_shape": [8, 8, 3], "width": 4, "feature_dim": IN_DIM,
                                        "mean": [0.5] * 3, "std": [0.25] * 3})
    weight = np.random.default_rng(0).normal(size=(CLASSES, IN_DIM))
    model = Classifier(adapter.build().eval(), linear_probe(weight, np.zeros(CLASSES), normalize=True))
    pixels = torch.rand(5, 3, 8, 8)
    path = tmp_path / "probe.onnx"
    export_onnx(model, pixels[:2], path)
    report = verify_onnx(path, model, pixels, tolerance=1e-5, batch_size=3, device="cpu")
    assert report["passed"] and report["batch_sizes"] == [1, 3]


def test_a_predictor_of_several_heads_gives_one_row_per_head_from_one_feature_pass() -> None:
    from mudjack.evaluation import predictor

    adapter = get_adapter("small_cnn", {"input_shape": [8, 8, 3], "width": 4, "feature_dim": IN_DIM,
                                        "mean": [0.5] * 3, "std": [0.25] * 3})
    encoder, calls = adapter.build().eval(), []
    encoder.register_forward_hook(lambda *_: calls.append(1))
    rng = np.random.default_rng(0)
    heads = [linear_probe(rng.normal(size=(CLASSES, IN_DIM)), np.zeros(CLASSES), normalize=True)
             for _ in range(3)]
    raw = rng.integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    rows = predictor(encoder, adapter, heads)(raw)
    assert rows.shape == (3, 7) and len(calls) == 1
    for head, row in zip(heads, rows, strict=True):
        np.testing.assert_array_equal(predictor(encoder, adapter, head)(raw), row)
    with pytest.raises(ValueError, match="at least one head"):
        predictor(encoder, adapter, [])
