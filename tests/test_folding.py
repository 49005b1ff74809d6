"""The inference copy with BatchNorms folded into their convolutions (mudjack/encoders/folding.py)."""

import pytest
import torch
from torch import nn

from mudjack.deployed import Deployed
from mudjack.encoders import ImageEncoder, get_adapter, has_batchnorm
from mudjack.encoders.folding import folded


def _with_statistics(encoder: ImageEncoder, seed: int = 0) -> ImageEncoder:
    """Running statistics and affine parameters far from their defaults, so a fold that lost
    one would show in the features."""
    generator = torch.Generator().manual_seed(seed)
    for layer in encoder.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.running_mean.normal_(0, 0.3, generator=generator)
            layer.running_var.uniform_(0.3, 2.0, generator=generator)
            layer.weight.data.uniform_(0.5, 1.5, generator=generator)
            layer.bias.data.normal_(0, 0.2, generator=generator)
    return encoder.eval()


SMALL_CNN = {"input_shape": [8, 8, 1], "feature_dim": 16, "mean": [0.5], "std": [0.25]}
CONFIGS = {"resnet_cifar": {"depth": 20, "input_shape": [32, 32, 3]}, "small_cnn": SMALL_CNN}


@pytest.fixture(params=sorted(CONFIGS))
def encoder(request) -> ImageEncoder:
    torch.manual_seed(0)
    return _with_statistics(get_adapter(request.param, CONFIGS[request.param]).build())


def _pixels(encoder: ImageEncoder, count: int = 6) -> torch.Tensor:
    channels = encoder.mean.shape[1]
    side = 32 if channels == 3 else 8
    return torch.rand(count, channels, side, side, generator=torch.Generator().manual_seed(1))


def test_folding_removes_every_batchnorm_and_keeps_features_and_input_gradients(encoder):
    inference = folded(encoder)
    assert has_batchnorm(encoder) and not has_batchnorm(inference)
    pixels = _pixels(encoder)
    with torch.no_grad():
        torch.testing.assert_close(inference(pixels), encoder(pixels), atol=1e-5, rtol=1e-5)
    grads = []
    for model in (encoder, inference):  # what the soft and blend fits differentiate
        stamped = pixels.clone().requires_grad_(True)
        model(stamped).square().sum().backward()
        grads.append(stamped.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-4)


def test_folding_leaves_the_encoder_it_copies_as_it_was(encoder):
    encoder.train()
    flags = [param.requires_grad for param in encoder.parameters()]
    before = {name: value.clone() for name, value in encoder.state_dict().items()}
    inference = folded(encoder)
    assert inference is not encoder and not inference.training
    assert not any(param.requires_grad for param in inference.parameters())
    assert encoder.training and [param.requires_grad for param in encoder.parameters()] == flags
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, before[name]), name


class _Branching(nn.Module):
    """BatchNorm behind data-dependent control flow, which torch.fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm(self.conv(x))
        return out.mean((2, 3)) if bool(out.sum() > 0) else -out.mean((2, 3))


class _LayerNormed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear, self.norm = nn.Linear(3, 4), nn.LayerNorm(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(x.mean((2, 3))))


@pytest.mark.parametrize("backbone", [_Branching, _LayerNormed])
def test_a_backbone_without_batchnorm_or_that_cannot_be_traced_is_returned_as_it_is(backbone):
    encoder = ImageEncoder(backbone(), [0.5] * 3, [0.25] * 3).eval()
    assert folded(encoder) is encoder


def test_deployed_for_inference_shares_heads_and_adapter_and_runs_the_folded_encoder(encoder):
    adapter = get_adapter("small_cnn", SMALL_CNN)
    deployed = Deployed(encoder, adapter, {"t": nn.Linear(encoder(_pixels(encoder, 1)).shape[1], 3)})
    inference = deployed.for_inference()
    assert inference.heads is deployed.heads and inference.adapter is deployed.adapter
    assert not has_batchnorm(inference.encoder) and has_batchnorm(deployed.encoder)
    assert inference.for_inference() is inference  # nothing left to fold: no second copy
    plain = ImageEncoder(_LayerNormed(), [0.5] * 3, [0.25] * 3)
    unfoldable = Deployed(plain, adapter, deployed.heads)
    assert unfoldable.for_inference() is unfoldable
