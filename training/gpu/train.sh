#!/usr/bin/env bash
# Train the paper-size residual generator (ngf 64, 9 blocks) on one GPU in a fixed time budget
# with bf16 autocast, export it with its card, evaluate it and print its measures
# (issue 22, part 5). Run from the repository root, with the [train] extra installed:
#
#   bash training/gpu/train.sh                       # GPU defaults below
#   DEVICE=cpu BF16=0 NGF=4 BLOCKS=2 BUDGET_S=20 bash training/gpu/train.sh   # a CPU try
#
# Every setting is an environment variable (defaults in brackets):
#   DATA [../shared/data]   the shared data folder (he/skin-wsi, confocal/), read only
#   OUT [runs/gpu]          prepared data, checkpoints, models/, measures.json (ignored by git)
#   DEVICE [auto]           cuda, cpu or auto (cuda when torch sees one)
#   BF16 [1]                bf16 autocast (1) or fp32 (0)
#   BUDGET_S [420]          training wall time, s (the run stops there with a checkpoint;
#                           inside the 8-minute training budget; prepare and the input
#                           build come before it and are not counted)
#   NGF [64] BLOCKS [9] NDF [64] CROP_PX [256] BATCH [16] STEPS [100000] CKPT_EVERY [250]
#   EVAL_IMAGES [0: all held-out patches] TEXTURE [1: SWD and C2ST] CRITIC_S [90]
#   PATCH_PX [512] PYTHON [.venv/bin/python if present, else python3]
# Extra arguments go to `python -m training.residual_run` as they are.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
"$PYTHON" - <<'PY' || { echo "train.sh: install the training extra first: pip install -e '.[train]'" >&2; exit 2; }
import onnxruntime, torch  # noqa: F401
PY
BF16_FLAG=--bf16
[[ "${BF16:-1}" == 0 ]] && BF16_FLAG=--fp32
TEXTURE_FLAG=--texture
[[ "${TEXTURE:-1}" == 0 ]] && TEXTURE_FLAG=--no-texture
"$PYTHON" - <<'PY'
import torch
if torch.cuda.is_available():
    print(f"torch {torch.__version__}, GPU {torch.cuda.get_device_name(0)}", flush=True)
else:
    print(f"torch {torch.__version__}, no GPU visible", flush=True)
PY
exec "$PYTHON" -m training.residual_run \
  --data "${DATA:-../shared/data}" --out "${OUT:-runs/gpu}" \
  --device "${DEVICE:-auto}" "$BF16_FLAG" --time-budget-s "${BUDGET_S:-420}" \
  --ngf "${NGF:-64}" --n-blocks "${BLOCKS:-9}" --ndf "${NDF:-64}" \
  --crop-px "${CROP_PX:-256}" --batch-size "${BATCH:-16}" --steps "${STEPS:-100000}" \
  --checkpoint-every "${CKPT_EVERY:-250}" --patch-px "${PATCH_PX:-512}" \
  --eval-images "${EVAL_IMAGES:-0}" "$TEXTURE_FLAG" --critic-seconds "${CRITIC_S:-90}" "$@"
