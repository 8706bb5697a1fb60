"""What the EM loop does with the summed statistics (:mod:`calm_np._em`
computes them): the parameters a fit threads (:class:`Params`), the
objective, the M-step and the σ² step (docs/user_guide/model.rst §2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ._xp import get_namespace, log_or_minus_inf

# σ² is at least this fraction of the mean squared value (pixel, or patch
# entry) of the data: a degenerate fit (kernels that copy the data) stays
# finite.  The σ² objective is unimodal, so the clamp keeps ECM monotone.
VARIANCE_FLOOR = 1e-6


@dataclass(frozen=True)
class Params:
    """What EM updates, threaded through a fit as one value.

    ``kernels`` (k, c, kh, kw) and ``log_weights`` (k,) in the data's
    namespace; ``variance`` the shared pixel variance σ², a Python float
    (exactly 1.0, the paper's model, unless learned).
    """

    kernels: Any
    log_weights: Any
    variance: float = 1.0

    def m_step(self, stats, reg_kernels, learn_weights, learn_variance):
        """The next :class:`Params`, by ECM: :func:`m_step` at the current σ²,
        then, if learned, :func:`variance_step` with the new kernels."""
        variance = self.variance if learn_variance else 1.0
        args = (reg_kernels, learn_weights, variance)
        kernels, log_w = m_step(stats, self.kernels, self.log_weights, *args)
        if learn_variance:
            variance = variance_step(stats, kernels, variance)
        return Params(kernels, log_w, variance)


def objective(stats, kernels, reg_kernels=0.0):
    """Mean per-image log-likelihood minus the prior penalty, a Python float.

    ``(Σ_n log p(X_n) − ½ λ Σ_k ‖μ_k‖²) / n``: the quantity EM never
    decreases (docs/user_guide/model.rst §2) and ``tol`` is applied to.
    """
    xp = get_namespace(kernels)[0]
    penalty = 0.0
    if reg_kernels:
        squares = float(xp.sum(kernels * kernels))
        penalty = 0.5 * reg_kernels * squares
        if math.isfinite(squares) and not math.isfinite(penalty):
            raise ValueError(
                f"reg_kernels={reg_kernels:g} makes the prior penalty "
                f"reg_kernels/2 * sum_k ||mu_k||^2 overflow (the kernels' squared "
                f"norms sum to {squares:.3g}); use a smaller reg_kernels: it is "
                "a precision added to each kernel's posterior mass N_k, so "
                "values near the number of images already shrink kernels hard"
            )
    value = (float(stats.log_likelihood) - penalty) / stats.n_samples
    if not math.isfinite(value):
        wider = "" if xp.finfo(kernels.dtype).bits >= 64 else ", or pass float64"
        raise ValueError(
            f"the objective is {value} (not finite) in {kernels.dtype}: the "
            "data's scale is out of that dtype's range (images or init kernels "
            "too large, or with learn_variance too small); rescale X to about "
            f"unit noise variance{wider}"
        )
    return value


def m_step(
    stats, kernels, log_weights, reg_kernels=0.0, learn_weights=False, variance=1.0
):
    """MAP update ``(kernels, log_weights)``; kernels without mass keep their value.

    ``μ_k = S_k / (N_k + λσ²)`` at the current σ² (``variance``; 1 is the
    paper's model) and, with ``learn_weights``, ``π_k = N_k / n``; otherwise
    the weights stay as they are.  σ²'s own step is :func:`variance_step`.
    """
    xp = get_namespace(kernels)[0]
    dtype = kernels.dtype
    new, ok = stats.m_step(reg_kernels, variance)
    mask = xp.reshape(ok, (-1, 1, 1, 1))
    new = xp.where(mask, xp.astype(new, dtype), kernels)
    if learn_weights:
        total = xp.sum(stats.counts)
        log_weights = xp.astype(log_or_minus_inf(stats.counts / total, xp), dtype)
    return new, log_weights


def variance_step(stats, kernels, variance=1.0):
    """σ²'s M-step given the kernels: ``Q / n_values`` (docs/user_guide/model.rst §2),
    a float.

    ``Q = Σ‖X_n‖² − 2 Σ_k μ_k·S_k + Σ_k N_k ‖μ_k‖²`` (in the statistics'
    wide type), at least ``VARIANCE_FLOOR`` times ``Σ‖X_n‖²``; ``variance``
    comes back unchanged when there is nothing to estimate it from (no
    values, or all-zero data).
    """
    xp = get_namespace(stats.counts)[0]
    k = stats.counts.shape[0]
    mu = xp.reshape(xp.astype(kernels, stats.counts.dtype), (k, -1))
    S = xp.reshape(stats.sums, (k, -1))
    fit = 2.0 * xp.sum(mu * S) - xp.sum(stats.counts * xp.sum(mu * mu, axis=1))
    sq = float(stats.sq_norm)
    Q = max(sq - float(fit), VARIANCE_FLOOR * sq)
    if not (Q > 0 and stats.n_values > 0 and math.isfinite(Q)):
        return float(variance)
    return _learned_variance(Q / stats.n_values, kernels.dtype, xp)


def _learned_variance(value, dtype, xp):
    """A learned σ², refused with a clear error where the data's scale puts it
    out of ``dtype``'s reach (``1/σ²`` and ``‖μ‖²/σ²`` must be finite)."""
    if math.isfinite(value) and value * float(xp.finfo(dtype).max) > 1.0:
        return value
    wider = "" if xp.finfo(dtype).bits >= 64 else ", or pass float64"
    raise ValueError(
        f"learn_variance: the data give a variance of {value:.3g}, out of "
        f"{dtype}'s range; rescale X to about unit noise variance{wider}"
    )
