"""Slow tests on ../shared: the real checkpoints and data sets load as the scenarios need."""

from __future__ import annotations

import numpy as np
import torch

from mudjack.encoders import get_adapter, import_encoder
from mudjack.encoders.base import read_state_dict
from mudjack.loaders import DataSpec, load_data, load_image_folders
from tests.helpers import SHARED, run_if

pytestmark = run_if(shared=True).marks
WEIGHTS = SHARED / "weights" / "resnet_cifar10" / "resnet20-12fca82f.th"


def test_resnet20_checkpoint_classifies_cifar10_jpegs():
    encoder, ignored = import_encoder(get_adapter("resnet_cifar", {"depth": 20}), WEIGHTS)
    assert ignored == ["linear.bias", "linear.weight"]
    state = read_state_dict(WEIGHTS)
    linear = torch.nn.Linear(64, 10)
    linear.load_state_dict({"weight": state["module.linear.weight"], "bias": state["module.linear.bias"]})
    data, names = load_image_folders(SHARED / "data" / "cifar10_jpeg" / "cifar10_jpeg_test.tgz")
    assert len(names) == 10 and len(data) == 10000
    pick = np.random.default_rng(0).permutation(len(data))[:1000]
    adapter = get_adapter("resnet_cifar", {"depth": 20})
    with torch.no_grad():
        predicted = linear(encoder(adapter.preprocess(data.x[pick]))).argmax(1).numpy()
    assert (predicted == data.y[pick]).mean() >= 0.75  # 81 % on the lossy JPEGs


def test_gtsrb_and_mnist_load_in_the_scenarios_shapes():
    gtsrb = load_data(DataSpec(loader="npz", path=str(SHARED / "data/gtsrb/gtsrb_subset_32x32.npz"),
                               split="test", limit=500))
    assert gtsrb.x.shape[1:] == (32, 32, 3) and gtsrb.y.max() <= 42
    mnist = load_data(DataSpec(loader="mnist_idx", path=str(SHARED / "data/mnist"), split="t10k",
                               limit=200, resize=32))
    assert mnist.x.shape == (200, 32, 32, 3) and set(mnist.y) == set(range(10))
