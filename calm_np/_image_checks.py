"""The layout and the scale of the images a model is given (issue 21).

:func:`check_channels_first` refuses channels-last images, which calm_np
would otherwise read as something else without an error;
:func:`scale_advice` and :func:`warn_scale` say, once, when the pixels are
far from the unit noise variance the model assumes.  A leaf: what it needs
of the rest of calm_np it imports where it is used.
"""

from __future__ import annotations

# A last axis of this many values is a channel axis of Pillow, imageio and
# matplotlib images (gray, RGB, RGBA).
CHANNELS_LAST_SIZES = (1, 3, 4)


def check_channels_first(shape, name="X"):
    """Refuse images laid out channels-last: ``(n, H, W, C)`` or ``(H, W, C)``.

    calm_np reads ``(n, C, H, W)``; a ``(20, 32, 32, 3)`` RGB batch read that
    way is 32 channels of 32x3 images, and would fit without an error.  The
    rule fires only where both readings point the same way: read
    channels-last, the batch is images of at least 5x5 pixels (the default
    kernel size) with 1, 3 or 4 channels (gray, RGB, RGBA: what Pillow,
    imageio and matplotlib return); read channels-first, it is more than 4
    channels of images more than 4 rows tall but only 1, 3 or 4 columns
    wide.  That is ``shape[3] in (1, 3, 4)``, ``shape[1] > 4`` and
    ``shape[2] > 4``.  A batch with 1 to 4 channels, or images at least 5
    columns wide, always passes (so every gray, RGB or RGBA batch laid out
    channels-first does).

    A 3-D array is a batch of gray images ``(n, H, W)``; the same rule
    refuses one channels-last image ``(H, W, C)``, which would otherwise be
    read as ``H`` gray images ``W`` pixels tall and ``C`` wide: ``shape[2]
    in (1, 3, 4)``, ``shape[0] > 4`` and ``shape[1] > 4``.
    """
    if len(shape) == 3:
        h, w, c = (int(s) for s in shape)
        if c in CHANNELS_LAST_SIZES and h > 4 and w > 4:
            raise ValueError(
                f"{name} has shape {(h, w, c)}, which looks like one channels-last "
                f"image (H, W, C): {h}x{w} pixels with {c} channel(s), the layout "
                "of Pillow, imageio and matplotlib. calm_np reads a 3-D array as "
                f"(n_samples, height, width), here {h} gray images of {w}x{c}; "
                "pass np.moveaxis(X, -1, 0)[None] for one image (torch: "
                "X.permute(2, 0, 1)[None]). calm_np refuses gray images 1, 3 or "
                f"4 columns wide; if these really are {h} images of {w}x{c}, pad "
                "them wider"
            )
        return
    if len(shape) != 4:
        return
    n, c, h, w = (int(s) for s in shape)
    if w in CHANNELS_LAST_SIZES and c > 4 and h > 4:
        raise ValueError(
            f"{name} has shape {(n, c, h, w)}, which looks channels-last (n, H, "
            f"W, C): {n} images of {c}x{h} with {w} channel(s), the layout of "
            "Pillow, imageio and matplotlib. calm_np reads (n, C, H, W); pass "
            "np.moveaxis(X, -1, 1) (torch: X.permute(0, 3, 1, 2)). calm_np "
            "refuses more than 4 channels of images 1, 3 or 4 columns wide; "
            f"if these really are {c} channels of {h}x{w} images, pad them wider"
        )


# Largest standard deviation of the pixel values that the unit-variance model
# (learn_variance=False, whiten=False) is given without a word.  Measured on
# scikit-learn's digits with the estimator's defaults, iterations of four
# fits (n_kernels 16 with seeds 0 and 1, then 64 with seeds 0 and 1; * no
# convergence in 100, D dead kernels at the end):
#   std 0.38 (digits / 16)    9     9     9     9
#   std 1 (standardised)     74    51    92    78
#   std 2                   100*  100*  100*   74
#   std 3                   100*   70    74   100*
#   std 6 (raw 0..16)       100*   89    35    49
#   std 16                  100*   49    26    35D
#   std 96 (0..255)          97    37    24D   26D
# Non-convergence also happens at std 2-3, so the limit only separates
# what Standardize gives (std 1, and the tests' noise up to std 3) from raw
# 0..16 and 0..255 pixels, where posteriors are hard (log-joint gaps of
# hundreds to thousands of nats) and kernels starve.
SCALE_LIMIT = 4.0
# Images whose pixels give the standard deviation (evenly spaced over X; the
# first ones of an iterable of batches).
SCALE_SAMPLES = 64


def warn_scale(source, learn_variance, whiten, *, online=False):
    """:func:`scale_advice` on ``SCALE_SAMPLES`` images of ``source`` (an
    ``ImageSource``), raised as one ``DataScaleWarning``; the advice or ``None``.

    ``fit`` calls it before any work (not on a warm start), ``partial_fit``
    on its first batch (``online=True``)."""
    import warnings

    from ._warnings import DataScaleWarning

    sample = source.sample(SCALE_SAMPLES)
    advice = scale_advice(sample, learn_variance, whiten, online=online)
    if advice is not None:
        warnings.warn(advice, DataScaleWarning, stacklevel=3)
    return advice


def scale_advice(sample, learn_variance, whiten, name="X", *, online=False):
    """A message saying how to scale ``X``, or ``None`` when it fits the model.

    ``sample`` is a few images of ``X`` (any namespace; ``fit`` passes
    ``SCALE_SAMPLES`` of them, ``ImageSource.sample``; ``partial_fit``'s
    first call its batch's, ``online=True``).  Advised above a
    standard deviation of ``SCALE_LIMIT`` (4).  Only the unit-variance model
    is scale-sensitive: with ``learn_variance=True`` a fit is
    scale-equivariant, with ``whiten=True`` every patch is normalised.
    """
    if learn_variance or whiten:
        return None
    from ._xp import get_namespace, wide_float

    xp, device = get_namespace(sample)
    values = xp.astype(sample, wide_float(xp, device))
    std = float(xp.std(values))
    if not std > SCALE_LIMIT:
        return None
    low, high = float(xp.min(values)), float(xp.max(values))
    return (
        f"{name}'s pixel values have standard deviation {std:.3g} (range "
        f"{low:.4g}..{high:.4g}), but with learn_variance=False the model's "
        "noise has variance 1, so posteriors are hard and kernels starve or "
        f"converge slowly. Divide {name} by its standard deviation (e.g. "
        "calm_np.preprocessing.Standardize(), or X / 255 for 8-bit images), or "
        "pass learn_variance=True (the fit is then scale-equivariant). "
        + (
            "Online EM goes on from this batch; later calls do not check again"
            if online
            else "This fit goes on, and does not warn again about convergence "
            "or starved kernels"
        )
    )
