"""The convolution–posterior identity and the EM statistics
(docs/user_guide/model.rst §1–2).

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

With a shared pixel variance σ² (docs/user_guide/model.rst §2, ``variance``; 1 is
the paper's
model) the map is scaled, ``A_σ = (Xp ⋆ μ_k − ½‖μ_k‖²)/σ² + log π_k``, and
``c(X) = −‖X‖²/(2σ²) − (P/2)·log 2πσ² − log |U|``: σ² is the softmax's
temperature.  The M-step is ECM, kernels at the current σ², then σ².

``latent="patch"`` (ours, docs/user_guide/model.rst §1) instead draws *every* patch
``x_u`` from
``Σ_k π_k N(μ_k, I)``: the posterior is a softmax over ``k`` at each position
and the objective is the pseudo-log-likelihood
``Σ_u (logsumexp_k A[k, u] − ½‖x_u‖² − (D/2) log 2π)``.  The engines and the
M-step are shared; only the normalisation differs.

What the EM loop does with the statistics lives here too: :class:`Params`
(kernels, log weights and σ², the one value a fit threads), :func:`objective`
(the mean per-image objective ``tol`` is applied to), :func:`m_step` (the
MAP update of kernels and weights, then σ²), :func:`initial_variance` (σ²'s
start); the stepwise blend of ``partial_fit`` is :mod:`~calm_np._online`.
The estimator only sequences them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from . import _checks
from ._engines import ENGINES, LATENT_AXES, choose_method
from ._mstep import VARIANCE_FLOOR, _learned_variance
from ._whiten import on_namespace
from ._xp import (
    LOG_2PI,
    get_namespace,
    interval_sums,
    logsumexp,
    pad_zeros,
    single_threaded_blas,
    wide_float,
)

__all__ = [
    "SufficientStatistics",
    "log_joint",
    "log_likelihood",
    "posterior",
    "sufficient_statistics",
]


def _window_counts(size, pad, n_windows, length):
    """How many of ``n_windows`` windows of ``length`` (starting at 0, 1, …
    of the padded axis) hold each of the ``size`` pixels after ``pad``."""
    return [
        min(i + pad, n_windows - 1) - max(0, i + pad - length + 1) + 1
        for i in range(size)
    ]


@dataclass(frozen=True)
class Options:
    """How a batch's maps are computed, besides the images and the kernels.

    The one bundle that travels from the public functions and the estimator
    through the data sources (``_data``, ``_dask``) and the readouts to
    :class:`_Batch`.  ``padding`` (int or pair), ``method``, ``latent``,
    ``variance`` (σ², a float) and ``whitening`` (a ``_whiten.Whitening`` or
    None) mean what they mean for :func:`log_joint`; :class:`_Batch` checks
    them.
    """

    padding: Any = 0
    method: str = "auto"
    latent: str = "image"
    variance: float = 1.0
    whitening: Any = None

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


class _Batch:
    """A batch of images with kernels, weights and an engine.

    By default everything is validated (the public functions: the boundary).
    ``trusted=True`` is for the EM loop and the readouts of a fitted model,
    whose images were validated once where they entered (``_data``) and
    whose kernels, weights and whitening are the model's own: only shapes
    and dtypes are looked at, nothing is read back from the device (no host
    sync per batch).
    """

    def __init__(self, X, kernels, log_weights=None, options=None, *, trusted=False):
        options = Options() if options is None else options
        latent, method = options.latent, options.method
        whitening = options.whitening
        self.latent = _checks.check_latent(latent)
        self.variance = _checks.check_variance(options.variance)
        self.scale = 1.0 / self.variance  # exactly 1 for the paper's model
        X = _checks.as_array(X, "X")
        kernels = _checks.as_array(kernels, "kernels")
        if log_weights is not None:
            log_weights = _checks.as_array(log_weights, "log_weights")
        xp, device = get_namespace(X, kernels, log_weights)
        _checks.check_method(method, xp)
        padding = _checks.check_padding(options.padding)
        # no layout check: the kernels' channel count is the check here (X
        # may be a network's maps, channels-first by construction)
        X = _checks.check_images(X, layout=False)
        kernels = _checks.check_kernels(kernels, X.shape[1])
        dtype = _checks.float_dtype(xp, [(X, "X"), (kernels, "kernels")], device)
        X = xp.astype(X, dtype, copy=False)
        kernels = xp.astype(kernels, dtype, copy=False)
        kernel_shape = tuple(kernels.shape[2:])
        Hp, Wp = _checks.check_sizes(tuple(X.shape[2:]), kernel_shape, padding)
        k = kernels.shape[0]
        map_shape = (Hp - kernel_shape[0] + 1, Wp - kernel_shape[1] + 1)
        _checks.check_map_size(k, map_shape)
        D = kernels.shape[1] * kernel_shape[0] * kernel_shape[1]
        whitening = _checks.check_whitening(whitening, D, latent, method)
        self.whitening = on_namespace(whitening, xp, dtype, device)
        if trusted:
            if log_weights is None:
                log_weights = xp.full((k,), -math.log(k), dtype=dtype, device=device)
            self.log_weights = xp.astype(log_weights, dtype, copy=False)
        else:
            self.log_weights = _checks.check_log_weights(
                log_weights, k, xp, dtype, device
            )
            self._check_values(X, kernels, D, xp)
        if whitening is not None:
            method = "im2col"  # the one engine that whitens (see _whiten)
        self.xp, self.device, self.dtype = xp, device, dtype
        self.X, self.kernels, self.padding = X, kernels, padding
        self.kernel_shape = kernel_shape
        self.padded_shape = (Hp, Wp)
        if X.shape[0] == 0:
            method = "im2col"  # nothing to transform (torch's FFT refuses n=0)
        elif method == "auto":
            shapes = (X.shape[1], k, (Hp, Wp), kernel_shape)
            method = choose_method(xp, *shapes, latent=latent, device=device)
        self.method = method
        self._engine = None
        self._sq_norms = self._sq_sums = None

    def _check_values(self, X, kernels, D, xp):
        """The checks that read values: finite images, kernels and
        whitening, and a log joint within the dtype's range."""
        peak = _checks.check_images_finite(X, "X", xp)
        _checks.check_finite(kernels, "kernels", xp)
        if self.whitening is not None:
            _checks.check_finite(self.whitening.matrix, "whitening", xp)
            _checks.check_finite(self.whitening.mean, "whitening", xp)
        patch_norm = 0.0 if self.whitening is not None else math.sqrt(D) * peak
        _checks.check_log_joint_range(kernels, self.variance, patch_norm, xp)

    @property
    def engine(self):
        if self._engine is None:
            Xp = pad_zeros(self.X, self.padding, self.xp)
            engine = ENGINES[self.method]
            self._engine = engine(Xp, self.kernel_shape, self.xp, self.whitening)
        return self._engine

    def log_joint(self):
        """The log joint ``A`` (n, k, Ho, Wo), computed chunk by chunk."""
        xp = self.xp
        return self.readout(lambda A, start, stop: xp.asarray(A, copy=True))

    def reference_log_joint(self):
        """:meth:`log_joint` by the whole-batch reference engine."""
        return self.engine.log_joint(self.kernels, self.log_weights, self.scale)

    def readout(self, func, scale=None):
        """``func(A, start, stop)`` over the log joint, a few images at a
        time where the engine can (``Engine.readout``); ``scale`` (default
        ``1/σ²``) is the map's (1 reads distances, σ² or not)."""
        scale = self.scale if scale is None else scale
        return self.engine.readout(self.kernels, self.log_weights, func, scale)

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
        n_pos = log_norm.shape[2] * log_norm.shape[3]
        # Σ_u (log Z_u − ½‖x_u‖²/σ²) − ½·|U|·D·log 2πσ², summed in ``wide``
        sums = xp.sum(log_norm, axis=(1, 2, 3), dtype=wide)
        sums = sums - 0.5 * self.sq_sums(wide) / self.variance
        return sums - 0.5 * c * kh * kw * self._log_2pi_var() * n_pos

    def sq_sums(self, wide=None):
        """Per image (n,), the squared values the model explains, in ``wide``
        if given: ``‖X_n‖²`` (image latent), or ``Σ_u ‖x_u‖²`` over every
        patch (patch latent).  Unwhitened patches need no per-patch norms:
        each pixel's square counts once per window that holds it, a
        separable weight (one pass over the pixels, not over the patches)."""
        xp = self.xp
        cast = (lambda a: a) if wide is None else (lambda a: xp.astype(a, wide))
        if self.latent == "image":
            return cast(self.sq_norms())
        if self._sq_sums is None:  # once per batch (objective, then σ²'s total)
            if self.whitening is not None:
                self._sq_sums = xp.sum(self.sq_norms(), axis=(1, 2))
            else:
                self._sq_sums = self._pixel_weighted_sq_sums()
        return cast(self._sq_sums)

    def _pixel_weighted_sq_sums(self):
        xp = self.xp
        n, c, H, W = self.X.shape
        (ph, pw), (kh, kw) = self.padding, self.kernel_shape
        Hp, Wp = self.padded_shape
        rows = _window_counts(H, ph, Hp - kh + 1, kh)
        cols = _window_counts(W, pw, Wp - kw + 1, kw)
        weight = [r * q for r in rows for q in cols]
        weight = xp.asarray(weight, dtype=self.dtype, device=self.device)
        weight = xp.reshape(xp.broadcast_to(weight, (c, H * W)), (-1,))
        # one thread: OpenBLAS's pool would spin on into the next fused pass
        with single_threaded_blas():
            return xp.reshape(self.X * self.X, (n, c * H * W)) @ weight

    def _log_2pi_var(self):
        return LOG_2PI + math.log(self.variance)  # exactly LOG_2PI when σ² = 1

    def log_const(self):
        """``c(X)`` per image, ``(n,)``."""
        n, c, _, _ = self.X.shape
        Hp, Wp = self.padded_shape
        kh, kw = self.kernel_shape
        n_pos = (Hp - kh + 1) * (Wp - kw + 1)
        const = -0.5 * c * Hp * Wp * self._log_2pi_var() - math.log(n_pos)
        return -0.5 * (self.sq_norms() / self.variance) + const

    def n_values(self):
        """Gaussian values the model explains per image: ``P`` (image) or
        ``|U|·D`` (patch), the denominator of σ²'s M-step."""
        (Hp, Wp), (kh, kw) = self.padded_shape, self.kernel_shape
        c = self.X.shape[1]
        if self.latent == "image":
            return c * Hp * Wp
        return (Hp - kh + 1) * (Wp - kw + 1) * c * kh * kw

    def sq_norms(self):
        """``‖X_n‖²`` (n,) for ``latent="image"``, or ``‖x_u‖²`` (n, Ho, Wo)
        (:meth:`patch_sq_norms`) for ``"patch"``; computed once per batch."""
        if self._sq_norms is None:
            xp = self.xp
            if self.latent == "image":
                self._sq_norms = xp.sum(self.X * self.X, axis=(1, 2, 3))
            else:
                self._sq_norms = self.patch_sq_norms()
        return self._sq_norms

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
    variance=1.0, whitening=None,
):  # fmt: skip
    r"""Log joint ``A[n, k, u]`` of kernel ``k`` at position ``u`` (up to ``c(X)``).

    :math:`A_{nku} = ((X_n \star \mu_k)_u - \tfrac12\|\mu_k\|^2)/\sigma^2
    + \log\pi_k`

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
    variance : float, default=1.0
        The shared pixel variance ``σ²`` (docs/user_guide/model.rst §2); 1 is the
        paper's model.
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

    Examples
    --------
    >>> import numpy as np
    >>> import calm_np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((2, 1, 8, 8))
    >>> kernels = rng.standard_normal((3, 1, 3, 3))
    >>> A = calm_np.log_joint(X, kernels, padding=1)
    >>> A.shape  # (images, kernels, Ho, Wo)
    (2, 3, 8, 8)
    >>> # the map is a convolution layer's output with bias -|mu_k|^2/2 + log(1/K)
    >>> patch = X[0, 0, 2:5, 3:6]  # the window at position (3, 4) of the padded image
    >>> bias = -0.5 * (kernels[1] ** 2).sum() - np.log(3)
    >>> expected = (patch * kernels[1, 0]).sum() + bias
    >>> bool(np.isclose(A[0, 1, 3, 4], expected))
    True
    """
    options = Options(padding, method, latent, variance, whitening)
    return _Batch(X, kernels, log_weights, options).log_joint()


def posterior(
    X, kernels, *, log_weights=None, padding=0, method="auto", latent="image",
    variance=1.0, whitening=None,
):  # fmt: skip
    r"""Posterior ``γ[n, k, u] = p(Z=k, U=u | X_n)``, summing to 1 per image.

    :math:`\gamma_{nku} = \exp(A_{nku}) / \sum_{k'u'} \exp(A_{nk'u'})`

    Parameters and Notes as for :func:`log_joint`.

    Returns
    -------
    posterior : array of shape (n_samples, n_kernels, Ho, Wo)

    Examples
    --------
    >>> import numpy as np
    >>> import calm_np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((2, 1, 8, 8))
    >>> kernels = rng.standard_normal((3, 1, 3, 3))
    >>> gamma = calm_np.posterior(X, kernels)
    >>> gamma.shape, np.round(gamma.sum(axis=(1, 2, 3)), 6)  # sums to 1 per image
    ((2, 3, 6, 6), array([1., 1.]))
    """
    options = Options(padding, method, latent, variance, whitening)
    batch = _Batch(X, kernels, log_weights, options)
    A = batch.log_joint()
    return batch.xp.exp(A - batch.log_normalizer(A))


def log_likelihood(
    X, kernels, *, log_weights=None, padding=0, method="auto", latent="image",
    variance=1.0, whitening=None,
):  # fmt: skip
    r"""Exact log-likelihood ``log p(X_n)`` in nats, one value per image.

    :math:`\log p(X_n) = \operatorname{logsumexp}_{k,u} A_{nku} + c(X_n)`,
    :math:`c(X) = -\|X\|^2/(2\sigma^2) - \tfrac{P}{2}\log 2\pi\sigma^2 - \log|U|`

    Parameters and Notes as for :func:`log_joint`.

    Returns
    -------
    log_likelihood : array of shape (n_samples,)

    Examples
    --------
    >>> import numpy as np
    >>> import calm_np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((2, 1, 8, 8))
    >>> kernels = rng.standard_normal((3, 1, 3, 3))
    >>> calm_np.log_likelihood(X, kernels).shape  # log p(X_n) in nats
    (2,)
    >>> # zero kernels: every pixel is standard normal noise
    >>> ll = calm_np.log_likelihood(X, np.zeros((3, 1, 3, 3)))
    >>> noise = -0.5 * (X ** 2).sum(axis=(1, 2, 3)) - 32 * np.log(2 * np.pi)
    >>> bool(np.allclose(ll, noise))
    True
    """
    options = Options(padding, method, latent, variance, whitening)
    return batch_log_likelihood(_Batch(X, kernels, log_weights, options))


def batch_log_likelihood(batch):
    """:func:`log_likelihood` of a ``_Batch``, chunk by chunk."""
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
    sq_norm : array of shape ()
        ``Σ_n ‖X_n‖²`` (image latent) or ``Σ_n Σ_u ‖x_{n,u}‖²`` (patch): with
        ``n_values`` what σ²'s M-step needs besides ``N_k``, ``S_k``.
    n_values : int
        Gaussian values explained: ``Σ_n P`` (image) or ``Σ_n |U|·D`` (patch).

    The arrays are in the input's namespace and on its device, accumulated in
    float64 where the device has it (float32 input included), so that sums
    over many batches do not lose precision.

    Examples
    --------
    >>> import numpy as np
    >>> import calm_np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((6, 1, 8, 8))
    >>> kernels = rng.standard_normal((3, 1, 3, 3))
    >>> a = calm_np.sufficient_statistics(X[:2], kernels)
    >>> b = calm_np.sufficient_statistics(X[2:], kernels)
    >>> both = calm_np.sufficient_statistics(X, kernels)
    >>> total = a + b  # statistics of disjoint sets add up
    >>> total.n_samples, bool(np.allclose(total.sums, both.sums))
    (6, True)
    >>> new, defined = total.m_step()  # new kernels S_k / N_k
    >>> new.shape, bool(defined.all())
    ((3, 1, 3, 3), True)
    """

    counts: Any
    sums: Any
    log_likelihood: Any
    n_samples: int
    sq_norm: Any = 0.0
    n_values: int = 0

    def __add__(self, other):
        if not isinstance(other, SufficientStatistics):
            return NotImplemented
        if tuple(self.sums.shape) != tuple(other.sums.shape):
            raise ValueError(
                f"cannot add statistics of kernels {tuple(self.sums.shape)} and "
                f"{tuple(other.sums.shape)}; add statistics of the same kernels"
            )
        get_namespace(self.counts, other.counts)  # one library, or a TypeError
        return SufficientStatistics(
            self.counts + other.counts,
            self.sums + other.sums,
            self.log_likelihood + other.log_likelihood,
            self.n_samples + other.n_samples,
            self.sq_norm + other.sq_norm,
            self.n_values + other.n_values,
        )

    def __radd__(self, other):  # sum(stats) starts from 0
        return self if isinstance(other, int) and other == 0 else NotImplemented

    def m_step(self, reg_kernels=0.0, variance=1.0):
        """MAP kernel update ``μ_k = S_k / (N_k + λσ²)`` (docs/user_guide/model.rst §2).

        Kernels whose update is undefined (``N_k + λ`` not above the float
        resolution) come back as NaN-free zeros *and* a boolean mask, so the
        caller can keep their previous values.
        """
        xp = get_namespace(self.counts)[0]
        denom = self.counts + reg_kernels * variance
        tiny = xp.finfo(denom.dtype).smallest_normal
        ok = denom > tiny * 1e3
        safe = xp.where(ok, denom, xp.ones_like(denom))
        shape = (-1,) + (1,) * (self.sums.ndim - 1)
        return self.sums / xp.reshape(safe, shape), ok


def sufficient_statistics(
    X, kernels, *, log_weights=None, padding=0, method="auto", latent="image",
    variance=1.0, whitening=None,
):  # fmt: skip
    r"""EM statistics of a batch: ``N_k``, ``S_k``, ``Σ log p(X_n)``, ``Σ‖X_n‖²``.

    :math:`N_k = \sum_{n,u}\gamma_{nku},\quad
    S_k = \sum_{n,u}\gamma_{nku}\,x_{n,u}`

    Statistics of two batches add up (``stats_a + stats_b``) to those of
    their union, which is what minibatches, epochs and workers rely on.

    Parameters and Notes as for :func:`log_joint`.

    Returns
    -------
    stats : SufficientStatistics

    Examples
    --------
    >>> import numpy as np
    >>> import calm_np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((5, 1, 8, 8))
    >>> kernels = rng.standard_normal((3, 1, 3, 3))
    >>> stats = calm_np.sufficient_statistics(X, kernels)
    >>> stats.counts.shape, stats.sums.shape
    ((3,), (3, 1, 3, 3))
    >>> round(float(stats.counts.sum()), 6)  # one (kernel, position) per image
    5.0
    """
    options = Options(padding, method, latent, variance, whitening)
    return batch_statistics(X, kernels, log_weights, options)


def batch_statistics(X, kernels, log_weights, options, margin=0, trusted=False):
    """:func:`sufficient_statistics` (``margin=0``) or
    :func:`window_statistics` of one batch, given :class:`Options`; with
    ``trusted`` (images validated where they entered, the model's own
    kernels) without the checks that read values back (``_Batch``)."""
    batch = _Batch(X, kernels, log_weights, options, trusted=trusted)
    ndim = 4 if margin else _checks.as_array(kernels, "kernels").ndim
    return _statistics(batch, kernels_ndim=ndim, margin=margin)


def window_statistics(X, kernels, *, margin=0, log_weights=None, **options):
    """:func:`sufficient_statistics` with ``S_k`` over windows enlarged by ``margin``.

    ``options`` are the other keywords of :func:`sufficient_statistics`
    (the fields of :class:`Options`).  ``sums`` has
    shape ``(k, c, kh + 2·margin, kw + 2·margin)``: the posterior-weighted
    mean of the neighbourhood of each kernel's positions (zeros beyond the
    padded image).  Its ``kh × kw`` sub-windows are the M-step results for
    the kernel moved by up to ``margin`` pixels; ``_moves`` uses them to
    re-centre kernels that settled on a shifted pattern.
    """
    return batch_statistics(X, kernels, log_weights, Options(**options), margin)


def _statistics(batch, kernels_ndim=4, margin=0):
    xp = batch.xp
    wide = wide_float(xp, batch.device)
    # the engine's E+M pass (fused, chunked and threaded on NumPy)
    counts, sums, log_norm = batch.engine.statistics(
        batch.kernels, batch.log_weights, wide, batch.latent, margin, batch.scale
    )
    if kernels_ndim == 3:
        sums = sums[:, 0, ...]
    ll = xp.sum(batch.log_likelihood(log_norm, wide))
    sq = xp.sum(batch.sq_sums(wide))
    n = batch.X.shape[0]
    return SufficientStatistics(counts, sums, ll, n, sq, n * batch.n_values())


# Images sampled (evenly spaced, no random draw) for the initial σ².
VARIANCE_INIT_IMAGES = 1024


def initial_variance(source, kernels, padding, method, latent, whitening=None):
    """σ² to start a fit from: the hard-assignment residual of ``kernels``.

    The mean over values of ``‖x − μ_k‖²`` for each image's best (kernel,
    position) (``latent="image"``, the background counted) or each patch's
    nearest kernel (``"patch"``), on up to ``VARIANCE_INIT_IMAGES`` evenly
    spaced images of ``source``; floored like :func:`variance_step`.  It puts
    the first E-step's temperature on the data's scale.
    """
    import numpy as np

    n = source.n_samples
    idx = np.unique(np.linspace(0, n - 1, min(n, VARIANCE_INIT_IMAGES)).astype(int))
    options = Options(padding, method, latent, 1.0, whitening)
    batch = _Batch(source.take(idx), kernels, None, options, trusted=source.validated)
    xp = batch.xp
    axes = LATENT_AXES[latent]
    # A = x_u·μ_k − ½‖μ_k‖² − log k; ‖x − μ_k‖² = ‖x‖² − 2 (A + log k)
    best = batch.readout(lambda A, start, stop: xp.max(A, axis=axes))
    wide = wide_float(xp, batch.device)
    sq = float(xp.sum(batch.sq_sums(wide)))
    fit = 2.0 * float(xp.sum(xp.astype(best, wide))) + 2.0 * math.log(
        kernels.shape[0]
    ) * math.prod(best.shape)
    Q = max(sq - fit, VARIANCE_FLOOR * sq)
    n_values = len(idx) * batch.n_values()
    return _learned_variance(Q / n_values, batch.dtype, xp) if Q > 0 else 1.0
