"""
The paper's MNIST experiment, small
===================================

The CALM paper learns 64 kernels of 20×20 from MNIST with padding 2,
minibatches of 1 000 and 15 epochs, reads out each image's 64 image-wide
pooled log posteriors ``log p(Z=k | X)`` and classifies them with a
multinomial logistic regression; the likelihood converges after about two
epochs. ``examples/mnist.py`` runs exactly that on MNIST or Fashion-MNIST.

Here the same recipe runs on scikit-learn's 8×8 digits through the
``paper`` preset (:func:`calm_np.evaluation.preset`), which keeps everything
but the kernel size (6×6 on 8×8 images), so it takes seconds.
"""

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np

import calm_np
from calm_np import evaluation

settings = evaluation.preset("paper", "digits")
print(settings)

# %%
# The data, preprocessed as the preset says (``none``: pixels in [0, 1]).
X_train, y_train, X_test, y_test = evaluation.load_dataset("digits", test=True)
X_train, X_test = evaluation.preprocess(
    settings["preprocess"], X_train, X_test, window=settings["kernel_size"]
)
names = calm_np.ConvolutionalMixture().get_params()
params = {k: v for k, v in settings.items() if k in names}
model = calm_np.ConvolutionalMixture(**params, random_state=0)

# %%
# Fit: a fixed number of epochs, as in the paper (the convergence warning of
# an unconverged fit is silenced on purpose).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", calm_np.ConvergenceWarning)
    model.fit(X_train)
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(np.arange(1, model.n_iter_ + 1), model.lower_bounds_, marker="o")
ax.set_xlabel("epoch")
ax.set_ylabel("mean log-likelihood per image (nats)")
ax.set_title(f"{model.n_kernels} kernels {model.kernel_size}x{model.kernel_size}")
fig.tight_layout()

# %%
# The kernels, as the paper's figure shows them.
k = model.kernels_[:, 0]
fig, axes = plt.subplots(8, 8, figsize=(6, 6))
for ax, kernel in zip(axes.ravel(), k, strict=True):
    ax.imshow(kernel, cmap="gray")
    ax.set_axis_off()
fig.suptitle("learned kernels")

# %%
# The paper's features (image-wide log posteriors) and the linear probe.
F_train = evaluation.extract_features(model, X_train)
F_test = evaluation.extract_features(model, X_test)
C = settings.get("C", 1.0)  # the preset's probe regularisation, if it has one
accuracy = evaluation.linear_probe(F_train, y_train, F_test, y_test, C=C)
print(f"{F_train.shape[1]} features, test accuracy {accuracy:.3f}")

# %%
# With pixels in [0, 1] the unit-variance noise of the model swamps the
# strokes of these tiny images, so the paper's setting gives weak features
# here; :doc:`/benchmarks` measures better settings (``calm-np evaluate``'s
# default ``best`` preset) on real MNIST and Fashion-MNIST.
