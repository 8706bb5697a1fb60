"""calm_np on CuPy and on torch CUDA tensors vs the reference in torch CUDA, one GPU.

    python benchmarks/gpu_compare.py                 # both parts, on the GPU
    python benchmarks/gpu_compare.py --part paper    # the paper's two shapes
    python benchmarks/gpu_compare.py --part model    # the main job's model
    python benchmarks/gpu_compare.py --dry-run       # NumPy + torch CPU stand-ins

``paper``: per setup (the issue's MNIST and STL-10 shapes, float32), checks
that each backend's statistics (the public
:func:`calm_np.sufficient_statistics`, ``im2col`` and ``fft``) agree with
the reference's on the first batch, then times one batch-EM epoch over a
subset of images for the reference (``reference_torch``, torch CUDA) and
for calm_np on CuPy arrays and on torch CUDA tensors (``im2col``, ``fft``,
``auto``; each epoch as the EM loop runs it: trusted batch statistics,
one M-step, one host read), all in one interleaved loop with warm-up and
device synchronisation; prints the ratios and the goal (issue 20: calm_np
``auto`` <= 0.5x the reference on both).

``model``: the main job's model (the ``best`` preset for Fashion-MNIST:
256 kernels 7×7, patch latent, whitening, learned σ², batch 1000) fitted
for ``max_iter=3`` iterations (``tol=0``) on the first Fashion-MNIST
training images (random 28×28 images when the files are missing) on CuPy,
on torch CUDA and on NumPy: seconds of the first iteration (with the
initialisation) and per later iteration, side by side (the reference has
no equivalent of this model).

TF32 is off on the torch side (full float32 everywhere).  Each run stays
inside ``--max-seconds`` (fewer repeats, or skipped rows, when the GPU is
slower than expected), a failing setup or backend is reported and skipped,
and every line is flushed as it is printed.  Needs no network.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import _perf  # noqa: E402

GOAL = 0.5  # issue 20: calm_np auto on a GPU <= 0.5x the torch CUDA reference
ENGINES = ("im2col", "fft", "auto")


def _backends(dry_run, names):
    """The calm_np backends of the run: CuPy and torch CUDA on the GPU,
    NumPy and torch CPU as their stand-ins in a dry run."""
    out = []
    for name in names.split(","):
        if dry_run:
            name = {"cupy": "numpy"}.get(name, name)
            device = "cpu"
        else:
            device = "cuda"
        try:
            out.append(_perf.Backend(name, device))
        except Exception as exc:  # noqa: BLE001 - report, run the others
            print(f"backend {name} ({device}) NOT usable: {type(exc).__name__}: {exc}")
    return out


def _device_line(dry_run):
    import torch

    if dry_run:
        return f"CPU ({_perf.cpu_model()}, {_perf.n_cpus()} CPUs), dry run"
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch")
    # full float32 on both sides: torch would otherwise use TF32 tensor cores
    # for its convolutions (10-bit mantissa), CuPy does not
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    props = torch.cuda.get_device_properties(0)
    return (
        f"{props.name}, {props.total_memory / 2**30:.0f} GiB, "
        f"host {_perf.cpu_model()} ({_perf.n_cpus()} CPUs); TF32 off"
    )


def _timed_rounds(fns, repeats, seconds, sync):
    """Medians of interleaved rounds after one warm-up round, as many as
    fit in ``seconds`` (at least one, at most ``repeats``); returns
    (medians, rounds run)."""
    started = time.perf_counter()
    for f in fns.values():  # warm-up: kernels compiled, FFT plans cached
        f()
    sync()
    times = {k: [] for k in fns}
    rounds = 0
    while rounds < repeats:
        t_round = time.perf_counter()
        for k, f in fns.items():
            sync()
            t = time.perf_counter()
            f()
            sync()
            times[k].append(time.perf_counter() - t)
        rounds += 1
        spent = time.perf_counter() - started
        if spent + (time.perf_counter() - t_round) > seconds:
            break
    return {k: statistics.median(v) for k, v in times.items()}, rounds


def run_setup(setup, n, repeats, seconds, backends, ref_device, sync_all):
    import reference_torch
    import torch

    import calm_np

    cfg = _perf.SETUPS[setup]
    X, source = _perf.load_images(setup, n)
    M = _perf.init_kernels(X, cfg["n_kernels"], cfg["kernel"], cfg["padding"])
    batch, pad = cfg["batch"], cfg["padding"]
    c, H, W = cfg["image"]
    padded = (H + 2 * pad, W + 2 * pad)
    Xt = torch.from_numpy(X).to(ref_device)
    Mt = torch.from_numpy(M).to(ref_device)
    picks = ", ".join(
        f"{b.label} {b.choose(c, cfg['n_kernels'], padded, cfg['kernel'])}"
        for b in backends
    )
    print(
        f"[{setup}] {n} images {cfg['image']} ({source}), K={cfg['n_kernels']} "
        f"kernels {cfg['kernel']}, padding {pad}, batch {batch}, float32; "
        f"auto picks {picks}"
    )

    # agreement on the first batch (float32 both sides, so a loose tolerance)
    first = min(batch, n)
    ref_counts, ref_sums, _ = reference_torch.batch_statistics(
        Xt[:first], Mt, None, pad
    )
    ref_counts, ref_sums = ref_counts.cpu().numpy(), ref_sums.cpu().numpy()
    data = {}
    for b in backends:
        data[b.label] = (b.put(X), b.put(M))
        Xd, Md = data[b.label]
        for method in ("im2col", "fft"):
            s = calm_np.sufficient_statistics(
                Xd[:first], Md, padding=pad, method=method
            )
            err_n = _rel(_to_numpy(s.counts), ref_counts)
            err_s = _rel(_to_numpy(s.sums), ref_sums)
            ok = err_n < 1e-3 and err_s < 1e-3
            print(
                f"  agreement {b.label:11} {method:6}: max|ΔN_k|/max N_k "
                f"{err_n:.1e}, max|ΔS_k|/max|S_k| {err_s:.1e} -> "
                f"{'ok' if ok else 'MISMATCH'}"
            )

    fns = {
        "reference": lambda: _perf.reference_epoch(Xt, Mt, batch, pad),
    }
    for b in backends:
        Xd, Md = data[b.label]
        for method in ENGINES:
            fns[f"{b.label} {method}"] = lambda Xd=Xd, Md=Md, m=method, b=b: (
                _perf.calm_epoch(Xd, Md, batch, pad, m, sync=b.sync)
            )
    med, rounds = _timed_rounds(fns, repeats, seconds, sync_all)
    ref = med["reference"]
    flops = _perf.dense_flops(cfg["image"], cfg["n_kernels"], cfg["kernel"], pad)
    print(
        f"  {'impl':22} {'ms/img':>9} {'ratio':>7} {'dense GFLOP/s':>14}  "
        f"(medians of {rounds} interleaved rounds after a warm-up)"
    )
    for name, t in med.items():
        label = f"torch:{ref_device} conv" if name == "reference" else name
        print(
            f"  {label:22} {1e3 * t / n:9.4f} {t / ref:7.3f} "
            f"{flops * n / t / 1e9:14.0f}"
        )
    for b in backends:
        auto = med[f"{b.label} auto"] / ref
        verdict = "met" if auto <= GOAL else "NOT met"
        print(
            f"  goal: calm_np auto on {b.label} <= {GOAL}x the reference "
            f"(torch:{ref_device}): {auto:.3f}x, {verdict}"
        )
    _memory_line()
    return {k: v / ref for k, v in med.items()}


def run_model(n, backends, seconds, dry_run, batch_sizes=(None,), repeats=1):
    """The main job's model, ``max_iter=3``, on each backend in turn, for
    each ``batch_size`` (``None``: the preset's), ``repeats`` rounds
    alternating the backends (medians)."""
    import calm_np
    from calm_np import evaluation

    settings = evaluation.preset("best", "fashion-mnist")
    for key in ("preprocess", "C", "fit_limit"):
        settings.pop(key, None)  # preprocess "none": pixels / 255, as loaded
    settings.update(max_iter=3, tol=0.0, random_state=0)
    X, source = _perf.load_images("mnist", n)
    shown = {k: settings[k] for k in ("n_kernels", "kernel_size", "latent")}
    print(
        f"[model] best preset (fashion-mnist): {shown}, whiten "
        f"{settings.get('whiten')}, learn_variance "
        f"{settings.get('learn_variance')}; {n} images {X.shape[1:]} "
        f"({source}); max_iter=3, tol=0; {repeats} round(s) alternating"
    )
    print(
        f"  {'backend':11} {'batch':>6} {'first s':>8} {'s/iter':>8} "
        f"{'vs numpy':>8} {'lower bound':>12}  (first: from fit() to the end of "
        "iteration 1, with the initialisation; s/iter: median of iterations "
        "2-3 over the rounds)"
    )
    started = time.perf_counter()
    failed = False
    for batch_size in batch_sizes:
        opts = dict(settings)
        if batch_size is not None:
            opts["batch_size"] = None if batch_size == "auto" else int(batch_size)
        shown_bs = opts.get("batch_size") or "auto"
        rows = {}
        for _ in range(repeats):
            for b in backends:
                if time.perf_counter() - started > seconds:
                    print(f"  {b.label:11} skipped: --max-seconds spent")
                    continue
                stamps = []
                model = calm_np.ConvolutionalMixture(
                    **opts,
                    callback=lambda e, stamps=stamps: stamps.append(
                        time.perf_counter()
                    ),
                )
                try:
                    Xb = b.put(X)
                    b.sync()
                    t0 = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        model.fit(Xb)
                    b.sync()
                except Exception as exc:  # noqa: BLE001 - report, go on
                    failed = True
                    print(f"  {b.label:11} FAILED: {type(exc).__name__}: {exc}")
                    traceback.print_exc(limit=4, file=sys.stdout)
                    continue
                finally:
                    _free(b)
                first = stamps[0] - t0 if stamps else float("nan")
                later = [t1 - t0_ for t0_, t1 in zip(stamps, stamps[1:], strict=False)]
                row = rows.setdefault(b.label, ([], [], float(model.lower_bound_)))
                row[0].append(first)
                row[1].extend(later)
        med = {k: (statistics.median(v[0]), statistics.median(v[1]), v[2])
               for k, v in rows.items() if v[1]}  # fmt: skip
        base = med.get("numpy", (None, None))[1]
        for label, (first, per_iter, bound) in med.items():
            ratio = f"{per_iter / base:8.2f}" if base else f"{'-':>8}"
            print(
                f"  {label:11} {shown_bs!s:>6} {first:8.2f} {per_iter:8.3f} "
                f"{ratio} {bound:12.4f}"
            )
    _memory_line()
    return failed


def _memory_line():
    """Peak GPU memory of torch and the CuPy pool, when there is a GPU."""
    parts = []
    try:
        import torch

        if torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated() / 2**20
            parts.append(f"torch peak allocated {peak:.0f} MiB")
            torch.cuda.reset_peak_memory_stats()
    except Exception:  # noqa: BLE001
        pass
    if "cupy" in sys.modules:
        try:
            import cupy

            pool = cupy.get_default_memory_pool().total_bytes() / 2**20
            parts.append(f"CuPy pool {pool:.0f} MiB")
        except Exception:  # noqa: BLE001
            pass
    if parts:
        print("  GPU memory: " + ", ".join(parts))


def _to_numpy(a):
    from calm_np._xp import to_numpy

    return np.asarray(to_numpy(a), dtype=np.float64)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def _free(backend=None):
    """Give the GPU memory pools back between setups and backends."""
    if "cupy" in sys.modules:
        try:
            import cupy

            cupy.get_default_memory_pool().free_all_blocks()
        except Exception:  # noqa: BLE001
            pass
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="NumPy + torch CPU")
    ap.add_argument("--part", default="all", choices=("paper", "model", "all"))
    ap.add_argument(
        "--backends",
        default="cupy,torch",
        help="calm_np's arrays: cupy, torch (CUDA); a dry run maps cupy to numpy",
    )
    ap.add_argument("--n-mnist", type=int, default=None, help="10000 (dry: 300)")
    ap.add_argument("--n-stl", type=int, default=None, help="400 (dry: 4)")
    ap.add_argument("--n-model", type=int, default=None, help="5000 (dry: 300)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--model-batches",
        default="preset",
        help="batch sizes of the model part: 'preset' (its 1000), or e.g. auto,1000",
    )
    ap.add_argument("--model-repeats", type=int, default=1)
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=150.0,
        help="time this run may take (repeats and rows are cut to fit)",
    )
    args = ap.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    started = time.perf_counter()
    dry = args.dry_run
    n_mnist = args.n_mnist or (300 if dry else 10000)
    n_stl = args.n_stl or (4 if dry else 400)
    n_model = args.n_model or (300 if dry else 5000)

    import torch

    import calm_np

    device = _device_line(dry)
    backends = _backends(dry, args.backends)
    print(
        f"device: {device}; torch {torch.__version__}, numpy {np.__version__}, "
        f"calm_np {calm_np.__version__}; calm_np on "
        + (", ".join(b.label for b in backends) or "NOTHING")
        + "; dtype float32"
    )
    if not backends:
        return 1
    failed = False
    ref_device = "cpu" if dry else "cuda"

    def sync_all():
        for b in backends:
            b.sync()
        _perf.torch_sync(ref_device)

    if args.part in ("paper", "all"):
        setups = (("mnist", n_mnist), ("stl10", n_stl))
        for i, (setup, n) in enumerate(setups):
            # the rest of the time, shared by the setups (and the model) left
            left = args.max_seconds - (time.perf_counter() - started)
            share = left / (len(setups) - i + (args.part == "all"))
            try:
                run_setup(setup, n, args.repeats, share, backends, ref_device, sync_all)
            except Exception as exc:  # noqa: BLE001 - report and go on (e.g. OOM)
                failed = True
                print(f"[{setup}] FAILED: {type(exc).__name__}: {exc}")
                traceback.print_exc(limit=4, file=sys.stdout)
            finally:
                _free()
    if args.part in ("model", "all"):
        model_backends = list(backends)
        if not any(b.name == "numpy" for b in backends):
            model_backends.append(_perf.Backend("numpy"))
        left = args.max_seconds - (time.perf_counter() - started)
        try:
            batches = [
                None if b == "preset" else b for b in args.model_batches.split(",")
            ]
            args_model = (n_model, model_backends, 0.8 * left, dry)
            failed |= run_model(*args_model, batches, args.model_repeats)
        except Exception as exc:  # noqa: BLE001
            failed = True
            print(f"[model] FAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc(limit=4, file=sys.stdout)
    print(f"({time.perf_counter() - started:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
