"""
A scikit-learn Pipeline and a grid search
=========================================

:class:`calm_np.ConvolutionalMixture` is a scikit-learn-style transformer
(``fit``/``transform``/``get_params``/``set_params``), so it goes into a
``Pipeline`` in front of a classifier, and ``GridSearchCV`` tunes its
parameters by cross-validation like any other step's.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import calm_np
from calm_np import datasets

X, y = datasets.load_digits_images()
X = X * 4.0  # a background of about unit variance
X_train, X_test, y_train, y_test = train_test_split(
    X, y, train_size=600, test_size=400, random_state=0, stratify=y
)

pipe = Pipeline(
    [
        ("calm", calm_np.ConvolutionalMixture(kernel_size=5, padding=1,
                                              tol=1e-2, random_state=0)),
        ("scale", StandardScaler()),
        ("clf", LogisticRegression(max_iter=2000)),
    ]
)

# %%
# Search over the number of kernels and the pooling grid (3-fold
# cross-validation on the 600 training digits).
grid = GridSearchCV(
    pipe, {"calm__n_kernels": [4, 8, 16], "calm__pooling": [1, 2]}, cv=3
)
grid.fit(X_train, y_train)
print("best:", grid.best_params_, f"cv accuracy {grid.best_score_:.3f}")
print(f"test accuracy of the refitted best pipeline {grid.score(X_test, y_test):.3f}")

# %%
# Cross-validated accuracy of every setting.
scores = grid.cv_results_["mean_test_score"].reshape(3, 2)
fig, ax = plt.subplots(figsize=(4.5, 3.5))
im = ax.imshow(scores, cmap="viridis")
ax.set_xticks([0, 1], ["1×1", "2×2"])
ax.set_yticks([0, 1, 2], ["4", "8", "16"])
ax.set_xlabel("pooling grid")
ax.set_ylabel("n_kernels")
for (i, j), v in np.ndenumerate(scores):
    ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="w")
fig.colorbar(im, ax=ax, label="cv accuracy")
fig.tight_layout()
