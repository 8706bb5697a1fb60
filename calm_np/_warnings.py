"""What a fit warns about, and the error of an unfitted model.

``warn_after_fit`` is the last step of ``ConvolutionalMixture._fit``: EM that
stopped at ``max_iter`` before ``tol`` (``ConvergenceWarning``), and kernels
that stayed starved of posterior mass (``DeadKernelWarning``, see ``_moves``).
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
    """EM stopped at ``max_iter`` before the objective changed less than ``tol``."""


class DataScaleWarning(UserWarning):
    """The images are far from the unit noise variance the model assumes
    (``_checks.scale_advice`` says what to do); raised at the start of a fit."""


class DeadKernelWarning(UserWarning):
    """Some kernels received (almost) no posterior mass."""


class NotFittedError(ValueError, AttributeError):
    """The estimator is used before ``fit`` or ``partial_fit``."""


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
