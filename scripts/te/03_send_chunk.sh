#!/usr/bin/env bash
# Step 3 (on the device machine, five calls back to back, N = 00..04, each carrying .te/chunks/N):
#   bash scripts/te/03_send_chunk.sh N
# /tmp survives between calls only while the machine stays warm (about 30 s after a call).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p /tmp/te
cp ".te/chunks/$1/part_$1" /tmp/te/
ls -l /tmp/te
