"""Scale-out on Dask: EM statistics computed where the images live.

Batch EM needs, per iteration, the sums ``N_k``, ``S_k`` and ``Σ log p(X_n)``
over all images (docs/user_guide/model.rst §2).  They add over disjoint sets of
images, so on a
``dask.array.Array`` chunked along the image axis each chunk's statistics are
computed by :func:`calm_np.sufficient_statistics` next to the chunk, and a
tree of additions brings them to the client.  Only the kernels (one graph key
per call, fetched once by each worker) and the statistics (``K·(1 + C·kh·kw)
+ 2`` numbers per chunk) cross the network; images never do.

Nothing here imports Dask at module level: :func:`is_dask_array` looks at
``sys.modules`` and the other functions are only reached with a Dask array in
hand, so Dask is already imported.

Chunking contract: ``X`` has shape ``(n, c, H, W)`` or ``(n, H, W)`` and is
chunked along the image axis only.  Any other chunking is refused with a
``ValueError`` that gives the one-line fix (``X.rechunk({1: -1, ...})``): a
silent rechunk inside ``fit`` would move every image across the cluster on
every EM iteration, which is the one thing this module exists to avoid.

Failures: the map is pure (same chunk and kernels, same statistics), so a
task lost with its worker is recomputed by the scheduler and the sums are the
same; a task that keeps killing workers ends in Dask's own ``KilledWorker``
error, never in a silently different model.
"""

from __future__ import annotations

import sys

import numpy as np

from ._em import Options, SufficientStatistics, batch_statistics
from ._xp import get_namespace, is_array_api_obj, is_numpy_namespace

__all__ = ["is_dask_array", "map_images", "statistics"]

# fan-in of the tree that adds chunk statistics (dask's reductions use 8 too)
SPLIT_EVERY = 8


def is_dask_array(X) -> bool:
    """Whether ``X`` is a ``dask.array.Array``, without importing Dask.

    A Dask array can only exist once ``dask.array`` has been imported, so an
    empty ``sys.modules`` entry means "no".
    """
    core = sys.modules.get("dask.array.core")
    if core is None:
        return False
    return isinstance(X, core.Array)


def _check_images(X, name="X"):
    """Refuse anything but a 3-D/4-D Dask array chunked along axis 0 only."""
    if not is_dask_array(X):
        raise TypeError(f"{name} must be a dask.array.Array, got {type(X).__name__}")
    if X.ndim not in (3, 4):
        raise ValueError(
            f"{name} must have shape (n_samples, n_channels, height, width) or "
            f"(n_samples, height, width), got a dask array of shape {X.shape}"
        )
    if any(len(c) > 1 for c in X.chunks[1:]):
        raise ValueError(
            f"{name} must be chunked along the image axis (axis 0) only, but "
            f"its channel/height/width axes are split too (chunks "
            f"{X.chunks[1:]}); each image must live whole in one chunk. Rechunk "
            "once and keep the result, e.g. X = X.rechunk({0: 'auto', 1: -1, "
            "2: -1, 3: -1}).persist() (drop 3: for (n, H, W) images), before "
            "calling calm_np: a rechunk inside each EM iteration would move "
            "every image across the cluster every time"
        )


def _follow(a, xp):
    """``a`` in the chunks' namespace: host NumPy kernels move to CuPy chunks."""
    if a is None:
        return None
    a_xp = get_namespace(a)[0]
    if a_xp is xp or not is_numpy_namespace(a_xp):
        return a  # same namespace, or a mismatch that the checks will name
    return xp.asarray(a)


def _chunk_namespace(X):
    """The array namespace of ``X``'s chunks, from its ``_meta``."""
    return get_namespace(X._meta)[0]


def _register_sizeof():
    """Teach ``dask.sizeof`` the size of :class:`SufficientStatistics`.

    Its default (``sys.getsizeof`` of the dataclass, ~50 bytes) would hide
    the statistics from the scheduler's memory and transfer accounting.  Run
    where Dask is already imported: in :func:`statistics` and in each task.
    """
    if _SIZEOF_REGISTERED:
        return
    from dask.sizeof import sizeof

    @sizeof.register(SufficientStatistics)
    def _sizeof_statistics(stats):
        arrays = (stats.counts, stats.sums, stats.log_likelihood, stats.sq_norm)
        return 64 + sum(sizeof(a) for a in arrays)

    _SIZEOF_REGISTERED.append(True)


_SIZEOF_REGISTERED: list = []


def _block_statistics(block, kernels, log_weights, options, margin=0, whitening=None):
    # module-level and pure: workers pickle it by reference, and a retried
    # task recomputes exactly the same sums; ``whitening`` travels as its own
    # graph key (a tuple), the other options in ``options``.  Each chunk is
    # checked on its worker (no boundary has seen its values).
    _register_sizeof()
    if whitening is not None:
        from ._whiten import Whitening

        options = options.replace(whitening=Whitening(*whitening))
    return batch_statistics(block, kernels, log_weights, options, margin)


def _add_statistics(*parts):
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def statistics(
    X,
    kernels,
    *,
    log_weights=None,
    options=None,
    margin=0,
    split_every=SPLIT_EVERY,
    **fields,
):
    r"""EM sufficient statistics of a Dask array of images, summed on the cluster.

    :math:`N_k = \sum_{\text{chunks}} \sum_{n,u}\gamma_{nku},\quad
    S_k = \sum_{\text{chunks}} \sum_{n,u}\gamma_{nku}\,x_{n,u}`

    Each chunk's statistics are computed by
    :func:`calm_np.sufficient_statistics` on the worker that holds the chunk;
    the partial sums are added in a tree of fan-in ``split_every`` and the
    total is computed with the active scheduler (a ``distributed.Client``
    when one is the default).  The result equals ``sufficient_statistics`` on
    the in-memory array up to the order of float64 additions.

    Parameters
    ----------
    X : dask.array.Array of shape (n_samples, n_channels, height, width)
        Images, chunked along axis 0 only (``(n_samples, height, width)``
        means one channel).  Chunks may be NumPy or CuPy arrays.
    kernels : array of shape (n_kernels, n_channels, kh, kw)
        Kernel means in the chunks' namespace; host NumPy kernels are moved
        to the chunks' namespace (e.g. CuPy) first.  Sent once per call, as
        one graph key that every task depends on.
    log_weights : array of shape (n_kernels,), default=None
        Log mixture weights; ``None`` is uniform.
    options : calm_np._em.Options, default=None
        How the maps are computed (``padding``, ``method``, ``latent``,
        ``variance``, ``whitening``); ``None`` builds them from ``fields``.
    **fields
        ``padding``, ``method``, ``latent``, ``variance``, ``whitening`` as
        keywords, as for :func:`calm_np.sufficient_statistics` (without
        ``options``).
    margin : int, default=0
        ``> 0`` maps :func:`calm_np._em.window_statistics` instead (``sums``
        over windows enlarged by ``margin``; the estimator's re-centring).
    split_every : int, default=8
        Fan-in of the reduction tree.  A whitening is sent with the kernels,
        as one graph key.

    Returns
    -------
    stats : SufficientStatistics
        In the chunks' namespace (the kernels' namespace), on the client.

    Raises
    ------
    ValueError
        If ``X`` is chunked along an axis other than 0 (see the module notes)
        or the shapes do not fit (the same checks as on one machine, run on
        the client before anything is sent).

    Notes
    -----
    Tested with NumPy chunks on the threaded scheduler and on a
    ``distributed.LocalCluster`` of two worker processes, including a worker
    killed mid-computation.  CuPy chunks follow the same code.
    """
    import dask

    _check_images(X)
    _register_sizeof()
    split_every = int(split_every)
    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every}")
    xp = _chunk_namespace(X)
    kernels = _follow(kernels, xp)
    log_weights = _follow(log_weights, xp)
    # Validate on the client with zero images: bad shapes, padding or method
    # fail here with calm_np's messages instead of inside a worker.  The
    # result is also the answer for an array without images.
    options = Options(**fields) if options is None else options.replace(**fields)
    whitening = options.whitening
    options = options.replace(whitening=None)
    empty = xp.zeros((0, *X.shape[1:]), dtype=X.dtype)
    args = (empty, kernels, log_weights, options, margin)
    nothing = _block_statistics(*args, None if whitening is None else tuple(whitening))
    if X.shape[0] == 0 or X.numblocks[0] == 0:
        return nothing

    # One key each for the kernels and weights: every chunk task depends on
    # it, so each worker fetches it once instead of once per task.  (A
    # scatter would do the same on distributed, but scattered data has no
    # lineage and is lost with its worker; a graph key is recomputable.)
    kernels_key = dask.delayed(kernels, pure=True)
    weights_key = None if log_weights is None else dask.delayed(log_weights, pure=True)
    fields = (options.padding, options.method, options.latent, options.variance)
    token = dask.base.tokenize(X.name, kernels, log_weights, *fields, margin, whitening)
    # the whitening's arrays as one more key, after the options
    whiten = None if whitening is None else dask.delayed(tuple(whitening), pure=True)
    # A blockwise map that keeps every axis (one statistics object per chunk
    # as a 1x1x1(x1) "block") fuses with the layers that produce the chunk
    # (reading it from disk, scaling it), so each chunk is read and reduced
    # in one task and no scheduler decision can ship a chunk elsewhere.
    # (With drop_axis, Dask keeps the read as a separate task.)
    per_chunk = X.map_blocks(
        _block_statistics,
        kernels_key,
        weights_key,
        options,
        margin,
        whiten,
        chunks=((1,) * X.numblocks[0],) + ((1,),) * (X.ndim - 1),
        meta=np.empty((0,) * X.ndim, dtype=object),
        name=f"calm_np-statistics-{token}",
    )
    parts = list(per_chunk.to_delayed(optimize_graph=True).ravel())
    (total,) = dask.compute(_tree_sum(parts, split_every, token, dask))
    return total


def _tree_sum(parts, split_every, token, dask):
    """The sum of delayed ``parts`` as a tree of fan-in ``split_every``."""
    level = 0
    while len(parts) > 1:
        parts = [
            dask.delayed(_add_statistics, pure=True)(
                *parts[j : j + split_every],
                dask_key_name=f"calm_np-sum-{token}-{level}-{j // split_every}",
            )
            for j in range(0, len(parts), split_every)
        ]
        level += 1
    return parts[0]


def map_images(func, X, *args, n_features=None, dtype=None, kind="map", **kwargs):
    r"""Apply a per-image function chunk by chunk, lazily.

    :math:`Y[i] = \mathrm{func}(X[i], \ldots)` for every chunk ``X[i]``

    Parameters
    ----------
    func : callable
        ``func(chunk, *args, **kwargs)`` returns an array of shape
        ``(len(chunk),)``, or ``(len(chunk), n_features)`` when
        ``n_features`` is given.  It must be pure and picklable (a module
        level function, a ``functools.partial`` or a bound method).  It
        travels as one graph key, fetched once per worker, so a bound method
        of a fitted estimator does not resend the kernels with every chunk.
    X : dask.array.Array of shape (n_samples, n_channels, height, width)
        Images chunked along axis 0 only (as for :func:`statistics`).
    *args, **kwargs
        Passed to ``func``.  Arrays (kernels, weights) become one graph key
        each, in the chunks' namespace.
    n_features : int, default=None
        Width of a 2-D output; ``None`` gives ``(n_samples,)``.
    dtype : dtype, default=None
        Output dtype; ``None`` keeps ``X``'s floating dtype (float64 for ints).
    kind : str, default="map"
        Task label on the dashboard (``calm_np-<kind>-<token>``).

    Returns
    -------
    Y : dask.array.Array of shape (n_samples,) or (n_samples, n_features)
        Chunked like ``X`` along axis 0, with the chunks' array type; nothing
        is computed until the caller asks.
    """
    import dask
    from dask.array.utils import meta_from_array

    _check_images(X)
    if dtype is None:
        dtype = X.dtype if X.dtype.kind == "f" else "float64"
    xp = _chunk_namespace(X)
    payload = dask.delayed(_Payload(func), pure=False)
    args = [_as_key(a, xp, dask) for a in args]
    kwargs = {name: _as_key(a, xp, dask) for name, a in kwargs.items()}
    # Same trick as in statistics: keep every axis (size 1 past the output)
    # so the map fuses with the reading of its chunk, then slice them off.
    width = 1 if n_features is None else int(n_features)
    trailing = ((1,),) * (X.ndim - 2)
    Y = X.map_blocks(
        _apply_keepdims,
        payload,
        *args,
        chunks=(X.chunks[0], (width,), *trailing),
        dtype=dtype,
        meta=meta_from_array(X._meta, X.ndim, dtype),
        token=f"calm_np-{kind}",
        **kwargs,
    )
    index = (slice(None),) + (0,) * (X.ndim - 1)
    if n_features is not None:
        index = (slice(None), slice(None)) + (0,) * (X.ndim - 2)
    return Y[index]


class _Payload:
    """A function carried as graph *data* (a bare callable would be a task)."""

    __slots__ = ("func",)

    def __init__(self, func):
        self.func = func


def _apply_keepdims(block, payload, *args, **kwargs):
    out = payload.func(block, *args, **kwargs)
    n_axes = block.ndim - out.ndim  # trailing axes of size 1 that Dask expects
    return out[(...,) + (None,) * n_axes]


def _as_key(a, xp, dask):
    """Arrays travel as one graph key (in the chunks' namespace); scalars stay."""
    if is_array_api_obj(a) and not is_dask_array(a):
        return dask.delayed(_follow(a, xp), pure=True)
    return a
