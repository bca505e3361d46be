#!/usr/bin/env bash
# Train the example identity, as the original's train.sh: put 5-10 photos in dataset/ceo/ first.
# Several GPUs: `accelerate launch train.py --config configs/train/example.yaml`.
set -euo pipefail
cd "$(dirname "$0")/.."
python train.py --config configs/train/example.yaml "$@"
