"""Per-patch normalisation and ZCA whitening of patches (``whiten=True``).

Coates, Lee & Ng (2011): each patch ``x_u`` (``D = c·kh·kw`` values, all
channels together) is normalised for brightness and contrast, then
whitened by a fixed linear map fitted once on a sample of patches::

    y_u = (x_u − mean(x_u)) / sqrt(var(x_u) + ε_n)      per patch
    z_u = W (y_u − m)                                   W = V (Λ + ε_z)^{-1/2} Vᵀ

``m`` (D,) is the mean and ``V Λ Vᵀ`` the covariance of the normalised
sample; ``W`` is symmetric.  With whitening the patch mixture
``Σ_k π_k N(μ_k, I)`` is over ``z_u``: the kernels live in whitened patch
space.  It is a linear map of the im2col patch matrix, applied where the
patches are built: :func:`whiten_columns` in ``_engines.Im2col.patches``
(any namespace), :func:`whiten_in_place` per chunk in the chunked
``_engines._plans.Im2colPlan``; the Fourier engines cannot apply it.

The constants are scale-free: ``ε_n`` is :data:`EPS_NORM_FRACTION` of the
sample's mean per-patch variance (≈ 10 for 0–255 Fashion-MNIST 7×7
patches, whose mean per-patch variance is ≈ 3800: the value Coates et al.
and the issue-12 research used), and normalised patches have unit scale,
so ``ε_z`` is an absolute :data:`EPS_ZCA`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ._xp import get_namespace, to_numpy

# ε_n as a fraction of the sample's mean per-patch variance.
EPS_NORM_FRACTION = 0.0025
# ε_z added to the eigenvalues of the normalised patches' covariance.
EPS_ZCA = 0.1
# Patches sampled to fit the whitening: WHITEN_SAMPLE_PER_DIM · D, at least
# WHITEN_SAMPLE_MIN, at most WHITEN_SAMPLE_MAX.
WHITEN_SAMPLE_PER_DIM = 20
WHITEN_SAMPLE_MIN = 20_000
WHITEN_SAMPLE_MAX = 200_000


class Whitening(NamedTuple):
    """A fitted whitening: ``z = matrix @ ((x − mean(x)) / sqrt(var(x) + eps) − mean)``.

    ``mean`` (D,) and ``matrix`` (D, D, symmetric) are arrays of any
    namespace (the model's work dtype); ``eps`` is ``ε_n``, a Python float.
    """

    mean: Any
    matrix: Any
    eps: float


def sample_size(n_dims):
    """Patches to sample for a ``n_dims``-dimensional covariance."""
    wanted = max(WHITEN_SAMPLE_PER_DIM * n_dims, WHITEN_SAMPLE_MIN)
    return min(wanted, WHITEN_SAMPLE_MAX)


def fit_whitening(patches, xp, dtype, device):
    """The :class:`Whitening` of ``patches`` (p, c, kh, kw), fitted on the host
    in float64 (``eigh``) and stored in ``dtype`` on ``device``."""
    P = to_numpy(patches).astype(np.float64).reshape(patches.shape[0], -1)
    P = P - P.mean(axis=1, keepdims=True)
    var = np.mean(P * P, axis=1, keepdims=True)
    eps = EPS_NORM_FRACTION * float(np.mean(var))
    if not eps > 0:  # constant patches only: any positive ε_n will do
        eps = 1.0
    Y = P / np.sqrt(var + eps)
    mean = Y.mean(axis=0)
    Y -= mean
    cov = (Y.T @ Y) / max(Y.shape[0] - 1, 1)
    _, _, W = zca(cov, EPS_ZCA, np)
    return Whitening(
        xp.asarray(mean, dtype=dtype, device=device),
        xp.asarray(W, dtype=dtype, device=device),
        eps,
    )


def zca(cov, eps, xp, device=None):
    """The one ZCA of calm_np: ``(λ, V, W)`` of a covariance ``cov`` (d, d).

    ``λ`` are its eigenvalues (ascending, clipped at 0), ``V`` its
    eigenvectors (columns) and ``W = V diag((λ + eps)^{-1/2}) Vᵀ``, made
    exactly symmetric.  On ``cov``'s namespace (``xp.linalg.eigh``); a
    namespace without the linalg extension decomposes on the host and moves
    the result back.  ``fit_whitening`` (patches, inside the model) and
    ``preprocessing.ZCAWhitening`` (a data set's images or patches) both
    call it.
    """
    if hasattr(xp, "linalg"):
        lam, V = xp.linalg.eigh(cov)
    else:
        lam, V = (
            xp.asarray(a, dtype=cov.dtype, device=device)
            for a in np.linalg.eigh(to_numpy(cov))
        )
    lam = xp.maximum(lam, xp.zeros_like(lam))
    W = (V / xp.sqrt(lam + eps)) @ V.T
    return lam, V, 0.5 * (W + W.T)  # exactly symmetric


def on_namespace(whitening, xp, dtype, device):
    """``whitening`` with its arrays in ``xp``, ``dtype`` on ``device``."""
    if whitening is None:
        return None
    mean, matrix, eps = whitening
    mean, matrix = (
        xp.asarray(a if _is_native(a, xp) else to_numpy(a), dtype=dtype, device=device)
        for a in (mean, matrix)
    )
    return Whitening(mean, matrix, float(eps))


def _is_native(a, xp):
    try:
        return get_namespace(a)[0] is xp
    except TypeError:
        return False


def _normalised(P, whitening, axis, xp):
    """``(x − x̄)/sqrt(var(x) + ε_n) − m`` of each patch along ``axis`` (−2
    for columns, −1 for rows)."""
    D = P.shape[axis]
    centred = P - xp.mean(P, axis=axis, keepdims=True)
    var = xp.sum(centred * centred, axis=axis, keepdims=True) / D
    mean = xp.reshape(whitening.mean, (D, 1) if axis == -2 else (1, D))
    return centred / xp.sqrt(var + whitening.eps) - mean


def whiten_columns(P, whitening, xp):
    """Whitened patch matrix: ``P`` (..., D, L), one patch per column.

    Returns a new array of the same shape (``P`` is not changed): every
    column normalised, the mean subtracted, then one GEMM with ``W``.
    """
    return xp.matmul(whitening.matrix, _normalised(P, whitening, -2, xp))


def whiten_in_place(P, whitening, out, kit):
    """:func:`whiten_columns` of ``P`` (D, L) into ``out`` (D, L) for the
    chunked passes (``kit``: their :class:`~calm_np._engines._kit.Kit`);
    ``P`` is overwritten.  ``W(y − m) = W y − W m`` with ``y`` the normalised
    columns: four passes over the patches and no allocation where the
    namespace takes ``out=`` (``tests/test_whiten.py`` keeps it equal to
    :func:`whiten_columns`)."""
    xp = kit.xp
    mean, W, eps = whitening
    P -= xp.mean(P, axis=0)
    var = column_sq_norms(P, kit) / P.shape[0]
    P *= 1.0 / xp.sqrt(var + eps)
    kit.matmul(W, P, out=out)
    out -= xp.matmul(W, mean)[:, None]
    return out


def column_sq_norms(P, kit):
    """``‖P[:, l]‖²`` of each column of ``P`` (D, L): NumPy's ``einsum``
    (no temporary), elsewhere a sum of squares."""
    if kit.strided:
        import numpy as np

        return np.einsum("dl,dl->l", P, P)
    return kit.xp.sum(P * P, axis=0)


def whiten_patches(patches, whitening, xp):
    """Whitened patches ``(p, c, kh, kw)`` of raw ones of the same shape
    (rows times ``W``, which is symmetric: contiguous rows for D² sampling)."""
    flat = xp.reshape(patches, (patches.shape[0], -1))
    Z = xp.matmul(_normalised(flat, whitening, -1, xp), whitening.matrix)
    return xp.reshape(Z, patches.shape)
