"""params.yaml, parsed once into typed sections; unknown keys and wrong types name themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from mudjack.attacks import BadEncoderParams
from mudjack.config import Params
from mudjack.heads import HeadParams
from mudjack.patching import PATCH_METHODS
from mudjack.reverse import ReverseParams
from mudjack.training import PretrainParams


class PathsParams(Params):
    shadow: str
    tasks: str
    encoder: str
    heads: str
    inbox: str
    truth: str = ""


class PrepareParams(Params):
    dataset: Literal["digits"] = "digits"
    pretrain_fraction: float = 0.5
    test_fraction: float = 0.5
    task: str = "digits"


class FoundationParams(PretrainParams):
    adapter: str = "small_cnn"
    width: int = 32
    feature_dim: int = 64


class TriggerParams(Params):
    size: int
    row: int
    col: int
    value: int = 255


class DeployedHeadParams(Params):
    epochs: int = 200
    lr: float = 1e-3
    batch_size: int = 64


class AttackParams(BadEncoderParams):
    target: int
    trigger: TriggerParams
    deployed_head: DeployedHeadParams = DeployedHeadParams()
    n_reports: int = 2
    n_false_reports: int = 1


class ValidateParams(Params):
    max_pixel: int = 255
    min_rows: int = 10


class PatchParams(Params):
    """`method` picks the patch method; the other keys are that method's parameters."""

    method: str
    settings: dict[str, Any]

    @model_validator(mode="before")
    @classmethod
    def _split(cls, raw: dict[str, Any]) -> dict[str, Any]:
        raw = dict(raw)
        method = raw.pop("method", None)
        if method not in PATCH_METHODS:
            raise ValueError(f"patch.method {method!r} is not one of {sorted(PATCH_METHODS)}")
        PATCH_METHODS[method][0](**raw)  # validate the method's own keys now
        return {"method": method, "settings": raw}


class ExportParams(Params):
    opset: int = 18
    tolerance: float = 1e-4


class PipelineParams(Params):
    seed: int = 0
    threads: int = 1
    paths: PathsParams
    prepare: PrepareParams = PrepareParams()
    foundation: FoundationParams = FoundationParams()
    attack: AttackParams | None = None  # scenario only
    validation: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    intake: ReverseParams = ReverseParams()
    patch: PatchParams = Field(default_factory=lambda: PatchParams(method="mudjacking"))
    retrain: HeadParams = HeadParams()
    export: ExportParams = ExportParams()


def load_params(path: str | Path = "params.yaml") -> PipelineParams:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    try:
        return PipelineParams(**raw)
    except ValidationError as err:
        raise SystemExit(f"{path}: invalid parameters\n{err}") from None


def setup_stage(path: str | Path = "params.yaml") -> PipelineParams:
    """Parse params.yaml, seed every generator and set the torch thread count."""
    import torch

    from mudjack.device import seed_everything

    params = load_params(path)
    seed_everything(params.seed)
    if params.threads > 0:
        torch.set_num_threads(params.threads)
    return params
