#!/usr/bin/env bash
# GPU benchmark in one script, for a fresh machine with an NVIDIA GPU (docs/performance.md):
#   1. installs the [gpu] extra (onnxruntime-gpu with its CUDA/cuDNN wheels instead of
#      onnxruntime) and [train] (torch, for the paper-size generator) into .venv-gpu;
#   2. builds a full-tissue WxH pair (default 15000x10000, 8-bit tiled TIFF);
#   3. stains it with the shipped models, then with a paper-size generator (a seeded random
#      ngf64 x 9 reference checkpoint through `dscm-train import-reference`), in fp32 and, on
#      CUDA, fp16 with its PSNR against fp32;
#   4. prints MP/s, wall time, per-stage seconds and peak GPU memory of each run.
#
#   bash bench/gpu.sh                                   # GPU machine: install, 15000x10000
#   DSCM_INFERENCE=cpu bash bench/gpu.sh --no-install --size 512x512   # the CI check on a CPU
#
# Environment: DSCM_INFERENCE (default cuda), DSCM_BATCH_SIZE (default 4), PYTHON (the
# interpreter to use with --no-install; default .venv/bin/python). Budget: 8 minutes on one
# H100 with the default size.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE=15000x10000
INSTALL=1
WORK=""
while [ $# -gt 0 ]; do
    case "$1" in
        --size) SIZE="$2"; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        --work) WORK="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "gpu.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
export DSCM_INFERENCE="${DSCM_INFERENCE:-cuda}"
export DSCM_BATCH_SIZE="${DSCM_BATCH_SIZE:-4}"
WORK="${WORK:-$(mktemp -d -t dscm-gpu-XXXXXX)}"
mkdir -p "$WORK"
started=$(date +%s)

if [ "$INSTALL" = 1 ]; then
    python3 -m venv .venv-gpu
    PYTHON=.venv-gpu/bin/python
    $PYTHON -m pip install -q -e '.[gpu,train]'
    # onnxruntime (a core dependency) and onnxruntime-gpu ship the same package: keep the GPU one.
    $PYTHON -m pip uninstall -q -y onnxruntime
    $PYTHON -m pip install -q 'onnxruntime-gpu[cuda,cudnn]'
    $PYTHON -m pip install -q --force-reinstall --no-deps onnxruntime-gpu
fi
PYTHON="${PYTHON:-.venv/bin/python}"
BIN="$(dirname "$PYTHON")"
echo "gpu.sh: $SIZE, DSCM_INFERENCE=$DSCM_INFERENCE, batch $DSCM_BATCH_SIZE, work $WORK"
"$BIN/dscm" models | grep '^inference:'
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi

# 2. the slide
"$PYTHON" - "$WORK/in" "$SIZE" <<'PY'
import sys, time
from pathlib import Path
sys.path.insert(0, ".")
from bench.stain import parse_size
from bench.synthetic import write_pair
width, height = parse_size(sys.argv[2])
started = time.perf_counter()
write_pair(Path(sys.argv[1]), width, height, tissue_fraction=1.0)
print(f"slide: {width} x {height} px written in {time.perf_counter() - started:.1f} s")
PY

# 3a. the paper-size generator: a seeded random reference checkpoint, imported like a real one
mkdir -p "$WORK/paper"
"$PYTHON" - "$WORK/paper/seeded_net_G_A.pth" <<'PY'
import sys
import torch
from training.networks import ResnetGenerator
torch.manual_seed(0)
torch.save(ResnetGenerator(ngf=64, n_blocks=9).state_dict(), sys.argv[1])
PY
"$BIN/dscm-train" import-reference "$WORK/paper/seeded_net_G_A.pth" \
    --out "$WORK/paper/generator.onnx" --name paper-ngf64-b9-seeded --licence "test weights" \
    >"$WORK/import.log" 2>&1 || { cat "$WORK/import.log" >&2; exit 1; }
cp models/despeckle.onnx models/despeckle.json "$WORK/paper/"

# Peak GPU memory of one run: nvidia-smi sampled every 100 ms in the background.
stain() {  # stain NAME MODELS_DIR [PRECISION]
    local name="$1" models="$2" precision="${3:-auto}" sampler="" t0 t1
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 \
            >"$WORK/$name.mem" 2>/dev/null &
        sampler=$!
    fi
    t0=$(date +%s.%N)
    DSCM_INFERENCE_PRECISION="$precision" "$BIN/dscm" stain \
        --rcm "$WORK/in/rcm.tif" --fcm "$WORK/in/fcm.tif" -o "$WORK/$name.tif" \
        --models "$models" --stages despeckle,median,gareau,generator --json >"$WORK/$name.json"
    t1=$(date +%s.%N)
    if [ -n "$sampler" ]; then kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; fi
    "$PYTHON" - "$WORK" "$name" "$t0" "$t1" <<'PY'
import json, sys
from pathlib import Path
work, name, t0, t1 = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
report = json.loads((work / f"{name}.json").read_text())
w, h = report["input"]["width_px"], report["input"]["height_px"]
wall = t1 - t0
mem = work / f"{name}.mem"
values = [int(v) for v in mem.read_text().split()] if mem.exists() else []
gpu = f"{max(values)} MiB" if values else "n/a (no nvidia-smi)"
t = report["timings_s"]
stages = ", ".join(f"{k} {t[k]:.1f}" for k in ("despeckle", "median", "generator") if k in t)
print(
    f"{name}: {w} x {h} px, {report['providers']}, wall {wall:.1f} s (engine {t['total']:.1f} s),"
    f" {w * h / 1e6 / wall:.2f} MP/s, peak GPU memory {gpu}; {stages} s;"
    f" {report['tiles']['computed']} tiles, batch {report['tiles']['batch_size']}"
)
PY
}

# 3b. the runs
stain shipped models
stain paper "$WORK/paper"
if [ "$DSCM_INFERENCE" = cuda ]; then
    stain paper-fp16 "$WORK/paper" fp16
    "$PYTHON" - "$WORK/paper.tif" "$WORK/paper-fp16.tif" <<'PY'
import sys
import numpy as np
import pyvips
side = 2048
a, b = (pyvips.Image.new_from_file(p, page=0) for p in sys.argv[1:3])
x, y = (a.width - side) // 2, (a.height - side) // 2
crops = [np.ndarray(buffer=i.crop(x, y, side, side).write_to_memory(), dtype=np.uint8,
                    shape=(side, side, i.bands)).astype(np.float64) for i in (a, b)]
mse = float(np.mean((crops[0] - crops[1]) ** 2))
print(f"paper-size generator fp16 vs fp32 (central 2048 px, JPEG Q90 outputs): "
      f"{10 * np.log10(255**2 / mse) if mse else float('inf'):.1f} dB PSNR")
PY
fi
echo "gpu.sh: done in $(( $(date +%s) - started )) s"
