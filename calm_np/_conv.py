"""The two engines: the same two correlations, by im2col and by FFT.

Layout (the one layout of the package):

    images  Xp       (n, c, Hp, Wp)   already zero-padded
    kernels M        (k, c, kh, kw)
    maps    A, resp  (n, k, Ho, Wo)   Ho = Hp - kh + 1, Wo = Wp - kw + 1

An engine is built once per batch of images (it keeps what both EM steps
share: the patch matrix, or the images' spectra) and offers

    correlate(kernels)  -> (n, k, Ho, Wo)   (Xp ⋆ M)[n, k, u]            E-step
    weighted_sum(resp)  -> (k, c, kh, kw)   Σ_n Σ_u resp[n,k,u] · x_{n,u}  M-step
    statistics(kernels, log_weights, wide)
                        -> (N_k, S_k, log_norm)  one fused E- and M-step

so the EM code never needs to know which one it holds.  ``statistics`` is
the whole of an EM pass over the batch for ``latent="image"``: the generic
version chains the two correlations with a softmax in between; on NumPy it
runs the fused, chunked, threaded path at the end of this module, which
never holds more than a few images' maps at once.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading

from ._xp import irfft2, logsumexp, next_fast_len, rfft2, use_native


class _Engine:
    """What both engines share: the fused statistics of one EM pass."""

    def statistics(self, kernels, log_weights, wide):
        """``(N_k, S_k, log_norm)`` of the batch under ``kernels`` (E + M step).

        ``N_k`` (k,) and ``S_k`` (k, c, kh, kw) are in ``wide``;
        ``log_norm`` is ``logsumexp_{k,u} A`` per image, shape (n, 1, 1, 1),
        in the kernels' dtype (the same as ``_em``'s normaliser).
        """
        if use_native(self.xp) == "numpy" and self.n > 0:
            return _numpy_statistics(self, kernels, log_weights, wide)
        return _generic_statistics(self, kernels, log_weights, wide)


def _generic_statistics(engine, kernels, log_weights, wide):
    xp = engine.xp
    bias = -0.5 * xp.sum(kernels * kernels, axis=(1, 2, 3)) + log_weights
    A = engine.correlate(kernels) + bias[None, :, None, None]
    log_norm = logsumexp(A, axis=(1, 2, 3), keepdims=True)
    resp = xp.exp(A - log_norm)
    counts = xp.sum(xp.astype(xp.sum(resp, axis=(2, 3)), wide), axis=0)
    sums = xp.astype(engine.weighted_sum(resp), wide)
    return counts, sums, log_norm


class Im2col(_Engine):
    """Patch matrix ``P`` of shape ``(n, c·kh·kw, Ho·Wo)``; both steps are GEMMs.

    Memory is ``n·c·kh·kw·Ho·Wo`` elements: fast for small kernels.  The
    matrix is built on first use, so the fused NumPy :meth:`statistics`
    (which builds it a few images at a time) never holds it whole.
    """

    name = "im2col"

    def __init__(self, Xp, kernel_shape, xp):
        self.xp = xp
        self.Xp = Xp
        n, c, Hp, Wp = Xp.shape
        kh, kw = kernel_shape
        self.n, self.c, self.kh, self.kw = n, c, kh, kw
        self.Ho, self.Wo = Hp - kh + 1, Wp - kw + 1
        self._patches = None

    @property
    def patches(self):
        if self._patches is None:
            self._patches = _extract_patches(self.Xp, self.kh, self.kw, self.xp)
        return self._patches

    def correlate(self, kernels):
        xp = self.xp
        k = kernels.shape[0]
        M = xp.reshape(kernels, (k, self.c * self.kh * self.kw))
        A = xp.matmul(M, self.patches)  # (n, k, L): one GEMM per image
        return xp.reshape(A, (self.n, k, self.Ho, self.Wo))

    def weighted_sum(self, resp):
        xp = self.xp
        k = resp.shape[1]
        resp = _flush_tiny(resp, xp)
        R = xp.reshape(resp, (self.n, k, self.Ho * self.Wo))
        # Σ_n Σ_u R[n,k,u] P[n,d,u]: one GEMM over the (n, u) pairs
        S = xp.tensordot(R, self.patches, axes=((0, 2), (0, 2)))
        return xp.reshape(S, (k, self.c, self.kh, self.kw))


def _flush_tiny(resp, xp):
    """NumPy: probabilities below ``tiny / eps`` as exact zeros (a copy).

    Subnormal operands make NumPy's GEMM and FFT crawl (up to 100× on
    peaked posteriors, where most probabilities underflow); the change to
    the sums is below ``tiny / eps`` per entry.  Other namespaces: as is.
    """
    if use_native(xp) != "numpy":
        return resp
    import numpy as np

    return np.where(resp < math.exp(_flush_threshold(np, resp.dtype)), 0, resp)


def _extract_patches(Xp, kh, kw, xp):
    n, c, Hp, Wp = Xp.shape
    Ho, Wo = Hp - kh + 1, Wp - kw + 1
    native = use_native(xp)
    if native == "numpy":
        from numpy.lib.stride_tricks import sliding_window_view

        view = sliding_window_view(Xp, (kh, kw), axis=(2, 3))  # (n,c,Ho,Wo,kh,kw)
        view = view.transpose(0, 1, 4, 5, 2, 3)
        return xp.reshape(xp.asarray(view, copy=True), (n, c * kh * kw, Ho * Wo))
    if native == "torch":
        import torch  # already imported: the input is a torch tensor

        return torch.nn.functional.unfold(Xp, (kh, kw))
    # generic: one strided slice per kernel offset, stacked in (c, i, j) order
    slices = [Xp[:, :, i : i + Ho, j : j + Wo] for i in range(kh) for j in range(kw)]
    stacked = xp.stack(slices, axis=2)  # (n, c, kh*kw, Ho, Wo)
    return xp.reshape(stacked, (n, c * kh * kw, Ho * Wo))


def plan_shapes(image_shape, kernel_shape):
    """FFT size for both steps: the padded image size, rounded up to fast.

    A circular correlation of length ``F >= Hp`` equals the linear one on the
    ``Ho`` valid positions (E-step) and on the ``kh`` kernel offsets (M-step):
    ``u + v <= Hp - 1 < F`` never wraps.
    """
    (Hp, Wp), _ = image_shape, kernel_shape
    return next_fast_len(Hp), next_fast_len(Wp)


class FFT(_Engine):
    """Spectra of the padded images, shared by both steps.

    E-step: ``A = irfft2(Σ_c X̂_c · conj(M̂_c))`` cropped to ``Ho × Wo``.
    M-step: each image's posterior maps are its own filters (a grouped
    convolution); the sum over images happens in the frequency domain,
    ``Ŝ[k, c] = Σ_n conj(R̂[n, k]) · X̂[n, c]``, then one inverse transform
    cropped to ``kh × kw``.  The spectra are computed on first use (the fused
    NumPy :meth:`statistics` transforms a few images at a time instead).
    """

    name = "fft"

    def __init__(self, Xp, kernel_shape, xp):
        self.xp = xp
        self.Xp = Xp
        n, c, Hp, Wp = Xp.shape
        kh, kw = kernel_shape
        self.n, self.c, self.kh, self.kw = n, c, kh, kw
        self.Ho, self.Wo = Hp - kh + 1, Wp - kw + 1
        self.shape = plan_shapes((Hp, Wp), (kh, kw))
        self._X_f = None

    @property
    def X_f(self):
        if self._X_f is None:
            xp = self.xp
            X_f = rfft2(self.Xp, self.shape, xp=xp)  # (n, c, F1, F2r)
            # frequency-major copy: the products below are batched matmuls
            self._X_f = xp.permute_dims(X_f, (2, 3, 0, 1))  # (F1, F2r, n, c)
        return self._X_f

    def correlate(self, kernels):
        xp = self.xp
        M_f = xp.conj(rfft2(kernels, self.shape, xp=xp))  # (k, c, F1, F2r)
        M_f = xp.permute_dims(M_f, (2, 3, 1, 0))  # (F1, F2r, c, k)
        A_f = xp.matmul(self.X_f, M_f)  # Σ_c: (F1, F2r, n, k)
        A = irfft2(xp.permute_dims(A_f, (2, 3, 0, 1)), self.shape, xp=xp)
        return A[:, :, : self.Ho, : self.Wo]

    def weighted_sum(self, resp):
        xp = self.xp
        resp = _flush_tiny(resp, xp)
        R_f = xp.conj(rfft2(resp, self.shape, xp=xp))  # (n, k, F1, F2r)
        R_f = xp.permute_dims(R_f, (2, 3, 1, 0))  # (F1, F2r, k, n)
        S_f = xp.matmul(R_f, self.X_f)  # Σ_n: (F1, F2r, k, c)
        S = irfft2(xp.permute_dims(S_f, (2, 3, 0, 1)), self.shape, xp=xp)
        return S[:, :, : self.kh, : self.kw]


ENGINES = {"im2col": Im2col, "fft": FFT}

# Relative cost of one FFT flop to one GEMM flop; fitted by
# benchmarks/engine_choice.py on a grid of shapes (see the README).
FFT_FLOP_WEIGHT = 4.0


def cost(method, n_channels, n_kernels, padded_shape, kernel_shape):
    """Modelled cost per image of one E-step plus one M-step, in GEMM flops."""
    (Hp, Wp), (kh, kw) = padded_shape, kernel_shape
    c, k = n_channels, n_kernels
    L = (Hp - kh + 1) * (Wp - kw + 1)
    if method == "im2col":
        D = c * kh * kw
        return 4.0 * k * D * L + 2.0 * D * L  # two GEMMs + building P
    F1, F2 = plan_shapes((Hp, Wp), (kh, kw))
    F = F1 * F2
    Fr = F1 * (F2 // 2 + 1)
    transforms = (c + 2 * k) * 2.5 * F * math.log2(max(F, 2))
    products = 2 * 8.0 * k * c * Fr
    return FFT_FLOP_WEIGHT * (transforms + products)


def choose_method(xp, n_channels, n_kernels, padded_shape, kernel_shape):
    """The cheaper engine (im2col where there is no fft).

    On NumPy, by the calibrated model of the fused paths
    (:func:`_fused_cost`); elsewhere by the flop model :func:`cost`.
    """
    if not hasattr(xp, "fft"):
        return "im2col"
    if use_native(xp) == "numpy":
        image = (1, n_channels) + tuple(padded_shape)
        kernels = (n_kernels, n_channels) + tuple(kernel_shape)
        fft = _fused_cost("rowdft", image, kernels)
        return "fft" if fft < _fused_cost("im2col", image, kernels) else "im2col"
    args = (n_channels, n_kernels, padded_shape, kernel_shape)
    return "fft" if cost("fft", *args) < cost("im2col", *args) else "im2col"


# ---------------------------------------------------------------------------
# The fused NumPy path.
#
# One EM pass over a batch is E-step GEMM -> softmax -> M-step GEMM.  Done
# on whole-batch arrays (the generic path) it streams the (n, k, Ho, Wo) maps
# through memory about eight times; here each worker thread takes a chunk of
# a few images, keeps its maps in cache from the E-step to the M-step, and
# adds its share of the statistics to a private accumulator.  BLAS runs
# single-threaded inside (threadpoolctl, when installed): the threads
# already use every core, and OpenBLAS's own threads spin badly on a busy
# machine.  Two tricks keep passes few:
#   * the per-image normaliser 1/Z_n is applied to the chunk's (small)
#     image-side matrix, never to the (large) maps;
#   * the bias −½‖μ_k‖² + log π_k is added to the DC coefficient before the
#     inverse transform (FFT engine) instead of to every map entry.
# Probabilities below tiny/eps (1e-31 in float32) are flushed to 0 before
# the M-step GEMM: subnormal operands make it ~3× slower (up to 100× on
# peaked posteriors), and the change to S_k and N_k is below 1e-31 each.
#
# The FFT engine's fused path transforms along image *rows* only (length
# F = Wp, as real GEMMs with a DFT matrix) and sums over kernel rows
# directly: per frequency, one GEMM of the kernels' row spectra with a
# Toeplitz matrix of the images' row spectra.  For the MNIST setup this is
# ~3× fewer flops than im2col, for STL-10's ~5×, all of them in GEMMs.
# (A full 2-D FFT variant, with kernels in cache-sized groups, was never
# faster: pocketfft's 96×96 transforms and NumPy's elementwise complex
# products ran far below GEMM speed; see the README.)
# ---------------------------------------------------------------------------


def _n_threads():
    """Worker threads for the fused path: ``CALM_NP_NUM_THREADS`` or the CPUs."""
    env = os.environ.get("CALM_NP_NUM_THREADS", "")
    if env.strip():
        return max(1, int(env))
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


def _flush_threshold(np, dtype):
    """Log of the smallest probability kept: ``tiny / eps`` of the dtype.

    Smaller ones are set to exactly 0 before the M-step.  Kept ones times
    any factor above ``eps`` (DFT weights, pixels) stay normal numbers:
    subnormal GEMM operands cost ~3× the time.  The change to ``S_k`` and
    ``N_k`` is below ``tiny / eps`` (1e-31 in float32) per entry.
    """
    info = np.finfo(dtype)
    return math.log(float(info.tiny) / float(info.eps))


def _softmax_inplace(A3, np):
    """``A3`` (rows, m, cols) of log joints -> exp(A - max_n), in place.

    Returns the per-image max (m,), finite.  Probabilities below
    :func:`_flush_threshold` become exactly 0.
    """
    if A3.shape[1] == 1:
        mx = np.max(A3, keepdims=True).reshape(1)  # contiguous: fastest
    else:
        mx = A3.max(axis=0).max(axis=-1)
    mx = np.where(np.isfinite(mx), mx, 0).astype(A3.dtype)
    A3 -= mx[:, None]
    np.copyto(A3, -np.inf, where=A3 < _flush_threshold(np, A3.dtype))
    np.exp(A3, out=A3)
    return mx


def _numpy_statistics(engine, kernels, log_weights, wide):
    import numpy as np

    Xp = np.asarray(engine.Xp)
    M = np.asarray(kernels)
    dtype = M.dtype
    bias = -0.5 * np.sum(M * M, axis=(1, 2, 3), dtype=dtype) + np.asarray(log_weights)
    plan_cls = _RowDFT if engine.name == "fft" else _Im2colPlan
    plan = plan_cls(Xp.shape, M.shape, dtype)
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
    """Fused row-FFT correlation (see the comment block above).

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
