"""NumPy's fast path: one fused, chunked, threaded EM pass per batch.

``_engines._fast_path`` (the one switch) hands NumPy batches here; this
module provides what the switch needs and nothing generic:

    statistics(engine, kernels, log_weights, wide) -> (N_k, S_k, log_norm)
        ``Engine.statistics`` for NumPy, by the plan ``PLANS[engine.name]``
    choose_method(n_channels, n_kernels, padded_shape, kernel_shape)
        ``method="auto"`` on NumPy, by a timing model of the two plans

A plan (:class:`_Im2colPlan`, :class:`_RowDFT`) has ``chunk_size``,
``prepare(M, bias)`` (kernel-side work, once per pass),
``new_accumulator()``, ``chunk(Xc, prepared, acc)`` (the E- and M-step of a
few images, returning their log normalisers) and ``finish(accs, wide)``.

One EM pass over a batch is E-step GEMM -> softmax -> M-step GEMM.  Done on
whole-batch arrays (the generic path) it streams the (n, k, Ho, Wo) maps
through memory about eight times; here each worker thread takes a chunk of
a few images, keeps its maps in cache from the E-step to the M-step, and
adds its share of the statistics to a private accumulator.  BLAS runs
single-threaded inside (threadpoolctl, when installed): the threads already
use every core, and OpenBLAS's own threads spin badly on a busy machine.
Two tricks keep passes few:

* the per-image normaliser 1/Z_n is applied to the chunk's (small)
  image-side matrix, never to the (large) maps;
* the bias −½‖μ_k‖² + log π_k is added to the DC coefficient before the
  inverse transform (row-DFT plan) instead of to every map entry.

Probabilities below tiny/eps (1e-31 in float32) are flushed to 0 before the
M-step GEMM: subnormal operands make it ~3× slower (up to 100× on peaked
posteriors), and the change to S_k and N_k is below 1e-31 each.

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

import contextlib
import functools
import math
import os
import threading

from ._xp import flush_threshold


def _n_threads():
    """Worker threads for the fused path: ``CALM_NP_NUM_THREADS`` or the CPUs."""
    env = os.environ.get("CALM_NP_NUM_THREADS", "")
    if env.strip():
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(
                f"CALM_NP_NUM_THREADS={env!r} is not an integer; set it to a "
                "number of threads (e.g. 4) or unset it"
            ) from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


_BLAS = {"lock": threading.Lock(), "depth": 0, "limit": None, "controller": None}


@contextlib.contextmanager
def _single_threaded_blas():
    """Limit BLAS to one thread while any fused pass runs; yields success.

    Reference-counted, so concurrent calls (Dask threads) restore the
    original setting only when the last one leaves.
    """
    state = _BLAS
    with state["lock"]:
        if state["controller"] is None:
            try:
                from threadpoolctl import ThreadpoolController
            except ImportError:
                state["controller"] = False
            else:
                state["controller"] = ThreadpoolController()
        ok = state["controller"] is not False
        if ok:
            if state["depth"] == 0:
                state["limit"] = state["controller"].limit(limits=1, user_api="blas")
            state["depth"] += 1
    try:
        yield ok
    finally:
        if ok:
            with state["lock"]:
                state["depth"] -= 1
                if state["depth"] == 0:
                    state["limit"].restore_original_limits()
                    state["limit"] = None


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

    Returns the per-image max (m,), finite.  Probabilities below
    :func:`~calm_np._xp.flush_threshold` become exactly 0.
    """
    if A3.shape[1] == 1:
        mx = np.max(A3, keepdims=True).reshape(1)  # contiguous: fastest
    else:
        mx = A3.max(axis=0).max(axis=-1)
    mx = np.where(np.isfinite(mx), mx, 0).astype(A3.dtype)
    A3 -= mx[:, None]
    np.copyto(A3, -np.inf, where=A3 < flush_threshold(A3.dtype))
    np.exp(A3, out=A3)
    return mx


def statistics(engine, kernels, log_weights, wide):
    """``Engine.statistics`` on NumPy: the fused, chunked, threaded pass.

    The plan for ``engine.name`` (:data:`PLANS`) does the work per chunk of
    images; the results equal :func:`~calm_np._engines.generic_statistics`
    up to rounding (``tests/test_engines_perf_paths.py``).
    """
    import numpy as np

    Xp = np.asarray(engine.Xp)
    M = np.asarray(kernels)
    dtype = M.dtype
    bias = -0.5 * np.sum(M * M, axis=(1, 2, 3), dtype=dtype) + np.asarray(log_weights)
    plan = PLANS[engine.name](Xp.shape, M.shape, dtype)
    prepared = plan.prepare(M, bias)
    n = Xp.shape[0]
    log_norm = np.empty(n, dtype=dtype)

    def work(start, stop, acc):
        log_norm[start:stop] = plan.chunk(Xp[start:stop], prepared, acc)

    accs = _parallel_chunks(n, plan.chunk_size, work, plan.new_accumulator)
    counts, sums = plan.finish(accs, wide)
    return counts, sums, log_norm.reshape(n, 1, 1, 1)


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
    """Fused im2col: per chunk, patches (D, m·L); two GEMMs around a softmax."""

    def __init__(self, image_shape, kernel_shape, dtype):
        _, c, Hp, Wp = image_shape
        k, _, kh, kw = kernel_shape
        self.c, self.k, self.kh, self.kw = c, k, kh, kw
        self.Ho, self.Wo = Hp - kh + 1, Wp - kw + 1
        self.D, self.L = c * kh * kw, self.Ho * self.Wo
        self.dtype = dtype
        # ~4 MB of patches and maps per chunk keeps a chunk's work in cache
        per_image = self.L * (self.D + k) * 4
        self.chunk_size = max(1, min(256, (4 << 20) // max(per_image, 1)))

    def prepare(self, M, bias):
        import numpy as np

        Mf = np.ascontiguousarray(M.reshape(self.k, self.D))
        return Mf, bias

    def new_accumulator(self):
        import numpy as np

        return {
            "counts": np.zeros(self.k),
            "sums": np.zeros((self.k, self.D)),
            "part": np.empty((self.k, self.D), dtype=self.dtype),
            "buffers": _Buffers(self.dtype),
        }

    def chunk(self, Xc, prepared, acc):
        import numpy as np
        from numpy.lib.stride_tricks import sliding_window_view

        Mf, bias = prepared
        buffers = acc["buffers"]
        m = Xc.shape[0]
        kh, kw, L, D, k = self.kh, self.kw, self.L, self.D, self.k
        view = sliding_window_view(Xc, (kh, kw), axis=(2, 3))  # (m,c,Ho,Wo,kh,kw)
        P = buffers.get("P", (self.c, kh, kw, m, self.Ho, self.Wo))
        P[...] = view.transpose(1, 4, 5, 0, 2, 3)
        P = P.reshape(D, m * L)
        A = np.matmul(Mf, P, out=buffers.get("A", (k, m * L)))
        A += bias[:, None]
        A3 = A.reshape(k, m, L)
        mx = _softmax_inplace(A3, np)
        sk = A3.sum(axis=-1)  # (k, m)
        Z, inv = _normalise(sk, self.dtype, np)
        acc["counts"] += np.sum(sk * inv, axis=1, dtype=np.float64)
        A3 *= inv[:, None]
        acc["sums"] += np.matmul(A, P.T, out=acc["part"])  # (k, D)
        with np.errstate(divide="ignore"):
            return mx + np.log(Z)

    def finish(self, accs, wide):
        counts = sum(a["counts"] for a in accs)
        sums = sum(a["sums"] for a in accs)
        sums = sums.reshape(self.k, self.c, self.kh, self.kw)
        return counts.astype(wide), sums.astype(wide)


@functools.lru_cache(maxsize=64)
def _dft_matrices(F, n_in, n_out, dtype_name):
    """Real DFT matrices for rows of length ``n_in`` zero-padded to ``F``.

    The ``F // 2 + 1`` bins of a real row's spectrum are stored in
    ``ns = (F + 1) // 2`` *slots* of (re, im) pairs: slot 0 holds the two
    purely real bins, DC and (for even ``F``) Nyquist, so no GEMM row is
    spent on an imaginary part that is always zero; slot ``s >= 1`` holds
    bin ``s``.

    ``fwd`` (n_in, ns, 2): row @ fwd = the row's slots.
    ``inv`` (ns, 2, n_out): slots -> first ``n_out`` samples of the irfft.
    """
    import numpy as np

    ns = (F + 1) // 2
    s = np.arange(ns)
    x_in = np.arange(n_in)
    theta = 2 * np.pi * np.outer(x_in, s) / F
    fwd = np.stack([np.cos(theta), -np.sin(theta)], axis=-1)
    fwd[:, 0, 1] = (-1.0) ** x_in if F % 2 == 0 else 0.0  # Nyquist
    x_out = np.arange(n_out)
    theta = 2 * np.pi * np.outer(s, x_out) / F
    inv = np.stack([np.cos(theta), -np.sin(theta)], axis=1) * (2.0 / F)
    inv[0, 0] = 1.0 / F  # DC
    inv[0, 1] = (-1.0) ** x_out / F if F % 2 == 0 else 0.0  # Nyquist
    # exact zeros where cos/sin vanish (not 1e-17): keeps products normal
    fwd[np.abs(fwd) < 1e-12] = 0.0
    inv[np.abs(inv) < 1e-12] = 0.0
    return fwd.astype(dtype_name), inv.astype(dtype_name)


class _RowDFT:
    """Fused row-DFT correlation, ``method="fft"`` (see the module docstring).

    With ``X̂[n,c,r,f]`` the DFT of image row ``r`` and ``M̂[k,c,i,f]`` that of
    kernel row ``i`` (length ``F = Wp``; ``ns`` slots of bins, see
    :func:`_dft_matrices`)::

        Â[n,k,y,f] = Σ_{c,i} X̂[n,c,y+i,f] · conj(M̂[k,c,i,f])      E-step
        Ŝ[k,c,i,f] = Σ_{n,y} conj(Γ̂[n,k,y,f]) · X̂[n,c,y+i,f]      M-step

    per bin ``f`` two real GEMMs (re/im stacked) against the Toeplitz matrix
    ``T_f[(ri,c,i), (n,y)]``; rows come back to space by GEMMs with the
    (cropped) inverse DFT matrix.  No wrap-around: ``x + j <= Wp - 1 < F``.
    """

    def __init__(self, image_shape, kernel_shape, dtype):
        _, c, Hp, Wp = image_shape
        k, _, kh, kw = kernel_shape
        self.c, self.k, self.kh, self.kw = c, k, kh, kw
        self.Hp, self.Wp = Hp, Wp
        self.Ho, self.Wo = Hp - kh + 1, Wp - kw + 1
        self.F = Wp
        self.ns = (Wp + 1) // 2
        self.dtype = dtype
        # the maps and their row spectra: ~(Wo + 2ns)·k·Ho floats per image
        per_image = (self.Wo + 2 * self.ns) * k * self.Ho * 4
        self.chunk_size = max(1, min(256, (6 << 20) // max(per_image, 1)))

    def prepare(self, M, bias):
        import numpy as np

        ns, F, k, c, kh = self.ns, self.F, self.k, self.c, self.kh
        name = np.dtype(self.dtype).name
        fwd_k, _ = _dft_matrices(F, self.kw, 0, name)
        fwd_x, _ = _dft_matrices(F, self.Wp, 0, name)
        fwd_g, inv = _dft_matrices(F, self.Wo, self.Wo, name)
        M_f = np.tensordot(M, fwd_k, axes=(3, 0))  # (k, c, kh, ns, 2)
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
        Mblk[0, k:, c * kh :] = Mi[0]
        finite = np.isfinite(bias)
        dead = None if finite.all() else ~finite
        # bias on the DC coefficient: the inverse DFT spreads it as 1/F · F
        dc = (np.where(finite, bias, 0) * F).astype(self.dtype)
        inv2 = np.ascontiguousarray(inv.reshape(2 * ns, self.Wo).T)  # (Wo, 2ns)
        fwd2 = np.ascontiguousarray(fwd_g.reshape(self.Wo, 2 * ns).T)  # (2ns, Wo)
        fwdx = np.ascontiguousarray(fwd_x.reshape(self.Wp, 2 * ns).T)  # (2ns, Wp)
        return Mblk, dc, dead, inv2, fwd2, fwdx

    def new_accumulator(self):
        import numpy as np

        ns, k, ckh = self.ns, self.k, self.c * self.kh
        return {
            "counts": np.zeros(k),
            "sums": np.zeros((ns, 2 * k, 2 * ckh)),
            "part": np.empty((2 * k, 2 * ckh), dtype=self.dtype),
            "buffers": _Buffers(self.dtype),
        }

    def chunk(self, Xc, prepared, acc):
        import numpy as np
        from numpy.lib.stride_tricks import sliding_window_view

        Mblk, dc, dead, inv2, fwd2, fwdx = prepared
        buffers = acc["buffers"]
        m = Xc.shape[0]
        ns, k, c, kh, Ho, Wo = self.ns, self.k, self.c, self.kh, self.Ho, self.Wo
        n_col = m * Ho
        # row spectra (2ns, m, c, Hp) -> Toeplitz (ns, 2·c·kh, m·Ho); the
        # copy reads rows contiguously
        rows = Xc.reshape(-1, self.Wp)
        X_f = np.matmul(fwdx, rows.T, out=buffers.get("X_f", (2 * ns, rows.shape[0])))
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
        A = np.matmul(
            inv2, E.reshape(2 * ns, k * n_col), out=buffers.get("A", (Wo, k * n_col))
        )
        if dead is not None:
            A.reshape(Wo, k, n_col)[:, dead] = -np.inf
        mx = _softmax_inplace(A.reshape(Wo * k, m, Ho), np)
        sk = A.sum(axis=0).reshape(k, m, Ho).sum(axis=-1)  # (k, m)
        Z, inv = _normalise(sk, self.dtype, np)
        acc["counts"] += np.sum(sk * inv, axis=1, dtype=np.float64)
        # row spectra of γ (reusing E's memory), image side scaled by 1/Z_n
        G = np.matmul(fwd2, A, out=E.reshape(2 * ns, k * n_col))
        G = G.reshape(ns, 2 * k, n_col)
        T.reshape(ns, 2 * c * kh, m, Ho)[...] *= inv[:, None]
        sums, part = acc["sums"], acc["part"]  # (ns, 2k, 2ckh)
        for f in range(ns):
            np.matmul(G[f], T[f].T, out=part)
            sums[f] += part
        with np.errstate(divide="ignore"):
            return mx + np.log(Z)

    def finish(self, accs, wide):
        import numpy as np

        ns, k, c, kh, kw, F = self.ns, self.k, self.c, self.kh, self.kw, self.F
        P = sum(a["sums"] for a in accs).reshape(ns, 2, k, 2, c * kh)
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


# Effective speeds of the operations of the fused NumPy paths (units per
# second, 2 threads on a busy 2-core AMD EPYC with AVX-512): GEMM flops of
# the products, flops of the skinny DFT-by-GEMM row transforms (inner
# dimensions of 13 to 98: far slower per flop), softmax map entries, copied
# entries (patches, Toeplitz) and images (per-image overhead).  Only their
# ratios matter.  Fitted to ``benchmarks/engine_choice.py --save`` timings of
# 104 shapes (least squares, then a search maximising the shapes where the
# pick is within 10 % of the faster engine); ``--fit`` refits them.
_FEATURES = ("gemm", "dft", "map", "copy", "image")
_SPEED = {
    "gemm": 4.1e10,
    "dft": 1.8e10,
    "map": 4.5e8,
    "copy": 5.3e8,
    "image": 8e4,
}


def _fused_features(kind, image_shape, kernel_shape):
    """Per-image operation counts of a fused path (``kind``: 'im2col' or
    'rowdft') for images ``(n, c, Hp, Wp)`` and kernels ``(k, c, kh, kw)``."""
    _, c, Hp, Wp = image_shape
    k, _, kh, kw = kernel_shape
    Ho, Wo = Hp - kh + 1, Wp - kw + 1
    maps = k * Ho * Wo
    if kind == "im2col":
        D = c * kh * kw
        return {
            "gemm": 4.0 * k * D * Ho * Wo,
            "map": maps,
            "copy": D * Ho * Wo,
            "image": 1.0,
        }
    if kind == "rowdft":
        ns = (Wp + 1) // 2
        return {
            "gemm": 16.0 * ns * k * c * kh * Ho,  # E and M products, re/im
            "dft": 8.0 * ns * Wo * k * Ho,  # the maps' row transforms
            "map": maps,
            "copy": 2.0 * ns * c * kh * Ho,  # Toeplitz matrix
            "image": 1.0,
        }
    raise ValueError(kind)


def _fused_cost(kind, image_shape, kernel_shape):
    """Modelled seconds per image of a fused path."""
    f = _fused_features(kind, image_shape, kernel_shape)
    return sum(v / _SPEED[name] for name, v in f.items())


def choose_method(n_channels, n_kernels, padded_shape, kernel_shape):
    """``"fft"`` (the row-DFT plan) or ``"im2col"``, whichever
    :func:`_fused_cost` models faster per image."""
    image = (1, n_channels) + tuple(padded_shape)
    kernels = (n_kernels, n_channels) + tuple(kernel_shape)
    fft = _fused_cost("rowdft", image, kernels)
    return "fft" if fft < _fused_cost("im2col", image, kernels) else "im2col"
