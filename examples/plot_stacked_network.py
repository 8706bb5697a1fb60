"""
Two stacked layers
==================

:class:`calm_np.ConvolutionalMixtureNetwork` fits layers greedily: layer 1
on the images, layer 2 on layer 1's triangle activation maps (one channel
per layer-1 kernel), average-pooled and standardised per channel. Each
layer's EM never lowers *its own* objective; the stack has no joint
likelihood. ``examples/network_fashion_mnist.py`` is the full-size version
(64 then 128 kernels on Fashion-MNIST).
"""

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import train_test_split

import calm_np
from calm_np import datasets, evaluation

X, y = datasets.load_digits_images()
X = X * 4.0
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.3, random_state=0, stratify=y
)


def layer(n_kernels, kernel_size, padding):
    return calm_np.ConvolutionalMixture(
        n_kernels, kernel_size=kernel_size, padding=padding, latent="patch",
        features="triangle", pooling=2, max_iter=10, tol=1.0, random_state=0,
    )


net = calm_np.ConvolutionalMixtureNetwork(
    [layer(16, 3, 1), layer(16, 2, 0)], pool_size=2
)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", calm_np.ConvergenceWarning)  # 10 iterations
    net.fit(X_train)
for i, fitted in enumerate(net.layers_, 1):
    print(f"layer {i}: kernels {fitted.kernels_.shape}, "
          f"{fitted.n_iter_} iterations, objective {fitted.lower_bound_:.2f}")

# %%
# Each layer's objective per iteration: each is monotone on its own input.
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for ax, fitted, i in zip(axes, net.layers_, (1, 2), strict=True):
    ax.plot(np.arange(1, fitted.n_iter_ + 1), fitted.lower_bounds_, marker="o")
    ax.set_title(f"layer {i}")
    ax.set_xlabel("EM iteration")
axes[0].set_ylabel("pseudo-log-likelihood per image")
fig.tight_layout()

# %%
# Layer 1's kernels are image patches; a layer-2 kernel has one 2×2 slice per
# layer-1 kernel, shown here as the energy of each of its 16 input channels.
fig, axes = plt.subplots(2, 16, figsize=(12, 1.8))
for j in range(16):
    axes[0, j].imshow(net.layers_[0].kernels_[j, 0], cmap="gray")
    energy = (net.layers_[1].kernels_[j] ** 2).sum(axis=(1, 2)).reshape(4, 4)
    axes[1, j].imshow(energy, cmap="magma")
for ax in axes.ravel():
    ax.set_axis_off()
fig.suptitle("top: layer-1 kernels; bottom: layer-2 kernels' input-channel energy")

# %%
# Features: both layers' pooled readouts side by side (``readout="concat"``),
# against layer 1 alone, with the same linear probe.
F_train, F_test = net.transform(X_train), net.transform(X_test)
n1 = net.layers_[0].n_kernels * 4
both = evaluation.linear_probe(F_train, y_train, F_test, y_test)
first = evaluation.linear_probe(F_train[:, :n1], y_train, F_test[:, :n1], y_test)
print(f"layer 1 alone: {n1} features, accuracy {first:.3f}")
print(f"both layers:   {F_train.shape[1]} features, accuracy {both:.3f}")
