#!/usr/bin/env bash
# The GPU suite in one command, for the H100 or H200 device machine (run from the repository root):
#   bash scripts/gpu_suite.sh            # logs under $OUT (the device tool's folder), else ./out
# It installs the wheels carried in .whl/ (packages the machine's image lacks), runs every CUDA test
# (pytest -m cuda over tests/), then each benchmark that has a --device cuda mode. Each step's log is
# written to $OUT/<step>.log; a failing step is reported and the suite goes on; the exit status is
# the number of failed steps. STEPS="tests" or STEPS="bench" runs only that half (default: both);
# BENCH_ARGS is passed to every benchmark (e.g. BENCH_ARGS=--quick).
# The wheels (the H100 image has torch, JAX, Triton and ml_dtypes, not these), fetched beforehand on a
# machine with the registry, into the ignored folder .whl/:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl array-api-compat==1.16.0 torchao==0.18.0
set -u
OUT="${OUT:-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 XLA_PYTHON_CLIENT_PREALLOCATE=false
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH="/tmp/site:.${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
fi
failed=0
step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, print the tail
  local name=$1; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$OUT/$name.log"
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || failed=$((failed + 1))
}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c "import torch, jax, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'| jax', jax.__version__, jax.devices(), '| triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.log"
STEPS="${STEPS:-tests bench}"
case "$STEPS" in *tests*)
  step bits_report "$PY" scripts/gpu_bits_report.py
  step pytest_cuda "$PY" -m pytest -m cuda -q -p no:cacheprovider -rs tests/ ;;
esac
case "$STEPS" in *bench*) ;; *) echo "failed steps: $failed"; exit $failed ;; esac
for bench in benchmarks/bench_*.py; do
  if "$PY" "$bench" --help 2>/dev/null | grep -q -- "--device"; then
    step "$(basename "$bench" .py)" "$PY" "$bench" --device cuda ${BENCH_ARGS:-}
  fi
done
echo "failed steps: $failed"
exit $failed
