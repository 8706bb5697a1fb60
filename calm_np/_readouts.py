"""Readouts: features and scores of images under given kernels (no estimator needed).

A fitted model is read out per batch of images from the log joint
``A[n, k, u]`` (``_em.log_joint``), pooled over a grid of cells of positions:

    features="log_joint"      logsumexp_u A[k, u] over the cell
    features="log_posterior"  log of the posterior mass of (kernel k, cell)
    features="posterior"      that mass
    features="sqrt_posterior" its square root (soft counts' variance stabilised)
    features="triangle"       Coates et al.'s triangle activation, summed

:func:`pooled_features` does this for any ``X, kernels, log_weights``, a
few images' maps at a time where the engine can (``Engine.readout``, and
``Engine.distances`` for the triangle: NumPy's fused E-step, chunked and
threaded, ``_fused_readout``), so memory stays bounded by the batch;
:func:`bind` fixes fitted kernels and weights into a picklable per-batch
function, which is what ``ConvolutionalMixture.transform`` and
``score_samples`` hand to their ``ImageSource`` (a loop over batches, or a
lazy Dask map).
"""

from __future__ import annotations

import functools
import math

from . import _checks
from ._checks import FEATURES
from ._em import Options, _Batch, batch_log_likelihood
from ._engines import LATENT_AXES
from ._xp import (
    box_sums,
    get_namespace,
    inplace,
    log_or_minus_inf,
    logsumexp,
    piece_logsumexp,
    relu,
    rsub,
)

__all__ = ["FEATURES", "bind", "bind_model", "pooled_features"]


def pooled_features(
    X,
    kernels,
    *,
    log_weights=None,
    padding=0,
    method="auto",
    latent="image",
    features="log_joint",
    pooling=1,
    variance=1.0,
    whitening=None,
):
    """Pooled posterior features ``(n_samples, n_kernels * n_cells)``.

    Parameters are those of :func:`calm_np.log_joint` (``variance`` and
    ``whitening`` included), plus ``features`` (one of ``FEATURES``) and
    ``pooling`` (an int, a pair or a pyramid of them, as for
    ``ConvolutionalMixture``: every grid's features from one E-step,
    concatenated in order).  ``latent`` sets what the posterior is
    normalised over.  The log-joint and posterior features use the log joint
    at ``variance`` (σ², docs/user_guide/model.rst §2); the triangle's
    distances do not depend on it.
    """
    options = Options(padding, method, latent, variance, whitening)
    batch = _Batch(X, kernels, log_weights, options)
    return features_of(batch, features, pooling)


def trusted_features(X, kernels, *, log_weights, features, pooling, **options):
    """:func:`pooled_features` of a fitted model's batch whose images were
    validated where they entered (``_data.ImageSource``): nothing is read
    back from the device (``_em._Batch(trusted=True)``)."""
    batch = _Batch(X, kernels, log_weights, Options(**options), trusted=True)
    return features_of(batch, features, pooling)


def trusted_log_likelihood(X, kernels, *, log_weights, **options):
    """:func:`calm_np.log_likelihood` of a trusted batch (as
    :func:`trusted_features`)."""
    batch = _Batch(X, kernels, log_weights, Options(**options), trusted=True)
    return batch_log_likelihood(batch)


def features_of(batch, features, pooling):
    """The pooled features of a ``_Batch`` (:func:`pooled_features`)."""
    grids = _checks.check_pooling(pooling)
    xp, latent = batch.xp, batch.latent
    if features == "triangle":
        return _pooled_triangle(batch, grids)

    def read(A, start, stop):
        if features == "log_joint":
            return pool(A, grids, xp)
        if features in ("posterior", "sqrt_posterior"):
            mass = posterior_mass(A, grids, LATENT_AXES[latent], xp)
            return mass if features == "posterior" else xp.sqrt(mass)
        # the log of that mass under the latent, a logsumexp per cell
        if latent == "patch":
            A -= batch.log_normalizer(A)
            return pool(A, grids, xp)
        # latent="image": the normaliser is the logsumexp of a grid's cells
        blocks = _blocks(pool(A, grids, xp), grids, xp)
        blocks = [b - logsumexp(b, axis=1, keepdims=True) for b in blocks]
        return blocks[0] if len(blocks) == 1 else xp.concat(blocks, axis=1)

    # maps laid out for boxes of positions, unless the work is over kernels
    # (the patch latent's normalisers) or whole maps (one cell)
    by_position = latent == "image" and grids != ((1, 1),)
    args = (batch.kernels, batch.log_weights, read, batch.scale, by_position)
    return batch.engine.readout(*args)


def _pooled_triangle(batch, grids):
    """:func:`pooled_features` for ``features="triangle"``."""
    return triangle_maps(batch, lambda act: pool(act, grids, batch.xp, reduce="sum"))


def triangle_maps(batch, reduce=None):
    """The triangle activation ``(n, k, Ho, Wo)`` of a ``_Batch``, or
    ``reduce`` of it, a chunk of images at a time: from the squared
    distances (``Engine.distances``); the weights do not matter."""
    xp = batch.xp

    def read(D, start, stop):
        act = triangle_of_distances(D, xp)  # D is the chunk's scratch
        return xp.asarray(act, copy=True) if reduce is None else reduce(act)

    return batch.engine.distances(batch.kernels, read, batch.patch_sq_norms)


def bind(func, kernels, weights, **options):
    """``func(batch, kernels, log_weights=..., **options)`` as a one-argument function.

    ``kernels`` and ``weights`` (fitted, any namespace) are converted to each
    batch's namespace, device and floating dtype when it is read, so the
    result works on NumPy batches and on Dask chunks of any array type.  The
    arrays are captured now: a later refit does not change a lazy result.
    """
    return functools.partial(_apply_bound, func, kernels, weights, options)


def bind_model(func, model, **options):
    """:func:`bind` with a fitted model's kernels, weights, padding, method,
    latent, σ² (``variance_``; 1 for a model that has none) and whitening
    (``whitening_``; none for a model that has none)."""
    fitted = dict(padding=model.padding_, method=model.method, latent=model.latent)
    fitted["variance"] = float(getattr(model, "variance_", 1.0))
    fitted["whitening"] = getattr(model, "whitening_", None)
    options = {**fitted, **options}
    return bind(func, model.kernels_, model.weights_, **options)


def _apply_bound(func, kernels, weights, options, batch):
    xp, device = get_namespace(batch)
    dtype = _checks.float_dtype(xp, [(batch, "X")], device)
    kernels = xp.asarray(kernels, dtype=dtype, device=device)
    weights = xp.asarray(weights, dtype=dtype, device=device)
    return func(batch, kernels, log_weights=log_or_minus_inf(weights, xp), **options)


def posterior_mass(A, grids, axes, xp):
    """Posterior mass of each kernel and cell, the posterior normalised over
    ``axes`` of the log joint ``A`` (overwritten): sums of ``exp(A − max)``
    per cell, divided by their total (per image) or, for ``axes=(1,)``
    (``latent="patch"``), each position's softmax over the kernels summed.
    """
    top = xp.max(A, axis=axes, keepdims=True)
    A -= xp.where(xp.isfinite(top), top, xp.zeros_like(top))
    E = inplace("exp", A, xp)
    Z = xp.sum(E, axis=axes, keepdims=True)  # >= 1: the largest term is 1
    if axes == (1,):
        E /= Z
        return pool(E, grids, xp, reduce="sum")
    return pool(E, grids, xp, reduce="sum") / xp.reshape(Z, (-1, 1))


def triangle_of_distances(D, xp):
    """Triangle activation of the squared distances ``D[n, k, u] = ‖x_u − μ_k‖²``
    (n, k, Ho, Wo), overwritten: ``max(0, mean_j z_j − z_k)`` with
    ``z = sqrt(max(D, 0))``.

    Coates, Lee & Ng (2011) use it on k-means centroids: a kernel is active
    where the patch is closer to it than to the average kernel, which makes
    the code sparse and competitive across kernels.
    """
    dist = inplace("sqrt", relu(D, xp), xp)
    act = rsub(xp.mean(dist, axis=1, keepdims=True), dist, xp)  # mean_j z_j − z_k
    return relu(act, xp)


@functools.lru_cache(maxsize=64)
def _edges(L, g):
    """Cell ``i`` of ``g`` along an axis of ``L`` positions: ``[start, stop)``."""
    starts = [min(i * L // g, L - 1) for i in range(g)]
    return [(a, max((i + 1) * L // g, a + 1)) for i, a in enumerate(starts)]


@functools.lru_cache(maxsize=64)
def _pieces(L, grids, axis):
    """The cells' edges along ``axis`` of every grid, merged: the pieces
    ``[start, stop)`` each cell is a run of, and per grid its cells as
    ``(first piece, last piece + 1)``."""
    cells = [_edges(L, grid[axis]) for grid in grids]
    cuts = sorted({e for cs in cells for cell in cs for e in cell})
    pieces = list(zip(cuts[:-1], cuts[1:], strict=True))
    index = {a: i for i, (a, _) in enumerate(pieces)}
    runs = [
        [(index[a], index[a] + sum(a <= p < b for p, _ in pieces)) for a, b in cs]
        for cs in cells
    ]
    return pieces, runs


def pool(A, grids, xp, reduce="logsumexp"):
    """logsumexp (or, ``reduce="sum"``, the sum) of ``A (n, k, Ho, Wo)`` over
    the cells of each grid → (n, k·Σ gh·gw), grid after grid; ``A`` is
    overwritten.  ``grids``: a ``pooling`` value (a pair, or a pyramid).

    Cell ``i`` of ``g`` along an axis of ``L`` positions spans
    ``[i·L // g, max((i+1)·L // g, i·L // g + 1))``: every cell holds at least
    one position, so the feature count never depends on the image size.
    Sums are one GEMM over all cells (``box_sums``).  A logsumexp shifts
    each *piece* (the boxes the cell edges of all grids cut the map into) by
    its own maximum, sums the exponentials by one GEMM
    (``piece_logsumexp``), and combines the pieces of each cell: one pass
    over ``A`` for every grid of a pyramid.
    """
    grids = _grids(grids)
    n, k, Ho, Wo = A.shape
    if reduce == "sum":
        boxes = [
            (y0, y1, x0, x1)
            for gh, gw in grids
            for y0, y1 in _edges(Ho, gh)
            for x0, x1 in _edges(Wo, gw)
        ]
        return _flat(box_sums(A, boxes, xp), grids, xp)
    rows, row_runs = _pieces(Ho, grids, 0)
    cols, col_runs = _pieces(Wo, grids, 1)
    S, M = piece_logsumexp(A, rows, cols, xp)
    if [(len(rows), len(cols))] == list(grids):  # the cells are the pieces
        return xp.reshape(_log_pieces(S, M, xp), (n, -1))
    out = []
    for g in range(len(grids)):
        for r0, r1 in row_runs[g]:
            for c0, c1 in col_runs[g]:
                out.append(_combine(S[:, :, r0:r1, c0:c1], M[:, :, r0:r1, c0:c1], xp))
    return _flat(xp.stack(out, axis=2), grids, xp)


_checked_grids = functools.lru_cache(maxsize=64, typed=True)(_checks.check_pooling)


def _grids(pooling):
    """``_checks.check_pooling``, remembered for hashable values (:func:`pool`
    runs once per chunk of images)."""
    try:
        return _checked_grids(pooling)
    except TypeError:  # unhashable (a list), or invalid: check_pooling says
        return _checks.check_pooling(pooling)


def _combine(S, M, xp):
    """logsumexp of a cell from its pieces' sums ``S`` and maxima ``M``
    (n, k, rows, cols): ``log Σ S·exp(M − max M) + max M``; ``-inf`` for a
    dead kernel (all ``M = -inf``), without a warning."""
    if S.shape[2] * S.shape[3] > 1:
        top = xp.max(M, axis=(2, 3), keepdims=True)
        top = xp.where(xp.isfinite(top), top, xp.zeros_like(top))
        S = xp.sum(S * xp.exp(M - top), axis=(2, 3))
        return _log_pieces(S, top[:, :, 0, 0], xp)
    return _log_pieces(S[:, :, 0, 0], M[:, :, 0, 0], xp)


def _log_pieces(S, M, xp):
    """``log S + M`` elementwise (one-piece cells), ``M`` read as 0 where not
    finite and ``-inf`` where ``S = 0``, without a warning."""
    M = xp.where(xp.isfinite(M), M, xp.zeros_like(M))
    positive = S > 0
    log_S = xp.log(xp.where(positive, S, xp.ones_like(S)))
    return xp.where(positive, log_S, xp.full_like(S, -math.inf)) + M


def _flat(S, grids, xp):
    """``(n, k, Σ cells)`` → ``(n, k·Σ cells)``, grid after grid."""
    n, k, _ = S.shape
    blocks, start = [], 0
    for gh, gw in grids:
        stop = start + gh * gw
        blocks.append(xp.reshape(S[:, :, start:stop], (n, k * gh * gw)))
        start = stop
    return blocks[0] if len(blocks) == 1 else xp.concat(blocks, axis=1)


def _blocks(F, grids, xp):
    """The per-grid column blocks of pooled features ``F (n, k·Σ cells)``."""
    k = F.shape[1] // _checks.n_cells(grids)
    blocks, start = [], 0
    for gh, gw in grids:
        blocks.append(F[:, start : start + k * gh * gw])
        start += k * gh * gw
    return blocks
