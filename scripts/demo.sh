#!/usr/bin/env bash
# Offline demo: generate a small synthetic photo library (ui.demo.world), index it with the tiny CLIP trained in this
# repo (tests/assets/tiny_clip), then search it. No download; about a minute on a laptop CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
DEMO=${PHOTODEX_DEMO_DIR:-$(mktemp -d -t photodex-demo-XXXX)}
python -c "import sys; from ui.demo.world import write_library; write_library(sys.argv[1], 300, seed=7)" "$DEMO/library"
MODEL="local-dir:$PWD/tests/assets/tiny_clip"
photodex index "$DEMO/library" --collection "$DEMO/collection" --model "$MODEL"
echo "--- photodex search 'a photo of a red circle'"
photodex search "a photo of a red circle" --collection "$DEMO/collection" -k 5 --no-collapse
echo "--- photodex search 'a photo of a blue square' --filter type=png"
photodex search "a photo of a blue square" --collection "$DEMO/collection" -k 5 --no-collapse --filter type=png
echo "demo collection: $DEMO/collection (try: photodex info --collection $DEMO/collection)"
