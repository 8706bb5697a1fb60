"""Readouts: features and scores of images under given kernels (no estimator needed).

A fitted model is read out per batch of images from the log joint
``A[n, k, u]`` (``_em.log_joint``), pooled over a grid of cells of positions:

    features="log_joint"      logsumexp_u A[k, u] over the cell
    features="log_posterior"  log of the posterior mass of (kernel k, cell)
    features="posterior"      that mass
    features="triangle"       Coates et al.'s triangle activation, summed

:func:`pooled_features` does this for any ``X, kernels, log_weights``;
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
from ._em import _Batch, log_joint
from ._xp import get_namespace, logsumexp

__all__ = ["FEATURES", "bind", "pooled_features"]


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
):
    """Pooled posterior features ``(n_samples, n_kernels * ph * pw)``.

    Parameters are those of :func:`calm_np.log_joint`, plus ``features``
    (one of ``FEATURES``) and ``pooling`` (an int or a pair: the grid of
    cells).  ``latent`` sets what the posterior is normalised over.
    """
    xp = get_namespace(X)[0]
    A = log_joint(X, kernels, log_weights=log_weights, padding=padding, method=method)
    grid = _checks.check_padding(pooling)
    if features == "log_joint":
        return pool(A, grid, xp)
    if features == "triangle":
        act = triangle(X, A, kernels, log_weights, padding, method, xp)
        return pool(act, grid, xp, reduce=xp.sum)
    # log of the posterior mass in each (kernel, cell) under the latent
    axes = (1, 2, 3) if latent == "image" else (1,)
    log_post = pool(A - logsumexp(A, axis=axes, keepdims=True), grid, xp)
    return log_post if features == "log_posterior" else xp.exp(log_post)


def bind(func, kernels, weights, **options):
    """``func(batch, kernels, log_weights=..., **options)`` as a one-argument function.

    ``kernels`` and ``weights`` (fitted, any namespace) are converted to each
    batch's namespace, device and floating dtype when it is read, so the
    result works on NumPy batches and on Dask chunks of any array type.  The
    arrays are captured now: a later refit does not change a lazy result.
    """
    return functools.partial(_apply_bound, func, kernels, weights, options)


def _apply_bound(func, kernels, weights, options, batch):
    xp, device = get_namespace(batch)
    dtype = _checks.float_dtype(xp, [(batch, "X")], device)
    kernels = xp.asarray(kernels, dtype=dtype, device=device)
    weights = xp.asarray(weights, dtype=dtype, device=device)
    positive = weights > 0
    # log 0 = -inf without a divide-by-zero warning
    log_w = xp.where(
        positive,
        xp.log(xp.where(positive, weights, xp.ones_like(weights))),
        xp.full_like(weights, -math.inf),
    )
    return func(batch, kernels, log_weights=log_w, **options)


def triangle(X, A, kernels, log_w, padding, method, xp):
    """Triangle activation ``max(0, mean_j z[j,u] − z[k,u])``, ``(n, k, Ho, Wo)``.

    ``z[k, u] = ‖x_u − μ_k‖`` comes from the log joint,
    ``‖x_u − μ_k‖² = ‖x_u‖² − 2 (A[k, u] − log π_k)``, with the patch norms
    ``‖x_u‖²`` from an integral image of ``X²`` (as for ``latent="patch"``).
    A kernel of weight 0 (``log π_k = -inf``) keeps its finite distance.
    Coates, Lee & Ng (2011) use it on k-means centroids: a
    kernel is active where the patch is closer to it than to the average
    kernel, which makes the code sparse and competitive across kernels.
    """
    batch = _Batch(X, kernels, log_w, padding, method)
    log_w = batch.log_weights
    finite = xp.isfinite(log_w)
    if not bool(xp.all(finite)):
        # a zero weight makes A = -inf: recompute A with log π_k = 0 there
        # (the distances do not depend on the weights)
        log_w = xp.where(finite, log_w, xp.zeros_like(log_w))
        batch.log_weights = log_w
        A = batch.log_joint()
    sq_norms = batch.patch_sq_norms()[:, None, ...]
    dist2 = sq_norms - 2.0 * (A - xp.reshape(log_w, (1, -1, 1, 1)))
    dist = xp.sqrt(xp.maximum(dist2, xp.zeros_like(dist2)))
    act = xp.mean(dist, axis=1, keepdims=True) - dist
    return xp.maximum(act, xp.zeros_like(act))


def pool(A, grid, xp, reduce=None):
    """logsumexp of ``A (n, k, Ho, Wo)`` over a grid of cells → (n, k·gh·gw).

    ``reduce(a, axis=(2, 3))`` replaces the logsumexp when given (the sum
    for ``features="triangle"``).

    Cell ``i`` of ``g`` along an axis of ``L`` positions spans
    ``[i·L // g, max((i+1)·L // g, i·L // g + 1))``: every cell holds at least
    one position, so the feature count never depends on the image size.
    """
    n, k, Ho, Wo = A.shape
    gh, gw = grid
    reduce = logsumexp if reduce is None else reduce
    if (gh, gw) == (1, 1):
        return reduce(A, axis=(2, 3))

    def edges(L, g):
        starts = [min(i * L // g, L - 1) for i in range(g)]
        return [(a, max((i + 1) * L // g, a + 1)) for i, a in enumerate(starts)]

    cells = [
        reduce(A[:, :, y0:y1, x0:x1], axis=(2, 3))
        for y0, y1 in edges(Ho, gh)
        for x0, x1 in edges(Wo, gw)
    ]
    return xp.reshape(xp.stack(cells, axis=2), (n, k * gh * gw))
