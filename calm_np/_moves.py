"""Moves: what a fit tries when EM stalls, and the thresholds that trigger them.

EM converges to the nearest fixed point, which can be a kernel settled on a
shifted copy of a pattern, a kernel with no posterior mass (starved), or two
kernels on the same pattern (duplicates).  When the objective stops moving,
:class:`Moves` re-centres every kernel on the best sub-window of its
neighbourhood mean (``_em.window_statistics``) and re-seeds starved and
duplicate kernels by D² sampling (``_init.d2_sample``).  With whitening
(``whiten=True``) the kernels live in whitened patch space, where shifting
a window means nothing: there is no re-centring, and re-seeding draws from
whitened patches, with duplicates judged without shifts.  A move is kept only
if the objective goes up by more than ``tol``, so a fit's objective history
stays monotone; one that lowers it on a sample of the images is dropped
before the whole pass.  The estimator drives it; nothing here knows the estimator.
"""

from __future__ import annotations

import numpy as np

from ._init import d2_sample, sample_images, sample_patches, similarity
from ._mstep import Params, objective
from ._whiten import whiten_patches
from ._xp import device_of, to_numpy

# Fraction of its fair share (n / k) of posterior mass below which a kernel
# is starved: it is re-seeded between iterations (objective re-checked) and
# named in a DeadKernelWarning if it stays starved.
STARVED_SHARE = 1e-3
# Similarity (normalised correlation over small shifts) above which two
# kernels are duplicates; the one with less mass is re-seeded.
DUPLICATE_SIMILARITY = 0.95
# Moves (re-centring, re-seeding) tried per run when EM stalls.
MAX_MOVES = 5
# Evenly spaced images a move must raise the objective on before it is
# judged on all of them (fits of at least four times as many).
SCREEN_IMAGES = 1024


def starved(stats):
    """Indices of the kernels with less than ``STARVED_SHARE`` of a fair share
    (``n / k``) of posterior mass: the one test of a starved kernel, which
    the moves re-seed and ``DeadKernelWarning`` names."""
    counts = to_numpy(stats.counts)
    share = stats.n_samples / counts.shape[0]
    return [int(i) for i in np.flatnonzero(counts < STARVED_SHARE * share)]


class Moves:
    """The moves one EM run may still try (at most ``MAX_MOVES``).

    Parameters
    ----------
    source : ImageSource
        The fit's images; a pool of patches is sampled from it at the first
        move (so a run that never stalls draws nothing from ``rng``).
    kernel_size, padding : (int, int)
    rng : numpy.random.RandomState
    reg_kernels : float
    learn_weights : bool
        A re-seeded kernel then gets an equal share of weight back.
    """

    def __init__(
        self,
        source,
        kernel_size,
        padding,
        rng,
        reg_kernels,
        learn_weights,
        whitening=None,
    ):
        self.source, self.kernel_size, self.padding = source, kernel_size, padding
        self.rng, self.reg, self.learn_weights = rng, reg_kernels, learn_weights
        self.whitening = whitening
        self.left = MAX_MOVES
        self.pool = self.sample = None

    def _patch_pool(self, n_kernels, dtype):
        images = sample_images(self.source, max(500, 2 * n_kernels), self.rng)
        n = min(max(20 * n_kernels, 1000), 10000)
        xp = self.source.xp
        pool = sample_patches(
            images, self.padding, self.kernel_size, n, self.rng, xp, dtype
        )
        if self.whitening is not None:
            pool = whiten_patches(pool, self.whitening, xp)
        return pool

    def try_move(self, e_step, stats, params, current, tol):
        """Re-centre and re-seed; ``(params, stats, objective)`` or None.

        ``e_step(params, margin=0, source=..., bar=...)`` gives the
        statistics of a pass (over the fit's images unless ``source`` is
        given);
        ``current`` is the objective of ``(stats, params)``.  σ² is kept.
        """
        if self.left <= 0:
            return None
        self.left -= 1
        xp = self.source.xp
        kernels, log_w = params.kernels, params.log_weights
        k, _, kh, kw = kernels.shape
        if self.pool is None:
            self.pool = self._patch_pool(k, kernels.dtype)
        if self.whitening is None:
            margin = max(1, min(kh, kw) // 4)
            ext = e_step(params, margin=margin)
            new = recentre(ext, kernels, margin, self.reg * params.variance, xp)
        else:  # shifts of whitened patches mean nothing: re-seeding only
            margin, new = 0, kernels
        bad = self._bad(stats, new, margin)
        if bad:
            new, log_w = self._reseed(new, log_w, bad, kernels.dtype)
        if bool(xp.all(new == kernels)):
            return None
        moved = Params(new, log_w, params.variance)
        if not self._gains_on_sample(e_step, params, moved):
            return None
        stats_new = e_step(moved)
        value = objective(stats_new, new, self.reg)
        if not value > current + tol:
            return None
        return moved, stats_new, value

    def _gains_on_sample(self, e_step, params, moved):
        """False if ``moved`` does not raise the objective on
        ``SCREEN_IMAGES`` evenly spaced images (fits of at least four times
        as many; True for smaller ones).

        A move that is rejected costs a whole pass; most moves that lose,
        lose everywhere (re-seeding 11 of the main job's 256 kernels cost
        132 nats per image).  So ``moved`` and ``params`` are compared on a
        fixed sample (the penalty's change counted once, as in the whole
        objective), and only a move that gains there is judged on all the
        images as before.  The sample (every ``n // SCREEN_IMAGES``-th image) depends
        neither on the batching nor on ``rng``, and is read without a
        progress bar.
        """
        n = self.source.n_samples
        if n < 4 * SCREEN_IMAGES:
            return True
        if self.sample is None:
            self.sample = self.source.spaced(SCREEN_IMAGES)
        after = e_step(moved, source=self.sample, bar=None)
        before = e_step(params, source=self.sample, bar=None)
        # λ scaled by the sample's share: the penalty's change counts once
        reg = self.reg * after.n_samples / n
        gain = objective(after, moved.kernels, reg) - objective(
            before, params.kernels, reg
        )
        return gain > 0

    def _bad(self, stats, kernels, margin):
        """Starved kernels and the lighter of each duplicate pair, sorted."""
        k = kernels.shape[0]
        counts = to_numpy(stats.counts)
        bad = set(starved(stats))
        if k > 1:
            sim = to_numpy(similarity(kernels, margin, self.source.xp))
            pairs = np.nonzero(np.triu(sim > DUPLICATE_SIMILARITY, 1))
            for i, j in zip(*pairs, strict=True):
                bad.add(int(i) if counts[i] < counts[j] else int(j))
        return sorted(bad)

    def _reseed(self, kernels, log_w, bad, dtype):
        xp, k = self.source.xp, kernels.shape[0]
        keep = [i for i in range(k) if i not in bad]
        centers = xp.stack([kernels[i, ...] for i in keep], axis=0) if keep else None
        fresh = d2_sample(self.pool, len(bad), self.rng, xp, centers=centers)
        rows = {i: kernels[i, ...] for i in keep}
        rows.update({i: fresh[j, ...] for j, i in enumerate(bad)})
        kernels = xp.stack([rows[i] for i in range(k)], axis=0)
        if self.learn_weights:
            # a re-seeded kernel gets an equal share back; renormalise
            w = to_numpy(xp.exp(log_w)).astype(np.float64)
            w[bad] = 1.0 / k
            log_w = xp.asarray(
                np.log(w / w.sum()), dtype=dtype, device=device_of(kernels)
            )
        return kernels, log_w


def recentre(ext, kernels, margin, reg, xp):
    """Move each kernel to the sub-window of its neighbourhood mean with most energy.

    ``ext.sums[k]`` is the posterior-weighted sum of the ``(kh + 2m) ×
    (kw + 2m)`` neighbourhoods of kernel ``k``'s positions.  For a fixed
    posterior, the kernel shifted by ``d`` has M-step value
    ``S_d / (N_k + λ)`` and gains ``½‖S_d‖² / (N_k + λ)`` in the EM lower
    bound, so the best shift maximises ``‖S_d‖²``.  (With a variance σ²,
    ``reg`` is ``λσ²``: the best shift is the same.)  Kernels with no mass
    stay as they are.
    """
    k, c, kh, kw = kernels.shape
    H, W = kh + 2 * margin, kw + 2 * margin
    sums = xp.astype(ext.sums, kernels.dtype)
    windows = [
        sums[:, :, dy : dy + kh, dx : dx + kw]
        for dy in range(H - kh + 1)
        for dx in range(W - kw + 1)
    ]
    stack = xp.stack(windows, axis=1)  # (k, shifts, c, kh, kw)
    energy = xp.sum(stack * stack, axis=(2, 3, 4))  # (k, shifts)
    best = to_numpy(xp.argmax(energy, axis=1))
    denom = to_numpy(ext.counts).astype(np.float64) + reg
    rows = []
    for i in range(k):
        if denom[i] > 0:
            rows.append(stack[i, int(best[i]), ...] / float(denom[i]))
        else:
            rows.append(kernels[i, ...])
    return xp.stack(rows, axis=0)
