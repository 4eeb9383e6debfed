#!/usr/bin/env bash
# The GPU check of the sd backend, in one go: under 8 minutes whatever happens (every step has its own time
# limit, cut so that the steps after it keep their share; about 5 to 7 minutes expected on an H200, most of it
# torch.compile building the UNet's graphs; nothing is downloaded).
#
#   bash benchmarks/gpu_check.sh        # from the repository root; output in $OUT/gpu_log.txt and on stdout
#
# Needs python3 with torch (CUDA, with triton for torch.compile), transformers, peft, accelerate, safetensors,
# numpy, pillow and diffusers importable (e.g. diffusers and its missing requirements installed with
# `pip install --no-deps --target /tmp/site ...` and PYTHONPATH=/tmp/site set before running this).
# Steps (limits in seconds; the whole check has BUDGET_S, 455 by default, plus at most 5 s per killed step):
#   1. versions and the card (40);
#   2a. generation (SD v1.5 architecture, random weights, bf16, 512 px, batch 4, 50 DDIM steps, CFG 7.5):
#       the optimised backend with the cosine schedule against plain diffusers with DDIM, compile time apart,
#       the largest bf16 pixel difference, peak GPU memory (at most 170);
#   2b. LoRA finetuning at batch 4 and 8: optimised and plain backend against diffusers' example step
#       (at most 240, less if 2a ran long);
#   3. PLUMBING ONLY: a 2-iteration chain through the optimised backend at 512 px on the same random weights
#      (the compiled graphs come from torch's on-disk cache of step 2), and whether iteration 2 recompiled;
#   4. PLUMBING ONLY: the same through `chain run` (the run directory code), only if 45 s are left.
set -uo pipefail

OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_log.txt"
PY="${PYTHON:-python3}"
WORK="${WORK_DIR:-/tmp/sd_gpu_check}"
# For a check of this script on a CPU: BENCH_ARGS=--tiny SMOKE_RES=32 WORK_DIR=/tmp/sd_cpu_check bash ...
BENCH_ARGS="${BENCH_ARGS:-}"
SMOKE_RES="${SMOKE_RES:-512}"
BUDGET="${BUDGET_S:-455}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
mkdir -p "$WORK"
cd "$REPO" || exit 1

step() { echo; echo "=== $* ($(date -u +%H:%M:%S) UTC, ${SECONDS} s into the check) ==="; }
# A step's time limit: its own cap, or less so that the steps after it keep `keep` seconds of the budget.
limit() {
    local cap=$1 keep=$2
    local left=$((BUDGET - SECONDS - keep))
    if [ "$left" -lt "$cap" ]; then cap=$left; fi
    if [ "$cap" -lt 10 ]; then cap=10; fi
    echo "$cap"
}
quiet() { grep -v -e "Loading pipeline components" -e "Writing model shards" -e "Loading weights"; }

{
    step "1. environment"
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi failed"
    timeout 40 "$PY" - <<'EOF'
import importlib.metadata as md
import re

names = ["torch", "triton", "diffusers", "transformers", "peft", "accelerate", "safetensors", "huggingface-hub",
         "numpy", "pillow", "requests", "filelock", "regex", "tokenizers"]
for name in names:
    try:
        print(f"{name:16s} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name:16s} MISSING")
try:
    from packaging.requirements import Requirement
    for line in md.requires("diffusers") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            print(f"diffusers needs {req} : MISSING")
            continue
        if not req.specifier.contains(have, prereleases=True):
            print(f"diffusers needs {req} : have {have}, INCOMPATIBLE")
except Exception as error:  # a check of the check; the imports below are what count
    print(f"(requirement check skipped: {error})")
import torch
print("cuda available:", torch.cuda.is_available(), "| device:",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
import diffusers, peft, transformers  # noqa: E401
from diffusers.utils import USE_PEFT_BACKEND
print("diffusers PEFT backend (needs peft>=0.17.0, transformers>=4.34.0):", USE_PEFT_BACKEND)
import chain.backends.sd  # noqa: F401
if not USE_PEFT_BACKEND:
    raise SystemExit("LoRA needs diffusers' PEFT backend: carry a newer peft/transformers")
print("imports OK")
EOF
    status=$?
    if [ $status -ne 0 ]; then
        echo "environment check failed (exit $status): install what is MISSING above and rerun"
        exit $status
    fi

    step "2a. generation: optimised backend vs plain diffusers (SD v1.5 architecture, random weights, bf16)"
    timeout -k 5 "$(limit 170 250)" "$PY" benchmarks/sd_throughput.py $BENCH_ARGS --part generation \
        --model-dir "$WORK/sd15_random" --json "$OUT/sd_generation.json" 2>&1 | quiet
    echo "generation benchmark exit status: ${PIPESTATUS[0]}"

    step "2b. LoRA finetuning: optimised and plain backend vs diffusers' example step, batch 4 and 8"
    timeout -k 5 "$(limit 240 60)" "$PY" benchmarks/sd_throughput.py $BENCH_ARGS --part training \
        --model-dir "$WORK/sd15_random" --json "$OUT/sd_training.json" 2>&1 | quiet
    echo "training benchmark exit status: ${PIPESTATUS[0]}"

    step "3. PLUMBING ONLY: 2-iteration chain through the optimised sd backend, random weights"
    timeout -k 5 "$(limit 90 0)" "$PY" benchmarks/sd_throughput.py $BENCH_ARGS --chain-smoke \
        --model-dir "$WORK/sd15_random" 2>&1 | quiet
    echo "backend chain smoke exit status: ${PIPESTATUS[0]}"

    step "4. PLUMBING ONLY: chain run --backend sd, 2 iterations, ${SMOKE_RES} px, random weights"
    # `chain run` also imports typer, rich, pandas, pyarrow and scipy (validate); skip it where they are missing.
    if [ $((BUDGET - SECONDS)) -lt 45 ]; then
        echo "skipped: $((BUDGET - SECONDS)) s left of the ${BUDGET} s budget"
    elif ! cli_error="$(timeout 30 "$PY" -c "import commands.chain_program" 2>&1)"; then
        echo "skipped: commands.chain_program does not import here ($(echo "$cli_error" | tail -n 1))"
    elif [ -f "$WORK/sd15_random/model_index.json" ]; then
        timeout 30 "$PY" - "$WORK/smoke_data" "$SMOKE_RES" <<'EOF'
import json, sys
from pathlib import Path
import numpy as np
from PIL import Image
folder = Path(sys.argv[1]); folder.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
with open(folder / "metadata.jsonl", "w") as meta:
    for i in range(8):
        size = int(sys.argv[2])
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        meta.write(json.dumps({"file_name": f"{i}.png", "caption": f"object {i}"}) + "\n")
EOF
        rm -rf "$WORK/smoke_run"
        timeout -k 5 "$(limit 120 5)" "$PY" -m commands.chain_program run "$WORK/smoke_run" --backend sd --model "$WORK/sd15_random" \
            --data "$WORK/smoke_data" --iterations 2 --resolution "$SMOKE_RES" --steps 20 --train-steps 10 \
            --batch-size 4 --cfg 7.5 --schedule cosine --seed 0 2>&1 | tail -n 30
        echo "chain run exit status: ${PIPESTATUS[0]}"
        find "$WORK/smoke_run" -maxdepth 2 | sort | head -n 40
    else
        echo "skipped: no model was built in step 2"
    fi
    step "done in ${SECONDS} s"
} 2>&1 | tee "$LOG"
