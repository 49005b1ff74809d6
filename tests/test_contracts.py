"""Contracts every registered encoder adapter and patch method keeps, on tiny instances
(tests/helpers/tiny.py): a new one registered without a tiny instance fails here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mudjack.encoders import adapter_names, freeze_batchnorm, load_encoder, save_encoder, trainable_parameters
from mudjack.features import extract_features
from mudjack.patching import PATCH_METHODS, PatchResult, run_patch
from tests.helpers.tiny import TinyAdapter, tiny_adapter, tiny_patch


@pytest.fixture(params=adapter_names())
def tiny(request: pytest.FixtureRequest) -> TinyAdapter:
    torch.manual_seed(0)
    return tiny_adapter(request.param, request)


def test_features_have_the_declared_shape(tiny: TinyAdapter) -> None:
    features = extract_features(tiny.adapter.build().eval(), tiny.adapter, tiny.raw, batch_size=4)
    assert features.shape == (len(tiny.raw), tiny.adapter.feature_dim)
    assert features.dtype == torch.float32 and torch.isfinite(features).all()


def test_stamping_stays_in_the_input_space(tiny: TinyAdapter) -> None:
    stamped = tiny.adapter.stamp(tiny.raw, tiny.trigger)
    assert stamped.shape == tiny.raw.shape and stamped.dtype.kind == tiny.raw.dtype.kind
    assert all(not np.array_equal(a, b) for a, b in zip(stamped, tiny.raw, strict=True))
    assert tiny.adapter.preprocess(stamped).shape[0] == len(tiny.raw)


def test_trainable_parameters_exclude_frozen_batchnorm(tiny: TinyAdapter) -> None:
    encoder = tiny.adapter.build()
    freeze_batchnorm(encoder)
    trainable = {id(p) for p in trainable_parameters(encoder)}
    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    frozen = {id(p) for layer in norms for p in layer.parameters()}
    assert trainable and not trainable & frozen
    assert trainable == {id(p) for p in encoder.parameters()} - frozen


def test_save_and_load_round_trip(tiny: TinyAdapter, tmp_path) -> None:
    encoder = tiny.adapter.build().eval()
    save_encoder(encoder, tiny.adapter, tmp_path / "encoder.safetensors")
    loaded, adapter = load_encoder(tmp_path / "encoder.safetensors")
    assert (type(adapter), adapter.config) == (type(tiny.adapter), tiny.adapter.config)
    pixels = tiny.adapter.preprocess(tiny.raw)
    with torch.no_grad():
        torch.testing.assert_close(loaded(adapter.preprocess(tiny.raw)), encoder(pixels))


def test_an_adapter_without_a_tiny_instance_fails_the_contract(request: pytest.FixtureRequest) -> None:
    with pytest.raises(pytest.fail.Exception, match="'unlisted' is registered but has no tiny-instance"):
        tiny_adapter("unlisted", request)


@pytest.mark.parametrize("method", sorted(PATCH_METHODS))
def test_a_patch_method_takes_a_step_and_returns_a_new_encoder(method: str,
                                                              request: pytest.FixtureRequest) -> None:
    inputs, params = tiny_patch(method, request)
    before = {k: v.clone() for k, v in inputs.encoder.state_dict().items()}
    result = run_patch(method, inputs, params, seed=0)
    assert isinstance(result, PatchResult) and result.encoder is not inputs.encoder
    assert result.steps >= 1 and len(result.log) == 1 and all(np.isfinite(list(result.log[0].values())))
    after = result.encoder.state_dict()
    assert after.keys() == before.keys()
    assert any(not torch.equal(after[k], before[k]) for k in before)  # it trained
    assert all(torch.equal(inputs.encoder.state_dict()[k], v) for k, v in before.items())  # input kept
