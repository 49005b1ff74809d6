import pytest
import torch

from mudjack.encoders import get_adapter, import_encoder, load_encoder, save_encoder
from mudjack.encoders.resnet_cifar import CifarResNet


def akamaster_checkpoint(path, blocks=3):
    """A file shaped like the public CIFAR ResNet checkpoints: module. prefix, a classifier."""
    backbone = CifarResNet(blocks)
    state = {f"module.{k}": v for k, v in backbone.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    state["module.linear.weight"] = torch.zeros(10, 64)
    state["module.linear.bias"] = torch.zeros(10)
    torch.save({"best_prec1": 91.0, "state_dict": state}, path)
    return backbone


def test_resnet20_gives_64_features_and_uses_imagenet_normalisation():
    adapter = get_adapter("resnet_cifar", {"depth": 20})
    encoder = adapter.build()
    assert encoder(torch.rand(2, 3, 32, 32)).shape == (2, 64)
    assert adapter.config["mean"] == [0.485, 0.456, 0.406]
    assert sum(1 for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)) == 19


def test_unknown_depth_is_refused():
    with pytest.raises(ValueError, match="depth"):
        get_adapter("resnet_cifar", {"depth": 21})


def test_import_a_state_dict_checkpoint_and_round_trip(tmp_path):
    backbone = akamaster_checkpoint(tmp_path / "resnet20.th").eval()
    adapter = get_adapter("resnet_cifar", {"depth": 20})
    encoder, ignored = import_encoder(adapter, tmp_path / "resnet20.th")
    assert ignored == ["linear.bias", "linear.weight"]
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(encoder.backbone(x), backbone(x))
    save_encoder(encoder, adapter, tmp_path / "enc.safetensors")
    loaded, _ = load_encoder(tmp_path / "enc.safetensors")
    torch.testing.assert_close(loaded(x), encoder(x))


def test_import_with_missing_weights_is_an_error(tmp_path):
    torch.save({"state_dict": {"module.conv1.weight": torch.zeros(16, 3, 3, 3)}}, tmp_path / "bad.th")
    with pytest.raises(ValueError, match="missing backbone weights"):
        import_encoder(get_adapter("resnet_cifar", {"depth": 20}), tmp_path / "bad.th")
