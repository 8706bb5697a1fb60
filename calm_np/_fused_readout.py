"""NumPy's fused readouts: a few images' maps at a time, laid out for pooling.

``_fused`` hands these to the engines (``Engine.readout``,
``Engine.distances``, ``Im2col.sq_norms``).  Per chunk of images, on the
worker threads of ``_fused._parallel_chunks``, the chunk's E-step by the
batch's plan, then the caller's reduction ``func(maps, start, stop)``; the
results are joined in image order and only a few images' maps exist at a
time.  The maps handed on are (m, k, Ho, Wo) scratch arrays:

* im2col: the E-step GEMM with its operands swapped, ``Pᵀ Mᵀ`` (the same
  values): maps (m, Ho, Wo, k) in memory, the kernels innermost, so that
  every pooling box is a run of long contiguous rows
  (``_xp.box_sums``, ``_xp.piece_logsumexp``); a transposed view.  Without
  ``by_position`` (reductions over the kernels, or over whole maps, which
  run faster on contiguous maps), the E-step's own (k, m, Ho, Wo);
* row-DFT: the plan's E-step, copied to (m, k, Ho, Wo).

Squared distances ``‖x_u − μ_k‖²`` (the triangle's) come out of the im2col
GEMM whole: the chunk's patch matrix gains two rows, ``‖x_u‖²`` and ones,
against the kernels ``−2·μ_k`` with two more columns, 1 and ``‖μ_k‖²``; no
pass over the maps adds norms or a bias.  The norms come from the chunk's
own patches, whitened or not (one whitening per patch, no window sums).
"""

from __future__ import annotations


def readout(engine, kernels, log_weights, func, scale=1.0, by_position=False):
    """``Engine.readout`` on NumPy: ``func(A, start, stop)`` of each chunk's
    log joint ``A`` (m, k, Ho, Wo), threaded, joined in image order; im2col
    lays ``A`` out kernels innermost only ``by_position``."""
    from ._fused import _plan

    Xp, plan, prepared = _plan(engine, kernels, log_weights, scale=scale)

    def maps(Xc, start, stop, buffers):
        return plan.readout_maps(Xc, prepared, buffers, by_position)

    return _run(Xp, plan, maps, func)


def distances(engine, kernels, func, sq_norms):
    """``Engine.distances`` on NumPy: ``func(D, start, stop)`` of each chunk's
    squared distances ``D`` (m, k, Ho, Wo), threaded, joined in image order.

    The im2col plan takes ``‖x_u‖²`` from each chunk's own (whitened or
    not) patch matrix; the row-DFT plan, which has none, adds ``sq_norms()``
    (the batch's, from window sums of the squared pixels).
    """
    import numpy as np

    from ._fused import _Im2colPlan, _plan

    zeros = np.zeros(kernels.shape[0], dtype=np.asarray(kernels).dtype)
    # scale −2: kernels −2·μ_k and bias ‖μ_k‖² (exact), −2·x·μ + ‖μ‖²
    Xp, plan, prepared = _plan(engine, kernels, zeros, scale=-2.0)
    if not isinstance(plan, _Im2colPlan):  # the row-DFT plan: norms added
        known = sq_norms()

        def maps(Xc, start, stop, buffers):
            D = plan.readout_maps(Xc, prepared, buffers)
            D += known[start:stop, None]
            return D

        return _run(Xp, plan, maps, func)
    Mf, bias = prepared
    ones = np.ones((Mf.shape[0], 1), dtype=Mf.dtype)
    K = np.concatenate([Mf, ones, bias[:, None]], axis=1).T  # (D + 2, k)
    d, L, k = plan.D, plan.L, plan.k

    def maps(Xc, start, stop, buffers):
        m = stop - start
        Q = buffers.get("Q", (d + 2, m * L))
        P = plan.whitened(Xc, buffers, out=Q[:d])
        Q[d] = np.einsum("dl,dl->l", P, P)  # ‖x_u‖² of the chunk's own patches
        Q[d + 1] = 1
        D = np.matmul(Q.T, K, out=buffers.get("A", (m * L, k)))
        return D.reshape(m, plan.Ho, plan.Wo, k).transpose(0, 3, 1, 2)

    return _run(Xp, plan, maps, func)


def sq_norms(engine):
    """``Im2col.sq_norms`` on NumPy: ``‖z_u‖²`` (n, Ho, Wo), chunked, threaded."""
    import numpy as np

    from ._fused import _Buffers, _Im2colPlan, _parallel_chunks

    Xp = np.asarray(engine.Xp)
    plan = _Im2colPlan(Xp.shape, (1, Xp.shape[1], engine.kh, engine.kw), Xp.dtype)
    plan.whitening = engine.whitening
    out = np.empty((len(Xp), plan.L), dtype=Xp.dtype)

    def work(start, stop, buffers):
        P = plan.whitened(Xp[start:stop], buffers)
        out[start:stop] = np.einsum("dl,dl->l", P, P).reshape(stop - start, -1)

    _parallel_chunks(len(Xp), plan.chunk_size, work, lambda: _Buffers(Xp.dtype))
    return out.reshape(len(Xp), plan.Ho, plan.Wo)


def _run(Xp, plan, maps, func):
    """``func(maps(Xc, start, stop, buffers), start, stop)`` per chunk of
    ``plan.chunk_size`` images, on the worker threads; joined in order."""
    import numpy as np

    from ._fused import _Buffers, _parallel_chunks

    results = {}

    def work(start, stop, buffers):
        results[start] = func(maps(Xp[start:stop], start, stop, buffers), start, stop)

    _parallel_chunks(Xp.shape[0], plan.chunk_size, work, lambda: _Buffers(plan.dtype))
    return np.concatenate([results[s] for s in sorted(results)], axis=0)
