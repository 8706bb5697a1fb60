"""The timing model of the chunked plans: what ``method="auto"`` picks.

Every namespace runs a batch either as im2col GEMMs or as the row-DFT plan
(:mod:`._plans`); which one is faster depends on the shapes, the latent and
the machine.  This module counts each plan's operations per image
(:func:`_fused_features`) and weighs them by speeds measured per *profile*
(a namespace on a kind of device, :data:`SPEEDS`, :func:`profile`);
:func:`choose` picks the cheaper plan.  ``benchmarks/engine_choice.py
--backend NAME`` measures the speeds and checks the picks.
"""

from __future__ import annotations

from ._dft import folds

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
SPEEDS = {}
SPEEDS["numpy"] = {
    "gemm": 9.05e12,
    "dft": 1.75e11,
    "map": 1.43e09,
    "copy": 1.04e09,
    "image": 3.05e05,
    "pmap": 1.86e10,
    "pixel": 5.78e08,
}
# PyTorch on the CPU: the same plans, chunks on worker threads with one torch
# thread each.  Fitted by ``benchmarks/engine_choice.py --backend torch
# --quick --fit`` to one sweep of 26 shapes x 2 latents, medians of 3
# (``results/engine_choice_torch_quick.json``): 52 of 52 picks within 10 %
# of the faster engine on that sweep (in-sample; 45 with NumPy's speeds).
# The pixel term (the patch latent's pixel-weighted sum) was too small to
# fit and is left out.
SPEEDS["torch-cpu"] = {
    "gemm": 4.18e11,
    "dft": 8.63e10,
    "map": 1.06e09,
    "copy": 1.5e09,
    "image": 1.06e05,
    "pmap": 7.89e09,
    "pixel": 1e30,
}
# CuPy and PyTorch on a GPU: not calibrated (no GPU has run the sweep).  A
# GPU runs GEMMs far faster than it streams memory for small operands, so
# this guess weighs GEMM flops at a GPU's tensor-core rate and every pass
# over maps and copies at its memory bandwidth.
SPEEDS["gpu"] = {
    "gemm": 2.0e14,
    "dft": 5.0e13,
    "map": 5.0e11,
    "copy": 5.0e11,
    "image": 1.0e07,
    "pmap": 5.0e11,
    "pixel": 5.0e11,
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


def _fused_cost(kind, image_shape, kernel_shape, latent="image", speeds=None):
    """Modelled seconds per image of a plan (NumPy's speeds by default)."""
    f = _fused_features(kind, image_shape, kernel_shape, latent)
    speeds = SPEEDS["numpy"] if speeds is None else speeds
    return sum(v / speeds[name] for name, v in f.items())


def profile(xp, device=None):
    """The :data:`SPEEDS` entry for a namespace and device: ``"numpy"``,
    ``"torch-cpu"``, ``"gpu"`` (CuPy, PyTorch on CUDA), or ``"numpy"`` for
    any other CPU namespace (array-api-strict wraps NumPy)."""
    name = getattr(xp, "__name__", "")
    if "cupy" in name:
        return "gpu"
    if "torch" in name:
        on_gpu = getattr(device, "type", "cpu") != "cpu"
        return "gpu" if on_gpu else "torch-cpu"
    return "numpy"


def choose(profile_name, n_channels, n_kernels, padded_shape, kernel_shape,
           latent="image"):  # fmt: skip
    """``"fft"`` (the row-DFT plan) or ``"im2col"``, whichever
    :func:`_fused_cost` models faster per image for the latent, with the
    speeds of ``profile_name``."""
    image = (1, n_channels) + tuple(padded_shape)
    kernels = (n_kernels, n_channels) + tuple(kernel_shape)
    speeds = SPEEDS[profile_name]
    fft = _fused_cost("rowdft", image, kernels, latent, speeds)
    cost = _fused_cost("im2col", image, kernels, latent, speeds)
    return "fft" if fft < cost else "im2col"
