#!/usr/bin/env bash
# Packs what bench/gpu.sh needs on a GPU machine into .device/ (git-ignored): the stripped
# release binaries, SST-2 and the roberta-base tokenizer/config, and a peft wheel.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"
cd "$PEFTRAIN_ROOT"
rm -rf .device && mkdir -p .device/bin .device/glue/SST-2 .device/roberta .device/whl
for b in peftrain peftrain-worker; do strip -o .device/bin/$b target/release/$b; done
cp "$GLUE_DIR"/SST-2/*.tsv .device/glue/SST-2/
cp "$ROBERTA_DIR"/{config.json,tokenizer.json,vocab.json,merges.txt} .device/roberta/
"$PEFTRAIN_PYTHON" -m pip download -q --no-deps --only-binary=:all: -d .device/whl peft==0.21.2
du -sh .device
