"""What a fit warns about, and the error of an unfitted model.

``warn_after_fit`` is the last step of ``ConvolutionalMixture._fit``: EM that
stopped at ``max_iter`` before ``tol`` (``ConvergenceWarning``), and kernels
that stayed starved of posterior mass (``DeadKernelWarning``, see ``_moves``).
A fit that began with a ``DataScaleWarning`` skips it: one message per fit.
"""

from __future__ import annotations

import warnings

from ._moves import STARVED_SHARE, starved

__all__ = [
    "ConvergenceWarning",
    "DataScaleWarning",
    "DeadKernelWarning",
    "NotFittedError",
    "warn_after_fit",
]


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before the objective changed less than ``tol``.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> import calm_np
    >>> X = np.random.default_rng(0).standard_normal((20, 1, 8, 8))
    >>> model = calm_np.ConvolutionalMixture(3, kernel_size=3, max_iter=1,
    ...                                      random_state=0)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = model.fit(X)
    >>> [w.category.__name__ for w in caught]
    ['ConvergenceWarning']
    """


class DataScaleWarning(UserWarning):
    """The pixels are far from the unit noise variance the model assumes.

    Raised once, at the start of ``fit`` (not on a warm start) or on
    ``partial_fit``'s first batch, when a
    sample of the images has a standard deviation above 4 and the model's
    noise variance is fixed at 1 (``learn_variance=False, whiten=False``):
    raw 0..16 or 0..255 pixels.  It says what to do (standardise, divide by
    255, or ``learn_variance=True``); that fit then gives no
    ``ConvergenceWarning`` or ``DeadKernelWarning``, whose cause it names.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> import calm_np
    >>> X = np.random.default_rng(0).integers(0, 256, (20, 1, 8, 8))  # 8-bit
    >>> model = calm_np.ConvolutionalMixture(3, kernel_size=3, random_state=0)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = model.fit(X)
    >>> [w.category.__name__ for w in caught]
    ['DataScaleWarning']
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("error")  # X / 255: no warning at all
    ...     _ = model.fit(X / 255)
    """


class DeadKernelWarning(UserWarning):
    """Some kernels received (almost) no posterior mass.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> import calm_np
    >>> X = np.zeros((4, 1, 6, 6))
    >>> X[:, 0, 2:4, 2:4] = 5.0  # one pattern, two kernels: one of them gets nothing
    >>> kernels = np.stack([np.full((1, 2, 2), 5.0), np.full((1, 2, 2), -50.0)])
    >>> model = calm_np.ConvolutionalMixture(2, kernel_size=2, init=kernels, tol=1.0)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = model.fit(X)
    >>> any(w.category is calm_np.DeadKernelWarning for w in caught)
    True
    """


class NotFittedError(ValueError, AttributeError):
    """The estimator is used before ``fit`` or ``partial_fit``.

    Examples
    --------
    >>> import numpy as np
    >>> import calm_np
    >>> try:
    ...     calm_np.ConvolutionalMixture(4).transform(np.zeros((1, 8, 8)))
    ... except calm_np.NotFittedError as exc:
    ...     print(type(exc).__name__)
    NotFittedError
    """


def warn_after_fit(best, max_iter, tol):
    """Warn about the kept run ``best`` (``_fit``'s tuple) of a fit."""
    *_, stats, converged, last_change = best
    if max_iter > 0 and not converged:
        warnings.warn(
            f"ConvolutionalMixture did not converge in max_iter={max_iter} "
            f"iterations (last change {last_change:.3g} >= "
            f"tol={tol}); increase max_iter or tol, or check that the "
            "images are scaled to unit noise variance",
            ConvergenceWarning,
            stacklevel=4,
        )
    dead = starved(stats)
    if dead:
        warnings.warn(
            f"kernels {dead} received almost no posterior mass (less than "
            f"{STARVED_SHARE:g} of an equal share); they kept their previous "
            "values. Use fewer n_kernels or reg_kernels > 0",
            DeadKernelWarning,
            stacklevel=4,
        )
