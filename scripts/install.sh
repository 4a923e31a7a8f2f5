#!/usr/bin/env bash
# Create .venv and install photodex with its test extras (torch pinned; see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install --quiet --upgrade pip
pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
pip install --quiet -e ".[dev]"
