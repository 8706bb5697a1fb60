"""Test data and comparisons shared across test modules."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from calm_np._xp import array_namespace, to_numpy

# float32 tolerances: A is a sum of D products of O(1) values plus −½‖μ‖²,
# each step rounding at 6e-8 relative; with D ≤ 75 and |A| ≤ ~100 that is
# ≲1e-4 absolute, and FFT round-off on the padded grid is of the same order.
TOL = {"float64": dict(rtol=1e-10, atol=1e-10), "float32": dict(rtol=2e-4, atol=2e-3)}


def assert_close(actual, expected, dtype="float64", **kw):
    tol = dict(TOL[str(dtype)])
    tol.update(kw)
    np.testing.assert_allclose(to_numpy(actual), np.asarray(expected), **tol)


def check_array_like(out, backend, like, dtype):
    """Output keeps the namespace, dtype and device of the input."""
    xp = backend.xp
    assert array_namespace(out) is array_namespace(like)
    assert out.dtype == getattr(xp, dtype)
    assert str(getattr(out, "device", None)) == str(getattr(like, "device", None))


def planted_images(seed, n, c, H, W, kernels, noise=1.0):
    """Images of N(0, noise²) with one kernel (random k) pasted at random u."""
    rng = np.random.default_rng(seed)
    kernels = np.asarray(kernels)
    k, _, kh, kw = kernels.shape
    X = noise * rng.standard_normal((n, c, H, W))
    z = rng.integers(k, size=n)
    for i in range(n):
        y, x = rng.integers(H - kh + 1), rng.integers(W - kw + 1)
        X[i, :, y : y + kh, x : x + kw] += kernels[z[i]]
    return X, z


@st.composite
def problems(draw, max_n=3, max_c=3, max_k=3, max_hw=7, max_kernel=4):
    """Shapes for a batch: images, kernels, padding and a seed."""
    n = draw(st.integers(1, max_n))
    c = draw(st.integers(1, max_c))
    k = draw(st.integers(1, max_k))
    H = draw(st.integers(1, max_hw))
    W = draw(st.integers(1, max_hw))
    ph = draw(st.integers(0, 2))
    pw = draw(st.integers(0, 2))
    kh = draw(st.integers(1, min(max_kernel, H + 2 * ph)))
    kw = draw(st.integers(1, min(max_kernel, W + 2 * pw)))
    seed = draw(st.integers(0, 2**32 - 1))
    weighted = draw(st.booleans())
    return dict(
        n=n,
        c=c,
        k=k,
        H=H,
        W=W,
        padding=(ph, pw),
        kernel=(kh, kw),
        seed=seed,
        weighted=weighted,
    )


def make_data(p, scale=1.0):
    """NumPy float64 images, kernels and log-weights for a drawn problem."""
    rng = np.random.default_rng(p["seed"])
    X = rng.standard_normal((p["n"], p["c"], p["H"], p["W"]))
    M = scale * rng.standard_normal((p["k"], p["c"], *p["kernel"]))
    if p["weighted"]:
        w = rng.dirichlet(np.ones(p["k"]))
        log_w = np.log(w)
    else:
        log_w = None
    return X, M, log_w


def readonly_memmap(X, path):
    """``X`` written to ``path`` and opened again read-only, as a user's memmap."""
    mm = np.memmap(path, dtype=X.dtype, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    return np.memmap(path, dtype=X.dtype, mode="r", shape=X.shape)


def load_benchmark(name):
    """The script ``benchmarks/<name>.py`` as a module (the benchmarks are
    scripts, not a package; tests hold their mathematics to account)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluate_help():
    """``python -m calm_np evaluate --help`` as a user sees it (a subprocess:
    the real entry point), read once per test session."""
    global _EVALUATE_HELP
    if _EVALUATE_HELP is None:
        import subprocess
        import sys

        _EVALUATE_HELP = subprocess.run(
            [sys.executable, "-m", "calm_np", "evaluate", "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return _EVALUATE_HELP


_EVALUATE_HELP = None
