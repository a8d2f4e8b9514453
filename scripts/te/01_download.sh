#!/usr/bin/env bash
# Step 1 (here, with PyPI): fetch TransformerEngine 2.20.2 for the H100 machine (Python 3.12, x86-64,
# CUDA 13) into the ignored folder .te/, plus the small wheels the tests need there into .whl/.
#   bash scripts/te/01_download.sh
# The core wheel (transformer-engine-cu13, ~276 MB) is too big for one device call (64 MiB), so
# step 2 splits it. The torch extension (transformer-engine-torch) is a source package: pip's metadata
# step imports torch and reads torch.version.cuda, which is None on this CPU-only torch, so a
# sitecustomize.py sets it to "13.0" (the H100 machine's torch is 2.11+cu130).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
PY=${PY:-.venv/bin/python}
TE_VERSION=2.20.2
mkdir -p .te/dl .te/buildenv .te/sitecustomize .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
WHEEL_FLAGS=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}")

"$PY" -m pip download -q "${WHEEL_FLAGS[@]}" -d .te/dl \
    "transformer-engine-cu13==$TE_VERSION" "transformer-engine==$TE_VERSION" \
    "pydantic==2.14.4" "pydantic-core==2.50.5" annotated-types typing-inspection

# Build tools for the source package's metadata step, kept out of the shared venv.
"$PY" -m pip install -q --target .te/buildenv pybind11 ninja setuptools wheel
cat > .te/sitecustomize/sitecustomize.py <<'PYEOF'
import torch

torch.version.cuda = "13.0"
PYEOF
PYTHONPATH="$ROOT/.te/sitecustomize:$ROOT/.te/buildenv" "$PY" -m pip download -q --no-deps --no-build-isolation \
    --no-binary :all: -d .te/dl "transformer-engine-torch==$TE_VERSION"

# Wheels the tests need on the device machine if its image lacks them (ml-dtypes is there already).
"$PY" -m pip download -q "${WHEEL_FLAGS[@]}" -d .whl "array-api-compat==1.16.0"
ls -l .te/dl .whl
