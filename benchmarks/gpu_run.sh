#!/usr/bin/env bash
# GPU vs CPU on a bare GPU machine without internet: install radcloud's Python dependencies from
# wheels carried in ./wheels, then run the inference and serving suites with --device cuda within
# 8 minutes, writing the report (JSON, markdown, PNG plots) to OUT_DIR.
#
#   bash benchmarks/gpu_run.sh [OUT_DIR]          (default OUT_DIR: benchmarks/results)
#
# ./wheels (git-ignored) is filled, on a machine with PyPI access, by `bash
# benchmarks/gpu_wheels.sh` (PY=<the GPU machine's Python>, default 3.12): the wheels of
# benchmarks/gpu_requirements.txt, radcloud's dependencies that the GPU machine's image lacks,
# and Ray stripped to fit the device tool's carry limit (about 55 MB in all). torch, with CUDA,
# numpy, scipy, onnx and onnxruntime come from the image (their versions are in the report). The
# image's onnxruntime is the CPU build: the onnxruntime-gpu wheel (CUDA and TensorRT providers,
# several hundred MB) does not fit the carry limit, so onnx-cuda and onnx-tensorrt are reported
# as skipped with the reason unless the image has them. Wheels are never committed.
#
# Where the tree travels without .git, set RADCLOUD_BENCH_COMMIT to the commit measured.
# Environment: PYTHON (default python3: the interpreter with CUDA torch), WHEELS (default
# ./wheels), GPU_RUN_LIMIT_S (default 480: the whole script's deadline, install included),
# GPU_RUN_DEVICE (default cuda; cpu checks the script on a machine without a GPU),
# GPU_RUN_WINDOW (default 1: seconds per timed window), GPU_RUN_TESTS (1: first run the test
# suite's GPU cases, `pytest -m gpu`, for at most 150 s; their outcome does not stop the suites),
# RADCLOUD_BENCH_HOST (the machine's name in the result files, default its host name).
set -euo pipefail

started=$SECONDS
limit=${GPU_RUN_LIMIT_S:-480}
cd "$(dirname "$0")/.."
root=$PWD
out_dir=${1:-benchmarks/results}
python=${PYTHON:-python3}
wheels=${WHEELS:-wheels}
site=${GPU_SITE:-/tmp/radcloud-gpu-site}

say() { printf '[gpu_run %3ds] %s\n' "$((SECONDS - started))" "$*"; }

say "machine: $(nproc) cores; $(nvidia-smi --query-gpu=name,driver_version,memory.total \
    --format=csv,noheader 2>/dev/null || echo 'nvidia-smi: no GPU driver found')"
say "python: $("$python" --version 2>&1) at $(command -v "$python")"

device=${GPU_RUN_DEVICE:-cuda}

if compgen -G "$wheels/*.whl" >/dev/null; then
    say "installing $(ls "$wheels"/*.whl | wc -l) wheels from $wheels into $site (no index)"
    mkdir -p "$site"
    # --no-deps: gpu_requirements.txt lists the whole closure of what is missing; packages the image
    # already has and ./wheels lacks (torch and its CUDA libraries) stay the image's.
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --disable-pip-version-check --upgrade --target "$site" "$wheels"/*.whl
    # Packages too large for a wheel to travel, repacked by gpu_wheels.sh (Ray).
    for archive in "$wheels"/*.tar.xz; do
        [ -e "$archive" ] || continue
        say "unpacking $(basename "$archive") into $site"
        tar -C "$site" -xJf "$archive"
    done
else
    say "no wheels in $wheels: using the packages this Python already has"
fi
export PYTHONPATH="$site:$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

say "checking imports"
GPU_RUN_DEVICE=$device "$python" - <<'EOF'
import importlib
import os
import sys

needed = ["torch", "onnxruntime", "monai", "pydicom", "highdicom", "nibabel", "scipy",
          "matplotlib", "ray.serve", "starlette", "httpx", "pydantic_settings", "sqlalchemy",
          "typer", "rich", "onnx"]
missing = []
for name in needed:
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '')}")
    except ImportError as exc:
        missing.append(f"{name} ({exc})")
if missing:
    sys.exit("missing: " + ", ".join(missing) + ": add their wheels to ./wheels (see the header)")
import onnxruntime
import torch
print(f"  torch CUDA {torch.version.cuda}, device: "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NONE'}")
print(f"  ONNX Runtime providers: {onnxruntime.get_available_providers()}")
if os.environ["GPU_RUN_DEVICE"] == "cuda" and not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device: a CPU build of torch, or no driver")
EOF

if [ "${GPU_RUN_TESTS:-0}" = 1 ]; then
    say "running the GPU test cases (pytest -m gpu)"
    timeout -k 5 150 "$python" -m pytest -m gpu -p no:cacheprovider -q tests/serving/test_inference.py \
        tests/training/test_pipeline.py tests/benchmarks/test_harness.py tests/models ||
        say "GPU test cases: exit status $? (the suites still run)"
fi

# What is left of the deadline goes to the suites: serving ~80 s with 1-s windows on an H200
# (100 s kept), the inference suite's measuring budget the rest less its set-up (models,
# studies, engines: 60 s kept).
window=${GPU_RUN_WINDOW:-1}
left=$((limit - (SECONDS - started) - 15))
budget=$((left - 100 - 60))
if [ "$budget" -lt 60 ]; then
    say "only ${left}s left for the suites: not enough for a useful run"
    exit 1
fi
say "running inference (measuring budget ${budget}s) and serving with --device $device; ${left}s left"
mkdir -p "$out_dir"
status=0
timeout -k 10 "$left" "$python" -m radcloud bench --suite inference --suite serving \
    --device "$device" --window "$window" --repeats 3 --budget "$budget" --out "$out_dir" || status=$?
say "radcloud bench exited $status; files:"
ls -l "$out_dir" | tail -n 8
exit "$status"
