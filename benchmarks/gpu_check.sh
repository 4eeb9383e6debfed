#!/usr/bin/env bash
# The GPU check of the sd backend, in one go (3 to 5 minutes on an H100, at most 8 with every time limit hit;
# nothing is downloaded).
#
#   bash benchmarks/gpu_check.sh        # from the repository root; output in $OUT/gpu_log.txt and on stdout
#
# Needs python3 with torch (CUDA), transformers, peft, accelerate, safetensors, numpy, pillow and
# diffusers importable (e.g. diffusers and its missing requirements installed with
# `pip install --no-deps --target /tmp/site ...` and PYTHONPATH=/tmp/site set before running this).
# Steps, each with its own time limit so that one failure does not eat the others' time:
#   1. versions and the card;
#   2. the throughput benchmark (SD v1.5 architecture, random weights, bf16): generation images/s
#      against plain diffusers, LoRA finetuning steps/s at batch 4 and 8 against a reference step;
#   3. PLUMBING ONLY: a 2-iteration chain through the sd backend at 256 px on the same random weights;
#   4. PLUMBING ONLY: the same through `chain run` (the run directory code), if it is there.
set -uo pipefail

OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_log.txt"
PY="${PYTHON:-python3}"
WORK="${WORK_DIR:-/tmp/sd_gpu_check}"
# For a check of this script on a CPU: BENCH_ARGS=--tiny SMOKE_RES=32 bash benchmarks/gpu_check.sh
BENCH_ARGS="${BENCH_ARGS:-}"
SMOKE_RES="${SMOKE_RES:-256}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
mkdir -p "$WORK"
cd "$REPO" || exit 1

step() { echo; echo "=== $* ($(date -u +%H:%M:%S) UTC) ==="; }

{
    step "1. environment"
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi failed"
    timeout 90 "$PY" - <<'EOF'
import importlib.metadata as md
import re

names = ["torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "huggingface-hub",
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

    step "2. throughput benchmark (SD v1.5 architecture, random weights, bf16)"
    timeout 240 "$PY" benchmarks/sd_throughput.py $BENCH_ARGS --model-dir "$WORK/sd15_random" \
        --json "$OUT/sd_throughput.json" 2>&1 | grep -v -e "Loading pipeline components" -e "Writing model shards"
    echo "benchmark exit status: ${PIPESTATUS[0]}"

    step "3. PLUMBING ONLY: 2-iteration chain through the sd backend, 256 px, random weights"
    timeout 100 "$PY" benchmarks/sd_throughput.py $BENCH_ARGS --chain-smoke --model-dir "$WORK/sd15_random" \
        2>&1 | grep -v -e "Loading pipeline components" -e "Writing model shards"
    echo "backend chain smoke exit status: ${PIPESTATUS[0]}"

    step "4. PLUMBING ONLY: chain run --backend sd, 2 iterations, 256 px, random weights"
    # `chain run` also imports typer, rich, pandas, pyarrow and scipy (validate); skip it where they are missing.
    if ! cli_error="$(timeout 60 "$PY" -c "import chain.cli" 2>&1)"; then
        echo "skipped: chain.cli does not import here ($(echo "$cli_error" | tail -n 1))"
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
        timeout 120 "$PY" -m chain.cli run "$WORK/smoke_run" --backend sd --model "$WORK/sd15_random" \
            --data "$WORK/smoke_data" --iterations 2 --resolution "$SMOKE_RES" --steps 20 --train-steps 10 \
            --batch-size 4 --cfg 7.5 --schedule cosine --seed 0 2>&1 | tail -n 30
        echo "chain run exit status: ${PIPESTATUS[0]}"
        find "$WORK/smoke_run" -maxdepth 2 | sort | head -n 40
    else
        echo "skipped: no model was built in step 2"
    fi
    step "done"
} 2>&1 | tee "$LOG"
