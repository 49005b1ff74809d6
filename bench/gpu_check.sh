#!/usr/bin/env bash
# The GPU check (issue 15): one prepared script, under 8 minutes on one GPU.
#
#   bash bench/gpu_check.sh                     # a CUDA host: bench/results/gpu_*.json
#   bash bench/gpu_check.sh --dry-run [--out DIR] [--work DIR]   # tiny sizes on the CPU
#
# Worst case 150 + 240 + 90 s of parts (timeouts) plus two short summaries; typically half.
# Parts: (1) the CUDA-marked tests (pytest -m gpu); (2) bf16 + channels_last Mudjacking-step
# throughput on resnet20 (32x32) and a ViT-B/16-sized random hf_vision encoder (224x224);
# (3) DDP, one process per GPU (NCCL), with the tests' torchrun worker; (4) encoder + head
# exported to ONNX and run on onnxruntime's CUDA provider (an error if it is not the one used);
# (5) intake's soft-fit step with the encoder placed on the GPU (intake.device: auto).
# Every part runs, each writes OUT/gpu_<part>.json; the script fails if any part did.
# It runs from the checkout alone: PYTHONPATH is the checkout, the Python is $PYTHON, else
# .venv/bin/python, else python3; everything it makes goes to bench/.cache/gpu_check (ignored)
# or --work DIR.
# A dry run writes to bench/.cache/gpu_check/results unless --out says otherwise, and skips
# the CUDA-marked tests (they need a GPU) with a message.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=()
OUT=""
WORK=bench/.cache/gpu_check
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=(--dry-run) ;;
    --out) OUT=$2; shift ;;
    --work) WORK=$2; shift ;;
    *) echo "usage: bash bench/gpu_check.sh [--dry-run] [--out DIR] [--work DIR]" >&2; exit 2 ;;
  esac
  shift
done
rm -rf "$WORK/ddp" "$WORK"/*.onnx "$WORK/gpu_tests.xml"
mkdir -p "$WORK"
if [ -z "$OUT" ]; then
  if [ ${#DRY[@]} -gt 0 ]; then OUT=$WORK/results; else OUT=bench/results; fi
fi
mkdir -p "$OUT"
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
CHECK=("$PY" bench/gpu_check.py --out "$OUT" --work "$WORK" "${DRY[@]}")
FAILED=()
started=$SECONDS

part() {  # part NAME COMMAND...: run it, remember a failure, go on with the next part
  local name=$1
  shift
  echo "== gpu_check: $name ($((SECONDS - started)) s in)"
  "$@" || FAILED+=("$name")
}

if [ ${#DRY[@]} -gt 0 ]; then
  echo "== gpu_check: dry run: the CUDA-marked tests need a GPU; skipped"
else
  # only the files that hold CUDA tests: collecting the rest would import the whole stack
  # (Prefect, DVC, GX), which a bare GPU image need not have
  mapfile -t GPU_TESTS < <(grep -rl --include "test_*.py" "gpu=True" tests | sort)
  part tests timeout 150 "$PY" -m pytest -q -p no:cacheprovider -m gpu --junitxml "$WORK/gpu_tests.xml" \
    "${GPU_TESTS[@]}"
  part tests-summary "${CHECK[@]}" tests --junit "$WORK/gpu_tests.xml"
fi

part throughput+onnx+intake timeout 240 "${CHECK[@]}" throughput onnx intake

if [ ${#DRY[@]} -gt 0 ]; then GPUS=2; DEVICE=cpu
else GPUS=$("$PY" -c "import torch; print(max(1, torch.cuda.device_count()))"); DEVICE=cuda; fi
part ddp timeout 90 env GLOO_SOCKET_IFNAME=lo OMP_NUM_THREADS=1 "$PY" -m torch.distributed.run \
  --standalone --nproc_per_node "$GPUS" tests/helpers/ddp_patch_worker.py "$WORK/ddp" --device "$DEVICE"
part ddp-summary "${CHECK[@]}" ddp --run "$WORK/ddp" --world "$GPUS"

echo "== gpu_check: done in $((SECONDS - started)) s; results in $OUT"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "gpu_check: FAILED: ${FAILED[*]}" >&2
  exit 1
fi
