"""The chunked passes over a batch: statistics and readouts, for every namespace.

``Engine.statistics``, ``Engine.readout``, ``Engine.distances`` and
``Im2col.sq_norms`` (:mod:`calm_np._engines`) hand their batch here.  Each
pass builds the batch's plan (:mod:`._plans`) on the batch's
:class:`~._kit.Kit`, then runs the plan chunk by chunk
(:func:`calm_np._pool.parallel_chunks`: worker threads on NumPy, in order
elsewhere), so that only a few images' maps exist at a time.

Readouts hand each chunk's maps ``(m, k, Ho, Wo)`` (scratch arrays) to the
caller's reduction ``func(maps, start, stop)`` and join the results in image
order:

* im2col: with ``by_position`` the E-step GEMM with its operands swapped,
  ``Pᵀ Mᵀ`` (the same values): maps (m, Ho, Wo, k) in memory, the kernels
  innermost, so every pooling box is a run of long contiguous rows; without
  it (reductions over the kernels, or over whole maps) the E-step's own
  (k, m, Ho, Wo);
* row-DFT: the plan's E-step, copied to (m, k, Ho, Wo).

Squared distances ``‖x_u − μ_k‖²`` (the triangle's) come out of the im2col
GEMM whole: the chunk's patch matrix gains two rows, ``‖x_u‖²`` and ones,
against the kernels ``−2·μ_k`` with two more columns, 1 and ``‖μ_k‖²``; no
pass over the maps adds norms or a bias.
"""

from __future__ import annotations

from .._pool import parallel_chunks
from .._whiten import column_sq_norms
from ._kit import Kit
from ._plans import PLANS, Im2colPlan


def _plan(engine, kernels, log_weights, latent="image", margin=0, scale=1.0,
          wide=None):  # fmt: skip
    """``(kit, plan, prepared)`` for the engine's batch.

    ``scale = 1/σ²`` goes into the kernels and the bias (``M·scale``,
    ``scale·(−½‖μ‖²) + log π``); the images are never scaled.
    """
    xp = engine.xp
    M = kernels
    bias = -0.5 * xp.sum(M * M, axis=(1, 2, 3), dtype=M.dtype)
    if scale != 1.0:
        bias, M = bias * scale, M * scale
    bias = bias + log_weights
    kit = Kit(xp, engine.device, M.dtype, wide or M.dtype)
    if engine.whitening is not None:
        engine.widened(margin)  # refuses window statistics of whitened patches
    plan = PLANS[engine.name](
        kit, tuple(engine.Xp.shape), tuple(M.shape), latent, margin, engine.whitening
    )
    return kit, plan, plan.prepare(M, bias)


def statistics(engine, kernels, log_weights, wide, latent="image", margin=0,
               scale=1.0):  # fmt: skip
    """``Engine.statistics``: ``(N_k, S_k, log_norm)``, chunk by chunk.

    The results equal the whole-batch reference
    (:func:`calm_np._engines.reference_statistics`) up to rounding
    (``tests/test_engines_perf_paths.py``).
    """
    kit, plan, prepared = _plan(engine, kernels, log_weights, latent, margin,
                                scale, wide)  # fmt: skip
    xp, Xp = kit.xp, engine.Xp
    n = Xp.shape[0]
    per_image = (plan.Ho, plan.Wo) if latent == "patch" else (1, 1)
    log_norm = xp.empty((n, 1, *per_image), dtype=kit.dtype, device=kit.device)
    whitened = getattr(plan, "whitening", None) is not None
    sq = xp.empty((n, plan.L), dtype=kit.dtype, device=kit.device) if whitened else None

    def work(start, stop, acc):
        norms = plan.chunk(Xp[start:stop, ...], prepared, acc)
        log_norm[start:stop, ...] = xp.reshape(norms, (stop - start, 1, *per_image))
        if sq is not None:  # ‖z_u‖², kept for the objective (Im2col.sq_norms)
            sq[start:stop, ...] = xp.reshape(acc["sq_norms"], (stop - start, plan.L))

    accs = parallel_chunks(n, plan.chunk_size, work, plan.new_accumulator, kit.threads)
    counts, sums = plan.finish(accs)
    if sq is not None:
        engine.known_sq_norms = xp.reshape(sq, (n, plan.Ho, plan.Wo))
    return counts, sums, log_norm


def readout(engine, kernels, log_weights, func, scale=1.0, by_position=False):
    """``Engine.readout``: ``func(A, start, stop)`` of each chunk's log joint
    ``A`` (m, k, Ho, Wo), joined in image order; im2col lays ``A`` out
    kernels innermost only ``by_position``."""
    kit, plan, prepared = _plan(engine, kernels, log_weights, scale=scale)

    def maps(Xc, start, stop, scratch):
        return plan.readout_maps(Xc, prepared, scratch, by_position)

    return _run(engine.Xp, kit, plan, maps, func)


def distances(engine, kernels, func, sq_norms):
    """``Engine.distances``: ``func(D, start, stop)`` of each chunk's squared
    distances ``D`` (m, k, Ho, Wo), joined in image order.

    The im2col plan takes ``‖x_u‖²`` from each chunk's own (whitened or
    not) patch matrix; the row-DFT plan, which has none, adds ``sq_norms()``
    (the batch's, from window sums of the squared pixels).
    """
    xp = engine.xp
    zeros = xp.zeros_like(kernels[:, 0, 0, 0])
    # scale −2: kernels −2·μ_k and bias ‖μ_k‖² (exact), −2·x·μ + ‖μ‖²
    kit, plan, prepared = _plan(engine, kernels, zeros, scale=-2.0)
    if not isinstance(plan, Im2colPlan):  # the row-DFT plan: norms added
        known = sq_norms()

        def maps(Xc, start, stop, scratch):
            D = plan.readout_maps(Xc, prepared, scratch)
            D += known[start:stop, None, ...]
            return D

        return _run(engine.Xp, kit, plan, maps, func)
    Mf, bias = prepared
    ones = xp.ones((Mf.shape[0], 1), dtype=Mf.dtype, device=kit.device)
    K = xp.concat([Mf, ones, bias[:, None]], axis=1)  # (k, D + 2)
    d, L, k = plan.D, plan.L, plan.k

    def maps(Xc, start, stop, scratch):
        m = stop - start
        Q = scratch.get("Q", (d + 2, m * L))
        P = plan.whitened(Xc, scratch)
        Q[:d, ...] = P
        Q[d, ...] = column_sq_norms(P, kit)  # ‖x_u‖² of the chunk's own patches
        Q[d + 1, ...] = 1
        out = scratch.get("A", (m * L, k))
        D = kit.matmul(xp.matrix_transpose(Q), xp.matrix_transpose(K), out=out)
        D = xp.reshape(D, (m, plan.Ho, plan.Wo, k))
        return xp.permute_dims(D, (0, 3, 1, 2))

    return _run(engine.Xp, kit, plan, maps, func)


def sq_norms(engine):
    """``Im2col.sq_norms``: ``‖z_u‖²`` (n, Ho, Wo), chunk by chunk."""
    xp, Xp = engine.xp, engine.Xp
    kit = Kit(xp, engine.device, Xp.dtype, Xp.dtype)
    shape = (1, Xp.shape[1], engine.kh, engine.kw)
    plan = Im2colPlan(kit, tuple(Xp.shape), shape, whitening=engine.whitening)
    n = Xp.shape[0]
    out = xp.empty((n, plan.L), dtype=Xp.dtype, device=kit.device)

    def work(start, stop, scratch):
        P = plan.whitened(Xp[start:stop, ...], scratch)
        out[start:stop, ...] = xp.reshape(column_sq_norms(P, kit), (stop - start, -1))

    parallel_chunks(n, plan.chunk_size, work, kit.scratch, kit.threads)
    return xp.reshape(out, (n, plan.Ho, plan.Wo))


def _run(Xp, kit, plan, maps, func):
    """``func(maps(Xc, start, stop, scratch), start, stop)`` per chunk of
    ``plan.chunk_size`` images; joined in order."""
    results = {}

    def work(start, stop, scratch):
        A = maps(Xp[start:stop, ...], start, stop, scratch)
        results[start] = func(A, start, stop)

    parallel_chunks(Xp.shape[0], plan.chunk_size, work, kit.scratch, kit.threads)
    parts = [results[s] for s in sorted(results)]
    return parts[0] if len(parts) == 1 else kit.xp.concat(parts, axis=0)
