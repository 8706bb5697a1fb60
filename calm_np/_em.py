"""The convolution–posterior identity and the EM statistics (SPEC §1–2).

Layout, the one used everywhere in calm_np::

    X        (n, c, H, W)     images; (n, H, W) means c = 1
    kernels  (k, c, kh, kw)   kernel means μ_k; (k, kh, kw) means c = 1
    maps     (n, k, Ho, Wo)   log joint A, posterior γ; Ho = H + 2·ph − kh + 1

For an image ``X`` zero-padded to ``Xp`` (``P = c·Hp·Wp`` pixels) and
``|U| = Ho·Wo`` positions::

    log p(Xp, U=u, Z=k) = A[k, u] + c(X)
    A[k, u] = (Xp ⋆ μ_k)[u] − ½‖μ_k‖² + log π_k
    c(X)    = −½‖X‖² − (P/2)·log 2π − log |U|

so the posterior is a softmax of a convolution layer's output and the
log-likelihood is its logsumexp plus ``c(X)``.

``latent="patch"`` (ours, SPEC §1) instead draws *every* patch ``x_u`` from
``Σ_k π_k N(μ_k, I)``: the posterior is a softmax over ``k`` at each position
and the objective is the pseudo-log-likelihood
``Σ_u (logsumexp_k A[k, u] − ½‖x_u‖² − (D/2) log 2π)``.  The engines and the
M-step are shared; only the normalisation differs.

What the EM loop does with the statistics lives here too: :func:`objective`
(the mean per-image objective ``tol`` is applied to), :func:`m_step` (the
MAP update of kernels and weights) and :func:`online_step` (the stepwise
blend of ``partial_fit``).  The estimator only sequences them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from . import _checks
from ._engines import ENGINES, LATENT_AXES, choose_method
from ._whiten import on_namespace
from ._xp import LOG_2PI, get_namespace, interval_sums, logsumexp, pad_zeros, wide_float

__all__ = [
    "SufficientStatistics",
    "log_joint",
    "log_likelihood",
    "posterior",
    "sufficient_statistics",
]

# Online EM step size (t + 2) ** -ONLINE_KAPPA, t = 0, 1, ... (0.5 < κ <= 1).
ONLINE_KAPPA = 0.6


class _Batch:
    """A validated batch of images with kernels, weights and an engine."""

    def __init__(
        self,
        X,
        kernels,
        log_weights=None,
        padding=0,
        method="auto",
        latent="image",
        whitening=None,
    ):
        _checks.check_latent(latent)
        self.latent = latent
        X = _checks.as_array(X, "X")
        kernels = _checks.as_array(kernels, "kernels")
        if log_weights is not None:
            log_weights = _checks.as_array(log_weights, "log_weights")
        xp, device = get_namespace(X, kernels, log_weights)
        _checks.check_method(method, xp)
        padding = _checks.check_padding(padding)
        X = _checks.check_images(X)
        kernels = _checks.check_kernels(kernels, X.shape[1])
        dtype = _checks.float_dtype(xp, [(X, "X"), (kernels, "kernels")], device)
        X = xp.astype(X, dtype)
        kernels = xp.astype(kernels, dtype)
        _checks.check_images_finite(X, "X", xp)
        _checks.check_finite(kernels, "kernels", xp)
        kernel_shape = tuple(kernels.shape[2:])
        Hp, Wp = _checks.check_sizes(tuple(X.shape[2:]), kernel_shape, padding)
        k = kernels.shape[0]
        self.log_weights = _checks.check_log_weights(log_weights, k, xp, dtype, device)
        self.xp, self.device, self.dtype = xp, device, dtype
        self.X, self.kernels, self.padding = X, kernels, padding
        self.kernel_shape = kernel_shape
        self.padded_shape = (Hp, Wp)
        D = kernels.shape[1] * kernel_shape[0] * kernel_shape[1]
        whitening = _checks.check_whitening(whitening, D, latent, method)
        self.whitening = on_namespace(whitening, xp, dtype, device)
        if whitening is not None:
            _checks.check_finite(self.whitening.matrix, "whitening", xp)
            _checks.check_finite(self.whitening.mean, "whitening", xp)
            method = "im2col"  # the one engine that whitens (see _whiten)
        if X.shape[0] == 0:
            method = "im2col"  # nothing to transform (torch's FFT refuses n=0)
        elif method == "auto":
            shapes = (X.shape[1], k, (Hp, Wp), kernel_shape)
            method = choose_method(xp, *shapes, latent=latent)
        self.method = method
        self._engine = None

    @property
    def engine(self):
        if self._engine is None:
            Xp = pad_zeros(self.X, self.padding, self.xp)
            engine = ENGINES[self.method]
            self._engine = engine(Xp, self.kernel_shape, self.xp, self.whitening)
        return self._engine

    def log_joint(self):
        return self.engine.log_joint(self.kernels, self.log_weights)

    def readout(self, func):
        """``func(A, start, stop)`` over the log joint, a few images at a
        time where the engine can (``Engine.readout``)."""
        return self.engine.readout(self.kernels, self.log_weights, func)

    def log_normalizer(self, A):
        """``logsumexp`` of ``A`` over the latent axes (keepdims)."""
        return logsumexp(A, axis=LATENT_AXES[self.latent], keepdims=True)

    def log_likelihood(self, log_norm, wide=None):
        """Per-image objective from the normaliser: ``log p(X_n)``, or the
        pseudo-log-likelihood for ``latent="patch"``; in ``wide`` if given."""
        xp = self.xp
        cast = (lambda a: a) if wide is None else (lambda a: xp.astype(a, wide))
        if self.latent == "image":
            # c(X) is large (−½‖X‖²): add it in the wide type
            return cast(log_norm[:, 0, 0, 0]) + cast(self.log_const())
        c, (kh, kw) = self.X.shape[1], self.kernel_shape
        D = c * kh * kw
        per_patch = cast(log_norm[:, 0, ...]) - 0.5 * cast(self.patch_sq_norms())
        return xp.sum(per_patch, axis=(1, 2)) - 0.5 * D * LOG_2PI * (
            per_patch.shape[1] * per_patch.shape[2]
        )

    def log_const(self):
        """``c(X)`` per image, ``(n,)``."""
        xp = self.xp
        n, c, _, _ = self.X.shape
        Hp, Wp = self.padded_shape
        kh, kw = self.kernel_shape
        n_pos = (Hp - kh + 1) * (Wp - kw + 1)
        const = -0.5 * c * Hp * Wp * LOG_2PI - math.log(n_pos)
        return -0.5 * xp.sum(self.X * self.X, axis=(1, 2, 3)) + const

    def patch_sq_norms(self):
        """``‖x_u‖²`` of every patch, ``(n, Ho, Wo)``: window sums of the
        squared pixels (zeros in the padding), as two GEMMs with 0/1 band
        matrices (sums of positive terms: no cancellation).  With whitening,
        ``‖z_u‖²`` of the whitened patches (``_whiten``)."""
        xp = self.xp
        if self.whitening is not None:
            return self.engine.sq_norms()
        sq = xp.sum(self.X * self.X, axis=1)  # (n, H, W)
        (ph, pw), (kh, kw) = self.padding, self.kernel_shape
        Hp, Wp = self.padded_shape
        rows = [(y - ph, y - ph + kh) for y in range(Hp - kh + 1)]
        cols = [(x - pw, x - pw + kw) for x in range(Wp - kw + 1)]
        return interval_sums(sq, rows, cols, xp)


def log_joint(
    X, kernels, *, log_weights=None, padding=0, method="auto", latent="image",
    whitening=None,
):  # fmt: skip
    r"""Log joint ``A[n, k, u]`` of kernel ``k`` at position ``u`` (up to ``c(X)``).

    :math:`A_{nku} = (X_n \star \mu_k)_u - \tfrac12\|\mu_k\|^2 + \log\pi_k`

    Parameters
    ----------
    X : array of shape (n_samples, n_channels, height, width)
        Images; ``(n_samples, height, width)`` means one channel.  Integer
        images are cast to the namespace's default float.
    kernels : array of shape (n_kernels, n_channels, kh, kw)
        Kernel means; ``(n_kernels, kh, kw)`` when there is one channel.
    log_weights : array of shape (n_kernels,), default=None
        Log mixture weights ``log π_k`` (``-inf`` allowed); ``None`` is uniform.
    padding : int or (int, int), default=0
        Zeros added on each side of the image (rows, columns).
    method : {"auto", "im2col", "fft"}, default="auto"
        Engine; ``"auto"`` picks the cheaper one from the shapes.
    latent : {"image", "patch"}, default="image"
        One (kernel, position) per image (the paper), or every patch an
        independent draw from the mixture.  ``log_joint`` is the same for
        both; ``posterior``, ``log_likelihood`` and the statistics differ.
    whitening : Whitening or None, default=None
        A fitted model's ``whitening_`` (``latent="patch"`` only): every
        patch is normalised and whitened before it meets the kernels, which
        live in whitened patch space (see ``ConvolutionalMixture``'s
        ``whiten``).  Needs the im2col engine (``method="auto"`` picks it).

    Returns
    -------
    log_joint : array of shape (n_samples, n_kernels, Ho, Wo)
        In the namespace, on the device and in the floating dtype of ``X``.

    Notes
    -----
    Tested on NumPy, array-api-strict (with and without fft), PyTorch (CPU)
    and, on a machine with a GPU, CuPy.
    """
    batch = _Batch(X, kernels, log_weights, padding, method, latent, whitening)
    return batch.log_joint()


def posterior(
    X, kernels, *, log_weights=None, padding=0, method="auto", latent="image",
    whitening=None,
):  # fmt: skip
    r"""Posterior ``γ[n, k, u] = p(Z=k, U=u | X_n)``, summing to 1 per image.

    :math:`\gamma_{nku} = \exp(A_{nku}) / \sum_{k'u'} \exp(A_{nk'u'})`

    Parameters and Notes as for :func:`log_joint`.

    Returns
    -------
    posterior : array of shape (n_samples, n_kernels, Ho, Wo)
    """
    batch = _Batch(X, kernels, log_weights, padding, method, latent, whitening)
    A = batch.log_joint()
    return batch.xp.exp(A - batch.log_normalizer(A))


def log_likelihood(
    X, kernels, *, log_weights=None, padding=0, method="auto", latent="image",
    whitening=None,
):  # fmt: skip
    r"""Exact log-likelihood ``log p(X_n)`` in nats, one value per image.

    :math:`\log p(X_n) = \operatorname{logsumexp}_{k,u} A_{nku} + c(X_n)`,
    :math:`c(X) = -\tfrac12\|X\|^2 - \tfrac{P}{2}\log 2\pi - \log|U|`

    Parameters and Notes as for :func:`log_joint`.

    Returns
    -------
    log_likelihood : array of shape (n_samples,)
    """
    batch = _Batch(X, kernels, log_weights, padding, method, latent, whitening)
    log_norm = batch.readout(lambda A, start, stop: batch.log_normalizer(A))
    return batch.log_likelihood(log_norm)


@dataclass(frozen=True)
class SufficientStatistics:
    """EM statistics of a set of images; they add up over disjoint sets.

    Attributes
    ----------
    counts : array of shape (n_kernels,)
        ``N_k = Σ_n Σ_u γ_n[k, u]``, the posterior mass of each kernel.
    sums : array of shape (n_kernels, n_channels, kh, kw)
        ``S_k = Σ_n Σ_u γ_n[k, u] · x_{n,u}`` (3-D when the kernels were 3-D).
    log_likelihood : array of shape ()
        ``Σ_n log p(X_n)``, exact and normalized.
    n_samples : int
        Number of images summed.

    The arrays are in the input's namespace and on its device, accumulated in
    float64 where the device has it (float32 input included), so that sums
    over many batches do not lose precision.
    """

    counts: Any
    sums: Any
    log_likelihood: Any
    n_samples: int

    def __add__(self, other):
        if not isinstance(other, SufficientStatistics):
            return NotImplemented
        return SufficientStatistics(
            self.counts + other.counts,
            self.sums + other.sums,
            self.log_likelihood + other.log_likelihood,
            self.n_samples + other.n_samples,
        )

    def m_step(self, reg_kernels=0.0):
        """MAP kernel update ``μ_k = S_k / (N_k + λ)`` (SPEC §2).

        Kernels whose update is undefined (``N_k + λ`` not above the float
        resolution) come back as NaN-free zeros *and* a boolean mask, so the
        caller can keep their previous values.
        """
        xp = get_namespace(self.counts)[0]
        denom = self.counts + reg_kernels
        tiny = xp.finfo(denom.dtype).smallest_normal
        ok = denom > tiny * 1e3
        safe = xp.where(ok, denom, xp.ones_like(denom))
        shape = (-1,) + (1,) * (self.sums.ndim - 1)
        return self.sums / xp.reshape(safe, shape), ok


def sufficient_statistics(
    X, kernels, *, log_weights=None, padding=0, method="auto", latent="image",
    whitening=None,
):  # fmt: skip
    r"""EM sufficient statistics of a batch: ``N_k``, ``S_k`` and ``Σ log p(X_n)``.

    :math:`N_k = \sum_{n,u}\gamma_{nku},\quad
    S_k = \sum_{n,u}\gamma_{nku}\,x_{n,u}`

    Statistics of two batches add up (``stats_a + stats_b``) to those of
    their union, which is what minibatches, epochs and workers rely on.

    Parameters and Notes as for :func:`log_joint`.

    Returns
    -------
    stats : SufficientStatistics
    """
    batch = _Batch(X, kernels, log_weights, padding, method, latent, whitening)
    return _statistics(batch, kernels_ndim=_checks.as_array(kernels, "k").ndim)


def window_statistics(X, kernels, *, margin=0, **options):
    """:func:`sufficient_statistics` with ``S_k`` over windows enlarged by ``margin``.

    ``options`` are those of :func:`sufficient_statistics`.  ``sums`` has
    shape ``(k, c, kh + 2·margin, kw + 2·margin)``: the posterior-weighted
    mean of the neighbourhood of each kernel's positions (zeros beyond the
    padded image).  Its ``kh × kw`` sub-windows are the M-step results for
    the kernel moved by up to ``margin`` pixels; ``_moves`` uses them to
    re-centre kernels that settled on a shifted pattern.
    """
    return _statistics(_Batch(X, kernels, **options), margin=margin)


def _statistics(batch, kernels_ndim=4, margin=0):
    xp = batch.xp
    wide = wide_float(xp, batch.device)
    # the engine's E+M pass (fused, chunked and threaded on NumPy)
    counts, sums, log_norm = batch.engine.statistics(
        batch.kernels, batch.log_weights, wide, batch.latent, margin
    )
    if kernels_ndim == 3:
        sums = sums[:, 0, ...]
    ll = xp.sum(batch.log_likelihood(log_norm, wide))
    return SufficientStatistics(counts, sums, ll, batch.X.shape[0])


# -- what the EM loop does with the statistics ---------------------------------
def objective(stats, kernels, reg_kernels=0.0):
    """Mean per-image log-likelihood minus the prior penalty, a Python float.

    ``(Σ_n log p(X_n) − ½ λ Σ_k ‖μ_k‖²) / n``: the quantity EM never
    decreases (SPEC §2) and ``tol`` is applied to.
    """
    xp = get_namespace(kernels)[0]
    penalty = 0.0
    if reg_kernels:
        penalty = 0.5 * reg_kernels * float(xp.sum(kernels * kernels))
    value = (float(stats.log_likelihood) - penalty) / stats.n_samples
    if not math.isfinite(value):
        raise ValueError(
            f"the objective is {value} (not finite): the images are too large "
            "for the floating dtype; rescale X to unit noise variance or pass "
            "float64"
        )
    return value


def m_step(stats, kernels, log_weights, reg_kernels=0.0, learn_weights=False):
    """MAP update ``(kernels, log_weights)``; kernels without mass keep their value.

    ``μ_k = S_k / (N_k + λ)`` and, with ``learn_weights``, ``π_k = N_k / n``;
    otherwise the weights stay as they are.
    """
    xp = get_namespace(kernels)[0]
    dtype = kernels.dtype
    new, ok = stats.m_step(reg_kernels)
    mask = xp.reshape(ok, (-1, 1, 1, 1))
    new = xp.where(mask, xp.astype(new, dtype), kernels)
    if learn_weights:
        total = xp.sum(stats.counts)
        log_weights = xp.astype(xp.log(stats.counts / total), dtype)
    return new, log_weights


def running_statistics(stats, t=0):
    """Per-image statistics ``N_k / n``, ``S_k / n`` as online EM carries them."""
    n = stats.n_samples
    return dict(counts=stats.counts / n, sums=stats.sums / n, n_seen=n, t=t)


def running_from_model(stats, kernels, weights, t):
    """Running statistics rebuilt from a model's ``kernels`` and ``weights``.

    For a model without them (one read by ``load``): ``N̄_k = π_k m`` and
    ``S̄_k = μ_k N̄_k`` per image, with ``m`` the latent draws per image (the
    batch's ``Σ_k N_k / n``: 1, or the positions for ``latent="patch"``), so
    the M-step of the rebuilt state gives the model back when
    ``reg_kernels=0``.  ``n_seen`` starts at 0 and ``t`` at ``t``.
    """
    xp = get_namespace(stats.counts)[0]
    wide = stats.counts.dtype
    per_image = xp.sum(stats.counts) / stats.n_samples
    counts = xp.astype(weights, wide) * per_image
    shape = (-1,) + (1,) * (stats.sums.ndim - 1)
    sums = xp.astype(kernels, wide) * xp.reshape(counts, shape)
    return dict(counts=counts, sums=sums, n_seen=0, t=t)


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
        new = dict(
            counts=(1 - eta) * running["counts"] + eta * (stats.counts / n),
            sums=(1 - eta) * running["sums"] + eta * (stats.sums / n),
            n_seen=running["n_seen"] + n,
            t=running["t"] + 1,
        )
    n_seen = new["n_seen"]
    blended = SufficientStatistics(
        new["counts"] * n_seen, new["sums"] * n_seen, 0.0, n_seen
    )
    return new, blended
