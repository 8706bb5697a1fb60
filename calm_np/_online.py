"""Stepwise (online) EM: the running statistics ``partial_fit`` carries.

Per-image averages of the sufficient statistics (``_em.SufficientStatistics``)
are blended with each new batch's, and the blend goes to ``_mstep.m_step`` as
if it were the statistics of ``n_seen`` images (Cappé & Moulines 2009).
"""

from __future__ import annotations

from ._em import SufficientStatistics
from ._xp import get_namespace

# Online EM step size (t + 2) ** -ONLINE_KAPPA, t = 0, 1, ... (0.5 < κ <= 1).
ONLINE_KAPPA = 0.6


def running_statistics(stats, t=0):
    """Per-image statistics ``N_k / n``, ``S_k / n``, ``Σ‖X‖² / n`` and the
    values per image, as online EM carries them."""
    n = stats.n_samples
    return dict(
        counts=stats.counts / n,
        sums=stats.sums / n,
        sq_norm=stats.sq_norm / n,
        n_values=stats.n_values / n,
        n_seen=n,
        t=t,
    )


def running_from_model(stats, kernels, weights, t, variance=1.0):
    """Running statistics rebuilt from a model's ``kernels``, ``weights``, σ².

    For a model without them (one read by ``load``): ``N̄_k = π_k m`` and
    ``S̄_k = μ_k N̄_k`` per image, with ``m`` the latent draws per image (the
    batch's ``Σ_k N_k / n``: 1, or the positions for ``latent="patch"``),
    and ``Σ‖X‖²`` per image ``σ² v + Σ_k N̄_k ‖μ_k‖²`` (``v`` values per
    image), so the M-step of the rebuilt state gives the model back when
    ``reg_kernels=0``.  ``n_seen`` starts at 0 and ``t`` at ``t``.
    """
    xp = get_namespace(stats.counts)[0]
    wide = stats.counts.dtype
    per_image = xp.sum(stats.counts) / stats.n_samples
    counts = xp.astype(weights, wide) * per_image
    shape = (-1,) + (1,) * (stats.sums.ndim - 1)
    mu = xp.astype(kernels, wide)
    sums = mu * xp.reshape(counts, shape)
    values = stats.n_values / stats.n_samples
    energy = xp.sum(counts * xp.sum(xp.reshape(mu * mu, (counts.shape[0], -1)), axis=1))
    sq_norm = variance * values + energy
    return dict(
        counts=counts, sums=sums, sq_norm=sq_norm, n_values=values, n_seen=0, t=t
    )


def online_step(running, stats):
    r"""Stepwise (online) EM: blend the running statistics with a batch's.

    :math:`\bar s \leftarrow (1-\eta_t)\,\bar s + \eta_t\, s/n`,
    :math:`\eta_t = (t+2)^{-\kappa}` (Cappé & Moulines 2009).  ``running`` is
    ``None`` at the first step or a dict from :func:`running_statistics`;
    returns the new one and the blended totals (``n_seen`` images) for
    :func:`m_step`.
    """
    if running is None:
        new = running_statistics(stats)
    else:
        n = stats.n_samples
        eta = (running["t"] + 2) ** -ONLINE_KAPPA
        per_image = running_statistics(stats)
        new = {
            key: (1 - eta) * running[key] + eta * per_image[key]
            for key in ("counts", "sums", "sq_norm", "n_values")
        }
        new.update(n_seen=running["n_seen"] + n, t=running["t"] + 1)
    n_seen = new["n_seen"]
    blended = SufficientStatistics(
        new["counts"] * n_seen,
        new["sums"] * n_seen,
        0.0,
        n_seen,
        new["sq_norm"] * n_seen,
        new["n_values"] * n_seen,
    )
    return new, blended
