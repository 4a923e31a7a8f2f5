#!/usr/bin/env bash
# Reproduce the published figures with real weights and data, offline: photodex's figure beside the
# published one, with its source. Inputs come from environment variables (listed in scripts/eval_real.py):
#   PHOTODEX_EVAL_IMAGENET=/data/imagenet/val PHOTODEX_EVAL_CIFAR10=/data/cifar-10-batches-py \
#   PHOTODEX_EVAL_FLICKR30K_CAPTIONS=/data/dataset_flickr30k.json PHOTODEX_EVAL_FLICKR30K_IMAGES=/data/flickr30k \
#   PHOTODEX_EVAL_POPE=/data/pope PHOTODEX_EVAL_POPE_IMAGES=/data/coco/val2014 scripts/eval_real.sh
# Missing weights or data: one line naming each missing input, exit code 2.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$PYTHON" scripts/eval_real.py "$@"
