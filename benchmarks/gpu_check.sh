#!/usr/bin/env bash
# One-go GPU check for a machine with one NVIDIA GPU, CuPy and PyTorch
# installed, and no network (nothing is downloaded):
#   0. the machine, the packages, the GPU as CuPy and torch see it
#   1. the test suite's CuPy backend:                     pytest -m cupy
#   2. the paper's two shapes: calm_np on CuPy arrays and on torch CUDA
#      tensors vs the reference in torch CUDA, per epoch (goal <= 0.5x)
#   3. the main job's model (best preset, max_iter=3): seconds per
#      iteration on CuPy, torch CUDA and NumPy, side by side
#   4. engine_choice.py --quick on CuPy, then on torch CUDA: is auto within
#      10 % of the faster engine on the GPU, and the fitted SPEEDS["gpu"]
# Each part has its own time limit, cut to what is left of the whole
# (GPU_CHECK_BUDGET, 480 s), so the script ends inside 8.5 minutes whatever
# happens; a part that fails or runs out of time is reported and the next
# one runs.  Everything is printed as it comes (parts 1 and 4 as their
# last lines); the full output of every part is written to $LOGS
# (GPU_CHECK_LOGS, else $OUT/gpu_check when OUT is set, else
# /tmp/gpu_check), with the sweeps' timings as JSON.
#
#   bash benchmarks/gpu_check.sh                 # from the repository root
#   bash benchmarks/gpu_check.sh --parts 2,3     # only some parts
#   bash benchmarks/gpu_check.sh --dry-run       # no GPU: CPU stand-ins, smoke test
#   bash benchmarks/gpu_check.sh --prepare       # here, before: see below
#
# calm_np needs array-api-compat, which a bare GPU image may lack (and the
# tests' array-api-strict backend array-api-strict): --prepare copies both
# pure-Python packages from this machine's Python into .gpu_site/ (ignored
# by git through .gitignore); carry .gpu_site to the GPU machine and
# this script puts it on PYTHONPATH.
set -u
set -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY=0
PREPARE=0
PARTS="1,2,3,4"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --prepare) PREPARE=1 ;;
        --parts) PARTS="$2"; shift ;;
        --parts=*) PARTS="${1#--parts=}" ;;
        *) echo "unknown argument: $1 (--dry-run, --parts LIST, --prepare)"; exit 2 ;;
    esac
    shift
done
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python

if [ $PREPARE -eq 1 ]; then
    rm -rf .gpu_site && mkdir -p .gpu_site
    "$PY" - <<'EOF' || exit 1
import importlib, pathlib, shutil
for name in ("array_api_compat", "array_api_strict"):
    mod = importlib.import_module(name)
    src = pathlib.Path(mod.__file__).parent
    shutil.copytree(src, pathlib.Path(".gpu_site") / name,
                    ignore=shutil.ignore_patterns("__pycache__", "tests"))
    print("copied", name, getattr(mod, "__version__", "?"), "from", src)
EOF
    exclude=$(git rev-parse --git-path info/exclude 2>/dev/null)
    if [ -n "$exclude" ]; then
        mkdir -p "$(dirname "$exclude")"
        grep -qx '/.gpu_site/' "$exclude" 2>/dev/null || echo '/.gpu_site/' >> "$exclude"
    fi
    du -sh .gpu_site
    echo "now run on the GPU machine with .gpu_site carried"
    exit 0
fi

export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .gpu_site ]; then
    export PYTHONPATH="$ROOT/.gpu_site:$PYTHONPATH"
fi
LOGS=${GPU_CHECK_LOGS:-${OUT:+$OUT/gpu_check}}
LOGS=${LOGS:-/tmp/gpu_check}
mkdir -p "$LOGS"
BUDGET=${GPU_CHECK_BUDGET:-480}
START=$(date +%s)
status=0
summary=""

want() { case ",$PARTS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# limit WANTED -> the seconds a part may take: WANTED, cut to what is left
# of the budget (less 10 s of slack); below 20 the part is skipped
limit() {
    local left=$(( BUDGET - ($(date +%s) - START) - 10 ))
    if [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

# run NAME WANTED_S LOG SHOW CMD...: one part under its own timeout, its
# output to LOG; SHOW=all prints it as it comes, SHOW=N its last N lines
run() {
    local name=$1 want_s=$2 log=$3 show=$4
    shift 4
    local lim
    lim=$(limit "$want_s")
    echo
    if [ "$lim" -lt 20 ]; then
        echo "== $name: SKIPPED (budget of ${BUDGET} s spent)"
        summary="$summary\n  $name: skipped"
        return
    fi
    echo "== $name (limit ${lim} s; log $log)"
    local t0 rc
    t0=$(date +%s)
    if [ "$show" = all ]; then
        timeout -k 10 "$lim" "$@" 2>&1 | tee "$log"
        rc=$?
    else
        timeout -k 10 "$lim" "$@" >"$log" 2>&1
        rc=$?
        tail -n "$show" "$log"
    fi
    local dt=$(( $(date +%s) - t0 ))
    local what="ok"
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        what="TIMED OUT after ${lim} s (output above is partial)"
        status=1
    elif [ $rc -ne 0 ]; then
        what="FAILED (exit $rc)"
        status=1
    fi
    echo "-- $name: $what, ${dt} s"
    summary="$summary\n  $name: $what, ${dt} s"
}

echo "== 0. machine"
date -u
git rev-parse --short HEAD 2>/dev/null | sed 's/^/commit /' || true
if [ $DRY -eq 0 ]; then
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version \
        --format=csv,noheader || echo "nvidia-smi not available"
fi
echo "cpus $(nproc 2>/dev/null || echo ?); python $PY; logs in $LOGS; parts $PARTS"
timeout 120 "$PY" - <<'EOF' || { echo "0. FAILED"; status=1; }
import platform
import numpy, scipy
print("python", platform.python_version(), "numpy", numpy.__version__,
      "scipy", scipy.__version__)
for mod in ("array_api_compat", "cupy", "torch", "array_api_strict",
            "hypothesis", "threadpoolctl", "sklearn", "dask"):
    try:
        m = __import__(mod)
        print(" ", mod, getattr(m, "__version__", "?"))
    except Exception as exc:  # noqa: BLE001
        print(" ", mod, "NOT importable:", exc)
try:
    import calm_np
    print("calm_np", calm_np.__version__, "from", calm_np.__file__)
except Exception as exc:  # noqa: BLE001
    print("calm_np NOT importable:", exc, "(array_api_compat missing? see --prepare)")
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

if want 1; then
    if [ $DRY -eq 1 ]; then
        # no GPU here: collect only, to check the selection and the imports
        run "1. pytest -m cupy (collect only)" 120 "$LOGS/part1_pytest.log" 3 \
            "$PY" -m pytest -m cupy --collect-only -q -p no:cacheprovider
    else
        export HYPOTHESIS_PROFILE=ci
        run "1. pytest -m cupy" 150 "$LOGS/part1_pytest.log" 15 \
            "$PY" -m pytest -m cupy -q -ra -p no:cacheprovider --no-header
    fi
fi

DRYFLAG=""
if [ $DRY -eq 1 ]; then DRYFLAG="--dry-run"; fi

# compare N SECONDS PART TITLE: part N, gpu_compare.py --part PART, which
# stops itself 25 s before the part's limit
compare() {
    local lim
    lim=$(limit "$2")
    run "$1. $4" "$2" "$LOGS/part$1_$3.log" all \
        "$PY" benchmarks/gpu_compare.py --part "$3" $DRYFLAG \
        --max-seconds $(( lim > 40 ? lim - 25 : 20 ))
}

if want 2; then
    compare 2 150 paper "paper shapes: calm_np (CuPy, torch CUDA) vs reference (torch CUDA)"
fi
if want 3; then
    compare 3 100 model "main job's model: s/iteration on CuPy, torch CUDA, NumPy"
fi

if want 4; then
    if [ $DRY -eq 1 ]; then
        SWEEP=(--shapes 16/1/16/3,32/1/64/20 --repeats 1 --budget 0.05 --fit)
        sweeps=("numpy cpu" "torch cpu")
    else
        SWEEP=(--quick --budget 0.1 --fit)
        sweeps=("cupy cuda" "torch cuda")
    fi
    for sweep in "${sweeps[@]}"; do
        set -- $sweep
        lim=$(limit 100)
        run "4. engine choice on $1 ($2)" 100 "$LOGS/part4_engine_$1.log" 16 \
            "$PY" benchmarks/engine_choice.py --backend "$1" --device "$2" \
            "${SWEEP[@]}" --max-seconds $(( lim > 50 ? lim - 40 : 10 )) \
            --save "$LOGS/engine_choice_$1_$2.json"
    done
fi

echo
echo "== summary ($(( $(date +%s) - START )) s; full logs in $LOGS)"
echo -e "${summary#\\n}"
echo "== done, status $status"
exit $status
