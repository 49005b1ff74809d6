"""params.yaml, parsed once into typed sections; unknown keys and wrong types name themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, model_validator

from mudjack.attacks import BadEncoderParams
from mudjack.config import (
    BatchSize,
    Count,
    Device,
    Epochs,
    Fraction,
    LearningRate,
    NonNegative,
    Params,
    ParamsError,
    Seed,
    describe_errors,
    read_params_yaml,
)
from mudjack.heads import HeadParams
from mudjack.intake import IntakeParams
from mudjack.loaders import DataSpec
from mudjack.patching import PATCH_METHODS, TEXT_VARIANTS, method_for
from mudjack.safepath import check_folder_name, one_line
from mudjack.training import PretrainParams

PathText = Annotated[str, Field(min_length=1)]  # "" would name the working folder, or nothing


def _folder_name(name: str) -> str:
    """A task name is its folder's name under data/prepared/tasks: one plain part, never a path."""
    check_folder_name(name, what="a task name")  # an InputError is a ValueError to pydantic
    return name


TaskName = Annotated[str, AfterValidator(_folder_name)]


class PathsParams(Params):
    shadow: PathText
    tasks: PathText
    encoder: PathText
    heads: PathText
    inbox: PathText
    truth: str = ""  # "": the trigger is unknown


class TaskSource(Params):
    """A further downstream task: its train data and, without `test`, the share of it that is
    its test set."""

    name: TaskName
    downstream: DataSpec
    test: DataSpec | None = None
    test_fraction: float = Field(0.5, gt=0.0, lt=1.0)


class PrepareParams(Params):
    """The provider's labelled data (pre-training; unlabelled, the shadow set) and one task's,
    plus any `more_tasks` sharing the encoder.

    Without `downstream`, `provider` is split: `provider_fraction` of every class goes to
    the provider, the rest to the task. Without `test`, the task's data is split by
    `test_fraction`.
    """

    task: TaskName = "digits"
    provider: DataSpec = DataSpec(loader="digits")
    downstream: DataSpec | None = None
    test: DataSpec | None = None
    provider_fraction: Fraction = 0.5
    test_fraction: Fraction = 0.5
    shadow_limit: Count = 0  # at most this many provider images in the shadow set (0: all)
    more_tasks: list[TaskSource] = []

    @model_validator(mode="after")
    def _task_names_differ(self) -> PrepareParams:
        names = [self.task, *(t.name for t in self.more_tasks)]
        if len(set(names)) != len(names):
            raise ValueError(f"prepare: task names must differ, got {names}")
        return self


class FoundationParams(PretrainParams):
    """Train `adapter` on the provider's data, or import `checkpoint` (a pretrained file)."""

    adapter: str = "small_cnn"
    config: dict[str, Any] = {"width": 32, "feature_dim": 64}
    checkpoint: str = ""


class TriggerParams(Params):
    """An image patch (size, row, col, value) or, for a text encoder, `words` to insert; or,
    when `family` is set, a trigger of that zoo family (mudjack/attacks/zoo.py) drawn from
    `seed`. `targets`: the targets of a family's second and later triggers (`dual`)."""

    size: Count = 0
    row: Count = 0
    col: Count = 0
    value: int = Field(255, ge=0, le=255)
    words: list[str] = []
    family: str = ""
    seed: Seed = 0
    targets: list[Count] = []


class DeployedHeadParams(Params):
    epochs: Epochs = 200
    lr: LearningRate = 1e-3
    batch_size: BatchSize = 64


class AttackParams(BadEncoderParams):
    task: str = ""  # the task the backdoor targets ("": prepare.task); reports come from it only
    target: Count
    trigger: TriggerParams
    deployed_head: DeployedHeadParams = DeployedHeadParams()
    n_reports: Count = 2
    n_false_reports: Count = 1
    samples: Count = 0  # provider inputs BadEncoder trains on, drawn at random (0: all)
    # the attacker's target-class image: nearest its class centroid in the clean features, or
    # the one a linear probe on them classifies most surely (for weak encoders, as vit-cifar's)
    reference: Literal["centroid", "confident"] = "centroid"
    # auto: BadEncoder trains on CUDA when there is one (mudjack/attacks/badencoder.py); the
    # deployed heads and the attack's measurement run on the CPU
    device: Device = "auto"


class ValidateParams(Params):
    max_pixel: int = Field(255, ge=0, le=255)
    min_rows: Count = 10
    max_chars: int = Field(2000, ge=1)  # text: the longest sentence accepted, in characters


class PatchParams(Params):
    """`method` picks the patch method; `checkpoint_every` (steps, 0 = off) and `distributed`
    (auto: DDP when torchrun starts several processes; off) are the stage's; `text` holds
    Mudjacking's settings for text encoders (they replace the section's own, which are the
    image ones); the other keys are that method's parameters."""

    method: str
    checkpoint_every: int = Field(0, ge=0)
    distributed: Literal["auto", "off"] = "auto"
    text: dict[str, Any] = Field(default_factory=dict)
    settings: dict[str, Any]

    @model_validator(mode="before")
    @classmethod
    def _split(cls, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise ValueError(f"patch must be a mapping of settings with a `method`, not {type(raw).__name__}")
        raw = dict(raw)
        method = raw.pop("method", None)
        checkpoint_every = raw.pop("checkpoint_every", 0)
        distributed = raw.pop("distributed", "auto")
        text = raw.pop("text", None) or {}
        if not isinstance(method, str) or method not in PATCH_METHODS:
            raise ValueError(f"patch.method {method!r} is not one of {sorted(PATCH_METHODS)}")
        if not isinstance(text, dict):
            raise ValueError(f"patch.text must be a mapping of the text method's keys, "
                             f"not a {type(text).__name__}")
        PATCH_METHODS[method][0](**raw)  # validate the method's own keys now
        if method in TEXT_VARIANTS:
            try:
                PATCH_METHODS[TEXT_VARIANTS[method]][0](**(raw | text))
            except ValidationError as error:  # name the key as the user wrote it
                raise ValueError(f"for text encoders (patch.text over the section): "
                                 f"{describe_errors(error)}") from None
        return {"method": method, "checkpoint_every": checkpoint_every, "distributed": distributed,
                "text": text, "settings": raw}

    def for_modality(self, modality: str) -> tuple[str, dict[str, Any]]:
        """The method and settings that patch an encoder of `modality` ("image" | "text")."""
        method = method_for(self.method, modality)
        text = self.text if modality == "text" and self.method in TEXT_VARIANTS else {}
        return method, self.settings | text


class ExportParams(Params):
    opset: int = Field(18, ge=7)
    tolerance: float = Field(1e-4, gt=0)


class RetrainParams(HeadParams):
    """The retrain stage's heads: `heads` of them per encoder and task (seeds seed, seed+1, ...),
    trained alike on the same features. Its metrics are their mean (mudjack/exposure.py); the
    first is the head saved, exported and deployed. More than one on a weak encoder, where a
    single head's ASR moves by 0.02 from seed to seed."""

    heads: int = Field(1, ge=1, le=32)
    # auto: the encoders' features are computed on CUDA when there is one (a frozen copy of each
    # placed there, mudjack.features.on_device); the heads train on the CPU
    device: Device = "auto"

    def seeds(self, seed: int) -> range:
        """The heads' seeds, from the pipeline's `seed` on."""
        return range(seed, seed + self.heads)


class GatesParams(Params):
    """Promotion gates on reports/metrics.json, checked by pipeline/gates.py (not a DVC stage)."""

    max_patched_asr: Fraction = 0.1       # ASR of every task after the repair
    max_clean_acc_drop: Fraction = 0.03   # backdoored minus patched clean accuracy, every task
    max_onnx_diff: NonNegative = 1e-4     # ONNX vs PyTorch max |diff|
    # anti_flip of every task after the repair (the target class's inputs its trigger sends
    # away: an anti-trigger, mudjack.metrics); None: not gated
    max_anti_flip: Fraction | None = None


class SequelaParams(Params):
    """The sequela stage's measures (mudjack/sequela.py) and the never-attacked encoder the
    re-injection into the repaired one is compared with (a missing file: no comparison)."""

    mi_samples: int = Field(500, ge=2)               # members and as many non-members (at most)
    reinject_max_steps: int = Field(200, ge=1)       # BadEncoder steps before giving up
    reinject_check_every: int = Field(10, ge=1)      # steps between two ASR checks
    reinject_asr: float = Field(0.9, gt=0.0, le=1.0)  # the ASR that counts as re-injected
    reinject_check_samples: int = Field(200, ge=1)   # held-out non-target test inputs ASR is read on
    reinject_shadow: int = Field(0, ge=0)            # inputs BadEncoder trains on (0: as the attack)
    clean_encoder: str = "models/foundation/encoder.safetensors"
    # auto: the features (a frozen copy of each encoder placed there, mudjack.features.on_device)
    # and the re-injections' BadEncoder run on CUDA when there is one; the heads stay on the CPU
    device: Device = "auto"


class PipelineParams(Params):
    seed: Seed = 0
    threads: int = Field(1, ge=0, le=4096)
    paths: PathsParams
    prepare: PrepareParams = PrepareParams()
    foundation: FoundationParams = FoundationParams()
    attack: AttackParams | None = None  # scenario only
    validation: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    intake: IntakeParams = IntakeParams()
    patch: PatchParams = Field(default_factory=lambda: PatchParams(method="mudjacking"))
    retrain: RetrainParams = RetrainParams()
    export: ExportParams = ExportParams()
    sequela: SequelaParams = SequelaParams()
    gates: GatesParams = GatesParams()


def load_params(path: str | Path = "params.yaml") -> PipelineParams:
    """The typed parameters; any problem is a one-line ParamsError naming the key."""
    return typed_params(read_params_yaml(path), source=path)


def typed_params(raw: dict[str, Any], *, source: str | Path) -> PipelineParams:
    """`raw` (read from `source`, or merged from it) as typed parameters, or a one-line
    ParamsError naming the source and the key."""
    try:
        return PipelineParams(**raw)
    except ValidationError as err:
        raise ParamsError(f"{one_line(source)}: invalid parameters: {describe_errors(err)}") from None


def inbox_folder(paths: PathsParams) -> Path:
    """`paths.inbox`, which must be a folder: a mistyped name is an error, not an empty run
    (an empty folder is a valid inbox with no reports)."""
    inbox = Path(paths.inbox)
    if not inbox.is_dir():
        raise ParamsError(f"paths.inbox: no such folder {one_line(inbox)!r} "
                          f"(an empty folder means no reports)")
    return inbox


def setup_stage(path: str | Path = "params.yaml") -> PipelineParams:
    """Parse params.yaml, seed every generator and set the torch thread count."""
    import torch

    from mudjack.device import seed_everything

    params = load_params(path)
    seed_everything(params.seed)
    if params.threads > 0:
        torch.set_num_threads(params.threads)
    return params
