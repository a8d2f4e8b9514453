#!/usr/bin/env bash
# Step 2 (here): split the core wheel into five chunks that each fit one device call (64 MiB carried),
# and gather the small files (other wheels, the extension's source, checksums) into .te/small/.
#   bash scripts/te/02_split.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
WHEEL=$(ls .te/dl/transformer_engine_cu13-*.whl)
rm -rf .te/chunks .te/small
mkdir -p .te/chunks .te/small
split -n 5 -d -a 2 "$WHEEL" .te/chunks/part_
for n in 00 01 02 03 04; do mkdir -p ".te/chunks/$n" && mv ".te/chunks/part_$n" ".te/chunks/$n/"; done
(cd .te/dl && sha256sum "$(basename "$WHEEL")") > .te/small/core.sha256
find .te/dl -maxdepth 1 -type f ! -name 'transformer_engine_cu13-*' -exec cp {} .te/small/ \;
du -sh .te/chunks/* .te/small
