"""Repair stage: patch the deployed encoder from the accepted bugs."""

from __future__ import annotations

from mudjack.bugs import Bug, check_bugs, load_bugs
from mudjack.data import LabelledSet, load_shadow, load_tasks
from mudjack.encoders import EncoderAdapter, load_encoder, save_encoder
from mudjack.io import ready_outputs, write_json
from mudjack.patching import PATCH_METHODS, PatchInputs, run_patch, training_pool
from mudjack.patching.checkpoint import Checkpointer, accepts_checkpoint, inputs_key
from mudjack.patching.distributed import (
    Distributed,
    distributed_option,
    is_main,
    rank_checkpointer,
    setup,
    teardown,
)
from mudjack.safeload import WeightsError, check_finite
from stages.artifacts import BUGS, PATCH_CHECKPOINT, PATCH_LOG, PATCH_SUMMARY, PATCHED_ENCODER
from stages.config import PipelineParams, setup_stage


def checkpointer(params: PipelineParams, inputs: PatchInputs,
                 context: Distributed | None = None) -> Checkpointer | None:
    """The stage's checkpointer when `patch.checkpoint_every` > 0 and the method supports it."""
    method, settings = params.patch.for_modality(inputs.adapter.modality)
    every = params.patch.checkpoint_every
    if every <= 0 or not accepts_checkpoint(PATCH_METHODS[method][1]):
        Checkpointer(PATCH_CHECKPOINT, 0, "").clear()  # nothing to resume: drop any leftover
        return None
    config = {"method": method, "settings": settings, "seed": params.seed,
              "world_size": context.world_size if context else 1}
    shadow = training_pool(method, inputs, settings, seed=params.seed)
    return Checkpointer(PATCH_CHECKPOINT, every,
                        inputs_key(inputs.encoder, shadow, inputs.bugs, config=config))


def accepted_bugs(params: PipelineParams,
                  adapter: EncoderAdapter) -> tuple[list[Bug], dict[str, LabelledSet]]:
    """The registry's bugs, each checked against its task and the encoder, with the tasks'
    labelled train sets (none read when there is no bug)."""
    bugs = load_bugs(BUGS)
    if not bugs:
        return [], {}
    tasks = load_tasks(params.paths.tasks)
    check_bugs(bugs, tasks, registry=BUGS, adapter=adapter)
    return bugs, {name: task.train for name, task in tasks.items()}


def main() -> None:
    params = setup_stage()
    ready_outputs(PATCHED_ENCODER, PATCH_LOG, PATCH_SUMMARY)
    # Under torchrun with several processes: DDP, and only rank 0 writes (distributed.py).
    context = setup(params.patch.distributed, params.patch.settings.get("device", "auto"))
    encoder, adapter = load_encoder(params.paths.encoder)
    bugs, labelled = accepted_bugs(params, adapter)
    method, settings = params.patch.for_modality(adapter.modality)
    if not bugs:
        teardown(context)
        if not is_main(context):
            return
        # An empty inbox is a no-op: the "patched" encoder is the deployed one, unchanged.
        save_encoder(encoder, adapter, PATCHED_ENCODER)
        write_json(PATCH_LOG, [])
        write_json(PATCH_SUMMARY, {"method": method, "bugs": 0, "seconds": 0.0, "steps": 0})
        print("patch: no accepted bugs; encoder unchanged")
        return
    inputs = PatchInputs(encoder, adapter, load_shadow(params.paths.shadow), bugs, labelled)
    checkpoint = rank_checkpointer(checkpointer(params, inputs, context), context)
    options = {"checkpoint": checkpoint} if checkpoint is not None else {}
    options |= distributed_option(PATCH_METHODS[method][1], context)
    result = run_patch(method, inputs, settings, seed=params.seed, **options)
    teardown(context)
    if not is_main(context):
        return
    try:  # a diverged run is not a repair: nothing is written for retrain to read
        check_finite(PATCHED_ENCODER, result.encoder.state_dict())
    except WeightsError as err:
        raise SystemExit(f"patch: the patch diverged ({err}); nothing written: lower patch.lr") from None
    save_encoder(result.encoder, adapter, PATCHED_ENCODER)
    write_json(PATCH_LOG, result.log)
    write_json(PATCH_SUMMARY, {"method": method, "bugs": len(bugs),
                         "seconds": round(result.seconds, 3), "steps": result.steps,
                         "clean_samples": result.info.get("clean_samples"),
                         "final": result.log[-1] if result.log else None, **result.info})
    if checkpoint is not None:
        checkpoint.clear()
    resumed = result.info.get("resumed_from_step")
    print(f"patch: {method} on {len(bugs)} bugs, {result.steps} steps "
          f"in {result.seconds:.1f}s on {result.info.get('device')}"
          + (f" (resumed from step {resumed})" if resumed is not None else ""))


if __name__ == "__main__":
    main()
