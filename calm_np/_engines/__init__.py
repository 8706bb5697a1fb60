"""Engines: the two correlations of an EM pass, and the one switch to NumPy's.

Layout (the one layout of the package):

    images  Xp       (n, c, Hp, Wp)   already zero-padded
    kernels M        (k, c, kh, kw)
    maps    A, resp  (n, k, Ho, Wo)   Ho = Hp - kh + 1, Wo = Wp - kw + 1

An engine is built once per batch of images by the shared constructor
``Engine(Xp, kernel_shape, xp, whitening=None)`` and keeps what both EM
steps share (the patch matrix, or the images' spectra), computed on first
use.  With a ``whitening`` (``_whiten``) the patches are whitened first;
only ``Im2col`` can (``FFT`` refuses one).  A new engine
subclasses :class:`Engine` and provides

    name                    the ``method`` value that selects it (``ENGINES``)
    correlate(kernels)  -> (n, k, Ho, Wo)   (Xp ⋆ M)[n, k, u]            E-step
    weighted_sum(resp)  -> (k, c, kh, kw)   Σ_n Σ_u resp[n,k,u] · x_{n,u}  M-step

and inherits

    log_joint(kernels, log_weights, scale)
                        -> (n, k, Ho, Wo)   A = scale·(correlate − ½‖μ‖²) + log π
    statistics(kernels, log_weights, wide, latent, margin, scale)
                        -> (N_k, S_k, log_norm)  one fused E- and M-step
    readout(kernels, log_weights, func, scale, by_position)
                        -> func(A, start, stop) per group of images, joined
    distances(kernels, func, sq_norms)
                        -> func(D, start, stop) of D = ‖x_u − μ_k‖², the same way

``scale = 1/σ²`` (docs/user_guide/model.rst §2, a learned shared variance) multiplies
the map,
never the data: the kernels are scaled before the correlation and the
statistics ``N_k``, ``S_k`` stay unscaled; ``scale=1`` is the paper's model,
with exactly the old arithmetic; so the EM code never needs to know which one it holds.

One fast path for every namespace.  ``statistics``, ``readout``,
``distances`` and ``Im2col.sq_norms`` run the engine's chunked *plan*
(:mod:`._plans`, driven by :mod:`._passes`): written once against the array
API, a few images at a time, for NumPy, CuPy, PyTorch and array-api-strict
alike.  What the standard lacks (``out=`` buffers, NumPy's worker threads,
strided window copies, chunk sizes per device) is lent by one object,
:class:`._kit.Kit`; ``_xp.native_paths(False)`` turns those aids off.
``correlate`` and ``weighted_sum`` below are the whole-batch *reference*
(:func:`reference_statistics`): plain and short, the oracle the tests hold
the plans to, not a path a fit takes.

Methods.  ``"im2col"``: both steps as GEMMs with the patch matrix.
``"fft"``: the Fourier family, correlations as products of spectra; the
plan transforms along image rows only (a DFT by GEMM, length ``Wp``) and
sums along columns directly (:class:`._plans.RowDFTPlan`); the reference
multiplies 2-D ``rfft2`` spectra.  Both compute the same correlations;
they differ in rounding only.  ``"auto"``: :func:`choose_method`, by the
namespace's calibrated cost model (:mod:`._cost`).
"""

from __future__ import annotations

import functools

from .._whiten import whiten_columns
from .._xp import (
    device_of,
    extract_patches,
    flush_tiny,
    has_fft,
    irfft2,
    logsumexp,
    native_enabled,
    next_fast_len,
    pad_zeros,
    rfft2,
)
from . import _cost, _passes


class Engine:
    """The engine interface, and the constructor every engine shares.

    Attributes: ``xp``, ``Xp`` (the padded images), ``n, c, kh, kw`` and
    the map size ``Ho, Wo``.  Subclasses set ``name`` and implement
    :meth:`correlate` and :meth:`weighted_sum`.
    """

    name = None

    def __init__(self, Xp, kernel_shape, xp, whitening=None):
        self.xp = xp
        self.Xp = Xp
        self.device = device_of(Xp)
        self.whitening = whitening  # a _whiten.Whitening: patches are whitened
        n, c, Hp, Wp = Xp.shape
        kh, kw = kernel_shape
        self.n, self.c, self.kh, self.kw = n, c, kh, kw
        self.Ho, self.Wo = Hp - kh + 1, Wp - kw + 1

    def correlate(self, kernels):
        """``(n, k, Ho, Wo)``: each image correlated with each kernel."""
        raise NotImplementedError

    def weighted_sum(self, resp):
        """``(k, c, kh, kw)``: ``Σ_n Σ_u resp[n, k, u] · x_{n,u}``."""
        raise NotImplementedError

    def log_joint(self, kernels, log_weights, scale=1.0):
        """``A = (Xp ⋆ μ_k − ½‖μ_k‖²)·scale + log π_k``, ``(n, k, Ho, Wo)``."""
        xp = self.xp
        bias = -0.5 * xp.sum(kernels * kernels, axis=(1, 2, 3))
        if scale != 1.0:
            bias, kernels = bias * scale, kernels * scale
        bias = bias + log_weights
        return self.correlate(kernels) + bias[None, :, None, None]

    def readout(self, kernels, log_weights, func, scale=1.0, by_position=False):
        """``func(A, start, stop)`` of the log joint ``A`` of images
        ``[start, stop)``, concatenated along the images.

        ``func`` reduces maps to per-image values (features, normalisers)
        with namespace code; it may be called on groups of images (NumPy's
        fast path: a few images' maps at a time, on threads) or once on the
        whole batch, and must not keep ``A``.  ``by_position`` is a hint:
        ``func`` pools boxes of positions (NumPy's fused im2col then lays
        ``A`` out kernels innermost), rather than reducing over kernels or
        whole maps; the values are the same.
        """
        if self.n == 0 or not native_enabled():
            return func(self.log_joint(kernels, log_weights, scale), 0, self.n)
        args = (self, kernels, log_weights, func, scale, by_position)
        return _passes.readout(*args)

    def distances(self, kernels, func, sq_norms):
        """:meth:`readout` of the squared distances ``D[n, k, u] = ‖x_u − μ_k‖²``
        (whitened patches where the engine whitens) instead of ``A``.

        ``sq_norms()`` gives the patches' ``‖x_u‖²`` (n, Ho, Wo); NumPy's
        fused pass of whitened patches takes them from the patches it just
        whitened instead (no second whitening).
        """
        if self.n > 0 and native_enabled():
            return _passes.distances(self, kernels, func, sq_norms)
        zeros = self.xp.zeros_like(kernels[:, 0, 0, 0])
        D = self.log_joint(kernels, zeros, scale=-2.0)  # −2·x·μ + ‖μ‖²
        return func(D + sq_norms()[:, None, ...], 0, self.n)

    def statistics(
        self, kernels, log_weights, wide, latent="image", margin=0, scale=1.0
    ):
        """``(N_k, S_k, log_norm)`` of the batch under ``kernels`` (E + M step).

        ``N_k`` (k,) and ``S_k`` (k, c, kh + 2·margin, kw + 2·margin) are in
        ``wide``; ``S_k`` sums windows enlarged by ``margin`` around each
        position (zeros beyond the padded images).  ``log_norm`` is the
        logsumexp of ``A`` over the latent: ``(k, u)`` per image, shape
        (n, 1, 1, 1), for ``latent="image"``; ``k`` per position, shape
        (n, 1, Ho, Wo), for ``"patch"``; in the kernels' dtype.  ``A`` is
        the log joint at ``scale`` (``N_k``, ``S_k`` are not scaled).
        """
        args = (self, kernels, log_weights, wide, latent, margin, scale)
        if self.n > 0 and native_enabled():
            return _passes.statistics(*args)
        return reference_statistics(*args)

    def widened(self, margin):
        """The same engine on images padded by ``margin`` more, with windows
        ``2·margin`` larger: the same positions, seen through bigger patches."""
        if not margin:
            return self
        if self.whitening is not None:
            raise ValueError(
                "window statistics (margin > 0) are in image space; they are "
                "not defined for whitened patches (whitening must be None)"
            )
        Xp = pad_zeros(self.Xp, (margin, margin), self.xp)
        return type(self)(Xp, (self.kh + 2 * margin, self.kw + 2 * margin), self.xp)


# axes of the maps a posterior is normalised over, per latent
LATENT_AXES = {"image": (1, 2, 3), "patch": (1,)}


def reference_statistics(
    engine, kernels, log_weights, wide, latent="image", margin=0, scale=1.0
):
    """:meth:`Engine.statistics` on whole-batch arrays: E-step, softmax,
    M-step, in the plainest code (the tests' oracle for the plans)."""
    xp = engine.xp
    A = engine.log_joint(kernels, log_weights, scale)
    log_norm = logsumexp(A, axis=LATENT_AXES[latent], keepdims=True)
    resp = xp.exp(A - log_norm)
    counts = xp.sum(xp.astype(xp.sum(resp, axis=(2, 3)), wide), axis=0)
    sums = xp.astype(engine.widened(margin).weighted_sum(resp), wide)
    return counts, sums, log_norm


class Im2col(Engine):
    """Patch matrix ``P`` of shape ``(n, c·kh·kw, Ho·Wo)``; both steps are GEMMs.

    With ``whitening`` the columns of ``P`` are the whitened patches ``z_u``
    (``_whiten.whiten_columns``), so both steps work in whitened space.

    Memory is ``n·c·kh·kw·Ho·Wo`` elements (the reference's; the chunked
    plan builds it a few images at a time and never holds it whole).
    """

    name = "im2col"

    @functools.cached_property
    def patches(self):
        P = extract_patches(self.Xp, self.kh, self.kw, self.xp)
        if self.whitening is not None:
            P = whiten_columns(P, self.whitening, self.xp)
        return P

    # ‖z_u‖² (n, Ho, Wo) once computed: by sq_norms, or by a fused pass
    # that had the whitened patches at hand
    known_sq_norms = None

    def sq_norms(self):
        """``‖z_u‖²`` of every (whitened) patch, ``(n, Ho, Wo)``."""
        xp = self.xp
        if self.known_sq_norms is None:
            if self.n > 0 and native_enabled():
                self.known_sq_norms = _passes.sq_norms(self)
            else:
                P = self.patches
                sq = xp.sum(P * P, axis=1)
                self.known_sq_norms = xp.reshape(sq, (self.n, self.Ho, self.Wo))
        return self.known_sq_norms

    def correlate(self, kernels):
        xp = self.xp
        k = kernels.shape[0]
        M = xp.reshape(kernels, (k, self.c * self.kh * self.kw))
        A = xp.matmul(M, self.patches)  # (n, k, L): one GEMM per image
        return xp.reshape(A, (self.n, k, self.Ho, self.Wo))

    def weighted_sum(self, resp):
        xp = self.xp
        k = resp.shape[1]
        resp = flush_tiny(resp, xp)
        R = xp.reshape(resp, (self.n, k, self.Ho * self.Wo))
        # Σ_n Σ_u R[n,k,u] P[n,d,u]: one GEMM over the (n, u) pairs
        S = xp.tensordot(R, self.patches, axes=((0, 2), (0, 2)))
        return xp.reshape(S, (k, self.c, self.kh, self.kw))


def plan_shapes(image_shape, kernel_shape):
    """FFT size for both steps: the padded image size, rounded up to fast.

    A circular correlation of length ``F >= Hp`` equals the linear one on the
    ``Ho`` valid positions (E-step) and on the ``kh`` kernel offsets (M-step):
    ``u + v <= Hp - 1 < F`` never wraps.
    """
    (Hp, Wp), _ = image_shape, kernel_shape
    return next_fast_len(Hp), next_fast_len(Wp)


class FFT(Engine):
    """Spectra of the padded images, shared by both steps.

    E-step: ``A = irfft2(Σ_c X̂_c · conj(M̂_c))`` cropped to ``Ho × Wo``.
    M-step: each image's posterior maps are its own filters (a grouped
    convolution); the sum over images happens in the frequency domain,
    ``Ŝ[k, c] = Σ_n conj(R̂[n, k]) · X̂[n, c]``, then one inverse transform
    cropped to ``kh × kw``.  The spectra are computed on first use, by the
    reference only (the chunked plan transforms rows of a few images at a
    time instead).
    """

    name = "fft"

    def __init__(self, Xp, kernel_shape, xp, whitening=None):
        if whitening is not None:
            raise ValueError(
                "method='fft' cannot whiten patches; use method='im2col' or 'auto'"
            )
        super().__init__(Xp, kernel_shape, xp)
        self.shape = plan_shapes(tuple(Xp.shape[2:]), kernel_shape)

    @functools.cached_property
    def X_f(self):
        xp = self.xp
        X_f = rfft2(self.Xp, self.shape, xp=xp)  # (n, c, F1, F2r)
        # frequency-major copy: the products below are batched matmuls
        return xp.permute_dims(X_f, (2, 3, 0, 1))  # (F1, F2r, n, c)

    def correlate(self, kernels):
        xp = self.xp
        M_f = xp.conj(rfft2(kernels, self.shape, xp=xp))  # (k, c, F1, F2r)
        M_f = xp.permute_dims(M_f, (2, 3, 1, 0))  # (F1, F2r, c, k)
        A_f = xp.matmul(self.X_f, M_f)  # Σ_c: (F1, F2r, n, k)
        A = irfft2(xp.permute_dims(A_f, (2, 3, 0, 1)), self.shape, xp=xp)
        return A[:, :, : self.Ho, : self.Wo]

    def weighted_sum(self, resp):
        xp = self.xp
        resp = flush_tiny(resp, xp)
        R_f = xp.conj(rfft2(resp, self.shape, xp=xp))  # (n, k, F1, F2r)
        R_f = xp.permute_dims(R_f, (2, 3, 1, 0))  # (F1, F2r, k, n)
        S_f = xp.matmul(R_f, self.X_f)  # Σ_n: (F1, F2r, k, c)
        S = irfft2(xp.permute_dims(S_f, (2, 3, 0, 1)), self.shape, xp=xp)
        return S[:, :, : self.kh, : self.kw]


ENGINES = {engine.name: engine for engine in (Im2col, FFT)}


def choose_method(xp, n_channels, n_kernels, padded_shape, kernel_shape,
                  latent="image", device=None):  # fmt: skip
    """What ``method="auto"`` runs: the plan modelled cheaper for the shapes,
    by the cost model of the namespace and device (:func:`._cost.choose`);
    ``"im2col"`` on a namespace without the ``fft`` extension."""
    if not has_fft(xp):
        return "im2col"
    args = (n_channels, n_kernels, padded_shape, kernel_shape, latent)
    return _cost.choose(_cost.profile(xp, device), *args)
