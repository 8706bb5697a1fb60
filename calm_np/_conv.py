"""The two engines: the same two correlations, by im2col and by FFT.

Layout (the one layout of the package):

    images  Xp       (n, c, Hp, Wp)   already zero-padded
    kernels M        (k, c, kh, kw)
    maps    A, resp  (n, k, Ho, Wo)   Ho = Hp - kh + 1, Wo = Wp - kw + 1

An engine is built once per batch of images (it keeps what both EM steps
share: the patch matrix, or the images' spectra) and offers

    correlate(kernels)  -> (n, k, Ho, Wo)   (Xp ⋆ M)[n, k, u]            E-step
    weighted_sum(resp)  -> (k, c, kh, kw)   Σ_n Σ_u resp[n,k,u] · x_{n,u}  M-step

so the EM code never needs to know which one it holds.
"""

from __future__ import annotations

import math

from ._xp import irfft2, next_fast_len, rfft2, use_native


class Im2col:
    """Patch matrix ``P`` of shape ``(n, c·kh·kw, Ho·Wo)``; both steps are GEMMs.

    Memory is ``n·c·kh·kw·Ho·Wo`` elements: fast for small kernels.
    """

    name = "im2col"

    def __init__(self, Xp, kernel_shape, xp):
        self.xp = xp
        n, c, Hp, Wp = Xp.shape
        kh, kw = kernel_shape
        self.n, self.c, self.kh, self.kw = n, c, kh, kw
        self.Ho, self.Wo = Hp - kh + 1, Wp - kw + 1
        self.patches = _extract_patches(Xp, kh, kw, xp)

    def correlate(self, kernels):
        xp = self.xp
        k = kernels.shape[0]
        M = xp.reshape(kernels, (k, self.c * self.kh * self.kw))
        A = xp.matmul(M, self.patches)  # (n, k, L): one GEMM per image
        return xp.reshape(A, (self.n, k, self.Ho, self.Wo))

    def weighted_sum(self, resp):
        xp = self.xp
        k = resp.shape[1]
        R = xp.reshape(resp, (self.n, k, self.Ho * self.Wo))
        # Σ_n Σ_u R[n,k,u] P[n,d,u]: one GEMM over the (n, u) pairs
        S = xp.tensordot(R, self.patches, axes=((0, 2), (0, 2)))
        return xp.reshape(S, (k, self.c, self.kh, self.kw))


def _extract_patches(Xp, kh, kw, xp):
    n, c, Hp, Wp = Xp.shape
    Ho, Wo = Hp - kh + 1, Wp - kw + 1
    native = use_native(xp)
    if native == "numpy":
        from numpy.lib.stride_tricks import sliding_window_view

        view = sliding_window_view(Xp, (kh, kw), axis=(2, 3))  # (n,c,Ho,Wo,kh,kw)
        view = view.transpose(0, 1, 4, 5, 2, 3)
        return xp.reshape(xp.asarray(view, copy=True), (n, c * kh * kw, Ho * Wo))
    if native == "torch":
        import torch  # already imported: the input is a torch tensor

        return torch.nn.functional.unfold(Xp, (kh, kw))
    # generic: one strided slice per kernel offset, stacked in (c, i, j) order
    slices = [Xp[:, :, i : i + Ho, j : j + Wo] for i in range(kh) for j in range(kw)]
    stacked = xp.stack(slices, axis=2)  # (n, c, kh*kw, Ho, Wo)
    return xp.reshape(stacked, (n, c * kh * kw, Ho * Wo))


def plan_shapes(image_shape, kernel_shape):
    """FFT size for both steps: the padded image size, rounded up to fast.

    A circular correlation of length ``F >= Hp`` equals the linear one on the
    ``Ho`` valid positions (E-step) and on the ``kh`` kernel offsets (M-step):
    ``u + v <= Hp - 1 < F`` never wraps.
    """
    (Hp, Wp), _ = image_shape, kernel_shape
    return next_fast_len(Hp), next_fast_len(Wp)


class FFT:
    """Spectra of the padded images, shared by both steps.

    E-step: ``A = irfft2(Σ_c X̂_c · conj(M̂_c))`` cropped to ``Ho × Wo``.
    M-step: each image's posterior maps are its own filters (a grouped
    convolution); the sum over images happens in the frequency domain,
    ``Ŝ[k, c] = Σ_n conj(R̂[n, k]) · X̂[n, c]``, then one inverse transform
    cropped to ``kh × kw``.
    """

    name = "fft"

    def __init__(self, Xp, kernel_shape, xp):
        self.xp = xp
        n, c, Hp, Wp = Xp.shape
        kh, kw = kernel_shape
        self.n, self.c, self.kh, self.kw = n, c, kh, kw
        self.Ho, self.Wo = Hp - kh + 1, Wp - kw + 1
        self.shape = plan_shapes((Hp, Wp), (kh, kw))
        X_f = rfft2(Xp, self.shape, xp=xp)  # (n, c, F1, F2r)
        # frequency-major copy: the products below are batched matmuls
        self.X_f = xp.permute_dims(X_f, (2, 3, 0, 1))  # (F1, F2r, n, c)

    def correlate(self, kernels):
        xp = self.xp
        M_f = xp.conj(rfft2(kernels, self.shape, xp=xp))  # (k, c, F1, F2r)
        M_f = xp.permute_dims(M_f, (2, 3, 1, 0))  # (F1, F2r, c, k)
        A_f = xp.matmul(self.X_f, M_f)  # Σ_c: (F1, F2r, n, k)
        A = irfft2(xp.permute_dims(A_f, (2, 3, 0, 1)), self.shape, xp=xp)
        return A[:, :, : self.Ho, : self.Wo]

    def weighted_sum(self, resp):
        xp = self.xp
        R_f = xp.conj(rfft2(resp, self.shape, xp=xp))  # (n, k, F1, F2r)
        R_f = xp.permute_dims(R_f, (2, 3, 1, 0))  # (F1, F2r, k, n)
        S_f = xp.matmul(R_f, self.X_f)  # Σ_n: (F1, F2r, k, c)
        S = irfft2(xp.permute_dims(S_f, (2, 3, 0, 1)), self.shape, xp=xp)
        return S[:, :, : self.kh, : self.kw]


ENGINES = {"im2col": Im2col, "fft": FFT}

# Relative cost of one FFT flop to one GEMM flop; fitted by
# benchmarks/engine_choice.py on a grid of shapes (see the README).
FFT_FLOP_WEIGHT = 4.0


def cost(method, n_channels, n_kernels, padded_shape, kernel_shape):
    """Modelled cost per image of one E-step plus one M-step, in GEMM flops."""
    (Hp, Wp), (kh, kw) = padded_shape, kernel_shape
    c, k = n_channels, n_kernels
    L = (Hp - kh + 1) * (Wp - kw + 1)
    if method == "im2col":
        D = c * kh * kw
        return 4.0 * k * D * L + 2.0 * D * L  # two GEMMs + building P
    F1, F2 = plan_shapes((Hp, Wp), (kh, kw))
    F = F1 * F2
    Fr = F1 * (F2 // 2 + 1)
    transforms = (c + 2 * k) * 2.5 * F * math.log2(max(F, 2))
    products = 2 * 8.0 * k * c * Fr
    return FFT_FLOP_WEIGHT * (transforms + products)


def choose_method(xp, n_channels, n_kernels, padded_shape, kernel_shape):
    """The cheaper engine by :func:`cost` (im2col where there is no fft)."""
    if not hasattr(xp, "fft"):
        return "im2col"
    args = (n_channels, n_kernels, padded_shape, kernel_shape)
    return "fft" if cost("fft", *args) < cost("im2col", *args) else "im2col"
