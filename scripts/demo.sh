#!/usr/bin/env bash
# The main job in one command: set up ./.venv, then sample videos.
# With real weights in models/ (bash download_checkpoint.sh) it renders configs/sample/example.yaml; without them it
# builds the tiny random-weight bundle and renders configs/tiny/sample.yaml, whose videos are noise by design.
# Extra arguments are passed to sample.py as overrides, e.g. `bash scripts/demo.sh steps=10`, or
# `bash scripts/demo.sh stages=[t2v,face,tiled]` for Face and Tiled VCD (the tiny config sets their sizes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
if [ -f models/motion_module/mm_sd_v15_v2.ckpt ] && [ -d models/stable-diffusion-v1-5 ] && [ -d models/embeddings ]; then
  python sample.py --config configs/sample/example.yaml "$@"
else
  echo "No real weights under models/ (see README: bash download_checkpoint.sh)."
  echo "Running the TINY RANDOM-WEIGHT models instead: the pipeline runs end to end, the videos are noise."
  [ -f models/tiny/RANDOM_WEIGHTS.txt ] || python scripts/make_tiny_models.py --out models/tiny
  python sample.py --config configs/tiny/sample.yaml "$@"
fi
