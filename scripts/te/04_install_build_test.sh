#!/usr/bin/env bash
# Step 4 (on the device machine, right after step 3, carrying .te/small and .whl):
#   bash scripts/te/04_install_build_test.sh
# Joins the core wheel (checks its sha256), installs the wheels into /tmp/site, builds the PyTorch
# extension from source against the machine's torch (about 2 minutes with 16 cores), then runs
# tests/test_bridges.py against real TransformerEngine. Logs (and te_ext.tgz, the built extension) go
# to $OUT when it is set; put te_ext.tgz in .te/ext/ and carry that too to skip the build next time.
set -euo pipefail
cd "$(dirname "$0")/../.."
LOG=${OUT:-/tmp}
PY=${PY:-python3}
WHEEL=$(cut -d' ' -f3 .te/small/core.sha256)
cat /tmp/te/part_0[0-4] > "/tmp/te/$WHEEL"
(cd /tmp/te && sha256sum -c "$OLDPWD/.te/small/core.sha256")
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'

time "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
    "/tmp/te/$WHEEL" .te/small/*.whl $(ls .whl/array_api_compat-*.whl 2>/dev/null)
export PYTHONPATH=/tmp/site
if [ -f .te/ext/te_ext.tgz ]; then  # an extension built by an earlier run of this step (see the docs)
    tar xzf .te/ext/te_ext.tgz -C /tmp
else
    time (MAX_JOBS=16 NVTE_FRAMEWORK=pytorch "$PY" -m pip install --no-index --no-deps --no-build-isolation \
        --no-compile --target /tmp/te_ext .te/small/transformer_engine_torch-*.tar.gz > "$LOG/te_build.log" 2>&1) \
        || { tail -50 "$LOG/te_build.log"; exit 1; }
    tar czf "$LOG/te_ext.tgz" -C /tmp te_ext
fi
cp -r /tmp/te_ext/. /tmp/site/
"$PY" -c 'import transformer_engine.pytorch as te, transformer_engine_torch; import transformer_engine; print("TE", transformer_engine.__version__)'

export PYTHONPATH=/tmp/site:$(pwd)
set -o pipefail
"$PY" -m pytest tests/test_bridges.py -q -p no:cacheprovider -rA 2>&1 | tee "$LOG/te_tests.log"
