"""NumPy's fast path: one fused, chunked, threaded EM pass per batch.

``_engines._fast_path`` (the one switch) hands NumPy batches here; this
module provides what the switch needs and nothing generic:

    statistics(engine, kernels, log_weights, wide, latent, margin, scale)
                                        -> (N_k, S_k, log_norm)
        ``Engine.statistics`` for NumPy, by the plan ``PLANS[engine.name]``
    readout, distances, sq_norms
        ``Engine.readout``, ``Engine.distances`` and ``Im2col.sq_norms``
        for NumPy, a few images at a time (:mod:`~calm_np._fused_readout`)
    choose_method(n_channels, n_kernels, padded_shape, kernel_shape, latent)
        ``method="auto"`` on NumPy, by a timing model of the two plans

A plan (:class:`_Im2colPlan`, :class:`_RowDFT`) is built for a batch's
shapes, a ``latent`` and a ``margin``; it has ``chunk_size``,
``prepare(M, bias)`` (kernel-side work, once per pass),
``new_accumulator()``, ``chunk(Xc, prepared, acc)`` (the E- and M-step of a
few images, returning their log normalisers: one per image, or one per
position for ``latent="patch"``) and ``finish(accs, wide)``; for readouts,
``readout_maps(Xc, prepared, buffers)`` (the log joint as (m, k, Ho, Wo) in
the layout that pools fastest, :mod:`~calm_np._fused_readout`).  The
latent only changes the softmax between the steps
(over ``(k, u)`` per image, or over ``k`` per position); a margin only
widens the M-step's windows (a second patch matrix, or row spectra of
images padded by the margin).

One EM pass over a batch is E-step GEMM -> softmax -> M-step GEMM.  Done on
whole-batch arrays (the generic path) it streams the (n, k, Ho, Wo) maps
through memory about eight times; here each worker thread takes a chunk of
a few images, keeps its maps in cache from the E-step to the M-step, and
adds its share of the statistics to a private accumulator.  BLAS runs
single-threaded inside (threadpoolctl, when installed): the threads already
use every core, and OpenBLAS's own threads spin badly on a busy machine.
Three tricks keep passes few:

* the normalisers go to the image side of the M-step GEMM where it is the
  smaller operand, not to the maps: 1/Z_n to the row-DFT plan's Toeplitz
  matrix; 1/Z_n, or 1/Z_u per position for the patch latent, to the im2col
  plan's patches when they hold fewer values per position than there are
  kernels;
* the bias −½‖μ_k‖² + log π_k is added to the DC coefficient before the
  inverse transform (row-DFT plan) instead of to every map entry;
* the posterior mass of each map row (for ``N_k`` and ``Z_n``) is the DC
  coefficient of the forward transform the M-step needs anyway (row-DFT
  plan), not another sum over the maps.

Probabilities are flushed to 0 or at least tiny/eps (1e-31 in float32)
before the M-step GEMM (``(p + T) − T``, two passes without branches):
subnormal operands make it ~3× slower (up to 100× on peaked posteriors), and
each probability moves by at most 1e-31 or a unit in its last place.

``method="fft"`` here is the row-DFT plan, a Fourier method that is not a
2-D FFT: it transforms along image *rows* only (length F = Wp, as real GEMMs
with a DFT matrix) and sums over kernel rows directly: per frequency, one
GEMM of the kernels' row spectra with a Toeplitz matrix of the images' row
spectra.  For the MNIST setup this is ~3× fewer flops than im2col, for
STL-10's ~5×, all of them in GEMMs.  (A full 2-D FFT variant, with kernels
in cache-sized groups, was never faster: pocketfft's 96×96 transforms and
NumPy's elementwise complex products ran far below GEMM speed; see the
README.)
"""

from __future__ import annotations

import math
import os
import threading

from ._fused_dft import RowTransforms, dft_matrices
from ._fused_readout import distances, readout, sq_norms  # noqa: F401  (the readouts)
from ._fused_timing import choose_method  # noqa: F401  (the fast path's pick)
from ._whiten import whiten_in_place
from ._xp import _BLAS, flush_tiny_inplace  # noqa: F401  (tests reach _BLAS here)
from ._xp import single_threaded_blas as _single_threaded_blas


def _n_threads():
    """Worker threads for the fused path: ``CALM_NP_NUM_THREADS`` or the CPUs.

    The one check of that variable (the command line calls this up front).
    """
    env = os.environ.get("CALM_NP_NUM_THREADS", "").strip()
    if env:
        if not (env.isdigit() and int(env) >= 1):
            raise ValueError(
                f"CALM_NP_NUM_THREADS={env!r} is not an integer >= 1 (a positive "
                "integer number of worker threads); set it to e.g. 2 or unset it"
            )
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


_POOL = {"lock": threading.Lock(), "executor": None, "size": 0}


def _executor(size):
    from concurrent.futures import ThreadPoolExecutor

    with _POOL["lock"]:
        if _POOL["executor"] is None or _POOL["size"] < size:
            if _POOL["executor"] is not None:
                _POOL["executor"].shutdown(wait=False)
            _POOL["executor"] = ThreadPoolExecutor(size, "calm_np")
            _POOL["size"] = size
        return _POOL["executor"]


def _parallel_chunks(n, chunk, work, make_acc):
    """Run ``work(start, stop, acc)`` over chunks of ``range(n)`` on threads.

    Thread ``t`` of ``T`` takes chunks ``t, t + T, t + 2T, …`` (a static
    assignment) and adds into its own accumulator (``make_acc()``); the
    accumulators come back in thread order.  Which chunk lands in which sum
    never depends on timing, so a fit is bit-for-bit reproducible.
    """
    starts = list(range(0, n, chunk))
    n_threads = min(_n_threads(), len(starts))
    with _single_threaded_blas() as single:
        if n_threads == 1 or not single:
            acc = make_acc()
            for s in starts:
                work(s, min(s + chunk, n), acc)
            return [acc]

        def run(t):
            acc = make_acc()
            for s in starts[t::n_threads]:
                work(s, min(s + chunk, n), acc)
            return acc

        pool = _executor(n_threads)
        futures = [pool.submit(run, t) for t in range(n_threads)]
        return [f.result() for f in futures]


def _softmax_inplace(A3, np):
    """``A3`` (rows, m, cols) of log joints -> exp(A - max_n), in place.

    Returns the per-image max (m,), finite.  Probabilities near 0 are
    flushed (:func:`~calm_np._xp.flush_tiny_inplace`).
    """
    if A3.shape[1] == 1:
        mx = np.max(A3, keepdims=True).reshape(1)  # contiguous: fastest
    else:
        mx = A3.max(axis=0).max(axis=-1)
    mx = np.where(np.isfinite(mx), mx, 0).astype(A3.dtype)
    # shifts as a whole (m, cols) block: the loop runs over m·cols values,
    # not over short rows of cols against an (m, 1) broadcast
    A3 -= np.repeat(mx, A3.shape[2]).reshape(A3.shape[1:])
    np.exp(A3, out=A3)
    flush_tiny_inplace(A3, np)
    return mx


def _softmax_over_kernels(maps, axis, np):
    """``maps`` (…, k, …) of log joints -> ``exp(A − max)`` over ``axis``, in
    place; the ``latent="patch"`` softmax per position, not yet normalised.

    Returns the log normalisers (``maps`` without ``axis``) and ``1/Z``
    (keepdims): the caller divides the maps by ``Z``, or the other operand
    of its M-step.  Probabilities (relative to a position's largest) near 0
    are flushed (:func:`~calm_np._xp.flush_tiny_inplace`).
    """
    mx = maps.max(axis=axis, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0).astype(maps.dtype)
    maps -= mx
    np.exp(maps, out=maps)
    flush_tiny_inplace(maps, np)
    Z = maps.sum(axis=axis, keepdims=True)  # >= 1: the largest is exp(0)
    return np.squeeze(mx + np.log(Z), axis=axis), (1.0 / Z).astype(maps.dtype)


def _plan(engine, kernels, log_weights, latent="image", margin=0, scale=1.0):
    """``(Xp, plan, prepared)``: NumPy images and a prepared plan for them.

    ``scale = 1/σ²`` goes into the kernels and the bias (``M·scale``,
    ``scale·(−½‖μ‖²) + log π``); the images are never scaled.
    """
    import numpy as np

    Xp = np.asarray(engine.Xp)
    M = np.asarray(kernels)
    dtype = M.dtype
    bias = -0.5 * np.sum(M * M, axis=(1, 2, 3), dtype=dtype)
    if scale != 1.0:
        bias, M = (bias * scale).astype(dtype), (M * scale).astype(dtype)
    bias = bias + np.asarray(log_weights)
    plan = PLANS[engine.name](Xp.shape, M.shape, dtype, latent, margin)
    if engine.whitening is not None:
        engine.widened(margin)  # refuses window statistics of whitened patches
        plan.whitening = engine.whitening
    return Xp, plan, plan.prepare(M, bias)


def statistics(engine, kernels, log_weights, wide, latent="image", margin=0, scale=1.0):
    """``Engine.statistics`` on NumPy: the fused, chunked, threaded pass.

    The plan for ``engine.name`` (:data:`PLANS`) does the work per chunk of
    images; the results equal :func:`~calm_np._engines.generic_statistics`
    up to rounding (``tests/test_engines_perf_paths.py``).
    """
    import numpy as np

    Xp, plan, prepared = _plan(engine, kernels, log_weights, latent, margin, scale)
    dtype = plan.dtype
    n = Xp.shape[0]
    per_image = (plan.Ho, plan.Wo) if latent == "patch" else (1, 1)
    log_norm = np.empty((n, 1, *per_image), dtype=dtype)
    whitened = getattr(plan, "whitening", None) is not None
    sq = np.empty((n, plan.L), dtype=dtype) if whitened else None

    def work(start, stop, acc):
        log_norm[start:stop] = plan.chunk(Xp[start:stop], prepared, acc).reshape(
            stop - start, 1, *per_image
        )
        if sq is not None:  # ‖z_u‖², kept for the objective (Im2col.sq_norms)
            sq[start:stop] = acc["sq_norms"].reshape(stop - start, plan.L)

    accs = _parallel_chunks(n, plan.chunk_size, work, plan.new_accumulator)
    counts, sums = plan.finish(accs, wide)
    if sq is not None:
        engine.known_sq_norms = sq.reshape(n, plan.Ho, plan.Wo)
    return counts, sums, log_norm


class _Buffers:
    """Per-thread scratch arrays, reused from chunk to chunk.

    Fresh multi-megabyte arrays per chunk cost page faults and zeroing
    (~20 % of a chunk's time for STL-10-sized maps); views of one flat
    allocation work for every chunk size up to the largest.
    """

    def __init__(self, dtype):
        self.dtype = dtype
        self.flat = {}

    def get(self, name, shape):
        import numpy as np

        size = math.prod(shape)
        buf = self.flat.get(name)
        if buf is None or buf.size < size:
            buf = self.flat[name] = np.empty(size, dtype=self.dtype)
        return buf[:size].reshape(shape)


def _normalise(sk, dtype, np):
    """Per-image ``Z`` and ``1/Z`` (0 where ``Z = 0``) from the map sums."""
    Z = sk.sum(axis=0)
    safe = np.where(Z > 0, Z, 1)
    inv = np.where(Z > 0, 1.0 / safe, 0).astype(dtype)
    return Z, inv


class _Im2colPlan:
    """Fused im2col: per chunk, patches (D, m·L); two GEMMs around a softmax.

    With a margin the M-step multiplies a second patch matrix, of the
    images padded by ``margin`` and windows ``2·margin`` larger.  A
    ``whitening`` (set by :func:`_plan`) whitens each chunk's patches first.
    """

    whitening = None

    def __init__(self, image_shape, kernel_shape, dtype, latent="image", margin=0):
        _, c, Hp, Wp = image_shape
        k, _, kh, kw = kernel_shape
        self.c, self.k, self.kh, self.kw = c, k, kh, kw
        self.latent, self.margin = latent, margin
        self.Ho, self.Wo = Hp - kh + 1, Wp - kw + 1
        self.D, self.L = c * kh * kw, self.Ho * self.Wo
        self.window = (kh + 2 * margin, kw + 2 * margin)
        self.Dm = c * math.prod(self.window)  # the M-step's patch length
        self.dtype = dtype
        # ~4 MB of patches and maps per chunk keeps a chunk's work in cache
        per_image = self.L * (self.D + k + (self.Dm if margin else 0)) * 4
        self.chunk_size = max(1, min(256, (4 << 20) // max(per_image, 1)))

    def prepare(self, M, bias):
        import numpy as np

        Mf = np.ascontiguousarray(M.reshape(self.k, self.D))
        return Mf, bias

    def new_accumulator(self):
        import numpy as np

        return {
            "counts": np.zeros(self.k),
            "sums": np.zeros((self.k, self.Dm)),
            "part": np.empty((self.k, self.Dm), dtype=self.dtype),
            "buffers": _Buffers(self.dtype),
        }

    def patches(self, Xc, window, buffers, name, out=None):
        """``(c·wh·ww, m·L)`` patch matrix of a chunk, in a reused buffer
        (or ``out``, C-contiguous, of that shape)."""
        from numpy.lib.stride_tricks import sliding_window_view

        view = sliding_window_view(Xc, window, axis=(2, 3))  # (m,c,Ho,Wo,wh,ww)
        shape = (self.c, *window, Xc.shape[0], self.Ho, self.Wo)
        P = buffers.get(name, shape) if out is None else out.reshape(shape)
        P[...] = view.transpose(1, 4, 5, 0, 2, 3)
        return P.reshape(-1, Xc.shape[0] * self.L)

    def whitened(self, Xc, buffers, out=None):
        """The chunk's ``(D, m·L)`` patch matrix, whitened if the plan whitens
        (into ``out`` if given)."""
        if self.whitening is None:
            return self.patches(Xc, (self.kh, self.kw), buffers, "P", out)
        P = self.patches(Xc, (self.kh, self.kw), buffers, "P")
        out = buffers.get("Z", P.shape) if out is None else out
        return whiten_in_place(P, self.whitening, out)

    def e_step(self, Xc, prepared, buffers):
        """Log joint ``(k, m·L)`` of a chunk, and its patch matrix."""
        import numpy as np

        Mf, bias = prepared
        P = self.whitened(Xc, buffers)
        A = np.matmul(Mf, P, out=buffers.get("A", (self.k, Xc.shape[0] * self.L)))
        A += bias[:, None]
        return A, P

    def readout_maps(self, Xc, prepared, buffers, by_position=False):
        """Log joint of a chunk as (m, k, Ho, Wo), a view of (m, Ho, Wo, k)
        (``_fused_readout``: the GEMM's operands swapped, the same values),
        or without ``by_position`` of the E-step's own (k, m, Ho, Wo)."""
        import numpy as np

        if not by_position:
            A, m = self.e_step(Xc, prepared, buffers)[0], Xc.shape[0]
            return A.reshape(self.k, m, self.Ho, self.Wo).transpose(1, 0, 2, 3)
        Mf, bias = prepared
        P, m = self.whitened(Xc, buffers), Xc.shape[0]
        A = np.matmul(P.T, Mf.T, out=buffers.get("A", (m * self.L, self.k)))
        A += bias
        return A.reshape(m, self.Ho, self.Wo, self.k).transpose(0, 3, 1, 2)

    def chunk(self, Xc, prepared, acc):
        import numpy as np

        buffers = acc["buffers"]
        m = Xc.shape[0]
        L, k, q = self.L, self.k, self.margin
        A, P = self.e_step(Xc, prepared, buffers)
        if self.whitening is not None:
            acc["sq_norms"] = np.einsum("dl,dl->l", P, P)
        A3 = A.reshape(k, m, L)
        if q:
            Xq = np.pad(Xc, ((0, 0), (0, 0), (q, q), (q, q)))
            P = self.patches(Xq, self.window, buffers, "P_wide")
        # the normalisers 1/Z go to the smaller operand of the M-step GEMM:
        # the patches (Dm values per position) or the maps (k per position)
        patch_side = P.shape[0] < k
        if self.latent == "patch":
            log_norm, inv = _softmax_over_kernels(A3, 0, np)  # (m, L), 1/Z_u
            if patch_side:  # N_k = Σ_u e_ku / Z_u, one GEMV
                acc["counts"] += A @ inv.reshape(-1)
                P *= inv.reshape(1, -1)
            else:
                A3 *= inv
                acc["counts"] += A.sum(axis=1)
        else:
            mx = _softmax_inplace(A3, np)
            sk = A3.sum(axis=-1)  # (k, m)
            Z, inv = _normalise(sk, self.dtype, np)
            acc["counts"] += np.sum(sk * inv, axis=1, dtype=np.float64)
            side = P.reshape(-1, m, L) if patch_side else A3
            side *= np.repeat(inv, L).reshape(m, L)
            with np.errstate(divide="ignore"):
                log_norm = mx + np.log(Z)
        acc["sums"] += np.matmul(A, P.T, out=acc["part"])  # (k, Dm)
        return log_norm

    def finish(self, accs, wide):
        counts = sum(a["counts"] for a in accs)
        sums = sum(a["sums"] for a in accs)
        sums = sums.reshape(self.k, self.c, *self.window)
        return counts.astype(wide), sums.astype(wide)


_FLUSH_IMAGES = 32  # images per float64 flush of the row-DFT plan's M-step


class _RowDFT:
    """Fused row-DFT correlation, ``method="fft"`` (see the module docstring).

    With ``X̂[n,c,r,f]`` the DFT of image row ``r`` and ``M̂[k,c,i,f]`` that of
    kernel row ``i`` (length ``F = Wp``; ``ns`` slots of bins in transform
    order, see :mod:`~calm_np._fused_dft`)::

        Â[n,k,y,f] = Σ_{c,i} X̂[n,c,y+i,f] · conj(M̂[k,c,i,f])      E-step
        Ŝ[k,c,i,f] = Σ_{n,y} conj(Γ̂[n,k,y,f]) · X̂[n,c,y+i,f]      M-step

    per bin ``f`` two real GEMMs (re/im stacked) against the Toeplitz matrix
    ``T_f[(ri,c,i), (n,y)]``; rows come back to space by GEMMs with the
    (cropped) inverse DFT matrix (radix-2 folded for long rows,
    :class:`~calm_np._fused_dft.RowTransforms`).  No wrap-around:
    ``x + j <= Wp - 1 < F``.  The M-step's products add up in the plan's
    dtype for ``_FLUSH_IMAGES`` images, then into float64.

    With a margin ``q`` the images are padded by ``q`` more (rows of length
    ``F = Wp + 2q``) and the M-step sums ``kh + 2q`` rows of ``kw + 2q``
    samples; the E-step sees the kernel shifted by ``q`` rows and columns
    (zero rows around it, ``q`` zeros before each row), so both steps share
    one Toeplitz matrix.
    """

    def __init__(self, image_shape, kernel_shape, dtype, latent="image", margin=0):
        _, c, Hp, Wp = image_shape
        k, _, kh, kw = kernel_shape
        q = margin
        self.c, self.k, self.kh, self.kw = c, k, kh, kw
        self.latent, self.margin = latent, margin
        self.Hp, self.Wp = Hp + 2 * q, Wp + 2 * q  # the images as transformed
        self.Ho, self.Wo = Hp - kh + 1, Wp - kw + 1
        self.rows, self.cols = kh + 2 * q, kw + 2 * q  # the M-step's window
        self.F = self.Wp
        self.ns = (self.F + 1) // 2
        self.dtype = dtype
        self.rowt = RowTransforms(self.F, self.Wp, self.Wo, dtype)
        # the maps and their row spectra: ~(Wo + 2ns)·k·Ho floats per image
        per_image = (self.Wo + 2 * self.ns) * k * self.Ho * 4
        self.chunk_size = max(1, min(256, (6 << 20) // max(per_image, 1)))

    def prepare(self, M, bias):
        import numpy as np

        ns, F, k, c, kh, q = self.ns, self.F, self.k, self.c, self.rows, self.margin
        name = np.dtype(self.dtype).name
        if q:  # the kernel at offset (q, q) of its (kh + 2q) × (kw + q) window
            Mq = np.zeros((k, c, kh, self.kw + q), dtype=M.dtype)
            Mq[:, :, q : kh - q, q:] = M
            M = Mq
        fwd_k, _ = dft_matrices(F, M.shape[3], 0, name)
        M_f = np.tensordot(M, fwd_k[:, self.rowt.order], axes=(3, 0))  # (k,c,kh,ns,2)
        Mr = np.moveaxis(M_f[..., 0].reshape(k, c * kh, ns), -1, 0)  # (ns, k, ckh)
        Mi = np.moveaxis(M_f[..., 1].reshape(k, c * kh, ns), -1, 0)
        # conj(M̂)·X̂: re = Mr·Tr + Mi·Ti, im = Mr·Ti − Mi·Tr
        Mblk = np.empty((ns, 2 * k, 2 * c * kh), dtype=self.dtype)
        Mblk[:, :k, : c * kh] = Mr
        Mblk[:, :k, c * kh :] = Mi
        Mblk[:, k:, : c * kh] = -Mi
        Mblk[:, k:, c * kh :] = Mr
        # slot 0 holds two real bins (DC, Nyquist): a diagonal block
        Mblk[0, :k, c * kh :] = 0
        Mblk[0, k:, : c * kh] = 0
        Mblk[0, k:, c * kh :] = Mi[0]  # (slot 0 stays first in transform order)
        finite = np.isfinite(bias)
        dead = None if finite.all() else ~finite
        # bias on the DC coefficient: the inverse DFT spreads it as 1/F · F
        dc = (np.where(finite, bias, 0) * F).astype(self.dtype)
        return Mblk, dc, dead

    def new_accumulator(self):
        import numpy as np

        ns, k, ckh = self.ns, self.k, self.c * self.rows
        # products add up in the plan's dtype over a few chunks ("block"),
        # then into float64: a mixed-dtype add per chunk cost ~10 % for STL-10
        return {
            "counts": np.zeros(k),
            "sums": np.zeros((ns, 2 * k, 2 * ckh)),
            "block": np.zeros((ns, 2 * k, 2 * ckh), dtype=self.dtype),
            "pending": 0,  # images in "block"
            "part": np.empty((2 * k, 2 * ckh), dtype=self.dtype),
            "buffers": _Buffers(self.dtype),
        }

    def e_step(self, Xc, prepared, buffers):
        """Log joint ``(Wo, k·m·Ho)`` of a chunk, with the Toeplitz matrix and
        the products' buffer (the M-step reuses both)."""
        import numpy as np
        from numpy.lib.stride_tricks import sliding_window_view

        Mblk, dc, dead = prepared
        m, q = Xc.shape[0], self.margin
        ns, k, c, kh, Ho, Wo = self.ns, self.k, self.c, self.rows, self.Ho, self.Wo
        n_col = m * Ho
        if q:
            Xc = np.pad(Xc, ((0, 0), (0, 0), (q, q), (q, q)))
        # row spectra (2ns, m, c, Hp) -> Toeplitz (ns, 2·c·kh, m·Ho); the
        # copy reads rows contiguously
        rows = Xc.reshape(-1, self.Wp)
        X_f = self.rowt.images(rows, buffers.get("X_f", (2 * ns, rows.shape[0])))
        view = sliding_window_view(X_f.reshape(2 * ns, m, c, self.Hp), kh, axis=3)
        T = buffers.get("T", (2 * ns, c, kh, m, Ho))
        T[...] = view.transpose(0, 2, 4, 1, 3)  # (2ns, c, kh, m, Ho)
        T = T.reshape(ns, 2 * c * kh, n_col)
        # one 2-D GEMM per bin: NumPy's stacked matmul falls back to a slow
        # loop for some shapes (e.g. 82 columns), a plain GEMM never does
        E = buffers.get("E", (ns, 2 * k, n_col))
        for f in range(ns):
            np.matmul(Mblk[f], T[f], out=E[f])  # rows (re/im, k)
        E[0, :k] += dc[:, None]
        A = self.rowt.inverse(
            E.reshape(2 * ns, k * n_col), buffers.get("A", (Wo, k * n_col)), buffers
        )
        if dead is not None:
            A.reshape(Wo, k, n_col)[:, dead] = -np.inf
        return A, (T, E)

    def readout_maps(self, Xc, prepared, buffers, by_position=False):
        """The chunk's log joint as (m, k, Ho, Wo), copied: in the plan's
        layout (Wo, k, m, Ho) the positions are short strided runs, which
        slows every reduction of a readout (a view made the MNIST setup's
        readouts slower)."""
        A, _ = self.e_step(Xc, prepared, buffers)
        m, Ho, Wo = Xc.shape[0], self.Ho, self.Wo
        out = buffers.get("maps", (m, self.k, Ho, Wo))
        out[...] = A.reshape(Wo, self.k, m, Ho).transpose(2, 1, 3, 0)
        return out

    def chunk(self, Xc, prepared, acc):
        import numpy as np

        buffers = acc["buffers"]
        m = Xc.shape[0]
        ns, k, c, kh, Ho, Wo = self.ns, self.k, self.c, self.rows, self.Ho, self.Wo
        n_col = m * Ho
        A, (T, E) = self.e_step(Xc, prepared, buffers)
        if self.latent == "patch":
            A3 = A.reshape(Wo, k, n_col)
            log_norm, inv = _softmax_over_kernels(A3, 1, np)
            A3 *= inv  # (the M-step runs on row spectra: no patch side)
            log_norm = log_norm.reshape(Wo, m, Ho).transpose(1, 2, 0)  # (m, Ho, Wo)
        else:
            mx = _softmax_inplace(A.reshape(Wo * k, m, Ho), np)
        # row spectra of the maps (reusing E's memory); slot 0's real row is
        # each map row's DC, its sum over x: the posterior mass per (k, n, y)
        # without another pass over the maps
        G = self.rowt.forward(A, E.reshape(2 * ns, k * n_col), buffers)
        G = G.reshape(ns, 2 * k, n_col)
        mass = G[0, :k]  # (k, m·Ho)
        if self.latent == "patch":
            acc["counts"] += mass.sum(axis=1)
        else:
            sk = mass.reshape(k, m, Ho).sum(axis=-1)  # (k, m)
            Z, inv = _normalise(sk, self.dtype, np)
            acc["counts"] += np.sum(sk * inv, axis=1, dtype=np.float64)
            # the image side scaled by 1/Z_n, not the maps
            T.reshape(ns, 2 * c * kh, m, Ho)[...] *= np.repeat(inv, Ho).reshape(m, Ho)
            with np.errstate(divide="ignore"):
                log_norm = mx + np.log(Z)
        block, part = acc["block"], acc["part"]  # (ns, 2k, 2ckh), one bin's
        for f in range(ns):
            if acc["pending"]:
                block[f] += np.matmul(G[f], T[f].T, out=part)
            else:
                np.matmul(G[f], T[f].T, out=block[f])
        acc["pending"] += m
        if acc["pending"] >= _FLUSH_IMAGES:
            acc["sums"] += block
            acc["pending"] = 0
        return log_norm

    def finish(self, accs, wide):
        import numpy as np

        ns, k, c, kh, kw, F = self.ns, self.k, self.c, self.rows, self.cols, self.F
        P = sum(a["sums"] + a["block"] if a["pending"] else a["sums"] for a in accs)
        P = P.reshape(ns, 2, k, 2, c * kh)[np.argsort(self.rowt.order)]
        # conj(Γ̂)·X̂ = (Gr·Tr + Gi·Ti) + i(Gr·Ti − Gi·Tr), per bin
        S_f = np.zeros((F // 2 + 1, k, c * kh), dtype=np.complex128)
        S_f[1:ns] = (P[1:, 0, :, 0] + P[1:, 1, :, 1]) + 1j * (
            P[1:, 0, :, 1] - P[1:, 1, :, 0]
        )
        S_f[0] = P[0, 0, :, 0]  # DC: real times real
        if F % 2 == 0:
            S_f[F // 2] = P[0, 1, :, 1]  # Nyquist
        S = np.fft.irfft(np.moveaxis(S_f, 0, -1), n=F, axis=-1)[..., :kw]
        counts = sum(a["counts"] for a in accs)
        return counts.astype(wide), S.reshape(k, c, kh, kw).astype(wide)


PLANS = {"im2col": _Im2colPlan, "fft": _RowDFT}

__all__ = ["PLANS", "choose_method", "distances", "readout", "sq_norms", "statistics"]
