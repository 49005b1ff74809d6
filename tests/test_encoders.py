import pytest
import torch
from safetensors.torch import save_file

from mudjack.encoders import (
    adapter_names,
    freeze_batchnorm,
    get_adapter,
    load_encoder,
    save_encoder,
    trainable_parameters,
)

CONFIG = {"input_shape": [8, 8, 3], "width": 4, "feature_dim": 16, "mean": [0.5] * 3,
          "std": [0.25] * 3}


def test_registry_knows_small_cnn_and_refuses_unknown_names():
    assert "small_cnn" in adapter_names()
    with pytest.raises(KeyError, match="unknown encoder adapter"):
        get_adapter("nope", CONFIG)


def test_encoder_maps_pixels_to_features():
    adapter = get_adapter("small_cnn", CONFIG)
    out = adapter.build()(torch.rand(5, 3, 8, 8))
    assert out.shape == (5, 16)


def test_save_and_load_round_trip_as_safetensors(tmp_path):
    adapter = get_adapter("small_cnn", CONFIG)
    encoder = adapter.build().eval()
    path = tmp_path / "encoder.safetensors"
    save_encoder(encoder, adapter, path)
    loaded, loaded_adapter = load_encoder(path)
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(loaded(x), encoder(x))
    assert loaded_adapter.config == CONFIG
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_a_safetensors_file_without_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(1)}, str(path))
    with pytest.raises(ValueError, match="not a mudjack encoder"):
        load_encoder(path)


def test_frozen_batchnorm_keeps_running_statistics_and_is_not_trainable():
    encoder = get_adapter("small_cnn", CONFIG).build().train()
    freeze_batchnorm(encoder)
    bn = encoder.backbone[1]
    before = bn.running_mean.clone()
    encoder(torch.rand(8, 3, 8, 8) * 5)
    assert torch.equal(bn.running_mean, before)
    trainable = {id(p) for p in trainable_parameters(encoder)}
    assert id(bn.weight) not in trainable and id(encoder.backbone[0].weight) in trainable
