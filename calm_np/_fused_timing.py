"""The timing model of NumPy's fused paths: what ``method="auto"`` picks there.

``_fused`` runs a batch either as im2col GEMMs or as the row-DFT plan (the
Fourier family on NumPy); which one is faster depends on the shapes and on
the latent.  This module counts each path's operations per image and weighs
them by measured speeds; :func:`choose_method` picks the cheaper path.
``benchmarks/engine_choice.py`` measures the speeds and checks the picks.
"""

from __future__ import annotations

from ._fused_dft import folds

# Effective speeds of the operations of the fused NumPy paths (units per
# second, 2 threads on an idle 2-core AMD EPYC with AVX-512): GEMM flops of
# the products, flops of the skinny DFT-by-GEMM row transforms (inner
# dimensions of 13 to 98), softmax map entries, copied entries (patches,
# Toeplitz), images (per-image overhead), and for ``latent="patch"`` the
# per-position softmax's map entries and the pixels of the objective's
# pixel-weighted sum.  Only their ratios matter, and they are fitted, not
# measured rates: on this grid the passes over maps and copies outweigh the
# GEMMs, so the fit gives GEMM flops little weight.  Fitted by
# ``benchmarks/engine_choice.py --fit`` (least squares, then a coordinate
# search, restarted, maximising the (shape, latent) pairs whose pick is
# within 10 % of the faster engine) to three sweeps of 104 shapes x 2
# latents pooled, medians of 7 (``results/engine_choice.json``,
# ``_check.json``, ``_holdout.json``): 617 of 624 there; 206 of 208 on a
# fourth sweep, of the current code, which chose it over the speeds fitted
# to the first sweep alone (202; ``results/engine_choice_final.json``), and
# 206 on a fifth made afterwards (204; ``results/engine_choice_fresh.json``).
_SPEED = {
    "gemm": 9.05e12,
    "dft": 1.75e11,
    "map": 1.43e09,
    "copy": 1.04e09,
    "image": 3.05e05,
    "pmap": 1.86e10,
    "pixel": 5.78e08,
}
_FEATURES = ("gemm", "dft", "map", "copy", "image", "pmap", "pixel")


def _fused_features(kind, image_shape, kernel_shape, latent="image"):
    """Per-image operation counts of a fused path (``kind``: 'im2col' or
    'rowdft') for images ``(n, c, Hp, Wp)`` and kernels ``(k, c, kh, kw)``.

    ``latent="patch"`` adds the per-position softmax's passes over the maps
    (``"pmap"``) and the patch norms' integral image (``"pixel"``)."""
    _, c, Hp, Wp = image_shape
    k, _, kh, kw = kernel_shape
    Ho, Wo = Hp - kh + 1, Wp - kw + 1
    maps = k * Ho * Wo
    if kind == "im2col":
        D = c * kh * kw
        f = {
            "gemm": 4.0 * k * D * Ho * Wo,
            "map": maps,
            "copy": D * Ho * Wo,
            "image": 1.0,
        }
    elif kind == "rowdft":
        ns = (Wp + 1) // 2
        fold = folds(Wp, Wo)  # radix-2: half-length GEMMs and a butterfly
        f = {
            "gemm": 16.0 * ns * k * c * kh * Ho,  # E and M products, re/im
            "dft": 8.0 * ns * (Wp // 2 if fold else Wo) * k * Ho,  # maps' rows
            "map": maps * (5 / 3 if fold else 1),  # the butterflies' 4 passes
            "copy": 2.0 * ns * c * kh * Ho,  # Toeplitz matrix
            "image": 1.0,
        }
    else:
        raise ValueError(kind)
    if latent == "patch":
        f["pmap"] = maps
        f["pixel"] = c * Hp * Wp
    return f


def _fused_cost(kind, image_shape, kernel_shape, latent="image"):
    """Modelled seconds per image of a fused path."""
    f = _fused_features(kind, image_shape, kernel_shape, latent)
    return sum(v / _SPEED[name] for name, v in f.items())


def choose_method(n_channels, n_kernels, padded_shape, kernel_shape, latent="image"):
    """``"fft"`` (the row-DFT plan) or ``"im2col"``, whichever
    :func:`_fused_cost` models faster per image for the latent."""
    image = (1, n_channels) + tuple(padded_shape)
    kernels = (n_kernels, n_channels) + tuple(kernel_shape)
    fft = _fused_cost("rowdft", image, kernels, latent)
    return "fft" if fft < _fused_cost("im2col", image, kernels, latent) else "im2col"
