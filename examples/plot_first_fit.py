"""
A first fit: kernels, likelihood and features
=============================================

Learn 16 kernels of 5×5 from scikit-learn's bundled 8×8 handwritten digits,
check the identity behind the model (the posterior is a softmax of a
convolution layer's output), draw the kernels and the objective after each
EM iteration, and classify the digits with a linear model on the pooled
features. The full-size version is ``examples/quickstart.py``.
"""

# %%
# The data: 1 797 one-channel 8×8 images, scaled so that the background
# varies by about 1 (the model's noise has unit variance).
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import calm_np
from calm_np import datasets, plots

X, y = datasets.load_digits_images()  # (1797, 1, 8, 8) in [0, 1]
X = X * 4.0  # pixels 0..4: a background of about unit variance
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.3, random_state=0, stratify=y
)
print(X_train.shape, X_test.shape)

# %%
# Fit by batch EM. ``lower_bounds_`` holds the mean log-likelihood per image
# after each iteration; EM never lowers it.
model = calm_np.ConvolutionalMixture(
    n_kernels=16, kernel_size=5, padding=1, tol=1e-3, random_state=0
)
model.fit(X_train)
print(f"{model.n_iter_} iterations, converged: {model.converged_}")
print(f"objective {model.lower_bound_:.3f} nats per image")
print("never decreased:", bool(np.all(np.diff(model.lower_bounds_) >= -1e-9)))

# %%
# The identity: :func:`calm_np.posterior` is the softmax over (kernel,
# position) of :func:`calm_np.log_joint`, the convolution with bias
# ``−½‖μ_k‖² + log π_k``.
A = calm_np.log_joint(X_test[:2], model.kernels_, padding=1)
gamma = calm_np.posterior(X_test[:2], model.kernels_, padding=1)
flat = A.reshape(2, -1)
softmax = np.exp(flat - flat.max(axis=1, keepdims=True))
softmax /= softmax.sum(axis=1, keepdims=True)
print("maps:", A.shape, "softmax of the map equals the posterior:",
      np.allclose(softmax, gamma.reshape(2, -1)))

# %%
# The learned kernels and the objective per iteration, drawn by
# :mod:`calm_np.plots` (which writes PNG files) and shown here.
out = Path(tempfile.mkdtemp())
plots.model_figures(model, out / "kernels.png", out / "curve.png", data="digits")
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for ax, name in zip(axes, ("kernels.png", "curve.png"), strict=True):
    ax.imshow(plt.imread(out / name))
    ax.set_axis_off()
fig.tight_layout()

# %%
# Features for a classifier: the log joint pooled over a 2×2 grid of
# positions, 16 kernels × 4 cells = 64 features per image.
model.set_params(pooling=2)
F_train, F_test = model.transform(X_train), model.transform(X_test)
probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
probe.fit(F_train, y_train)
print(F_train.shape, f"test accuracy {probe.score(F_test, y_test):.3f}")
