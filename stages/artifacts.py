"""Every artifact path the stages, the flow and the benchmarks share, named once.

Paths are relative to the project (or scenario workspace) root, where DVC runs the stages;
dvc.yaml declares the same files as each stage's deps and outs. The data a repair starts
from (shadow set, tasks, deployed encoder and heads, inbox) is not here: `paths` in
params.yaml names it.
"""

from __future__ import annotations

from pathlib import Path

REPORTS = Path("reports")
MODELS = Path("models")

# Scenario stages (prepare, foundation, attack): the embedded default.
PREPARED = Path("data/prepared")
PRETRAIN = PREPARED / "pretrain.npz"           # the provider's labelled data
PREPARED_SHADOW = PREPARED / "shadow.npz"      # its unlabelled share: the shadow set
PREPARED_TASKS = PREPARED / "tasks"            # one folder per downstream task
FOUNDATION = MODELS / "foundation" / "encoder.safetensors"
BACKDOORED = MODELS / "backdoored"             # the scenario's paths.encoder and paths.truth live here
BACKDOORED_ENCODER = BACKDOORED / "encoder.safetensors"
BACKDOORED_TRUTH = BACKDOORED / "truth.npz"
ATTACK_METRICS = BACKDOORED / "attack.json"

# Repair stages.
VALIDATION = REPORTS / "validation.json"
BUGS = Path("bugs")                            # the registry of accepted bugs
# Inside the registry, so one directory swap replaces both (a kill cannot leave a new registry
# beside an old log); "_" cannot start a report id, so no bug folder takes this name.
INTAKE_LOG = BUGS / "_intake_log.jsonl"
INTAKE_SUMMARY = REPORTS / "intake.json"
PATCHED_ENCODER = MODELS / "patched" / "encoder.safetensors"
PATCH_LOG = REPORTS / "patch_log.json"
PATCH_SUMMARY = REPORTS / "patch.json"
# Not a DVC output: it survives an interrupted patch run and is removed after a successful one.
PATCH_CHECKPOINT = MODELS / ".checkpoints" / "patch"
HEADS = MODELS / "heads"                       # <task>/{backdoored,patched}.safetensors
RETRAIN_SUMMARY = REPORTS / "retrain.json"
ONNX_DIR = MODELS / "onnx"                     # <task>.onnx
ONNX_MANIFEST = ONNX_DIR / "manifest.json"
EXPORT_SUMMARY = REPORTS / "export.json"
METRICS = REPORTS / "metrics.json"             # what the promotion gates read
BEFORE_AFTER = REPORTS / "before_after.json"   # the plot of dvc.yaml
RUN_HTML = REPORTS / "run.html"
SEQUELA = REPORTS / "sequela.json"             # membership inference and re-injection

# Outside the DAG: `mudjack compare` tables.
COMPARE_DIR = REPORTS / "compare"

# Outside the DAG and outside the inbox: special files moved out of the inbox before DVC
# hashes it (mudjack.safepath.quarantine); never read.
QUARANTINE = Path(".mudjack") / "quarantine"
