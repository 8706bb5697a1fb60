#!/usr/bin/env bash
# One-go GPU check for a machine with one NVIDIA GPU, CuPy and PyTorch
# installed, and no network (nothing is downloaded):
#   1. the test suite's CuPy backend:   pytest -m cupy
#   2. calm_np on CuPy vs the reference in torch-CUDA, same card
# Each part has its own time limit; the whole stays well inside 10 minutes.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#   bash benchmarks/gpu_check.sh --dry-run  # no GPU: CPU stand-ins, smoke test
set -u
cd "$(dirname "$0")/.."

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; fi
PY=${PYTHON:-python}
status=0

echo "== machine"
date -u
if [ $DRY -eq 0 ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        || echo "nvidia-smi not available"
fi
$PY - <<'EOF'
import platform
import numpy, scipy
print("python", platform.python_version(), "numpy", numpy.__version__,
      "scipy", scipy.__version__)
for mod in ("cupy", "torch", "array_api_strict", "hypothesis"):
    try:
        m = __import__(mod)
        print(mod, m.__version__)
    except Exception as exc:  # noqa: BLE001
        print(mod, "NOT importable:", exc)
try:
    import cupy
    print("cupy devices:", cupy.cuda.runtime.getDeviceCount())
except Exception as exc:  # noqa: BLE001
    print("cupy devices: none", exc)
try:
    import torch
    print("torch.cuda:", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as exc:  # noqa: BLE001
    print("torch.cuda: none", exc)
EOF

echo
echo "== 1. pytest -m cupy (limit 300 s)"
if [ $DRY -eq 1 ]; then
    # no GPU here: collect only, to check the selection and the imports
    timeout 120 $PY -m pytest -m cupy --collect-only -q -p no:cacheprovider \
        | tail -3 || status=1
else
    HYPOTHESIS_PROFILE=ci timeout 300 $PY -m pytest -m cupy -q -ra \
        -p no:cacheprovider --no-header || status=1
fi

echo
echo "== 2. calm_np (CuPy) vs reference (torch CUDA) (limit 200 s)"
if [ $DRY -eq 1 ]; then
    timeout 200 $PY benchmarks/gpu_compare.py --dry-run || status=1
else
    timeout 200 $PY benchmarks/gpu_compare.py || status=1
fi

echo
echo "== done, status $status"
exit $status
