"""
The paper's STL-10 experiment, small
====================================

The CALM paper whitens each STL-10 image per channel (ZCA), learns 200
colour kernels of 15×15×3 without padding by batch EM in minibatches of 200,
on the 5 000 labelled and 100 000 unlabeled 96×96 images, and classifies
with a logistic regression on each of the ten standard folds.
``examples/stl10.py`` runs that on the STL-10 binary files, streaming the
unlabeled images from disk.

Here the same pipeline runs on 96×96 crops of the two photographs bundled
with scikit-learn (no labels, so no probe): per-image ZCA whitening, then 12
kernels of 15×15×3, streamed to ``fit`` as a re-iterable of batches, as the
full script streams the unlabeled split.
"""

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np

import calm_np
from calm_np import datasets, preprocessing

crops = datasets.sample_image_crops(160, 96, seed=0)  # (160, 3, 96, 96) in [0, 1]
X = preprocessing.zca_whiten_per_image(crops)
print(X.shape, X.dtype)


# %%
# A re-iterable of batches: ``fit`` reads it once per EM iteration, so the
# images never have to be in memory together (here they are, for brevity).
class Batches:
    def __init__(self, X, size):
        self.X, self.size = X, size

    def __iter__(self):
        for start in range(0, len(self.X), self.size):
            yield self.X[start : start + self.size]


model = calm_np.ConvolutionalMixture(
    n_kernels=12, kernel_size=15, padding=0, max_iter=5, random_state=0
)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model.fit(Batches(X, 40))
print("objective per epoch:", np.round(model.lower_bounds_, 1))

# %%
# The paper runs a fixed number of epochs, so the fit ends unconverged. With
# the paper's latent (one kernel at one position per image) and only 160
# images, a kernel can also end with no image to explain: the estimator
# keeps its previous value and names it in a warning.
for w in caught:
    print(f"{w.category.__name__}: {w.message}")

# %%
# The colour kernels, each scaled to [0, 1] for display.
fig, axes = plt.subplots(2, 6, figsize=(8, 3))
for ax, kernel in zip(axes.ravel(), model.kernels_, strict=True):
    tile = kernel.transpose(1, 2, 0)
    tile = (tile - tile.min()) / (np.ptp(tile) + 1e-12)
    ax.imshow(tile)
    ax.set_axis_off()
fig.suptitle("12 kernels 15x15x3 from whitened photograph crops")

# %%
# Each image's features: the log posterior of each kernel pooled over a 2×2
# grid, what the full script feeds to the classifier on each fold.
model.set_params(features="log_posterior", pooling=2)
F = model.transform(X)
print(F.shape)
