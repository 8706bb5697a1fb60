"""Array-API plumbing: the only module that imports ``array_api_compat``.

Everything here works on any namespace that follows the 2023.12 standard
(NumPy, CuPy, PyTorch through ``array_api_compat``, array-api-strict).  The
array-level native fast paths live here, as optional branches of one function
each (SciPy's FFT and strided patch copies for NumPy, ``unfold`` for torch,
subnormal flushing on NumPy); :func:`use_native` says which applies and
:func:`native_paths` switches them all off, so the tests keep them equal to
the generic code.  The one engine-level fast path (NumPy's fused EM pass) is
chosen in ``_engines``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading

import array_api_compat
from array_api_compat import (
    array_namespace,
    is_array_api_obj,
    is_numpy_namespace,
    is_torch_namespace,
)

__all__ = [
    "array_namespace",
    "device_of",
    "extract_patches",
    "flush_tiny",
    "flush_tiny_inplace",
    "get_namespace",
    "has_fft",
    "is_array_api_obj",
    "is_numpy_namespace",
    "is_torch_namespace",
    "logsumexp",
    "next_fast_len",
    "pad_zeros",
    "interval_sums",
    "box_sums",
    "piece_logsumexp",
    "memory_order",
    "inplace",
    "relu",
    "single_threaded_blas",
    "rfft2",
    "irfft2",
    "to_numpy",
    "native_paths",
    "use_native",
    "wide_float",
    "default_float",
]


def get_namespace(*arrays, xp=None):
    """Return ``(xp, device)`` for arrays that must share one namespace.

    ``None`` entries are ignored.  Arrays from different libraries raise a
    ``TypeError`` that says how to fix it.
    """
    arrays = [a for a in arrays if a is not None]
    if xp is None:
        try:
            xp = array_namespace(*arrays)
        except TypeError as exc:
            kinds = sorted({type(a).__module__.split(".")[0] for a in arrays})
            raise TypeError(
                "all arrays must come from one array library, got arrays from "
                f"{', '.join(kinds)}; convert them with one library's asarray"
            ) from exc
    device = device_of(arrays[0]) if arrays else None
    return xp, device


def device_of(x):
    """The device an array lives on (``array_api_compat.device``)."""
    return array_api_compat.device(x)


def to_numpy(x):
    """Copy an array of any supported namespace to host NumPy (tests, I/O)."""
    import numpy as np

    xp = array_namespace(x)
    if is_numpy_namespace(xp):
        return np.asarray(x)
    if is_torch_namespace(xp):
        return x.detach().cpu().numpy()
    if array_api_compat.is_cupy_namespace(xp):
        return x.get()
    # array-api-strict and others: move to the default (CPU) device first
    try:
        return np.from_dlpack(x)
    except (BufferError, RuntimeError, TypeError, ValueError):
        info = xp.__array_namespace_info__()
        return np.from_dlpack(x.to_device(info.default_device()))


def default_float(xp, device=None):
    """The namespace's default real floating dtype (torch: float32)."""
    try:
        return xp.__array_namespace_info__().default_dtypes(device=device)[
            "real floating"
        ]
    except (AttributeError, TypeError):  # pragma: no cover - pre-2023.12
        return xp.float64


def wide_float(xp, device=None):
    """float64 when the device supports it (accumulators), else float32."""
    try:
        dtypes = xp.__array_namespace_info__().dtypes(device=device)
        if "float64" in dtypes:
            return xp.float64
        return xp.float32  # pragma: no cover - e.g. Apple MPS
    except (AttributeError, TypeError):  # pragma: no cover
        return xp.float64


def logsumexp(x, /, *, axis=None, keepdims=False, xp=None):
    """Stable ``log(sum(exp(x)))`` over ``axis`` (int or tuple of ints).

    Rows that are entirely ``-inf`` give ``-inf`` (not NaN); ``+inf`` entries
    give ``+inf``.
    """
    xp = array_namespace(x) if xp is None else xp
    m = xp.max(x, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    out = xp.log(xp.sum(xp.exp(x - m), axis=axis, keepdims=True)) + m
    if not keepdims:
        out = xp.squeeze(out, axis=axis if axis is not None else tuple(range(x.ndim)))
    return out


def has_fft(xp) -> bool:
    return hasattr(xp, "fft")


def next_fast_len(n: int) -> int:
    """Smallest 2·3·5-smooth integer ``>= n`` (fast for every FFT library)."""
    if n <= 6:
        return n
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            # smallest power of two bringing p35 to >= n
            q = -(-n // p35)
            p2 = 1 << (q - 1).bit_length()
            best = min(best, p2 * p35)
            p35 *= 3
        p5 *= 5
    return best


_NATIVE = {"enabled": True}


@contextlib.contextmanager
def native_paths(enabled: bool):
    """Switch the native fast paths off (tests compare them with generic code)."""
    old = _NATIVE["enabled"]
    _NATIVE["enabled"] = bool(enabled)
    try:
        yield
    finally:
        _NATIVE["enabled"] = old


def native_enabled() -> bool:
    """Whether the fast paths are on (``native_paths``): the engines' chunked
    plans and the array-level native branches; off, every namespace runs the
    plain whole-batch reference code."""
    return _NATIVE["enabled"]


def use_native(xp) -> str | None:
    """Name of the native fast path for ``xp`` ('numpy', 'torch', 'cupy') or
    None."""
    if not _NATIVE["enabled"]:
        return None
    if is_numpy_namespace(xp):
        return "numpy"
    if is_torch_namespace(xp):
        return "torch"
    if array_api_compat.is_cupy_namespace(xp):
        return "cupy"
    return None


def _fft2(name, x, s, xp):
    """``xp.fft.<name>`` over the last two axes with size ``s``; SciPy's
    pocketfft, on all cores, for NumPy arrays (scipy's ``rfft2`` is
    ``rfftn`` on two axes)."""
    if use_native(xp) == "numpy":
        import scipy.fft  # a core dependency

        return getattr(scipy.fft, name)(x, s=s, axes=(-2, -1), workers=-1)
    return getattr(xp.fft, name)(x, s=s, axes=(-2, -1))


def rfft2(x, s, *, xp):
    """Real 2-D FFT over the last two axes, zero-padded to ``s``."""
    return _fft2("rfftn", x, s, xp)


def irfft2(x, s, *, xp):
    """Inverse of :func:`rfft2` to real arrays of spatial shape ``s``."""
    return _fft2("irfftn", x, s, xp)


def extract_patches(Xp, kh, kw, xp):
    """Patch matrix ``(n, c·kh·kw, Ho·Wo)`` of images ``Xp`` (n, c, Hp, Wp).

    Row ``(c, i, j)``, column ``(y, x)`` holds ``Xp[:, c, y + i, x + j]``.
    NumPy: one copy of a strided view; torch: ``unfold``; elsewhere one
    slice per kernel offset, stacked.
    """
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
    slices = [Xp[:, :, i : i + Ho, j : j + Wo] for i in range(kh) for j in range(kw)]
    stacked = xp.stack(slices, axis=2)  # (n, c, kh*kw, Ho, Wo)
    return xp.reshape(stacked, (n, c * kh * kw, Ho * Wo))


def pad_zeros(X, padding, xp):
    """``X`` (n, c, H, W) with ``padding = (ph, pw)`` zeros on each side."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return X
    n, c, H, W = X.shape
    kw = {"dtype": X.dtype, "device": device_of(X)}
    if pw:
        side = xp.zeros((n, c, H, pw), **kw)
        X = xp.concat([side, X, side], axis=3)
    if ph:
        top = xp.zeros((n, c, ph, W + 2 * pw), **kw)
        X = xp.concat([top, X, top], axis=2)
    return X


_BLAS = {"lock": threading.Lock(), "depth": 0, "limit": None, "controller": None}


@contextlib.contextmanager
def single_threaded_blas():
    """NumPy: limit BLAS to one thread while any caller is inside; yields
    success (threadpoolctl installed).

    The fused pass runs one BLAS call per worker thread; small or skinny
    GEMMs (cell and window sums) run far faster on one thread than on
    OpenBLAS's spinning pool on a busy machine.

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


def _intervals(L, bounds, like, xp):
    """``(L, g)`` 0/1 matrix: position ``u`` lies in ``[start_i, stop_i)``."""
    device = device_of(like)
    u = xp.reshape(xp.arange(L, device=device), (L, 1))
    lo, hi = (xp.asarray(v, device=device) for v in zip(*bounds, strict=True))
    return xp.astype((u >= lo) & (u < hi), like.dtype)


def interval_sums(Y, rows, cols, xp):
    """Sums of ``Y (…, H, W)`` over boxes ``rows[i] × cols[j]`` -> (…, gh, gw).

    ``rows``/``cols`` are lists of ``(start, stop)`` along H/W (they may
    overlap or reach outside ``[0, H)``: out-of-range positions count as
    zeros).  Two 2-D GEMMs with 0/1 matrices, one read of ``Y``, on any
    namespace: pooling cells, and the window sums of patch norms.
    """
    if use_native(xp) == "numpy":
        with single_threaded_blas():
            return _interval_sums(Y, rows, cols, xp)
    return _interval_sums(Y, rows, cols, xp)


def _interval_sums(Y, rows, cols, xp):
    *lead, H, W = Y.shape
    B = math.prod(lead)
    gh, gw = len(rows), len(cols)
    S = xp.reshape(Y, (B * H, W)) @ _intervals(W, cols, Y, xp)
    S = xp.permute_dims(xp.reshape(S, (B, H, gw)), (0, 2, 1))
    S = xp.reshape(S, (B * gw, H)) @ _intervals(H, rows, Y, xp)
    nd = len(lead)
    return xp.permute_dims(xp.reshape(S, (*lead, gw, gh)), (*range(nd), nd + 1, nd))


def box_sums(Y, boxes, xp):
    """Sums of ``Y (…, H, W)`` over boxes ``(y0, y1, x0, x1)`` -> (…, n_boxes).

    One GEMM of ``Y``'s ``H·W`` positions with a 0/1 matrix, one read of
    ``Y``: every cell of every grid of a pooling pyramid at once.  NumPy:
    ``Y`` may be a transposed view (the fused readout's maps); the GEMM runs
    in its memory order, without a copy, when ``H, W`` are its last axes
    in memory, or one GEMM per outer index with the 0/1 matrix first when
    ``H, W`` are outside other axes (:func:`_positions_view`).
    """
    *lead, H, W = Y.shape
    if list(boxes) == [(0, H, 0, W)]:  # the whole map: no GEMM needed
        return xp.sum(Y, axis=(-2, -1))[..., None]
    if use_native(xp) == "numpy":
        import numpy as np

        order = [int(a) for a in np.argsort([-s for s in Y.strides], kind="stable")]
        hw = sorted(order[-2:]) == [Y.ndim - 2, Y.ndim - 1]
        if hw and Y.transpose(order).flags.c_contiguous:
            Yp = Y.transpose(order)
            w_major = order[-1] == Y.ndim - 2
            # columns padded to a multiple of 8: OpenBLAS's fast kernels
            # (13 cells take 1.4x the time of 16)
            padded = (*boxes, *[(0, 0, 0, 0)] * (-len(boxes) % 8))
            C = _box_matrix(H, W, padded, Y.dtype.str, w_major)
            with single_threaded_blas():
                S = (Yp.reshape(-1, H * W) @ C)[:, : len(boxes)]
            S = S.reshape(*Yp.shape[:-2], len(boxes))
            return S.transpose([*np.argsort(order[:-2]), Y.ndim - 2])
        view = _positions_view(Y)
        if view is not None:  # positions outside other axes (the fused readout's)
            C = _box_matrix(H, W, tuple(boxes), Y.dtype.str)
            with single_threaded_blas():
                S = np.matmul(C.T, view[0].reshape(view[0].shape[0], H * W, -1))
            return _from_positions(S, view, (len(boxes),))
    C = _box_matrix(H, W, tuple(boxes), "<f8").copy()  # writable: torch
    C = xp.asarray(C, dtype=Y.dtype, device=device_of(Y))
    # the lead axes kept apart: merging only H and W is a view of maps laid
    # out positions-outermost too (the chunked readouts'), and the batched
    # GEMM takes their strides without a copy
    return xp.matmul(xp.reshape(Y, (*lead, H * W)), C)


def piece_logsumexp(Y, rows, cols, xp):
    """``(S, M)`` (…, len(rows), len(cols)) over the boxes ``rows × cols``
    of ``Y (…, H, W)`` (``(start, stop)`` lists that partition H and W):
    ``M`` each box's maximum (``-inf`` for a box of ``-inf``), ``S`` the sum
    of ``exp(Y − M)`` over it (``M`` read as 0 where not finite); ``Y`` is
    overwritten.  Generic: slices of ``Y``.  NumPy:
    :func:`_piece_logsumexp_numpy`, in ``Y``'s memory order.
    """
    *lead, H, W = Y.shape
    boxes = [(y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols]
    shape = (*lead, len(rows), len(cols))
    if len(boxes) == 1:  # the whole map: a contiguous run in any layout
        M = xp.max(Y, axis=(-2, -1), keepdims=True)
        Y -= xp.where(xp.isfinite(M), M, xp.zeros_like(M))
        S = xp.sum(inplace("exp", Y, xp), axis=(-2, -1), keepdims=True)
        return S, M
    if use_native(xp) == "numpy" and Y.ndim > 2:
        return _piece_logsumexp_numpy(Y, rows, cols)
    R = xp.stack([xp.max(Y[..., y0:y1, :], axis=-2) for y0, y1 in rows], axis=-2)
    M = xp.stack([xp.max(R[..., x0:x1], axis=-1) for x0, x1 in cols], axis=-1)
    shift = xp.where(xp.isfinite(M), M, xp.zeros_like(M))
    for i, (y0, y1) in enumerate(rows):
        for j, (x0, x1) in enumerate(cols):
            Y[..., y0:y1, x0:x1] -= shift[..., i, j, None, None]
    S = box_sums(inplace("exp", Y, xp), boxes, xp)
    return xp.reshape(S, shape), M


def _piece_logsumexp_numpy(Y, rows, cols):
    """NumPy's :func:`piece_logsumexp` on ``Y`` as (O, H, W, I)
    (:func:`_positions_view`; a copy with the positions outermost, O = 1,
    where ``Y``'s inner axis in memory is W): each box a run of long
    contiguous rows of ``I`` values (a box of a map is many short runs)."""
    import numpy as np

    *lead, H, W = Y.shape
    view = _positions_view(Y)
    if view is None or view[0].shape[3] == 1:
        P = np.empty((H, W, math.prod(lead)), dtype=Y.dtype)
        P.reshape(H, W, *lead)[...] = np.moveaxis(Y, (-2, -1), (0, 1))
        view = P[None], [Y.ndim - 2, Y.ndim - 1, *range(Y.ndim - 2)], 0, tuple(lead)
    P = view[0]
    boxes = [(y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols]
    M = np.stack([P[:, y0:y1, x0:x1].max(axis=(1, 2)) for y0, y1, x0, x1 in boxes], 1)
    shift = np.where(np.isfinite(M), M, 0).astype(Y.dtype)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        P[:, y0:y1, x0:x1] -= shift[:, i, None, None]
    C = _box_matrix(H, W, tuple(boxes), Y.dtype.str)
    with single_threaded_blas():
        S = np.matmul(C.T, np.exp(P, out=P).reshape(P.shape[0], H * W, -1))
    extra = (len(rows), len(cols))
    return _from_positions(S, view, extra), _from_positions(M, view, extra)


def _positions_view(Y):
    """NumPy ``Y (…, H, W)`` as a (O, H, W, I) view in memory order (the lead
    axes outside and inside the positions, each group flattened), with the
    memory order, the place of H in it and the lead axes' sizes in that
    order; None where that is no view."""
    import numpy as np

    nd = Y.ndim
    order = [int(a) for a in np.argsort([-s for s in Y.strides], kind="stable")]
    i = order.index(nd - 2)
    if i + 1 == nd or order[i + 1] != nd - 1:
        return None
    Ym = Y.transpose(order)
    if not Ym.flags.c_contiguous:
        return None
    shape = (*Ym.shape[:i], *Ym.shape[i + 2 :])
    O, I = math.prod(shape[:i]), math.prod(shape[i:])
    return Ym.reshape(O, *Y.shape[-2:], I), order, i, shape


def _from_positions(R, view, extra):
    """Results ``R (O, *extra, I)`` per box of a :func:`_positions_view` back
    in ``Y``'s lead axes: ``(…, *extra)``."""
    _, order, i, shape = view
    lead = [a for a in order if a < len(order) - 2]  # in memory order
    R = R.reshape(*shape[:i], *extra, *shape[i:])
    ne = len(extra)
    place = [j if j < i else j + ne for j in range(len(lead))]
    perm = [place[lead.index(a)] for a in range(len(lead))]
    return R.transpose([*perm, *range(i, i + ne)])


@functools.lru_cache(maxsize=32)
def _box_matrix(H, W, boxes, dtype, w_major=False):
    """``(H·W, n_boxes)`` NumPy 0/1 matrix of :func:`box_sums` (rows in
    ``(y, x)`` order, or ``(x, y)`` with ``w_major``)."""
    import numpy as np

    C = np.zeros((H, W, len(boxes)), dtype=dtype)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        C[max(y0, 0) : y1, max(x0, 0) : x1, i] = 1
    C = np.ascontiguousarray(C.transpose(1, 0, 2) if w_major else C)
    C = C.reshape(H * W, len(boxes))
    C.flags.writeable = False
    return C


def log_or_minus_inf(a, xp):
    """``log(a)`` of non-negative ``a``, ``-inf`` where ``a`` is 0, without
    NumPy's divide-by-zero warning (mixture weights of dead kernels)."""
    positive = a > 0
    return xp.where(
        positive,
        xp.log(xp.where(positive, a, xp.ones_like(a))),
        xp.full_like(a, -math.inf),
    )


def relu(x, xp):
    """``max(x, 0)``: in place on NumPy, CuPy and PyTorch (``x`` is
    scratch), a new array elsewhere.  NumPy's ``maximum`` with a scalar runs
    ~4× slower than with an array, so ``x`` (a view in any axis order) is
    compared in memory order with a small block of zeros."""
    if use_native(xp) == "numpy":
        import numpy as np

        flat = memory_order(x)
        if not flat.flags.c_contiguous:
            return np.maximum(x, 0, out=x)
        flat = flat.reshape(-1)
        zeros = _zeros(4096, x.dtype.str)
        q = flat.shape[0] // 4096 * 4096
        body = flat[:q].reshape(-1, 4096)
        np.maximum(body, zeros, out=body)
        np.maximum(flat[q:], zeros[: flat.shape[0] - q], out=flat[q:])
        return x
    native = use_native(xp)
    if native == "torch":
        import torch

        return torch.clamp(x, min=0, out=x)
    if native == "cupy":
        import cupy

        return cupy.maximum(x, 0, out=x)
    return xp.where(x > 0, x, xp.zeros_like(x))


def out_module(xp):
    """The library module of ``xp`` whose functions take ``out=`` (NumPy,
    CuPy, PyTorch), while native paths are on; else None."""
    native = use_native(xp)
    if native == "numpy":
        import numpy

        return numpy
    if native == "torch":
        import torch

        return torch
    if native == "cupy":
        import cupy

        return cupy
    return None


def inplace(name, x, xp):
    """The elementwise function ``xp.<name>`` of ``x``: into ``x`` where the
    namespace takes ``out=`` (``x`` is scratch; no new maps per chunk), a
    new array elsewhere."""
    raw = out_module(xp)
    if raw is not None:
        return getattr(raw, name)(x, out=x)
    return getattr(xp, name)(x)


def rsub(a, x, xp):
    """``a − x`` (``a`` broadcast to ``x``): into ``x`` where the namespace
    takes ``out=`` (``x`` is scratch), a new array elsewhere."""
    raw = out_module(xp)
    if raw is not None:
        return raw.subtract(a, x, out=x)
    return a - x


def memory_order(x):
    """NumPy: ``x`` with its axes permuted into memory order (a view; C
    contiguous when ``x`` is a transposed contiguous array)."""
    import numpy as np

    order = np.argsort([-s for s in x.strides], kind="stable")
    return x.transpose(order)


@functools.lru_cache(maxsize=8)
def _zeros(size, dtype):
    import numpy as np

    zeros = np.zeros(size, dtype=dtype)
    zeros.flags.writeable = False
    return zeros


def flush_tiny_inplace(E, xp):
    """Probabilities ``E`` rounded to multiples of ``tiny / eps`` near 0, in
    place (any namespace): ``(E + T) − T`` with ``T = tiny / eps²`` (2⁻⁸⁰ in
    float32).

    Those below ``tiny / (2 eps)`` (5e-32 in float32) become exactly 0 and
    every other one is at least ``tiny / eps``, so kept ones times any factor
    above ``eps`` (DFT weights, pixels, 1/Z) stay normal numbers: subnormal
    GEMM operands cost a CPU ~3× the time (up to 100× on peaked posteriors).
    Each probability moves by at most ``tiny / eps`` (1e-31 in float32), or
    by a unit in its last place when above ``T``; from ``4 T / eps``
    (2.8e-17 in float32) up it is unchanged (below that, ``T`` can be half a
    unit in the last place, a tie that rounds to even).  Two scalar passes
    without branches: the masked copy it replaced took up to 4× longer on a
    trained model's maps, where a few percent of the probabilities are
    flushed.
    """
    info = xp.finfo(E.dtype)
    T = float(info.smallest_normal) / (float(info.eps) * float(info.eps))
    E += T
    E -= T
    return E


def flush_tiny(resp, xp):
    """NumPy: :func:`flush_tiny_inplace` of a copy of ``resp``, which keeps
    NumPy's GEMM and FFT off subnormals.  Other namespaces: ``resp`` as is."""
    if use_native(xp) != "numpy":
        return resp
    import numpy as np

    return flush_tiny_inplace(np.array(resp, copy=True), np)


LOG_2PI = math.log(2.0 * math.pi)
