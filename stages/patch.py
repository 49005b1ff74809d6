"""Repair stage: patch the deployed encoder from the accepted bugs."""

from __future__ import annotations

from mudjack.bugs import load_bugs
from mudjack.data import load_shadow
from mudjack.encoders import load_encoder, save_encoder
from mudjack.io import write_json
from mudjack.patching import run_patch
from stages.config import setup_stage

REGISTRY = "bugs"
OUT = "models/patched/encoder.safetensors"
LOG = "reports/patch_log.json"
SUMMARY = "reports/patch.json"


def main() -> None:
    params = setup_stage()
    bugs = load_bugs(REGISTRY)
    encoder, adapter = load_encoder(params.paths.encoder)
    if not bugs:
        # An empty inbox is a no-op: the "patched" encoder is the deployed one, unchanged.
        save_encoder(encoder, adapter, OUT)
        write_json(LOG, [])
        write_json(SUMMARY, {"method": params.patch.method, "bugs": 0, "seconds": 0.0, "steps": 0})
        print("patch: no accepted bugs; encoder unchanged")
        return
    result = run_patch(params.patch.method, encoder, adapter, load_shadow(params.paths.shadow),
                       bugs, params.patch.settings, params.seed)
    save_encoder(result.encoder, adapter, OUT)
    write_json(LOG, result.log)
    write_json(SUMMARY, {"method": params.patch.method, "bugs": len(bugs),
                         "seconds": round(result.seconds, 3), "steps": result.steps,
                         "final": result.log[-1] if result.log else None, **result.info})
    print(f"patch: {params.patch.method} on {len(bugs)} bugs, {result.steps} steps "
          f"in {result.seconds:.1f}s on {result.info.get('device')}")


if __name__ == "__main__":
    main()
