"""calm_np: convolution kernels learned by EM, without labels or gradients.

A convolution layer's feature map with bias ``log π_k − ½‖μ_k‖²`` is the log
posterior of a Gaussian mixture that places one kernel-shaped patch at an
unknown position of a standard-normal image; EM learns the kernels.
"""

from ._em import (
    SufficientStatistics,
    log_joint,
    log_likelihood,
    posterior,
    sufficient_statistics,
)
from ._estimator import (
    ConvergenceWarning,
    ConvolutionalMixture,
    DataScaleWarning,
    DeadKernelWarning,
    NotFittedError,
)
from ._network import ConvolutionalMixtureNetwork

__version__ = "0.1.0"

__all__ = [
    "ConvergenceWarning",
    "ConvolutionalMixture",
    "ConvolutionalMixtureNetwork",
    "DataScaleWarning",
    "DeadKernelWarning",
    "NotFittedError",
    "SufficientStatistics",
    "log_joint",
    "log_likelihood",
    "posterior",
    "sufficient_statistics",
    "__version__",
]
