"""Shared fixtures: a quiet local environment, a tiny backdoored digits scenario and its
deployed model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

if TYPE_CHECKING:
    from mudjack.intake import Deployed

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", str(ROOT / ".prefect"))
os.environ.setdefault("DVC_SITE_CACHE_DIR", str(ROOT / ".dvc_site_cache"))


@dataclass
class Scenario:
    """A clean and a backdoored tiny encoder on digits, with a deployed head and the truth."""

    adapter: object
    clean: torch.nn.Module
    backdoored: torch.nn.Module
    head: torch.nn.Module
    shadow: np.ndarray
    task: object
    trigger: object
    target: int


@pytest.fixture(scope="session")
def scenario() -> Scenario:
    from mudjack.attacks import BadEncoderParams, badencoder, pick_attack_reference
    from mudjack.data import Task, load_digits_images, stratified_split
    from mudjack.encoders import get_adapter
    from mudjack.features import extract_features
    from mudjack.heads import HeadParams, train_head
    from mudjack.training import PretrainParams, pretrain_encoder
    from mudjack.triggers import patch_trigger

    torch.set_num_threads(1)
    data = load_digits_images()
    provider, rest = stratified_split(data.y, 0.5, 0)
    downstream = data.subset(rest)
    test, train = stratified_split(downstream.y, 0.5, 1)
    task = Task("digits", list(range(10)), downstream.subset(train), downstream.subset(test))
    pixels = data.x[provider] / 255.0
    adapter = get_adapter("small_cnn", {"input_shape": [8, 8, 3], "width": 8, "feature_dim": 32,
                                        "mean": pixels.mean((0, 1, 2)).tolist(),
                                        "std": pixels.std((0, 1, 2)).tolist()})
    clean = pretrain_encoder(adapter, data.subset(provider), 10, PretrainParams(epochs=6), seed=0)
    trigger = patch_trigger((8, 8, 3), 2, 6, 6)
    reference = pick_attack_reference(clean, adapter, data.x[provider], data.y[provider], target=0)
    backdoored = badencoder(clean, adapter, data.x[provider], trigger, reference,
                            BadEncoderParams(epochs=12), seed=0)
    head = train_head(extract_features(backdoored, adapter, task.train.x), task.train.y, 10,
                      HeadParams(epochs=60), seed=0)
    return Scenario(adapter, clean, backdoored, head, data.x[provider], task, trigger, 0)


@pytest.fixture(scope="session")
def deployed(scenario: Scenario) -> Deployed:
    """The scenario's backdoored encoder with its digits head, as the provider runs them."""
    from mudjack.deployed import Deployed

    return Deployed(scenario.backdoored, scenario.adapter, {"digits": scenario.head})


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder holding a tiny BERT (2 layers, hidden 32, word-level vocabulary), random weights;
    an allowed model root while the session runs (text adapters load only inside one)."""
    from mudjack.encoders.text import MODEL_ROOTS_ENV
    from tests.helpers.text import write_tiny_bert

    folder = tmp_path_factory.mktemp("tiny_bert")
    write_tiny_bert(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(MODEL_ROOTS_ENV, str(folder))
        yield folder
