"""Readouts: features and scores of images under given kernels (no estimator needed).

A fitted model is read out per batch of images from the log joint
``A[n, k, u]`` (``_em.log_joint``), pooled over a grid of cells of positions:

    features="log_joint"      logsumexp_u A[k, u] over the cell
    features="log_posterior"  log of the posterior mass of (kernel k, cell)
    features="posterior"      that mass
    features="triangle"       Coates et al.'s triangle activation, summed

:func:`pooled_features` does this for any ``X, kernels, log_weights``, a
few images' maps at a time where the engine can (``Engine.readout``: NumPy's
fused E-step, chunked and threaded), so memory stays bounded by the batch;
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
from ._em import _Batch
from ._xp import get_namespace, interval_sums, logsumexp, relu

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
    """Pooled posterior features ``(n_samples, n_kernels * ph * pw)``.

    Parameters are those of :func:`calm_np.log_joint` (``whitening``
    included), plus ``features``
    (one of ``FEATURES``) and ``pooling`` (an int or a pair: the grid of
    cells).  ``latent`` sets what the posterior is normalised over.  The
    log-joint and posterior features use the log joint at ``variance``
    (σ², SPEC §2); the triangle's distances do not depend on it.
    """
    args = (log_weights, padding, method, latent, variance, whitening)
    batch = _Batch(X, kernels, *args)
    grid = _checks.check_padding(pooling)
    sq_norms = None
    if features == "triangle":
        batch.log_weights = distance_log_weights(batch.log_weights, batch.xp)
        sq_norms = batch.patch_sq_norms()
    xp, log_w = batch.xp, batch.log_weights

    def read(A, start, stop):
        if features == "log_joint":
            return pool(A, grid, xp)
        if features == "triangle":
            act = triangle(A, sq_norms[start:stop, ...], log_w, xp)
            return pool(act, grid, xp, reduce="sum")
        # log of the posterior mass in each (kernel, cell) under the latent
        if latent == "image":  # the normaliser is the logsumexp of the cells'
            log_post = pool(A, grid, xp)
            log_post = log_post - logsumexp(log_post, axis=1, keepdims=True)
        else:
            log_post = pool(A - batch.log_normalizer(A), grid, xp)
        return log_post if features == "log_posterior" else xp.exp(log_post)

    return batch.readout(read, scale=1.0 if features == "triangle" else None)


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
    positive = weights > 0
    # log 0 = -inf without a divide-by-zero warning
    log_w = xp.where(
        positive,
        xp.log(xp.where(positive, weights, xp.ones_like(weights))),
        xp.full_like(weights, -math.inf),
    )
    return func(batch, kernels, log_weights=log_w, **options)


def distance_log_weights(log_w, xp):
    """``log_w`` with ``-inf`` (a kernel of weight 0) replaced by 0.

    The triangle activation reads distances ``‖x_u − μ_k‖`` off a log joint
    and subtracts ``log π_k`` again, so the weights do not matter, but a
    weight of 0 makes ``A = -inf`` and the distance ``inf − inf``: a log joint
    computed with these weights keeps every kernel's distance finite.
    """
    finite = xp.isfinite(log_w)
    return xp.where(finite, log_w, xp.zeros_like(log_w))


def triangle(A, sq_norms, log_w, xp):
    """Triangle activation ``max(0, mean_j z[j,u] − z[k,u])``, ``(n, k, Ho, Wo)``.

    ``z[k, u] = ‖x_u − μ_k‖`` comes from the log joint,
    ``‖x_u − μ_k‖² = ‖x_u‖² − 2 (A[k, u] − log π_k)``, with the patch norms
    ``sq_norms = ‖x_u‖²`` (n, Ho, Wo) from an integral image of ``X²``
    (``_Batch.patch_sq_norms``, as for ``latent="patch"``).  ``A`` and
    ``log_w`` must be finite: see :func:`distance_log_weights`.
    Coates, Lee & Ng (2011) use it on k-means centroids: a
    kernel is active where the patch is closer to it than to the average
    kernel, which makes the code sparse and competitive across kernels.
    """
    A *= -2.0  # A is scratch: overwritten with dist², dist, activations
    A += xp.reshape(2.0 * log_w, (1, -1, 1, 1))
    A += sq_norms[:, None, ...]
    dist = xp.sqrt(relu(A, xp))
    dist -= xp.mean(dist, axis=1, keepdims=True)
    dist *= -1.0
    return relu(dist, xp)


def _edges(L, g):
    """Cell ``i`` of ``g`` along an axis of ``L`` positions: ``[start, stop)``."""
    starts = [min(i * L // g, L - 1) for i in range(g)]
    return [(a, max((i + 1) * L // g, a + 1)) for i, a in enumerate(starts)]


def pool(A, grid, xp, reduce="logsumexp"):
    """logsumexp (or, ``reduce="sum"``, the sum) of ``A (n, k, Ho, Wo)`` over
    a grid of cells → (n, k·gh·gw); ``A`` is overwritten.

    Cell ``i`` of ``g`` along an axis of ``L`` positions spans
    ``[i·L // g, max((i+1)·L // g, i·L // g + 1))``: every cell holds at least
    one position, so the feature count never depends on the image size.
    The logsumexp shifts each cell by its own maximum, then sums the
    exponentials with ``interval_sums`` (cells overlap only when there are
    more of them than positions: then one sum per cell).
    """
    n, k, Ho, Wo = A.shape
    gh, gw = grid
    if reduce == "sum":
        sums = interval_sums(A, _edges(Ho, gh), _edges(Wo, gw), xp)
        return xp.reshape(sums, (n, k * gh * gw))
    cells = [(y0, y1, x0, x1) for y0, y1 in _edges(Ho, gh) for x0, x1 in _edges(Wo, gw)]
    cmax = [xp.max(A[:, :, y0:y1, x0:x1], axis=(2, 3)) for y0, y1, x0, x1 in cells]
    cmax = xp.stack(cmax, axis=2)  # (n, k, gh·gw)
    cmax = xp.where(xp.isfinite(cmax), cmax, xp.zeros_like(cmax))
    if gh > Ho or gw > Wo:
        S = [
            xp.sum(
                xp.exp(A[:, :, y0:y1, x0:x1] - cmax[:, :, i, None, None]), axis=(2, 3)
            )
            for i, (y0, y1, x0, x1) in enumerate(cells)
        ]
        S = xp.stack(S, axis=2)
    else:
        for i, (y0, y1, x0, x1) in enumerate(cells):
            A[:, :, y0:y1, x0:x1] = A[:, :, y0:y1, x0:x1] - cmax[:, :, i, None, None]
        S = interval_sums(xp.exp(A), _edges(Ho, gh), _edges(Wo, gw), xp)
        S = xp.reshape(S, (n, k, gh * gw))
    # log 0 = -inf for cells of a dead kernel, without a warning
    positive = S > 0
    log_S = xp.log(xp.where(positive, S, xp.ones_like(S)))
    log_S = xp.where(positive, log_S, xp.full_like(S, -xp.inf))
    return xp.reshape(log_S + cmax, (n, k * gh * gw))
