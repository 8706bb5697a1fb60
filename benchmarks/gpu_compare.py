"""calm_np on CuPy vs the reference in torch-CUDA, on the same GPU.

    python benchmarks/gpu_compare.py            # the GPU run (CuPy + torch.cuda)
    python benchmarks/gpu_compare.py --dry-run  # same code on NumPy + torch CPU

Per setup (the issue's MNIST and STL-10 shapes, float32): checks that the
statistics agree with the reference, then times one batch-EM epoch over a
subset of images for calm_np (``im2col`` and ``fft`` engines, through the
public :func:`calm_np.sufficient_statistics`) and for the reference, with
warm-up, device synchronisation and medians of interleaved repeats.  Prints
device, dtype, shapes and the ratios.  Needs no network; an out-of-memory
setup is reported and skipped.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import _perf  # noqa: E402


def _backend(dry_run):
    """(xp, to_xp, sync, device name, torch device) for the run."""
    import torch

    if dry_run:
        import array_api_compat.numpy as xp

        return xp, np.asarray, lambda: None, f"CPU ({_perf.cpu_model()})", "cpu"
    import cupy

    n = cupy.cuda.runtime.getDeviceCount()
    if n < 1 or not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to CuPy and torch")
    # full float32 on both sides: torch would otherwise use TF32 tensor cores
    # for its convolutions (10-bit mantissa), CuPy does not
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]

    def sync():
        cupy.cuda.Device().synchronize()
        torch.cuda.synchronize()

    return cupy, cupy.asarray, sync, name, "cuda"


def _median_times(fns, repeats, sync):
    for f in fns.values():  # warm-up: kernels compiled, plans cached
        f()
    sync()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            sync()
            t = time.perf_counter()
            f()
            sync()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def run_setup(setup, n, repeats, backend):
    import reference_torch
    import torch

    import calm_np

    xp, to_xp, sync, _, tdev = backend
    cfg = _perf.SETUPS[setup]
    X, source = _perf.load_images(setup, n)
    M = _perf.init_kernels(X, cfg["n_kernels"], cfg["kernel"], cfg["padding"])
    batch, pad = cfg["batch"], cfg["padding"]
    Xd, Md = to_xp(X), to_xp(M)
    Xt, Mt = torch.from_numpy(X).to(tdev), torch.from_numpy(M).to(tdev)
    print(
        f"[{setup}] {n} images {cfg['image']} ({source}), K={cfg['n_kernels']} "
        f"kernels {cfg['kernel']}, padding {pad}, batch {batch}, float32"
    )

    # agreement on the first batch (float32 both sides, so a loose tolerance)
    first = min(batch, n)
    ref_counts, ref_sums, _ = reference_torch.batch_statistics(
        Xt[:first], Mt, None, pad
    )
    for method in ("im2col", "fft"):
        s = calm_np.sufficient_statistics(Xd[:first], Md, padding=pad, method=method)
        counts = _to_numpy(s.counts)
        sums = _to_numpy(s.sums)
        err_n = _rel(counts, ref_counts.cpu().numpy())
        err_s = _rel(sums, ref_sums.cpu().numpy())
        ok = err_n < 1e-3 and err_s < 1e-3
        print(
            f"  agreement {method:6}: max|ΔN_k|/max N_k {err_n:.1e}, "
            f"max|ΔS_k|/max|S_k| {err_s:.1e} -> {'ok' if ok else 'MISMATCH'}"
        )

    def calm(method):
        total = None
        for s0 in range(0, n, batch):
            st = calm_np.sufficient_statistics(
                Xd[s0 : s0 + batch], Md, padding=pad, method=method
            )
            total = st if total is None else total + st
        return total.m_step()

    fns = {
        "reference": lambda: reference_torch.epoch(Xt, Mt, batch, None, pad),
        "calm_np im2col": lambda: calm("im2col"),
        "calm_np fft": lambda: calm("fft"),
        "calm_np auto": lambda: calm("auto"),
    }
    med = _median_times(fns, repeats, sync)
    ref = med["reference"]
    flops = _perf.dense_flops(cfg["image"], cfg["n_kernels"], cfg["kernel"], pad)
    print(f"  {'impl':16} {'ms/img':>9} {'ratio':>7} {'dense GFLOP/s':>14}")
    for name, t in med.items():
        print(
            f"  {name:16} {1e3 * t / n:9.4f} {t / ref:7.3f} {flops * n / t / 1e9:14.0f}"
        )
    return {k: v / ref for k, v in med.items()}


def _to_numpy(a):
    from calm_np._xp import to_numpy

    return np.asarray(to_numpy(a), dtype=np.float64)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="NumPy + torch CPU")
    ap.add_argument("--n-mnist", type=int, default=None)
    ap.add_argument("--n-stl", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    n_mnist = args.n_mnist or (300 if args.dry_run else 10000)
    n_stl = args.n_stl or (4 if args.dry_run else 400)

    import torch

    backend = _backend(args.dry_run)
    print(
        f"device: {backend[3]}; torch {torch.__version__}; "
        f"{backend[0].__name__} arrays; dtype float32"
    )
    failed = False
    for setup, n in (("mnist", n_mnist), ("stl10", n_stl)):
        try:
            run_setup(setup, n, args.repeats, backend)
        except Exception as exc:  # noqa: BLE001 - report and go on (e.g. OOM)
            failed = True
            print(f"[{setup}] FAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc(limit=3)
        finally:
            _free(args.dry_run)
    return 1 if failed else 0


def _free(dry_run):
    if dry_run:
        return
    import cupy
    import torch

    cupy.get_default_memory_pool().free_all_blocks()
    torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
